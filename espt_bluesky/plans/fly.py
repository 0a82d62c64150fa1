"""Fly scanning: continuous-motion images and controller-side hop sequences (ophyd-async flyers).

:func:`fly_image` loads a raster of bidirectional passes at constant speed into the fly stage, kicks the stage and
the sampling detector off together and collects the detector's HDF5 assets (StreamResource/StreamDatum: one event
per pass) while they run.  :func:`fly_hops` does the same for a whole line or grid of SICM hops executed by the
controller as one kickoff/complete.  Both validate every argument before the first message that moves anything,
and end like every plan here: tip retracted, cell at open circuit, every pass recorded so far collected.
"""


import logging
import math
from functools import partial
from typing import Any, Generator, Sequence

import numpy as np
import bluesky.plan_stubs as bps
from bluesky.utils import short_uid
from bluesky.protocols import Configurable, Readable

from ..devices.fly.trajectory import FlyRaster, HopSequence
from ..devices.fly.devices import trigger_info_for
from ..errors import InvalidArgument, check_bool, check_number, check_range
from ._common import (cell_on, check_potential, check_step, check_xy, check_z, checked_plan, configure_technique,
                      managed_run, probe_of, set_potential)
from .hopping import scan_points
from .imaging import _as_plane
from .metadata import build_start_md

logger = logging.getLogger(__name__)

FLY_TECHNIQUES = ("SECM", "SICM", "EC-AFM")
#: Points per fly image row/column accepted (pixels); the samples are bounded separately by the detector's rate
MAX_PIXELS = 4096


def _check_fly_devices(fly_stage: Any, fly_detector: Any) -> Any:
    ctl = getattr(fly_stage, "controller", None)
    if ctl is None or not hasattr(fly_stage, "kickoff"):
        raise InvalidArgument(f"fly_stage={fly_stage!r} is not a fly stage (make_fly_devices(bench, directory))")
    if not (hasattr(fly_detector, "kickoff") and hasattr(fly_detector, "collect_asset_docs")):
        raise InvalidArgument(f"fly_detector={fly_detector!r} is not a fly detector")
    return ctl


def _range3(name: str, r: Any, min_num: int) -> tuple[float, float, int]:
    if not isinstance(r, (tuple, list)) or len(r) != 3:
        raise InvalidArgument(f"{name}={r!r} must be (start, stop, num) in µm")
    start, stop = check_number(f"{name} start", r[0], units="µm"), check_number(f"{name} stop", r[1], units="µm")
    num = r[2]
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or not (min_num <= num <= MAX_PIXELS):
        raise InvalidArgument(f"{name} num={num!r} must be an integer in [{min_num}, {MAX_PIXELS}]")
    if num > 1 and start == stop:
        raise InvalidArgument(f"{name}={tuple(r)!r}: start equals stop with num={num}; the step is zero")
    return float(start), float(stop), int(num)


def fly_lag(fly_stage: Any, speed: float, height: float | None = None) -> dict[str, Any]:
    """What the bench reports about scanning at ``speed`` (µm/s): the probe's time constants (s), the mean lag
    v·Στ (µm) and the speed at which the lag equals one µm."""
    taus = tuple(float(t) for t in fly_stage.controller.time_constants(height))
    total = sum(taus)
    return dict(time_constants=list(taus), lag=abs(speed) * total,
                speed_per_um_lag=(math.inf if total == 0 else 1.0 / total))


def _fly_map(det: str, order: str, extra: dict) -> dict[str, Any]:
    """The start document's ``map`` and ``hints`` of a fly run, naming the data keys recorded.

    The detector records the positions grouped (``<det>_position``, its data key's ``axes`` naming the
    components), so ``map`` names that key for x and y with the component of each (``x_axis``, ``y_axis``;
    :func:`espt_bluesky.storage.maps.fly_channels` splits them), and the scan's one independent variable in
    ``hints["dimensions"]`` is that key."""
    pos = f"{det}_position"
    return dict(map_keys=(pos, pos), order=order, hints={"dimensions": [[[pos], "primary"]]},
                extra={**extra, "map": {"x": pos, "x_axis": "x", "y": pos, "y_axis": "y", "order": order}})


#: Seconds between two collects of a running fly scan (what reaches the documents, the live map and Tiled)
FLUSH_PERIOD = 0.5
#: Seconds before the first collect; the wait doubles up to ``FLUSH_PERIOD``
FIRST_FLUSH = 0.02


