"""Tilt measurement, constant-height (tilt-corrected) imaging and operando imaging."""

import dataclasses
import inspect
import math
from typing import Any, Generator, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps
from bluesky.protocols import Configurable, Readable

from ..analysis.plane import PlaneFit, fit_plane, flat_plane
from ..analysis.voltammetry import charge_passed
from ..errors import InvalidArgument, check_choice, check_int, check_keys, check_number, check_points_cap
from ._common import (cell_on, check_points, check_potential, check_step, check_xy, check_z, checked_plan,
                      configure_technique, grid_points, managed_run, probe_of, put_values, set_potential, simulated,
                      soft_signals)
from .approach import approach_stub, make_approach_spec
from ._detectors import check_detectors

#: Keys of a plane given as a dict (``PlaneFit.as_dict()`` has them all): the geometry is required.
PLANE_KEYS = ("z0", "slope_x", "slope_y", "x0", "y0")
from .metadata import build_start_md


def _as_plane(name: str, plane: Any) -> PlaneFit:
    """A PlaneFit from a PlaneFit, a dict of its fields, or a number (a horizontal plane at that z, µm)."""
    if isinstance(plane, PlaneFit):
        return plane
    if isinstance(plane, Mapping):
        fields = {f.name: 0.0 for f in dataclasses.fields(PlaneFit)}
        given = check_keys(name, plane, required=PLANE_KEYS, optional=fields)
        for k, v in given.items():
            fields[k] = check_int(f"{name}['{k}']", v, 0, math.inf) if k == "n_points" else \
                check_number(f"{name}['{k}']", v)
        if "tilt_x_deg" not in given:  # the same convention as fit_plane
            fields.update(tilt_x_deg=math.degrees(math.atan(fields["slope_x"])),
                          tilt_y_deg=math.degrees(math.atan(fields["slope_y"])))
        fields["n_points"] = int(fields["n_points"])
        return PlaneFit(**fields)
    if isinstance(plane, (int, float, np.floating, np.integer)) and not isinstance(plane, bool):
        return flat_plane(check_number(name, plane, units="µm"))
    raise InvalidArgument(f"{name}={plane!r} must be a PlaneFit (from measure_tilt), its dict, or a height in µm")


#: measure_tilt's **approach_kwargs: make_approach_spec's keywords it does not set itself
_APPROACH_KWARGS = [n for n, p in inspect.signature(make_approach_spec).parameters.items()
                    if p.kind == p.KEYWORD_ONLY and n not in ("technique", "probe", "afm")]


