"""Hopping scans (SICM, SECCM): approach at each point, measure, retract by the hop height, move on."""

from __future__ import annotations

from typing import Any, Generator, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps

from ..errors import InvalidArgument, check_bool, check_choice, check_int, check_keys
from ._common import (cell_on, check_points, check_step, check_xy, checked_plan, grid_points, managed_run, probe_of,
                      put_values, soft_signals)
from .approach import approach_stub, make_approach_spec
from .imaging import _validate_technique_params
from .metadata import build_start_md

MEASURE_TECHNIQUES = ("CV", "CA", "LSV", "READ")
ORDERS = ("grid", "points", "random")


def scan_points(stage: Any, *, x_range=None, y_range=None, points=None, order: str = "grid", snake: bool = True,
                seed: int | None = None) -> dict[str, Any]:
    """Hop positions (validated against the stage limits) and the map metadata that goes with them.

    ``order="grid"``: a (y slow, x fast) grid from ``x_range``/``y_range`` = (start, stop, num), snake or raster;
    ``"random"``: the same grid visited in a seeded random order; ``"points"``: an explicit list of (x, y) µm.
    """
    order = check_choice("order", order, ORDERS)
    snake = check_bool("snake", snake)
    out: dict[str, Any] = {}
    if order == "points":
        if points is None:
            raise InvalidArgument("points=None: order='points' needs a list of (x, y) in µm")
        xs, ys = check_points(stage, "points", points)
        out.update(map_order="points")
    else:
        if x_range is None or y_range is None:
            raise InvalidArgument(f"order={order!r} needs x_range and y_range as (start, stop, num)")
        xs, ys, shape, extents = grid_points(x_range, y_range, snake=(snake and order == "grid"))
        if order == "random":
            if seed is None:
                raise InvalidArgument("seed=None: order='random' needs an integer seed (reproducible order)")
            perm = np.random.default_rng(check_int("seed", seed, 0, 2**63 - 1)).permutation(xs.size)
            xs, ys = xs[perm], ys[perm]
            out.update(map_order="random", shape=shape, extents=extents)
        else:
            out.update(map_order="snake" if snake else "raster", shape=shape, extents=extents,
                       snaking=(False, bool(snake)))
    xs, ys = check_xy(stage, "points" if order == "points" else "x_range/y_range", xs, ys)
    out.update(x=xs, y=ys)
    return out


def _measure_spec(potentiostat, technique, measure):
    if measure is None:
        return None
    measure = check_keys("measure", measure, required=["technique"],
                         optional=["channel", *potentiostat.params.component_names])
    tech = check_choice("measure['technique']", measure["technique"], MEASURE_TECHNIQUES)
    channel = measure.get("channel", "substrate" if technique == "SECCM" else "tip")
    channel = check_choice("measure['channel']", channel, ("tip", "substrate"))
    params = {k: v for k, v in measure.items() if k not in ("technique", "channel")}
    if tech != "READ":
        params.setdefault("n_samples", 200)
    _validate_technique_params(potentiostat, tech, params, "measure")
    return dict(technique=tech, channel=channel, params=params)


