"""Hopping scans (SICM, SECCM): approach at each point, measure, retract by the hop height, move on."""

import math
import uuid
from dataclasses import dataclass
from typing import Any, Generator, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Configurable, Movable, Readable, Triggerable
from bluesky.utils import Msg, all_safe_rewind, separate_devices, short_uid

from ..errors import (FaultLimitReached, InvalidArgument, check_bool, check_choice, check_int, check_keys, check_number,
                      fault_reason)
from ..analysis import hop_height
from ._detectors import check_detectors
from ._common import (ApproachLimitReached, apply_settings, cell_on, check_points, check_step, check_xy,
                      checked_plan, configure_technique, device_error, grid_points, managed_run, pipette_geometry,
                      probe_of, put_values, soft_signals, value_of)
from .approach import approach_stub, make_approach_spec
from .imaging import _validate_technique_params
from .metadata import build_start_md

MEASURE_TECHNIQUES = ("CV", "CA", "LSV", "READ")
ORDERS = ("grid", "points", "random")
FAULT_POLICIES = ("skip", "stop")


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


def configure_measure(potentiostat: Any, meas: Mapping | None):
    """Plan stub: set the potentiostat up for the per-hop measurement (``_measure_spec`` output; None: a tip
    READ)."""
    if meas is not None:
        yield from configure_technique(potentiostat, meas["technique"], channel=meas["channel"], **meas["params"])
    else:
        yield from configure_technique(potentiostat, "READ", channel="tip")


def hop_signals() -> dict[str, Any]:
    """Soft signals a plan-driven hop records beside the potentiostat and the stage: ``surface_z``,
    ``surface_z_err``, ``contact_z`` (µm), ``hop_valid`` (1, or 0 after a fault) and ``hop_fault`` (its reason)."""
    return soft_signals(surface_z=(np.nan, "um"), surface_z_err=(np.nan, "um"), contact_z=(np.nan, "um"),
                        hop_valid=(1, None), hop_fault=("", None))


def mark_not_measured(detectors: Sequence[Any]) -> None:
    """Tell each extra detector of a skipped spot that nothing was measured: it reads NaN and still writes its
    asset row, so the spectra stay aligned with the events (detectors without ``mark_not_measured`` are read as
    they are)."""
    for det in detectors:
        mark = getattr(det, "mark_not_measured", None)
        if mark is not None:
            mark()


