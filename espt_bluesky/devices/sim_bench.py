"""``make_sim_bench``: one simulated instrument (stage, bipotentiostat, probe, AFM head) over one bench model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, check_choice, check_range
from ..physics.bench_model import TECHNIQUES, BenchModel, BenchOptions, default_probe
from ..physics.sample import PRESETS
from .afm import ECAFMHead
from .hopper import SimHopController
from .potentiostat import SimBipotentiostat
from .probes import Probe, probe_from_geometry
from .stage import XYZStage


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


def make_sim_bench(technique: str = "SECM", sample: str = "patterned", seed: int = 0, time_scale: float = 0.0,
                   *, probe: Probe | None = None, start: tuple[float, float] = (50.0, 50.0),
                   **options: Any) -> SimBench:
    """Build a simulated bench for one technique over one sample.

    Parameters
    ----------
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    sample : {"patterned", "hopg", "composite_cathode", "si_film"}
    seed : int
        Seeds the sample's random features and every noise source.
    time_scale : float
        0 runs instantly; 1 sleeps for the instrument time of every move and measurement.
    probe : Probe, optional
        A ``UME``, ``Nanopipette`` or ``AFMCantilever``; defaults to the usual probe of the technique.
    start : (x, y), µm
        Lateral start position; the tip starts one probe radius above the surface (L = 1).
    **options
        Fields of :class:`~espt_bluesky.physics.bench_model.BenchOptions`: ``noise`` (relative, 0 = off),
        ``drift`` (µm/s, x/y/z), ``tilt`` (degrees, x/y), ``substrate_area`` (m²), ``ion_bias`` (V),
        ``conductivity`` (S/m), ``meniscus_height`` (µm) ...

    Examples
    --------
    >>> bench = make_sim_bench("SECM", "patterned", seed=1)
    >>> RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 0, 100, 21, bench.stage.x, 0, 100, 21))
    """
    technique = check_choice("technique", technique, TECHNIQUES)
    sample = check_choice("sample", sample, PRESETS)
    check_range("time_scale", time_scale, 0.0, 1e3)
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise InvalidArgument(f"unknown bench option(s) {sorted(unknown)}; allowed: {sorted(_OPTION_NAMES)}")
    opts = BenchOptions(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()})
    geometry = probe.geometry() if probe is not None else default_probe(technique)
    expected = {"SECM": "UME", "SICM": "Nanopipette", "SECCM": "Nanopipette", "EC-AFM": "AFMCantilever"}[technique]
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