@checked_plan()
def measure_tilt(stage: Readable, potentiostat: Readable, points: Sequence[tuple[float, float]], *, technique: str,
                 lift: float | None = None, probe: Configurable | None = None, afm: Readable | None = None, retract: float | None = None,
                 context: Any = None, sample_md: dict | None = None, md: dict | None = None,
                 **approach_kwargs: Any) -> Generator[Any, Any, PlaneFit]:
    """Approach at three or more points and fit the sample plane.

    The first approach starts from the present height (far from the surface: it reads the reference current
    there); each later point is reached by lifting ``lift`` µm above the last surface found, moving laterally,
    and approaching again with the same reference.  The least-squares plane comes from
    :func:`espt_bluesky.analysis.plane.fit_plane`.

    Parameters
    ----------
    points : sequence of (x, y), µm
        At least three points, not collinear, inside the stage limits.
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    lift : float, µm
        Lift between points (default 5 probe radii, at least 2 µm); must clear the topography and tilt.
    **approach_kwargs
        Passed to :func:`~espt_bluesky.plans.approach.approach` (``feedback``, ``threshold``, ``drop`` ...).

    Returns
    -------
    PlaneFit
        Slopes, tilt angles (degrees) and uncertainties; also written to the ``tilt`` stream.  The surface
        heights are in the primary stream (``stage_x``, ``stage_y``, ``surface_z``).

    Examples
    --------
    >>> bench = make_sim_bench("SECM", "patterned", tilt=(0.5, -0.3)); RE(bps.mv(bench.stage.z, 250))
    >>> plane = RE(measure_tilt(bench.stage, bench.potentiostat, [(35, 35), (65, 35), (35, 65), (65, 65)],
    ...                         technique="SECM", feedback="negative")).plan_result
    """
    xs, ys = check_points(stage, "points", points, min_points=3)
    pts = np.column_stack([xs, ys])
    if np.linalg.matrix_rank(np.column_stack([np.ones_like(xs), xs - xs.mean(), ys - ys.mean()])) < 3:
        raise InvalidArgument(f"points={pts.tolist()!r} are collinear: a plane is undetermined")
    check_keys("approach_kwargs", approach_kwargs, optional=_APPROACH_KWARGS)
    approach_kwargs.setdefault("working_distance", 1.0)
    # a tilt needs height differences, not heights: the fixed-threshold stop reads every point on the same part
    # of the same curve, so a kinetic offset cancels and the steep slope gives the best repeatability
    approach_kwargs.setdefault("strategy", "threshold")
    spec = make_approach_spec(stage, potentiostat, technique=technique, probe=probe, afm=afm, **approach_kwargs)
    lift = check_step("lift", max(5.0 * spec.radius, 2.0) if lift is None else lift)
    retract = check_step("retract", max(5.0 * spec.radius, 2.0) if retract is None else retract)
    pr = probe_of(potentiostat, probe, afm)
    args = dict(points=pts, technique=technique, lift=lift, **approach_kwargs)
    start_md = build_start_md("measure_tilt", args, technique=spec.technique, mode="tilt", probe=pr,
                              context=context, sample_md=sample_md, md=md,
                              map_keys=(stage.x.name, stage.y.name), order="points",
                              hints={"dimensions": [[[stage.x.name, stage.y.name], "primary"]]})

    def body():
        sigs = soft_signals(surface_z=(0.0, "um"), surface_z_err=(0.0, "um"))
        zs, s = [], spec
        for i, (x, y) in enumerate(zip(xs, ys)):
            if i > 0:
                yield from bps.mv(stage.z, zs[-1] + lift)
            yield from bps.mv(stage.x, float(x), stage.y, float(y))
            res = yield from approach_stub(stage, potentiostat, s, afm=afm, stream="approach", park=True)
            if s.reference_current is None and math.isfinite(res["reference_current"]):
                s = dataclasses.replace(s, reference_current=res["reference_current"])
            zs.append(res["surface_z"])
            put_values(sigs, surface_z=res["surface_z"], surface_z_err=res["surface_z_err"])
            yield from bps.trigger_and_read([stage.x, stage.y, *sigs.values()])
        plane = fit_plane(xs, ys, zs)
        tsig = soft_signals(**{k: (float(v), "deg" if "deg" in k else ("um" if k.startswith("z0") else ""))
                               for k, v in plane.as_dict().items() if k != "n_points"})
        yield from bps.trigger_and_read(list(tsig.values()), name="tilt")
        return plane

    return (yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                                   stage_devices=[potentiostat], retract_on_success=True))


def _validate_image(stage, potentiostat, x_range, y_range, height, plane, snake, tip_potential):
    xs, ys, shape, extents = grid_points(x_range, y_range, snake=snake)
    check_xy(stage, "x_range/y_range", xs, ys)
    height = check_number("height", height, 0.0, math.inf, low_inclusive=False, units="µm")
    pl = _as_plane("plane", plane)
    zs = pl.z_at(xs, ys) + float(height)
    check_z(stage, "plane + height", zs)
    if tip_potential is not None:
        tip_potential = check_potential(potentiostat, "tip_potential", tip_potential)
    return xs, ys, zs, shape, extents, pl, tip_potential


def _move_xyz(stage, x, y, z):
    """Move to (x, y, z) going up first and down last, so the tip never sweeps laterally below its target."""
    if z >= stage.z.position:
        yield from bps.mv(stage.z, z)
        yield from bps.mv(stage.x, x, stage.y, y)
    else:
        yield from bps.mv(stage.x, x, stage.y, y)
        yield from bps.mv(stage.z, z)


def _image(stage, potentiostat, xs, ys, zs, extra=()):
    for x, y, z in zip(xs, ys, zs):
        yield from bps.checkpoint()
        yield from _move_xyz(stage, float(x), float(y), float(z))
        yield from bps.trigger_and_read([potentiostat, stage.x, stage.y, stage.z, *extra])