def hop_stub(stage: Any, potentiostat: Any, spec: Any, x: float, y: float, *, hop_height: float,
             signals: Mapping[str, Any], top: float | None = None, measure: Mapping | None = None,
             on_fault: str = "skip", stream: str = "primary", approach_stream: str = "approach",
             extra: Sequence[Any] = (), sicm: "SicmHops | None" = None,
             record: "_Reading | None" = None) -> Generator[Any, Any, dict]:
    """Plan stub (inside an open run): one plan-driven hop at (x, y) µm.

    Raise the tip to ``top`` (if it is lower), move laterally, approach with ``spec`` (the curve goes to
    ``approach_stream``), record one event in ``stream`` (the potentiostat after the per-hop ``measure``, the stage
    x/y and ``signals`` from :func:`hop_signals`), and retract ``hop_height`` above the contact.

    SICM with ``sicm`` (a :class:`SicmHops`, made by ``hopping_scan``): the reference is read at the top and
    corrected to the far current, the stop distance keeps the end face clear of steep ground, and the height comes
    from fresh readings at the stop (:mod:`espt_bluesky.analysis.hop_height`), as the device-mode controller does;
    a stop those readings do not confirm goes on down.

    ``record`` (optional): a :class:`_Reading` of exactly the devices this stub reads into ``stream`` (the
    potentiostat, stage x and y, ``signals``, ``extra``), made once for a whole map; it emits the same messages
    as ``bps.trigger_and_read`` without redoing its per-call checks at every hop.

    A fault (:func:`espt_bluesky.errors.fault_reason`: crash, overload, no contact, criterion never met) retracts
    the tip straight up by ``hop_height`` and records the hop with ``hop_valid=0``, ``hop_fault=<reason>``, NaN
    heights and a NaN measurement; with ``on_fault="stop"`` the error is then re-raised.  Any other error (bad
    input, lost connection, a RunEngine stop) propagates at once.

    Returns
    -------
    dict
        ``valid``, ``surface_z``, ``surface_z_err``, ``contact_z`` (µm, NaN when invalid), ``fault`` (reason or
        ""), ``message`` (the error text), ``x``, ``y``.
    """
    out = dict(x=float(x), y=float(y), valid=False, surface_z=np.nan, surface_z_err=np.nan, contact_z=np.nan,
               fault="", message="")
    devices = [potentiostat, stage.x, stage.y, *signals.values(), *extra]  # extra: detectors read per hop
    try:
        if top is not None and top > float(stage.z.position):
            yield from _move(stage.z, float(top))
        yield from bps.mv(stage.x, float(x), stage.y, float(y))
        if sicm is not None:
            res = yield from sicm.approach(stage, potentiostat, spec, float(x), float(y), stream=approach_stream)
        else:
            res = yield from approach_stub(stage, potentiostat, spec, stream=approach_stream, park=False)
        yield from configure_measure(potentiostat, measure)
        put_values(signals, surface_z=res["surface_z"], surface_z_err=res["surface_z_err"],
                   contact_z=res["stop_z"], hop_valid=1, hop_fault="")
        yield from (record or _Reading(devices, stream))()
        out.update(valid=True, surface_z=res["surface_z"], surface_z_err=res["surface_z_err"],
                   contact_z=res["stop_z"])
        yield from _move(stage.z, res["stop_z"] + hop_height)
        return out
    except Exception as exc:
        err = device_error(exc)
        reason = fault_reason(err)
        if reason is None:
            raise
    # the fault: retract straight up (cannot touch), then record the hop as invalid with a NaN measurement
    z = float(stage.z.position)
    yield from bps.mv(stage.z, min(z + hop_height, stage.z.limits[1]))
    yield from configure_measure(potentiostat, measure)
    potentiostat.mark_not_measured()
    mark_not_measured(extra)
    put_values(signals, surface_z=np.nan, surface_z_err=np.nan, contact_z=np.nan, hop_valid=0, hop_fault=reason)
    yield from bps.create(stream)
    for d in devices:
        yield from bps.read(d)
    yield from bps.save()
    out.update(fault=reason, message=str(err))
    if on_fault == "stop":
        raise err
    return out


class _Reading:
    """``bps.trigger_and_read(devices, name)`` for a fixed list of devices, message for message, made cheap for the
    ~20 readings of every plan-mode SICM hop.

    ``trigger_and_read`` redoes per call what cannot change within a map -- ``separate_devices`` and an
    ``isinstance(obj, Triggerable)`` check per device (a runtime Protocol check: ~0.1 ms each on Python 3.11) --
    and wraps every stub in a ``Plan`` that formats the call stack; this class does those once.  The messages are
    the same (trigger each triggerable device, wait, create, read each, save; drop if a read fails), so the
    documents and the RunEngine's behaviour are unchanged.  Devices that are not safe to rewind take
    ``trigger_and_read`` itself (its rewindable toggling).
    """

    def __init__(self, devices: Sequence[Any], name: str):
        self.devices = separate_devices(devices)
        self.triggerable = [d for d in self.devices if isinstance(d, Triggerable)]
        self.name = name

    def __call__(self):
        if not all_safe_rewind(self.devices):
            return (yield from bps.trigger_and_read(self.devices, name=self.name))
        if self.triggerable:
            grp = short_uid("trigger")
            for obj in self.triggerable:
                yield Msg("trigger", obj, group=grp)
            yield Msg("wait", None, group=grp, error_on_timeout=True, timeout=None, watch=())
        yield Msg("create", name=self.name)
        ret = {}
        try:
            for obj in self.devices:
                reading = yield Msg("read", obj)
                if reading is not None:
                    ret.update(reading)
        except Exception:
            yield Msg("drop")
            raise
        yield Msg("save")
        return ret


def _move(obj: Any, value: float):
    """``bps.mv(obj, value)`` for one device, message for message (set, then wait on its group), without the
    ``Plan`` wrapper and the cycler ``mv`` builds for several devices: the z steps of every plan-mode hop."""
    group = str(uuid.uuid4())
    status = yield Msg("set", obj, value, group=group)
    yield Msg("wait", None, group=group, timeout=None)
    return (status,)