def _collect_while_completing(fly_stage, fly_detector, stream: str):
    """Complete the stage and detector, collecting the detector every ``FLUSH_PERIOD`` s meanwhile; the first
    collects come sooner (``FIRST_FLUSH`` s, doubling): the run's stream resources, and with them its nodes in
    Tiled, appear as soon as the first pass is in the file, while the scan goes on, not after it.  (A collect with
    nothing new emits nothing.)"""
    group = short_uid("complete")
    yield from bps.complete_all(fly_stage, fly_detector, group=group, wait=False)
    period, done = FIRST_FLUSH, False
    while not done:
        done = yield from bps.wait(group=group, timeout=period, error_on_timeout=False)
        yield from bps.collect(fly_detector, name=stream)
        period = min(2.0 * period, FLUSH_PERIOD)


def _collect_run(fly_stage, fly_detector, program, stream: str = "primary"):
    """Prepare, kick off and collect until complete; on failure collect what was written before re-raising."""
    yield from bps.prepare(fly_stage, program, wait=True)
    yield from bps.prepare(fly_detector, trigger_info_for(program), wait=True)
    yield from bps.declare_stream(fly_detector, name=stream, collect=True)
    yield from bps.kickoff_all(fly_stage, fly_detector, wait=True)
    try:
        yield from _collect_while_completing(fly_stage, fly_detector, stream)
    except Exception:
        # a failure or a user's stop: data is never silently dropped.  The flight is halted and the detector
        # writes what was done first (unstaging would do both only after this last collect, leaving passes in the
        # file that no event points to), then every pass in the file is registered before the error
        yield from bps.wait_for([partial(_halt, fly_stage, fly_detector)])
        yield from bps.collect(fly_detector, name=stream)
        raise
    yield from bps.collect(fly_detector, name=stream)


async def _halt(fly_stage, fly_detector) -> None:
    """Halt the flight and wait for the detector to have written what was done (failures here are logged: the
    plan is already ending with its own error)."""
    for step in (getattr(fly_stage, "halt", None), getattr(fly_detector, "finish_writing", None)):
        if step is None:
            continue
        try:
            await step()
        except Exception:  # noqa: BLE001 - the plan's own error is the one to raise
            logger.exception("fly plan cleanup: %s failed", getattr(step, "__qualname__", step))


def _connect(*devices):
    from ophyd_async.plan_stubs import ensure_connected

    yield from ensure_connected(*devices)


