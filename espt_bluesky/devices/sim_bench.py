"""``make_sim_bench``: one simulated instrument (stage, bipotentiostat, probe, AFM head) over one bench model."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import (InvalidArgument, check_bool, check_choice, check_int, check_number,
                      check_vector)
from ..physics.bench_model import TECHNIQUES, BenchModel, BenchOptions, default_probe
from ..physics.sample import PRESETS, VirtualSample
from .afm import ECAFMHead
from .hopper import SimHopController
from .potentiostat import SimBipotentiostat
from .probes import PROBE_KIND, Probe, probe_from_geometry
from .stage import XY_LIMITS, XYZStage


@dataclass
class SimBench:
    """The devices of one simulated instrument and the model behind them (``model`` is the ground truth)."""

    technique: str
    stage: XYZStage
    potentiostat: SimBipotentiostat
    probe: Probe
    model: BenchModel
    time_scale: float
    afm: ECAFMHead | None = None
    #: device-side hopping controller (SICM and SECCM benches), see :mod:`espt_bluesky.devices.hopper`
    hopper: SimHopController | None = None

    @property
    def devices(self) -> list:
        """Every device of the bench (for a session namespace or a queue server)."""
        return [d for d in (self.stage, self.potentiostat, self.afm) if d is not None]

    def metadata(self) -> dict[str, Any]:
        """Technique, probe, sample and environment, for start documents."""
        env = self.model.environment
        return dict(technique=self.technique, probe=self.probe.metadata(),
                    sample=dict(name=self.model.sample.name, description=self.model.sample.description,
                                simulated=True),
                    electrolyte=env["electrolyte"], mediator=dict(env["mediator"]),
                    reference_electrode=env["reference_electrode"])


_OPTION_NAMES = set(BenchOptions.__dataclass_fields__)
#: Allowed ranges of the bench options beyond "a finite number" (units as in BenchOptions).  Drift: thermal drift of
#: a real stage is nm/s to 0.1 µm/s; tilt: a mounted sample is levelled to a few degrees, and beyond ~20° the
#: end face of a UME (RG·a up to 50 µm across) spans more than 18 µm of height, which no parallel-gap model covers.
OPTION_RANGES: dict[str, tuple[float, float, str]] = {
    "noise": (0.0, 1.0, ""), "current_noise_floor": (0.0, 1e-6, "A"), "height_noise": (0.0, 1.0, "µm"),
    "deflection_noise": (0.0, 1e-6, "m"), "drift": (-10.0, 10.0, "µm/s"), "tilt": (-20.0, 20.0, "deg"),
    "tilt_centre": (-1e4, 1e4, "µm"), "substrate_area": (1e-12, 1.0, "m²"), "ion_bias": (-10.0, 10.0, "V"),
    "conductivity": (1e-6, 1e3, "S/m"), "meniscus_height": (1e-6, 100.0, "µm"), "sample_time": (1e-6, 10.0, "s"),
}


def check_bench_options(options: Mapping[str, Any], name: str = "options") -> BenchOptions:
    """Validate :class:`~espt_bluesky.physics.bench_model.BenchOptions` fields (unknown names, kinds, ranges)."""
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"{name}={options!r} must be a dict of bench options")
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise InvalidArgument(f"unknown bench option(s) {unknown}; allowed: {sorted(_OPTION_NAMES)}")
    defaults = {f.name: f.default for f in dataclasses.fields(BenchOptions)}
    out = {}
    for k, v in options.items():
        lo, hi, units = OPTION_RANGES.get(k, (-math.inf, math.inf, ""))
        d = defaults[k]
        if isinstance(d, bool):
            out[k] = check_bool(k, v)
        elif isinstance(d, tuple):
            out[k] = check_vector(k, v, len(d), low=lo, high=hi, units=units)
        elif v is None and d is None:
            out[k] = None
        else:
            out[k] = check_number(k, v, lo, hi, units=units)
        if k == "ion_bias" and out[k] == 0:
            raise InvalidArgument("ion_bias=0.0 V drives no ion current; allowed: a nonzero bias in [-10, 10] V")
    return BenchOptions(**out)


def check_bench_arguments(technique: Any, sample: Any, seed: Any, time_scale: Any, start: Any,
                          options: Mapping[str, Any]) -> tuple[str, str, int, float, tuple[float, float],
                                                                BenchOptions]:
    """The validated arguments of :func:`make_sim_bench` (also used on a session's ``[bench]`` configuration)."""
    technique = check_choice("technique", technique, TECHNIQUES)
    if not isinstance(sample, VirtualSample):  # a preset by name, or a sample built by physics.sample
        sample = check_choice("sample", sample, PRESETS)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    time_scale = check_number("time_scale", time_scale, 0.0, 1e3)
    start = check_vector("start", start, 2, low=XY_LIMITS[0], high=XY_LIMITS[1], units="µm")
    return technique, sample, seed, time_scale, start, check_bench_options(options)


def make_sim_bench(technique: str = "SECM", sample: str = "patterned", seed: int = 0, time_scale: float = 0.0,
                   *, probe: Probe | None = None, start: tuple[float, float] = (50.0, 50.0),
                   **options: Any) -> SimBench:
    """Build a simulated bench for one technique over one sample.

    Parameters
    ----------
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    sample : {"patterned", "hopg", "composite_cathode", "si_film"} or VirtualSample
        A preset name, or a sample built in :mod:`espt_bluesky.physics.sample` (e.g. ``uniform_kinetics(0.1)``).
    seed : int
        Seeds the sample's random features and every noise source.
    time_scale : float
        0 runs instantly; 1 sleeps for the instrument time of every move and measurement.
    probe : Probe, optional
        A ``UME``, ``Nanopipette`` or ``AFMCantilever``; defaults to the usual probe of the technique.
    start : (x, y), µm
        Lateral start position (inside the stage's x/y limits, -25 to 125 µm); the tip starts one probe radius above
        the surface (L = 1).
    **options
        Fields of :class:`~espt_bluesky.physics.bench_model.BenchOptions`: ``noise`` (relative, 0 = off),
        ``drift`` (µm/s, x/y/z), ``tilt`` (degrees, x/y), ``substrate_area`` (m²), ``ion_bias`` (V),
        ``conductivity`` (S/m), ``meniscus_height`` (µm) ...; each is checked (a finite number, in the range
        given by :data:`OPTION_RANGES`).

    Examples
    --------
    >>> bench = make_sim_bench("SECM", "patterned", seed=1)
    >>> RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 0, 100, 21, bench.stage.x, 0, 100, 21))
    """
    technique, sample, seed, time_scale, start, opts = check_bench_arguments(technique, sample, seed, time_scale,
                                                                              start, options)
    if probe is not None and not isinstance(probe, Probe):
        raise InvalidArgument(f"probe={probe!r} must be a UME, Nanopipette or AFMCantilever device (or None)")
    geometry = probe.geometry() if probe is not None else default_probe(technique)
    expected = PROBE_KIND[technique]
    if geometry.kind != expected:
        raise InvalidArgument(f"probe={geometry.kind} does not suit technique={technique!r}; use a {expected}")
    model = BenchModel(technique, sample, probe=geometry, seed=seed, options=opts, start=start)
    probe = probe if probe is not None else probe_from_geometry(geometry)
    stage = XYZStage(name="stage", labels={"motors"})
    stage.attach(model, time_scale)
    pstat = SimBipotentiostat(name="pstat", probe=probe, labels={"detectors"})
    pstat.attach(model, time_scale)
    afm = None
    if technique == "EC-AFM":
        afm = ECAFMHead(name="afm", probe=probe, labels={"detectors"})
        afm.attach(model, time_scale)
    hopper = None
    if technique in ("SICM", "SECCM"):
        hopper = SimHopController(name="hopper", stage=stage, potentiostat=pstat)
        hopper.attach(model, time_scale)
    return SimBench(technique, stage, pstat, probe, model, time_scale, afm, hopper)