class SicmHops:
    """Plan-driven SICM hops that estimate heights as the device-mode controller does.

    The descent steps adapt to the current–distance curve as it comes in
    (:func:`espt_bluesky.analysis.hop_height.sicm_next_step`, each reading fitted against the reference read at the
    top of the hop); ``max_slope=None`` is :func:`espt_bluesky.analysis.hop_height.auto_max_slope` of the pipette
    and the noise measured at the start.

    Every reading integrates ``n_int`` base samples (the potentiostat's ``integration_time`` times ``n_int``, set
    once for the whole map so that every stream's configuration stays true); the reference and the height each
    average ``k`` ≥ 2 readings, ``k`` chosen per hop for a quarter-step precision from the noise (measured at the
    start in the ``sicm_noise`` stream, then pooled over the repeated readings of every hop).  Remembers the hops made (for the slope margin) and the last surface (for the
    far-current correction at the top).
    """

    N_NOISE = 32  # readings at the base integration that measure the noise, once per map
    N_INT = 4  # base samples per reading (device mode averages 4 per step)

    K_MAX = 16  # readings per reference / height at most

    def __init__(self, pipette: tuple[float, float, float], max_slope: float | None, step: float, d_set: float):
        self.ri, self.ro, self.th = pipette
        self.A = hop_height.pipette_access_length(self.ri, self.ro, self.th)
        # None: automatic (hop_height.auto_max_slope), from the pipette and the noise measured at the start
        self.auto_slope = max_slope is None
        self.max_slope = hop_height.default_max_slope(self.th) if max_slope is None else float(max_slope)
        self.step = step
        self.d_set = d_set
        self.sigma1 = math.nan  # relative noise of one base sample
        self.n_int = self.N_INT
        self.history: list[tuple[float, float, float]] = []
        self.last_surface: float | None = None
        self._base = None
        self._readings: dict[tuple, _Reading] = {}
        self._ss = 0.0
        self._dof = 0

    def setup(self, stage: Any, potentiostat: Any):
        """Plan stub: measure the noise at the start height (stream ``sicm_noise``), then set the integration."""
        yield from configure_technique(potentiostat, "READ", channel="tip")
        sig = potentiostat.tip.current
        self._base = float(potentiostat.params.integration_time.get())
        vals = []
        reading = self._reading(potentiostat, stage, "sicm_noise")
        for _ in range(self.N_NOISE):
            r = yield from reading()
            vals.append(value_of(r, sig))
        v = np.asarray(vals, float)
        if np.all(np.isfinite(v)) and np.mean(v) != 0:
            self._pool(v, 1)
            if self.auto_slope:
                self.max_slope = hop_height.auto_max_slope(self.th, self.ro, self.A, self.d_set, self.step,
                                                           self.sigma1)
            # integrate each reading long enough that 2 of them (2 for the noise pool) give the height at the stop
            # max_slope implies: few events per hop
            d_stop = hop_height.sicm_stop_distance(self.d_set, self.ro, self.max_slope, step=self.step)
            n_need = self._samples(d_stop)
            self.n_int = int(np.clip(math.ceil(n_need / 2), self.N_INT, 4096))
        yield from configure_technique(potentiostat, "READ", channel="tip",
                                       integration_time=self._base * self.n_int)

    def _pool(self, readings: np.ndarray, n_int: int) -> None:
        """Pool the relative noise of one base sample over every group of repeated readings (one estimate from a
        few readings is noisy, and error bars from it too small on average)."""
        v = np.asarray(readings, float)
        if v.size < 2 or not np.all(np.isfinite(v)) or np.mean(v) == 0:
            return
        self._ss += float(np.var(v / np.mean(v), ddof=1)) * n_int * (v.size - 1)
        self._dof += v.size - 1
        self.sigma1 = math.sqrt(self._ss / self._dof)

    def _samples(self, d_stop: float) -> int:
        """Base samples that give the gap at ``d_stop`` to a quarter step (reference and stop readings: √2)."""
        sigma1 = self.sigma1 if math.isfinite(self.sigma1) else 0.0
        return hop_height.samples_for_precision(sigma1, d_stop / (d_stop + self.A), self.A,
                                                0.25 * self.step / math.sqrt(2.0), low=1, high=2**20)

    def _reading(self, potentiostat: Any, stage: Any, stream: str) -> _Reading:
        """The (potentiostat, stage z) reading of ``stream``, made once per map."""
        key = (id(potentiostat), id(stage.z), stream)
        if self._readings.get(key) is None:
            self._readings[key] = _Reading([potentiostat, stage.z], stream)
        return self._readings[key]

    def restore(self, potentiostat: Any):
        """Plan stub: the potentiostat's integration time as it was."""
        if self._base is not None:
            yield from configure_technique(potentiostat, "READ", channel="tip", integration_time=self._base)

    def approach(self, stage: Any, potentiostat: Any, spec: Any, x: float, y: float, *, stream: str):
        """Plan stub: one SICM approach at (x, y) from the present height; returns approach_stub's dict."""
        sig = potentiostat.tip.current
        d_stop = hop_height.sicm_stop_distance(spec.stop_distance, self.ro, self.max_slope, self.history, x, y,
                                               self.step)
        s_stop = d_stop / (d_stop + self.A)
        k = int(np.clip(math.ceil(self._samples(d_stop) / self.n_int), 2, self.K_MAX))

        reading = self._reading(potentiostat, stage, stream)

        def mean_of(n, pool=True):
            vals = []
            for _ in range(n):
                r = yield from reading()
                vals.append(value_of(r, sig))
            if pool:
                self._pool(vals, self.n_int)
            return float(np.mean(vals))

        z_top = float(stage.z.position)
        yield from configure_technique(potentiostat, "READ", channel="tip")
        i_top = yield from mean_of(k)
        if not math.isfinite(i_top):  # a preview (summarize_plan): no readings to decide from
            return (yield from approach_stub(stage, potentiostat, spec, stream=stream, park=False))
        gap_top = (z_top - self.last_surface) if self.last_surface is not None else math.inf
        i_sat = hop_height.sicm_far_current(i_top, gap_top, self.A)
        thr = abs(i_sat) * s_stop
        sigma = self.sigma1 / math.sqrt(self.n_int * k) if math.isfinite(self.sigma1) else 0.0
        # a reading's error as a ratio (its own noise and the reference's, in quadrature): steers the steps
        sig_r = math.hypot(self.sigma1 / math.sqrt(self.n_int), sigma) if math.isfinite(self.sigma1) else 0.0
        z, n, s_last = z_top, 0, 1.0
        while True:
            # the step adapts to the current–distance curve as it comes in: coarse while the current says the
            # surface is far, ``approach_step`` as the current starts to drop
            dz = hop_height.sicm_next_step(s_last, sig_r, self.A, d_stop, spec.fine_step, spec.max_travel,
                                           descended=z_top - z)
            if z_top - (z - dz) > spec.max_travel + 1e-9 or z - dz < stage.z.limits[0]:
                if z_top - z >= spec.max_travel - 1e-9 or z - spec.fine_step < stage.z.limits[0]:
                    raise ApproachLimitReached(
                        f"SICM hop at x={x:.3f}, y={y:.3f} µm: criterion not met within max_travel="
                        f"{spec.max_travel} µm (z low limit {stage.z.limits[0]} µm)", reason="criterion_not_met")
                dz = min(spec.max_travel - (z_top - z), z - stage.z.limits[0])
            yield Msg("checkpoint")  # bps.checkpoint(), without its Plan wrapper (formats the call stack per step)
            z -= dz
            yield from _move(stage.z, z)
            n += 1
            i_now = yield from mean_of(1, pool=False)
            s_last = abs(i_now / i_top)  # against the reading at the top: no assumption on the gap there
            if abs(i_now) >= thr:
                continue
            # fresh readings at the same height decide (the one that fired was selected for being low): the
            # mean of 2 confirms the crossing, the long average (k readings) the stop and gives the height
            if abs((yield from mean_of(2))) >= thr:
                continue
            i_stop = yield from mean_of(k)
            if abs(i_stop) < thr * (1.0 + 3.0 * sigma):
                break
        res = dict(stop_z=z)
        surface, err, i_sat = hop_height.sicm_hop_surface(res["stop_z"], i_stop, i_top, z_top, self.A,
                                                          sigma_ratio=math.sqrt(2.0) * sigma)
        surface -= spec.stop_offset
        self.last_surface = surface
        self.history.append((x, y, surface))
        del self.history[:-256]
        return dict(surface_z=surface, surface_z_err=err, stop_z=res["stop_z"], n_steps=n, reference_current=i_sat)