@checked_plan(FLY_TECHNIQUES)
def fly_image(fly_stage: Any, fly_detector: Any, stage: Readable, potentiostat: Readable, *,
              x_range: tuple[float, float, int], y_range: tuple[float, float, int], speed: float,
              sample_rate: float, technique: str = "SECM", height: float | None = None, plane: Any = None,
              tip_potential: float | None = None, bidirectional: bool = True, max_lag: float | None = None,
              probe: Configurable | None = None, retract: float = 20.0, context: Any = None,
              sample_md: dict | None = None, md: dict | None = None) -> Generator[Any, Any, dict]:
    """Continuous (fly) image: every row scanned forward and backward at constant ``speed`` while the detector
    samples at ``sample_rate``.

    Parameters
    ----------
    fly_stage, fly_detector
        From :func:`~espt_bluesky.devices.fly.make_fly_devices` (ophyd-async devices).
    stage, potentiostat
        The bench's ophyd stage (soft limits, the retract at the end) and potentiostat (tip potential, cell).
    x_range : (start, stop, num)
        The constant-speed part of every pass (µm) and the number of image pixels along x (>= 2).
    y_range : (start, stop, num)
        Rows (µm); ``num = 1`` is a single line scan.
    speed : float, µm/s
        Constant speed of the passes (> 0, at most the stage's fly limit).
    sample_rate : float, Hz
        Detector rate while the gate is open; at least one sample per pixel.
    technique : {"SECM", "SICM", "EC-AFM"}
        SECM/SICM: constant height above ``plane`` (tilt-corrected); EC-AFM: contact mode, the z feedback follows
        the surface (``height`` and ``plane`` not used).
    height : float, µm
        SECM/SICM: tip–plane distance (> 0).
    plane : PlaneFit, dict or float
        The sample plane from :func:`~espt_bluesky.plans.imaging.measure_tilt`, or a height in µm.
    max_lag : float, µm, optional
        Largest mean lag v·Στ of the probe's response accepted (default half a pixel); the plan refuses a faster
        speed before anything moves and names the speed that fits.  ``math.inf`` accepts any lag (the image is
        then blurred and forward/backward shifted; see :func:`espt_bluesky.analysis.fly.lag_correct`).

    Returns
    -------
    dict
        ``time_constants`` (s) and ``lag`` (µm) the bench reported for this scan.

    Notes
    -----
    One event per pass in the primary stream, all data external (HDF5): ``<det>_current`` (or ``_height`` and
    ``_error``) and ``<det>_time`` per sample, ``<det>_position`` (the encoder x, y, z of every sample, one
    (3, samples) array per pass) and ``<det>_pass`` (row, direction); few data keys, so few Tiled requests per
    run.  :func:`espt_bluesky.storage.read_map` returns forward and backward images on the µm grid;
    :func:`espt_bluesky.storage.maps.fly_channels` splits the grouped keys into ``_x``, ``_y``, ``_z``, ``_row``,
    ``_direction``.

    Examples
    --------
    >>> fly_stage, fly_det = make_fly_devices(bench, catalog.asset_dir)
    >>> RE(fly_image(fly_stage, fly_det, bench.stage, bench.potentiostat, x_range=(10, 90, 81),
    ...              y_range=(10, 90, 41), speed=20.0, sample_rate=1000.0, height=5.0, plane=0.0))
    """
    ctl = _check_fly_devices(fly_stage, fly_detector)
    if ctl.technique != technique:
        raise InvalidArgument(f"technique={technique!r} but the fly controller runs a {ctl.technique} bench")
    x0, x1, nx = _range3("x_range", x_range, 2)
    y0, y1, ny = _range3("y_range", y_range, 1)
    if x1 <= x0:
        raise InvalidArgument(f"x_range={tuple(x_range)!r}: start must be below stop (passes go both ways)")
    speed = check_number("speed", speed, 0.0, ctl.max_speed, low_inclusive=False, units="µm/s")
    sample_rate = check_number("sample_rate", sample_rate, 0.0, ctl.max_sample_rate, low_inclusive=False,
                               units="Hz")
    bidirectional = check_bool("bidirectional", bidirectional)
    retract = check_step("retract", retract)
    if technique == "EC-AFM":
        if height is not None or plane is not None:
            raise InvalidArgument("EC-AFM flies in contact (the z feedback follows the surface): leave height and "
                                  "plane as None")
        pl, z_height = None, None
        plane_t = (float(stage.z.position), 0.0, 0.0, 0.0, 0.0)
    else:
        if height is None or plane is None:
            raise InvalidArgument(f"{technique} fly imaging is at constant height: give height (µm) and plane "
                                  "(from measure_tilt, or a z in µm)")
        z_height = check_number("height", height, 0.0, math.inf, low_inclusive=False, units="µm")
        pl = _as_plane("plane", plane)
        plane_t = (pl.z0 + z_height, pl.slope_x, pl.slope_y, pl.x0, pl.y0)
    if tip_potential is not None:
        tip_potential = check_potential(potentiostat, "tip_potential", tip_potential)
    rows = tuple(np.linspace(y0, y1, ny).tolist())
    raster = FlyRaster(x0, x1, rows, speed, sample_rate, acceleration=ctl.acceleration, plane=plane_t,
                       bidirectional=bidirectional)
    if raster.samples_per_line < nx:
        raise InvalidArgument(
            f"sample_rate={sample_rate:g} Hz at speed={speed:g} µm/s gives {raster.samples_per_line} samples over "
            f"{x1 - x0:g} µm, fewer than the {nx} pixels: raise sample_rate to at least "
            f"{nx * speed / (x1 - x0):.4g} Hz or lower speed")
    xa, xb = raster.x_travel
    check_xy(stage, "x_range with the run-up/run-down", [xa, xb], [y0, y1])
    if pl is not None:
        corners_x, corners_y = np.array([xa, xb, xa, xb]), np.array([y0, y0, y1, y1])
        check_z(stage, "plane + height over the scanned area", raster.z_at(corners_x, corners_y))
    pixel = (x1 - x0) / (nx - 1)
    lag = fly_lag(fly_stage, speed, z_height)
    limit = 0.5 * pixel if max_lag is None else check_number("max_lag", max_lag, 0.0, math.inf, allow_inf=True, units="µm")
    if lag["lag"] > limit:
        fastest = limit * lag["speed_per_um_lag"]
        raise InvalidArgument(
            f"speed={speed:g} µm/s: the {technique} probe lags by v·Στ = {lag['lag']:.3g} µm "
            f"(τ = {', '.join(f'{t:.3g}' for t in lag['time_constants'])} s), more than max_lag={limit:.3g} µm; "
            f"allowed: speed <= {fastest:.4g} µm/s, or pass a larger max_lag (math.inf accepts any lag)")
    det = fly_detector.name
    fly_md = dict(detector=det, speed=speed, sample_rate=sample_rate, samples_per_line=raster.samples_per_line,
                  bidirectional=bidirectional, pixel=pixel, n_passes=raster.n_passes,
                  time_constants=lag["time_constants"], lag=lag["lag"], acceleration=ctl.acceleration,
                  signal=f"{det}_height" if technique == "EC-AFM" else f"{det}_current")
    args = dict(x_range=(x0, x1, nx), y_range=(y0, y1, ny), speed=speed, sample_rate=sample_rate,
                height=z_height, plane=pl, tip_potential=tip_potential, bidirectional=bidirectional,
                max_lag=max_lag)
    extra = {"fly": fly_md}
    if pl is not None:
        extra.update(plane=pl.as_dict(), height=z_height)
    start_md = build_start_md("fly_image", args, technique=technique, mode="fly", probe=probe_of(potentiostat, probe),
                              context=context, sample_md=sample_md, md=md, **_fly_map(det, "raster", extra),
                              shape=(ny, nx), extents=[[y0, y1], [x0, x1]], snaking=(False, False))
    if tip_potential is not None:
        ctl.e_tip = tip_potential

    def body():
        if technique != "EC-AFM":
            yield from configure_technique(potentiostat, "READ", channel="tip")
            if tip_potential is not None:
                yield from set_potential(potentiostat.tip, tip_potential)
            yield from cell_on(potentiostat)
        yield from _collect_run(fly_stage, fly_detector, raster)
        return dict(time_constants=lag["time_constants"], lag=lag["lag"])

    yield from _connect(fly_stage, fly_detector)
    return (yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                                   stage_devices=[fly_stage, fly_detector]))