@checked_plan(("SICM", "SECCM"))
def hopping_scan(stage: Any, potentiostat: Any, *, technique: str, x_range: tuple | None = None,
                 y_range: tuple | None = None, points: Sequence | None = None, order: str = "grid",
                 snake: bool = True, seed: int | None = None, hop_height: float = 2.0,
                 approach_step: float | None = None, max_travel: float = 20.0, drop: float = 0.01,
                 contact_current: float = 5e-13, stop_offset: float = 0.0, measure: Mapping | None = None,
                 mode: str = "device", hopper: Any = None, probe: Any = None, retract: float | None = None,
                 context: Any = None, sample_md: dict | None = None,
                 md: dict | None = None) -> Generator[Any, Any, np.ndarray]:
    """Hopping SICM/SECCM map: at each point approach to the setpoint/contact, measure, retract, move on.

    Parameters
    ----------
    technique : {"SICM", "SECCM"}
    x_range, y_range : (start, stop, num), µm
        Grid for ``order="grid"`` (snake or raster) or ``"random"`` (seeded random visiting order).
    points : list of (x, y), µm
        Explicit points for ``order="points"``.
    hop_height : float, µm
        Retract after every hop (must clear the topography between neighbouring points).
    approach_step : float, µm
        Approach step (default: a quarter of the SICM setpoint distance; 0.2 pipette radii for SECCM).
    drop : float
        SICM setpoint: relative ion-current drop (0.001–0.5, typically 0.005–0.02).
    contact_current : float, A
        SECCM: |substrate current| that signals meniscus contact.
    stop_offset : float, µm
        SECCM: subtracted from the landing height to give the surface height (default 0: the landing height).
    measure : dict, optional
        A waveform per hop: ``{"technique": "CV"|"CA"|"LSV", **potentiostat parameters}`` (``n_samples`` fixes
        the waveform length, default 200), or None for the ion/surface current at the setpoint.
    mode : {"device", "plan"}
        ``"device"``: the hop is one triggered action of ``hopper`` (a controller that hops in firmware, e.g.
        ``bench.hopper``); ``"plan"``: approach/measure/retract driven step by step from the plan (any hardware);
        its approach curves go to the ``approach`` stream.

    Returns
    -------
    numpy.ndarray
        Surface height (µm) of every hop, in visiting order (also recorded per event: ``hopper_surface_z`` in
        device mode, ``surface_z`` in plan mode; ``map`` in the start document names the x/y keys).

    Examples
    --------
    >>> bench = make_sim_bench("SICM", "composite_cathode"); RE(bps.mv(bench.stage.z, 8.0))
    >>> topo = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(20, 40, 11),
    ...                        y_range=(20, 40, 11), hop_height=8.0, hopper=bench.hopper)).plan_result
    """
    technique = check_choice("technique", technique, ("SICM", "SECCM"))
    mode = check_choice("mode", mode, ("device", "plan"))
    pts = scan_points(stage, x_range=x_range, y_range=y_range, points=points, order=order, snake=snake, seed=seed)
    hop_height = check_step("hop_height", hop_height)
    if approach_step is not None:
        approach_step = check_step("approach_step", approach_step)
    meas = _measure_spec(potentiostat, technique, measure)
    spec = make_approach_spec(stage, potentiostat, technique=technique, probe=probe, drop=drop,
                              contact_current=contact_current, working_distance=None, fine_step=approach_step,
                              coarse_step=approach_step, max_travel=max_travel, stop_offset=stop_offset)
    if mode == "device" and hopper is None:
        raise InvalidArgument("hopper=None with mode='device': pass the hopping controller (bench.hopper) or "
                              "use mode='plan'")
    retract = check_step("retract", max(hop_height, 2.0) if retract is None else retract)
    pr = probe_of(potentiostat, probe)
    xs, ys = pts["x"], pts["y"]
    if mode == "device":
        keys = (hopper.x.name, hopper.y.name)
        topo_key = hopper.surface_z.name
    else:
        keys = (stage.x.name, stage.y.name)
        topo_key = "surface_z"
    args = dict(technique=technique, x_range=x_range, y_range=y_range, points=points, order=order, snake=snake,
                seed=seed, hop_height=hop_height, approach_step=spec.fine_step, max_travel=max_travel, drop=drop,
                contact_current=contact_current, stop_offset=stop_offset, measure=measure, mode=mode)
    start_md = build_start_md("hopping_scan", args, technique=technique, mode="hopping", probe=pr, context=context,
                              sample_md=sample_md, md=md, map_keys=keys, order=pts["map_order"],
                              shape=pts.get("shape"), extents=pts.get("extents"), snaking=pts.get("snaking"),
                              hints={"dimensions": [[[keys[1]], "primary"], [[keys[0]], "primary"]]},
                              extra={"topography_key": topo_key, "hop_mode": mode,
                                     "setpoint_distance": spec.stop_distance, "num_points": int(xs.size)})

    def configure_measure():
        if meas is not None:
            potentiostat.configure_technique(meas["technique"], channel=meas["channel"], **meas["params"])
        else:
            potentiostat.configure_technique("READ", channel="tip")

    def device_body():
        hopper.configure_hop(criterion="current_drop" if technique == "SICM" else "contact",
                             setpoint=drop if technique == "SICM" else contact_current, hop_height=hop_height,
                             approach_step=spec.fine_step, max_travel=max_travel,
                             stop_offset=spec.stop_distance if technique == "SICM" else spec.stop_offset,
                             measure=meas is not None)
        yield from cell_on(potentiostat)
        configure_measure()
        topo = []
        for x, y in zip(xs, ys):
            yield from bps.checkpoint()
            yield from bps.mv(hopper, (float(x), float(y)))
            r = yield from bps.trigger_and_read([hopper])
            topo.append(r[hopper.surface_z.name]["value"])
        return np.asarray(topo)

    def plan_body():
        yield from cell_on(potentiostat)
        sigs = soft_signals(surface_z=(0.0, "um"), contact_z=(0.0, "um"))
        topo = []
        last = None
        for x, y in zip(xs, ys):
            yield from bps.checkpoint()
            if last is not None:
                yield from bps.mv(stage.z, max(last + hop_height, float(stage.z.position)))
            yield from bps.mv(stage.x, float(x), stage.y, float(y))
            res = yield from approach_stub(stage, potentiostat, spec, stream="approach", park=False)
            last = res["stop_z"]
            put_values(sigs, surface_z=res["surface_z"], contact_z=res["stop_z"])
            configure_measure()
            yield from bps.trigger_and_read([potentiostat, stage.x, stage.y, *sigs.values()])
            topo.append(res["surface_z"])
            yield from bps.mv(stage.z, last + hop_height)
        return np.asarray(topo)

    body = device_body() if mode == "device" else plan_body()
    return (yield from managed_run(body, md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                                   stage_devices=[potentiostat]))
