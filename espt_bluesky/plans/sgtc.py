"""Substrate generation / tip collection (SG/TC)."""

import math
from typing import Any, Generator, Mapping, Sequence

import bluesky.plan_stubs as bps
from bluesky.protocols import Configurable, Readable

from ..errors import InvalidArgument, check_choice, check_keys, check_number, check_samples_cap
from ._common import (cell_on, check_points, check_potential, check_step, check_z, checked_plan,
                      configure_technique, managed_run, probe_of, put_values, set_potential, soft_signals)
from .imaging import _as_plane, _move_xyz, _validate_technique_params
from .metadata import build_start_md


@checked_plan(("SECM",))
def sgtc(stage: Readable, potentiostat: Readable, *, tip_potential: float, sweep: Mapping[str, Any] | None = None,
         steps: Sequence[float] | None = None, hold_time: float = 5.0, locations: Sequence | None = None,
         height: float | None = None, plane: Any = None, n_samples: int = 300, technique: str = "SECM",
         probe: Configurable | None = None, retract: float = 20.0, context: Any = None, sample_md: dict | None = None,
         md: dict | None = None) -> Generator[Any, Any, None]:
    """Tip held at its collection potential while the substrate potential is swept or stepped.

    E.g. O2 released by a charging cathode collected by oxygen reduction at the tip (tip below ~2.7 V vs Li+/Li,
    substrate swept through 4.3–4.8 V).  Each event holds the full substrate waveform; the tip (collector)
    current is ``pstat_wf_collector_current``.

    Parameters
    ----------
    tip_potential : float, V
        Collection potential of the tip (within compliance).
    sweep : dict, optional
        Substrate sweep: ``{"technique": "LSV", "e_start": 3.7, "e_end": 4.8, "scan_rate": 0.01}`` or a CV
        (``e_start``, ``e_vertex1``, ``e_vertex2``, ``scan_rate``, ``n_cycles``).
    steps : list of float, V, optional
        Substrate potential steps instead of a sweep, each held for ``hold_time`` s (one event per step, with
        ``step_potential``).
    locations : list of (x, y), µm, optional
        Where to measure (default: where the tip is); at each the tip goes to ``plane + height``.
    height : float, µm
        Tip height above ``plane`` (a PlaneFit from ``measure_tilt`` or a height in µm); needed with locations.
    n_samples : int
        Samples per waveform (fixed for the stream).

    Examples
    --------
    >>> bench = make_sim_bench("SECM", "composite_cathode")
    >>> RE(sgtc(bench.stage, bench.potentiostat, tip_potential=2.5, locations=[(60, 56.7), (30, 75)],
    ...         height=10.0, plane=0.0, sweep=dict(technique="LSV", e_start=3.7, e_end=4.8, scan_rate=0.01)))
    """
    tip_potential = check_potential(potentiostat, "tip_potential", tip_potential)
    n_samples = check_samples_cap("n_samples", n_samples)
    if (sweep is None) == (steps is None):
        raise InvalidArgument("give exactly one of sweep= (a substrate LSV/CV) or steps= (potentials in V)")
    programs = []
    if sweep is not None:
        sweep = check_keys("sweep", sweep, required=["technique"],  # n_samples is the plan's own argument
                           optional=set(potentiostat.params.component_names) - {"n_samples"})
        tech = check_choice("sweep['technique']", sweep["technique"], ("LSV", "CV"))
        p = {k: v for k, v in sweep.items() if k != "technique"}
        p["n_samples"] = n_samples
        _validate_technique_params(potentiostat, tech, p, "sweep")
        programs.append((tech, p, math.nan))
    else:
        hold_time = check_number("hold_time", hold_time, 0.0, math.inf, low_inclusive=False, units="s")
        if isinstance(steps, (str, bytes, Mapping)) or not hasattr(steps, "__len__"):
            raise InvalidArgument(f"steps={steps!r} must be a list of potentials in V")
        if len(steps) == 0:
            raise InvalidArgument("steps=[] is empty; give at least one potential in V")
        for e in steps:
            e = check_potential(potentiostat, "steps", e)
            programs.append(("CA", dict(e_hold=e, duration=float(hold_time), n_samples=n_samples), e))
    if locations is not None:
        xs, ys = check_points(stage, "locations", locations)
        if height is None or plane is None:
            raise InvalidArgument("locations need height= (µm above the plane) and plane= (PlaneFit or z in µm)")
        height = check_number("height", height, 0.0, math.inf, low_inclusive=False, units="µm")
        pl = _as_plane("plane", plane)
        zs = check_z(stage, "plane + height", pl.z_at(xs, ys) + float(height))
    else:
        xs = ys = zs = None
    check_step("retract", retract)
    args = dict(tip_potential=tip_potential, sweep=sweep, steps=steps, hold_time=hold_time, locations=locations,
                height=height, plane=plane if not hasattr(plane, "as_dict") else plane.as_dict(),
                n_samples=n_samples)
    start_md = build_start_md("sgtc", args, technique=technique, mode="SG/TC", probe=probe_of(potentiostat, probe),
                              context=context, sample_md=sample_md, md=md,
                              map_keys=(stage.x.name, stage.y.name) if locations is not None else None,
                              order="points" if locations is not None else None,
                              hints={"dimensions": [[[potentiostat.wf.potential.name], "primary"]]},
                              extra={"collector": "tip", "generator": "substrate"})

    def body():
        yield from cell_on(potentiostat)
        yield from set_potential(potentiostat.tip, tip_potential)
        sigs = soft_signals(location_index=(0, ""), step_potential=(math.nan, "V"))
        locs = [(None, None, None)] if xs is None else list(zip(xs, ys, zs))
        for li, (x, y, z) in enumerate(locs):
            if x is not None:
                yield from _move_xyz(stage, float(x), float(y), float(z))
            for tech, p, e in programs:
                yield from bps.checkpoint()
                yield from configure_technique(potentiostat, tech, channel="substrate", **p)
                put_values(sigs, location_index=li, step_potential=e)
                yield from bps.trigger_and_read([potentiostat, stage.x, stage.y, stage.z, *sigs.values()])

    yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                           stage_devices=[potentiostat])