@checked_plan(("SICM",))
def fly_hops(fly_stage: Any, fly_detector: Any, stage: Readable, potentiostat: Readable, *,
             technique: str = "SICM", x_range: tuple | None = None, y_range: tuple | None = None,
             points: Sequence | None = None, snake: bool = True, hop_height: float = 2.0, drop: float = 0.01,
             approach_speed: float = 10.0, lateral_speed: float = 100.0, probe: Configurable | None = None,
             retract: float | None = None, context: Any = None, sample_md: dict | None = None,
             md: dict | None = None) -> Generator[Any, Any, None]:
    """A line or grid of SICM hops run by the controller as one kickoff/complete, one event per hop (HDF5 assets).

    Parameters
    ----------
    x_range, y_range : (start, stop, num), µm
        A grid (``y_range`` num 1 for a line), visited in snake (or raster) order.
    points : list of (x, y), µm
        Explicit hop positions instead of a grid.
    hop_height : float, µm
        Retract above the last contact before each lateral move.
    drop : float
        Relative ion-current drop that ends an approach (0.001–0.5).
    approach_speed, lateral_speed : float, µm/s
        Controller speeds of the approach and of the lateral moves (at most the stage's limits).

    Notes
    -----
    Events carry ``<det>_position`` (the hop's x, y in µm), ``<det>_surface_z`` (µm, where the setpoint was met),
    ``<det>_currents`` (``current_ref``, ``current`` in A), ``<det>_time`` (s) and ``<det>_valid``: few data keys,
    so few Tiled requests per run.  ``read_map`` places them on the grid like a ``hopping_scan``, with ``<det>_x``,
    ``<det>_y``, ``<det>_current_ref`` and ``<det>_current`` split out
    (:func:`espt_bluesky.storage.maps.fly_channels`).

    Examples
    --------
    >>> RE(fly_hops(fly_stage, fly_det, bench.stage, bench.potentiostat, x_range=(10, 90, 41), y_range=(50, 50, 1)))
    """
    ctl = _check_fly_devices(fly_stage, fly_detector)
    if ctl.technique != "SICM":
        raise InvalidArgument(f"fly_hops runs SICM hops; the fly controller runs a {ctl.technique} bench")
    sp = scan_points(stage, x_range=x_range, y_range=y_range, points=points,
                     order="points" if points is not None else "grid", snake=snake)
    hop_height = check_step("hop_height", hop_height)
    drop = float(check_range("drop", drop, 0.001, 0.5))
    approach_speed = check_number("approach_speed", approach_speed, 0.0, ctl.max_speed, low_inclusive=False,
                                  units="µm/s")
    lateral_speed = check_number("lateral_speed", lateral_speed, 0.0, ctl.max_speed, low_inclusive=False,
                                 units="µm/s")
    retract = check_step("retract", max(5.0 * hop_height, 10.0) if retract is None else retract)
    seq = HopSequence(tuple(sp["x"].tolist()), tuple(sp["y"].tolist()), hop_height, approach_speed, lateral_speed,
                      drop)
    det = fly_detector.name
    args = dict(x_range=x_range, y_range=y_range, points=points, snake=snake, hop_height=hop_height, drop=drop,
                approach_speed=approach_speed, lateral_speed=lateral_speed)
    start_md = build_start_md("fly_hops", args, technique=technique, mode="fly_hopping",
                              probe=probe_of(potentiostat, probe), context=context, sample_md=sample_md, md=md,
                              **_fly_map(det, sp["map_order"], {"valid_key": f"{det}_valid", "n_hops": seq.n_hops}),
                              shape=sp.get("shape"), extents=sp.get("extents"), snaking=sp.get("snaking"))

    def body():
        yield from cell_on(potentiostat)
        yield from _collect_run(fly_stage, fly_detector, seq)

    yield from _connect(fly_stage, fly_detector)
    yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                           stage_devices=[fly_stage, fly_detector])