class _FaultLog:
    """Counts a map's faults, records each in the ``faults`` stream and enforces the consecutive limit."""

    def __init__(self, n_points: int, max_consecutive: int):
        self.n_points = n_points
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.reasons: list[str] = []
        self.signals = soft_signals(fault_hop=(0, None), fault_x=(0.0, "um"), fault_y=(0.0, "um"),
                                    fault_reason=("", None), fault_message=("", None))

    def ok(self) -> None:
        self.consecutive = 0

    def record(self, i: int, x: float, y: float, reason: str, message: str):
        """Plan stub: one event in the ``faults`` stream; raises FaultLimitReached past the limit."""
        self.reasons.append(reason)
        self.consecutive += 1
        put_values(self.signals, fault_hop=int(i), fault_x=float(x), fault_y=float(y), fault_reason=reason,
                   fault_message=message[:500])
        yield from bps.trigger_and_read(list(self.signals.values()), name="faults")
        if self.consecutive >= self.max_consecutive:
            raise FaultLimitReached(f"{self.consecutive} consecutive hops faulted (max_consecutive_faults="
                                    f"{self.max_consecutive}); last at x={x:.3f}, y={y:.3f} µm: {message}")

    def summary(self) -> str:
        if not self.reasons:
            return ""
        counts = ", ".join(f"{self.reasons.count(r)} {r}" for r in dict.fromkeys(self.reasons))
        return (f"{len(self.reasons)} of {self.n_points} hops skipped after faults ({counts}); they are recorded "
                f"with valid=0 and in the 'faults' stream")