def _prepare_read(potentiostat, tip_potential):
    yield from configure_technique(potentiostat, "READ", channel="tip")
    if tip_potential is not None:
        yield from set_potential(potentiostat.tip, tip_potential)
    yield from cell_on(potentiostat)


#: constant-height imaging reads the tip current: SECM feedback or SICM ion current
IMAGING_TECHNIQUES = ("SECM", "SICM")


@checked_plan(IMAGING_TECHNIQUES)
def constant_height_image(stage: Readable, potentiostat: Readable, *, x_range: tuple[float, float, int],
                          y_range: tuple[float, float, int], height: float, plane: Any,
                          tip_potential: float | None = None, snake: bool = True, technique: str = "SECM",
                          probe: Configurable | None = None, retract: float = 20.0, context: Any = None,
                          sample_md: dict | None = None, detectors: Sequence[Readable] | None = None, md: dict | None = None) -> Generator[Any, Any, None]:
    """Raster at a fixed distance above the sample plane (tilt-corrected), reading the tip current per point.

    Parameters
    ----------
    x_range, y_range : (start, stop, num)
        Grid in µm; y is the slow axis.
    height : float, µm
        Tip–plane distance at every point (> 0).
    plane : PlaneFit, dict or float
        The plane from :func:`measure_tilt` (tilt-corrected), or a height in µm (no tilt correction).
    tip_potential : float, V, optional
        Tip potential for the reading (within the potentiostat's compliance); default: as set.
    snake : bool
        Snake (boustrophedon) or raster order.
    detectors : list of devices, optional
        Extra detectors (e.g. ``[xrf]``) read at every point.

    Notes
    -----
    Events carry ``stage_x``, ``stage_y``, ``stage_z`` and the potentiostat currents; the start document carries
    ``map``, ``shape``, ``extents``, ``snaking``, ``height`` and the plane.

    Examples
    --------
    >>> RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(5, 95, 19), y_range=(5, 95, 19),
    ...                          height=5.0, plane=plane))
    """
    xs, ys, zs, shape, extents, pl, tip_potential = _validate_image(stage, potentiostat, x_range, y_range,
                                                                    height, plane, snake, tip_potential)
    check_step("retract", retract)
    dets = check_detectors(detectors)
    args = dict(x_range=x_range, y_range=y_range, height=height, plane=pl, tip_potential=tip_potential,
                snake=snake, detectors=[d.name for d in dets])
    start_md = build_start_md("constant_height_image", args, technique=technique, mode="constant_height",
                              probe=probe_of(potentiostat, probe), context=context, sample_md=sample_md, md=md,
                              map_keys=(stage.x.name, stage.y.name), order="snake" if snake else "raster",
                              shape=shape, extents=extents, snaking=(False, bool(snake)),
                              hints={"dimensions": [[[stage.y.name], "primary"], [[stage.x.name], "primary"]]},
                              extra={"plane": pl.as_dict(), "height": float(height)})

    def body():
        yield from _prepare_read(potentiostat, tip_potential)
        yield from _image(stage, potentiostat, xs, ys, zs, extra=dets)

    yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                           stage_devices=[potentiostat, *dets])


CYCLE_TECHNIQUES = ("CV", "CP", "CA", "LSV")


@checked_plan(IMAGING_TECHNIQUES)
def operando_imaging(stage: Readable, potentiostat: Readable, *, x_range: tuple[float, float, int],
                     y_range: tuple[float, float, int], height: float, plane: Any, n_images: int,
                     cycle: Mapping[str, Any], tip_potential: float | None = None, snake: bool = True,
                     technique: str = "SECM", probe: Configurable | None = None, retract: float = 20.0, context: Any = None,
                     sample_md: dict | None = None, detectors: Sequence[Readable] | None = None, md: dict | None = None) -> Generator[Any, Any, None]:
    """Image the same region again and again while the substrate is cycled between images.

    After every image but the last, the substrate channel runs ``cycle`` once (e.g. a CV into the SEI region or a
    galvanostatic segment), recorded as one event of the ``cycle`` stream (full waveform).  Every image event
    carries ``image_index``, ``cycles_done``, ``substrate_potential_state`` (V, the last substrate potential
    before the image) and ``charge_passed`` (C, the cumulative substrate charge so far).

    Parameters
    ----------
    x_range, y_range, height, plane, tip_potential, snake
        As for :func:`constant_height_image`.
    n_images : int
        Number of images (>= 1).
    cycle : dict
        ``technique`` ("CV", "CP", "CA" or "LSV") plus potentiostat technique parameters (``e_start``,
        ``e_vertex1``, ``e_vertex2``, ``scan_rate``, ``n_cycles``, ``current_setpoint``, ``duration``,
        ``n_samples`` ...), validated against the potentiostat's compliance before anything moves.
    detectors : list of devices, optional
        Extra detectors (e.g. ``[raman]``) read at every point of every image.

    Examples
    --------
    >>> RE(operando_imaging(bench.stage, bench.potentiostat, x_range=(30, 70, 9), y_range=(30, 70, 9),
    ...                     height=5.0, plane=plane, n_images=3,
    ...                     cycle=dict(technique="CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, scan_rate=0.1)))
    """
    xs, ys, zs, shape, extents, pl, tip_potential = _validate_image(stage, potentiostat, x_range, y_range,
                                                                    height, plane, snake, tip_potential)
    n_images = check_int("n_images", n_images, 1, 10000)
    check_points_cap(f"n_images={n_images} × {xs.size} points per image", n_images * xs.size)
    check_step("retract", retract)
    dets = check_detectors(detectors)
    cycle = check_keys("cycle", cycle, required=["technique"], optional=potentiostat.params.component_names)
    cyc_tech = check_choice("cycle['technique']", cycle["technique"], CYCLE_TECHNIQUES)
    cyc_params = {k: v for k, v in cycle.items() if k != "technique"}
    cyc_params.setdefault("n_samples", 500)
    _validate_technique_params(potentiostat, cyc_tech, cyc_params, "cycle")
    args = dict(x_range=x_range, y_range=y_range, height=height, plane=pl, n_images=n_images, cycle=dict(cycle),
                tip_potential=tip_potential, snake=snake, detectors=[d.name for d in dets])
    start_md = build_start_md("operando_imaging", args, technique=technique, mode="operando",
                              probe=probe_of(potentiostat, probe), context=context, sample_md=sample_md, md=md,
                              map_keys=(stage.x.name, stage.y.name), order="snake" if snake else "raster",
                              shape=shape, extents=extents, snaking=(False, bool(snake)),
                              hints={"dimensions": [[[stage.y.name], "primary"], [[stage.x.name], "primary"]]},
                              extra={"plane": pl.as_dict(), "height": float(height),
                                     "stack": {"index": "image_index", "n_images": n_images}})

    def body():
        sigs = soft_signals(image_index=(0, ""), cycles_done=(0, ""), substrate_potential_state=(0.0, "V"),
                            charge_passed=(0.0, "C"))
        csig = soft_signals(cycle_index=(0, ""))
        charge = 0.0
        put_values(sigs, substrate_potential_state=float(potentiostat.substrate.potential.get()))
        for k in range(n_images):
            put_values(sigs, image_index=k, cycles_done=k, charge_passed=charge)
            yield from _prepare_read(potentiostat, tip_potential)
            yield from _image(stage, potentiostat, xs, ys, zs, extra=[*sigs.values(), *dets])
            if k == n_images - 1:
                break
            yield from configure_technique(potentiostat, cyc_tech, channel="substrate", **cyc_params)
            put_values(csig, cycle_index=k)
            r = yield from bps.trigger_and_read([potentiostat, *csig.values()], name="cycle")
            if simulated(r):  # a preview (summarize_plan): no waveform to integrate
                continue
            # the waveform just recorded (not in the reading when it went to an external asset)
            t = np.asarray((yield from bps.rd(potentiostat.wf.time)))
            i = np.asarray((yield from bps.rd(potentiostat.wf.current)))
            e = np.asarray((yield from bps.rd(potentiostat.wf.potential)))
            charge += charge_passed(t, i)  # substrate charge of this segment (C)
            put_values(sigs, substrate_potential_state=float(e[-1]))

    yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                           stage_devices=[potentiostat, *dets])


def _validate_technique_params(potentiostat, technique, params, name):
    """The potentiostat's own check of a technique given as the dict argument ``name`` (named in the error)."""
    try:
        potentiostat.check_technique(technique, **params)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc}") from None