@dataclass
class HopSetup:
    """The checked settings of a hopping map, shared by :func:`hopping_scan` and
    :func:`~espt_bluesky.plans.adaptive.adaptive_hopping_scan` (made by :func:`check_hop_args`)."""

    mode: str
    on_fault: str
    max_consecutive_faults: int
    hop_height: float
    approach_step: float | None
    max_slope: float | None
    meas: dict | None  # the per-hop measurement (``_measure_spec``), None: the channel current at the setpoint
    dets: list  # extra detectors read at every hop
    spec: Any  # the approach spec (None when the map does not approach, e.g. SECM at constant height)
    retract: float
    probe: Any
    signals: dict  # plan-mode hop signals (:func:`hop_signals`)
    keys: tuple[str, str]  # the x/y data keys of the map
    topo_key: str | None
    valid_key: str | None


def check_hop_args(stage: Any, potentiostat: Any, *, technique: str, mode: str, hopper: Any, on_fault: str,
                   max_consecutive_faults: int, hop_height: float, approach_step: float | None,
                   max_slope: float | None, measure: Mapping | None, detectors: Sequence[Any] | None,
                   probe: Any, drop: float, contact_current: float, max_travel: float, stop_offset: float,
                   retract: float | None, approach: bool = True) -> HopSetup:
    """Check the arguments every hopping map shares, before anything moves (errors name the argument, the value
    and what is allowed), and derive the approach spec, the measurement and the data keys.

    ``approach=False``: the map does not approach at each landing (SECM at constant height): no approach spec,
    and the map's keys are the stage's.
    """
    mode = check_choice("mode", mode, ("device", "plan"))
    on_fault = check_choice("on_fault", on_fault, FAULT_POLICIES)
    max_consecutive_faults = check_int("max_consecutive_faults", max_consecutive_faults, 1, 10**6)
    hop_height = check_step("hop_height", hop_height)
    if approach_step is not None:
        approach_step = check_step("approach_step", approach_step)
    if max_slope is not None:  # None: automatic (hop_height.auto_max_slope)
        max_slope = float(check_number("max_slope", max_slope, 0.0, 100.0))
    if mode == "device" and hopper is None:
        raise InvalidArgument("hopper=None with mode='device': pass the hopping controller (bench.hopper) or "
                              "use mode='plan'")
    meas = _measure_spec(potentiostat, technique, measure)
    dets = check_detectors(detectors)
    spec = None if not approach else make_approach_spec(
        stage, potentiostat, technique=technique, probe=probe, drop=drop, contact_current=contact_current,
        working_distance=None, fine_step=approach_step, coarse_step=approach_step, max_travel=max_travel,
        stop_offset=stop_offset)
    retract = check_step("retract", max(hop_height, 2.0) if retract is None else retract)
    pr = probe_of(potentiostat, probe)
    sigs = hop_signals()
    if mode == "device":
        keys = (hopper.x.name, hopper.y.name)
        topo_key, valid_key = hopper.surface_z.name, hopper.valid.name
    elif not approach:
        keys, topo_key, valid_key = (stage.x.name, stage.y.name), None, None
    else:
        keys = (stage.x.name, stage.y.name)
        topo_key, valid_key = sigs["surface_z"].name, sigs["hop_valid"].name
    return HopSetup(mode=mode, on_fault=on_fault, max_consecutive_faults=max_consecutive_faults,
                    hop_height=hop_height, approach_step=approach_step, max_slope=max_slope, meas=meas, dets=dets,
                    spec=spec, retract=retract, probe=pr, signals=sigs, keys=keys, topo_key=topo_key,
                    valid_key=valid_key)


def prepare_device_hops(hopper: Any, potentiostat: Any, hs: HopSetup, *, technique: str, drop: float,
                        contact_current: float, max_travel: float):
    """Plan stub: set the hopping controller up for the map (criterion, setpoint, hop height, steps), switch the
    cell on and configure the per-hop measurement."""
    yield from apply_settings(hopper.hop_settings(
        criterion="current_drop" if technique == "SICM" else "contact",
        setpoint=drop if technique == "SICM" else contact_current, hop_height=hs.hop_height,
        approach_step=hs.spec.fine_step, max_travel=max_travel,
        stop_offset=hs.spec.stop_offset, max_slope=hs.max_slope, measure=hs.meas is not None))
    yield from cell_on(potentiostat)
    yield from configure_measure(potentiostat, hs.meas)


def device_hop(hopper: Any, dets: Sequence[Any], x: float, y: float, *, on_fault: str
               ) -> Generator[Any, Any, dict]:
    """Plan stub (inside an open run): one hop of the hopping controller at (x, y) µm, read with ``dets`` into
    ``primary``.

    A fault the controller reports (crash, overload, no contact, criterion never met: it has retracted and marked
    the hop invalid) is recorded as an event of the invalid hop (extra detectors read NaN, their asset rows stay
    aligned); with ``on_fault="stop"`` the error is then re-raised.  Any other error propagates.

    Returns
    -------
    dict
        ``valid``, ``fault`` (the controller's reason or ""), ``message`` (the error text), ``reading`` (the
        event's reading of a valid hop, else None).
    """
    yield from bps.mv(hopper, (float(x), float(y)))
    try:
        r = yield from bps.trigger_and_read([hopper, *dets])
    except Exception as exc:
        err = device_error(exc)
        if fault_reason(err) is None:
            raise
        mark_not_measured(dets)
        yield from bps.create("primary")
        for dev in (hopper, *dets):
            yield from bps.read(dev)
        yield from bps.save()
        if on_fault == "stop":
            raise err
        return dict(valid=False, fault=hopper.fault.get(), message=str(err), reading=None)
    return dict(valid=True, fault="", message="", reading=r)


@checked_plan(("SICM", "SECCM"))
def hopping_scan(stage: Readable, potentiostat: Readable, *, technique: str, x_range: tuple | None = None,
                 y_range: tuple | None = None, points: Sequence | None = None, order: str = "grid",
                 snake: bool = True, seed: int | None = None, hop_height: float = 2.0,
                 approach_step: float | None = None, max_travel: float = 20.0, drop: float = 0.01,
                 contact_current: float = 5e-13, stop_offset: float = 0.0, max_slope: float | None = None,
                 measure: Mapping | None = None,
                 mode: str = "device", hopper: Movable | None = None, on_fault: str = "skip",
                 max_consecutive_faults: int = 5, probe: Configurable | None = None, retract: float | None = None,
                 context: Any = None, sample_md: dict | None = None, detectors: Sequence[Readable] | None = None,
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
        The finest approach step (default: a quarter of the SICM setpoint distance; 0.2 pipette radii for SECCM).
        SICM steps adapt to the current–distance curve as it comes in: each reading, against the reference read
        at the top of the hop, bounds the gap from below (4 σ, :func:`espt_bluesky.analysis.hop_height.
        sicm_gap_lower_bound`), and the next step is 0.7 of what lies between that bound and the stop distance,
        never less than ``approach_step`` (coarse while the current is flat, ``approach_step`` as it drops).
    drop : float
        SICM setpoint: relative ion-current drop (0.001–0.5, typically 0.005–0.02).
    contact_current : float, A
        SECCM: |substrate current| that signals meniscus contact (confirmed by fresh readings at the same
        height, without descending further).
    stop_offset : float, µm
        SECCM: subtracted from the landing height to give the surface height (default 0: the landing height).
    max_slope : float or None
        SICM: the steepest sample slope |∇h| the map may meet (0–100).  The pipette's flat end face (outer
        radius r_o) touches a slope s before its axis reaches the setpoint distance d_set whenever s·r_o > d_set,
        and the ion current gives no warning of it (it averages the gap under the face); each hop therefore
        stops at least s·r_o + max(d_set/4, approach_step) above the surface (a smaller current drop there; the
        height still comes from the current–distance curve, with more averaging).  None (default): automatic
        (:func:`espt_bluesky.analysis.hop_height.auto_max_slope`), the steepest slope a hop can clear while its
        height is still measured to a quarter step within 4096 samples, at most cot(half-cone angle) (what the
        pipette can image at all): 7.5 at a 1 % drop, 5.4 at 2 % with the bench's noise (rims up to ~80°; a hop
        onto a steeper one may touch and is skipped as a fault).  A steeper sample: up to cot θ (11.4 for 5°),
        at a cost in precision; a gentler one (0 for a flat film) hops faster.  Steep slopes between hops
        already made raise the stop distance by themselves.
    measure : dict, optional
        A waveform per hop: ``{"technique": "CV"|"CA"|"LSV", **potentiostat parameters}`` (``n_samples`` fixes
        the waveform length, default 200), or None for the ion/surface current at the setpoint.
    mode : {"device", "plan"}
        ``"device"``: the hop is one triggered action of ``hopper`` (a controller that hops in firmware, e.g.
        ``bench.hopper``); ``"plan"``: approach/measure/retract driven step by step from the plan (any hardware);
        its approach curves go to the ``approach`` stream.
    detectors : list of devices, optional
        Extra detectors triggered and read at every spot after the measurement (e.g. ``[xrf]``: one XRF
        spectrum per spot in the same run and stream as the CV).
    on_fault : {"skip", "stop"}
        What a fault at one hop does (a crash, an overload, no contact within ``max_travel``, the criterion never
        met).  ``"skip"`` (default): the tip retracts straight up by ``hop_height``, the hop is recorded with
        ``valid`` 0 and its reason (``hopper_valid``/``hopper_fault`` in device mode, ``hop_valid``/``hop_fault``
        in plan mode; NaN heights and measurement) and in the ``faults`` stream, and the map goes on; the run
        ends with exit_status "success" and its stop document's ``reason`` says how many hops were skipped.
        ``"stop"``: the faulted hop is recorded, then the error ends the run (exit_status "fail").
    max_consecutive_faults : int
        With ``on_fault="skip"``, this many faults in a row end the run (:class:`~espt_bluesky.errors.
        FaultLimitReached`): a broken tip or a lost sample should not be mapped blind.

    Returns
    -------
    numpy.ndarray
        Surface height (µm) of every hop, in visiting order, NaN for skipped hops (also recorded per event:
        ``hopper_surface_z`` in device mode, ``surface_z`` in plan mode; ``map`` in the start document names the
        x/y keys, ``valid_key`` the validity flag).

    Examples
    --------
    >>> bench = make_sim_bench("SICM", "composite_cathode"); RE(bps.mv(bench.stage.z, 8.0))
    >>> topo = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(20, 40, 11),
    ...                        y_range=(20, 40, 11), hop_height=8.0, hopper=bench.hopper)).plan_result
    """
    technique = check_choice("technique", technique, ("SICM", "SECCM"))
    hs = check_hop_args(stage, potentiostat, technique=technique, mode=mode, hopper=hopper, on_fault=on_fault,
                        max_consecutive_faults=max_consecutive_faults, hop_height=hop_height,
                        approach_step=approach_step, max_slope=max_slope, measure=measure, detectors=detectors,
                        probe=probe, drop=drop, contact_current=contact_current, max_travel=max_travel,
                        stop_offset=stop_offset, retract=retract)
    pts = scan_points(stage, x_range=x_range, y_range=y_range, points=points, order=order, snake=snake, seed=seed)
    mode, on_fault, hop_height, max_slope = hs.mode, hs.on_fault, hs.hop_height, hs.max_slope
    meas, dets, spec, sigs, pr = hs.meas, hs.dets, hs.spec, hs.signals, hs.probe
    keys, topo_key, valid_key = hs.keys, hs.topo_key, hs.valid_key
    xs, ys = pts["x"], pts["y"]
    args = dict(technique=technique, x_range=x_range, y_range=y_range, points=points, order=order, snake=snake,
                seed=seed, hop_height=hop_height, approach_step=spec.fine_step, max_travel=max_travel, drop=drop,
                contact_current=contact_current, stop_offset=stop_offset, max_slope=max_slope, measure=measure,
                mode=mode,
                on_fault=on_fault, max_consecutive_faults=hs.max_consecutive_faults,
                detectors=[d.name for d in dets])
    start_md = build_start_md("hopping_scan", args, technique=technique, mode="hopping", probe=pr, context=context,
                              sample_md=sample_md, md=md, map_keys=keys, order=pts["map_order"],
                              shape=pts.get("shape"), extents=pts.get("extents"), snaking=pts.get("snaking"),
                              hints={"dimensions": [[[keys[1]], "primary"], [[keys[0]], "primary"]]},
                              extra={"topography_key": topo_key, "valid_key": valid_key, "hop_mode": mode,

                                     "setpoint_distance": spec.stop_distance, "num_points": int(xs.size)})
    faults = _FaultLog(int(xs.size), hs.max_consecutive_faults)

    def device_body():
        yield from prepare_device_hops(hopper, potentiostat, hs, technique=technique, drop=drop,
                                       contact_current=contact_current, max_travel=max_travel)
        topo = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            yield from bps.checkpoint()
            res = yield from device_hop(hopper, dets, x, y, on_fault=on_fault)
            if not res["valid"]:  # the controller retracted and marked the hop invalid: recorded, skipped
                topo.append(np.nan)
                yield from faults.record(i, x, y, res["fault"], res["message"])
                continue
            faults.ok()
            topo.append(value_of(res["reading"], hopper.surface_z))
        return np.asarray(topo, float)

    def plan_body():
        yield from cell_on(potentiostat)
        sh = SicmHops(pipette_geometry(pr), max_slope, spec.fine_step, spec.stop_distance) if technique == "SICM" else None

        def hops():
            if sh is not None:
                yield from sh.setup(stage, potentiostat)
            topo = []
            last = None
            record = _Reading([potentiostat, stage.x, stage.y, *sigs.values(), *dets], "primary")
            for i, (x, y) in enumerate(zip(xs, ys)):
                yield Msg("checkpoint")
                res = yield from hop_stub(stage, potentiostat, spec, x, y, hop_height=hop_height, signals=sigs,
                                          top=None if last is None else last + hop_height, measure=meas,
                                          on_fault=on_fault, extra=dets, sicm=sh, record=record)
                topo.append(res["surface_z"])
                if res["valid"]:
                    last = res["contact_z"]
                    faults.ok()
                else:
                    yield from faults.record(i, x, y, res["fault"], res["message"])
            return np.asarray(topo, float)

        if sh is None:
            return (yield from hops())
        return (yield from bpp.finalize_wrapper(hops(), sh.restore(potentiostat)))

    body = device_body() if mode == "device" else plan_body()
    return (yield from managed_run(body, md=start_md, stage=stage, potentiostat=potentiostat, retract=hs.retract,
                                   stage_devices=[potentiostat, *dets], stop_reason=faults.summary))
