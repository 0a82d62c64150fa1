"""Shared plan machinery: argument checks before motion, the cleanup that always runs, failure translation."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, RunEngineControlException
from ophyd import Signal

from ..devices.probes import PROBE_KIND
from ..errors import ApproachLimitReached  # noqa: F401  (defined below the devices, re-exported for plans)
from ..errors import (InvalidArgument, check_bool, check_choice, check_int, check_number, check_points_cap,
                      check_positive, check_range)

TECHNIQUES = ("SECM", "SICM", "SECCM", "EC-AFM")
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------- probes
def probe_of(potentiostat: Any, probe: Any = None, afm: Any = None) -> Any:
    """The probe device: the explicit one, else the one carried by the potentiostat or AFM head."""
    for p in (probe, getattr(potentiostat, "probe", None), getattr(afm, "probe", None)):
        if p is not None:
            return p
    return None


def probe_radius(probe: Any) -> float:
    """Characteristic radius (µm): UME radius a, pipette inner radius, AFM tip radius."""
    for attr in ("radius", "inner_radius", "tip_radius"):
        sig = getattr(probe, attr, None)
        if sig is not None:
            return float(sig.get())
    raise InvalidArgument(f"probe={probe!r} has no radius/inner_radius/tip_radius: pass a UME, Nanopipette or "
                          f"AFMCantilever")


def _sig(probe: Any, attr: str, default: float) -> float:
    sig = getattr(probe, attr, None)
    return float(sig.get()) if sig is not None else default


def probe_rg(probe: Any) -> float:
    return _sig(probe, "rg", 10.0)


def pipette_geometry(probe: Any) -> tuple[float, float, float]:
    """(inner radius µm, outer radius µm, half angle degrees) of a nanopipette."""
    ri = _sig(probe, "inner_radius", math.nan)
    if not math.isfinite(ri):
        raise InvalidArgument(f"probe={probe!r} is not a nanopipette (no inner_radius)")
    return ri, _sig(probe, "outer_radius", 1.5 * ri), _sig(probe, "half_angle", 5.0)


# ----------------------------------------------------------------- validation
def check_technique(technique: str) -> str:
    return check_choice("technique", technique, TECHNIQUES)


def check_xy(stage: Any, name: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate lateral positions (µm) against the stage's soft limits; return them as float arrays."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    check_range(f"{name} (x)", x, *stage.x.limits, units="µm")
    check_range(f"{name} (y)", y, *stage.y.limits, units="µm")
    return x, y


def check_z(stage: Any, name: str, z: Any) -> np.ndarray:
    return check_range(name, z, *stage.z.limits, units="µm")


def compliance_of(potentiostat: Any) -> tuple[float, float]:
    return tuple(getattr(potentiostat, "compliance", (-math.inf, math.inf)))


def check_potential(potentiostat: Any, name: str, value: Any) -> float:
    """A potential (V) inside the potentiostat's compliance."""
    lo, hi = compliance_of(potentiostat)
    return float(check_range(name, value, lo, hi, units="V"))


def check_step(name: str, value: Any) -> float:
    return float(check_positive(name, value, units="µm"))


def check_points(stage: Any, name: str, points: Any, min_points: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A list of (x, y) positions (µm): at least ``min_points`` pairs of finite numbers inside the stage limits and
    within the points cap; returns x and y arrays."""
    if isinstance(points, (str, bytes, Mapping)) or not hasattr(points, "__len__"):
        raise InvalidArgument(f"{name}={points!r} must be a list of (x, y) pairs in µm")
    check_points_cap(name, len(points))
    pts = check_range(name, points) if len(points) else np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < min_points:
        raise InvalidArgument(f"{name}={points!r} must be a list of at least {min_points} (x, y) pair(s) in µm")
    return check_xy(stage, name, pts[:, 0], pts[:, 1])


def grid_points(x_range: Sequence, y_range: Sequence, snake: bool = True, name: str = "grid"
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], list]:
    """Points of a (y slow, x fast) grid from ``(start, stop, num)`` ranges, in snake or raster order.

    Returns x, y (µm), shape (ny, nx) and extents [[y0, y1], [x0, x1]] (bluesky's conventions).  The number of
    points is capped by :data:`espt_bluesky.errors.LIMITS` (checked before any array is built).
    """
    snake = check_bool("snake", snake)
    out = []
    for nm, r in (("x_range", x_range), ("y_range", y_range)):
        if not isinstance(r, (tuple, list)) or len(r) != 3:
            raise InvalidArgument(f"{name} {nm}={r!r} must be (start, stop, num) in µm")
        start, stop = check_number(f"{nm} start", r[0]), check_number(f"{nm} stop", r[1])
        num = check_int(f"{nm} num", r[2], 1, math.inf)
        if num > 1 and start == stop:
            raise InvalidArgument(f"{nm}={tuple(r)!r}: start equals stop with num={num}; the step is zero")
        out.append((start, stop, num))
    (x0, x1, nx), (y0, y1, ny) = out
    check_points_cap(f"x_range/y_range ({nx} × {ny})", nx * ny)
    xs, ys = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    X = np.tile(xs, (ny, 1))
    if snake:
        X[1::2] = X[1::2, ::-1]
    Y = np.repeat(ys, nx)
    return X.ravel(), Y, (ny, nx), [[y0, y1], [x0, x1]]


# ----------------------------------------------------------------- checked when called
class _Resumed:
    """The rest of a plan whose first message was already taken from it (by :func:`checked_plan`).

    An iterator with ``send``/``throw``/``close``, so ``yield from`` delegates to the plan exactly as if nothing
    had been taken: the first message comes out first, then every reply goes to the plan.
    """

    def __init__(self, gen, first):
        self._gen, self._first, self._pending = gen, first, True

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        if self._pending:
            self._pending = False
            return self._first
        return self._gen.send(value)

    def throw(self, *exc):
        self._pending = False
        return self._gen.throw(*exc)

    def close(self):
        self._gen.close()


def _resumed(gen, first):
    return (yield from _Resumed(gen, first))


def _check_common(bound: inspect.BoundArguments, techniques: Sequence[str]) -> None:
    """Checks of the arguments every plan shares: devices, technique (and that the probe suits it), metadata."""
    a = bound.arguments
    if "stage" in a and not all(hasattr(a["stage"], ax) for ax in ("x", "y", "z")):
        raise InvalidArgument(f"stage={a['stage']!r} is not an XYZ stage (it needs .x, .y and .z axes)")
    if "potentiostat" in a and not hasattr(a["potentiostat"], "configure_technique"):
        raise InvalidArgument(f"potentiostat={a['potentiostat']!r} is not a bipotentiostat")
    if "technique" in a:
        technique = a["technique"] = check_choice("technique", a["technique"], techniques)
        pr = probe_of(a.get("potentiostat"), a.get("probe"), a.get("afm"))
        kind = getattr(pr, "kind_name", None)
        if kind in PROBE_KIND.values() and kind != PROBE_KIND[technique]:
            raise InvalidArgument(f"technique={technique!r} does not suit the probe ({kind}): {technique} needs a "
                                  f"{PROBE_KIND[technique]}")
    for name in ("md", "sample_md"):
        if a.get(name) is not None and not isinstance(a[name], Mapping):
            raise InvalidArgument(f"{name}={a[name]!r} must be a dict or None")
    ctx = a.get("context")
    if ctx is not None and not isinstance(ctx, Mapping) and not hasattr(ctx, "as_dict"):
        raise InvalidArgument(f"context={ctx!r} must be an ExperimentContext, a dict (bench.metadata()) or None")


def checked_plan(techniques: Sequence[str] = TECHNIQUES) -> Callable[[Callable], Callable]:
    """Decorator: the plan checks its arguments when it is called, not when the RunEngine first runs it.

    Calling the decorated plan binds the arguments to its signature, checks those every plan shares (stage and
    potentiostat, ``technique`` among ``techniques`` and suited to the probe, ``md``/``sample_md``/``context``),
    then runs the plan's own body up to its first message -- everything a plan does before it opens its run is
    argument checking and preparation, never motion -- and returns the generator with that first message put
    back.  So ``plan = hopping_scan(..., hop_height=-1)`` raises :class:`~espt_bluesky.errors.InvalidArgument` in
    that line, before ``RE(plan)``, and nothing is emitted or moved.  The signature and docstring stay those of the
    plan (``functools.wraps``; ``inspect.signature`` and bluesky-queueserver read them through ``__wrapped__``),
    and the function is marked as a plan for bluesky (``_is_plan_``).
    """
    techniques = tuple(techniques)

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)

        @functools.wraps(func)
        def plan(*args: Any, **kwargs: Any):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            _check_common(bound, techniques)
            gen = func(*bound.args, **bound.kwargs)
            try:
                first = next(gen)
            except StopIteration as stop:  # a plan without messages
                return _empty(stop.value)
            return _resumed(gen, first)

        plan._is_plan_ = True  # bluesky.utils.is_plan (what bluesky-queueserver uses to find plans)
        return plan

    return decorate


def _empty(value: Any = None):
    return value
    yield  # pragma: no cover -- makes this a generator function


# ----------------------------------------------------------------- plan stubs
def soft_signals(**values: Any) -> dict[str, Signal]:
    """Soft ophyd signals to record plan-level quantities (e.g. the surface height found by an approach)."""
    from ..devices.signals import CURRENT_PRECISION, QuantitySignal

    out = {}
    for name, (value, units) in values.items():
        out[name] = QuantitySignal(name=name, value=value, kind="hinted", units=units or None,
                                   precision=CURRENT_PRECISION if units == "A" else (4 if units else None))
    return out


def put_values(signals: dict[str, Signal], **values: Any) -> None:
    for k, v in values.items():
        signals[k].put(v)


def value_of(reading: dict | None, obj: Any) -> float:
    """The value of ``obj`` in a ``trigger_and_read`` result; NaN when there is none (a simulated run)."""
    if not reading or obj.name not in reading:
        return math.nan
    return float(reading[obj.name]["value"])


def simulated(reading: dict | None) -> bool:
    """True for the empty reading a simulator gives (``summarize_plan``, ``check_limits``): a plan that decides
    from readings then follows its nominal path (e.g. an approach stops at its first step)."""
    return not reading


# Every change a plan makes to a device is a message (``set``), never a direct ``put``: a plan previewed with
# ``summarize_plan`` or ``check_limits`` then changes nothing, and the RunEngine knows what it touched.
def apply_settings(settings: Iterable[tuple[Any, Any]]):
    """Plan stub: write ``(signal, value)`` pairs (from a device's ``*_settings`` method) and wait for all."""
    args = [x for pair in settings for x in pair]
    if args:
        yield from bps.mv(*args)


def configure_technique(potentiostat: Any, technique: str, channel: str = "substrate", **params: Any):
    """Plan stub: validate and set the potentiostat's technique, channel and parameters by messages."""
    yield from apply_settings(potentiostat.technique_settings(technique, channel, **params))


def set_potential(channel: Any, value: float):
    """Plan stub: set a potentiostat channel's potential (V)."""
    yield from bps.mv(channel.potential, float(value))


def open_circuit(potentiostat: Any):
    """Plan stub: put the cell at open circuit (cell off, technique READ).

    It runs in every plan's cleanup: a failure to reach the potentiostat is logged, not raised, so that it does
    not hide the error that ended the run.
    """
    try:
        yield from apply_settings(potentiostat.open_circuit_settings())
    except RunEngineControlException:
        raise
    except Exception as exc:
        logger.error("%s: could not open the cell: %s", getattr(potentiostat, "name", potentiostat), exc)


def cell_on(potentiostat: Any):
    """Plan stub: reconnect the cell."""
    yield from bps.abs_set(potentiostat.cell_on, 1, wait=True)


def safe_cleanup(stage: Any, potentiostat: Any | None, retract: float):
    """Plan stub run by every plan on exit: raise z by ``retract`` µm (clipped to the z limit), open circuit."""
    errors = []
    try:
        z = float(stage.z.position)
        target = min(z + retract, stage.z.limits[1])
        if target > z:
            yield from bps.mv(stage.z, target)
    except Exception as exc:  # keep going: the cell must still be opened
        errors.append(exc)
    if potentiostat is not None:
        yield from open_circuit(potentiostat)
    if errors:
        raise errors[0]


def device_error(exc: BaseException) -> BaseException:
    """The device's own error (TipCrash, Overload, ...) behind bluesky's FailedStatus; ``exc`` itself otherwise."""
    if not isinstance(exc, FailedStatus):
        return exc
    cause = exc.__cause__
    if cause is None and exc.args and hasattr(exc.args[0], "exception"):
        try:
            cause = exc.args[0].exception()
        except Exception:
            cause = None
    return cause if isinstance(cause, Exception) else exc


def translate_failures(plan):
    """Re-raise the device's own error (TipCrash, Overload, ...) in place of bluesky's FailedStatus."""
    try:
        return (yield from plan)
    except FailedStatus as exc:
        cause = device_error(exc)
        if cause is not exc:
            raise cause from exc
        raise


def managed_run(body, *, md: dict, stage: Any, potentiostat: Any | None, retract: float,
                stage_devices: Iterable = (), retract_on_success: bool = True,
                stop_reason: Callable[[], str] | None = None):
    """Open a run around ``body`` with staging, failure translation and the cleanup that always runs.

    The cleanup (``finalize_wrapper``) puts the cell at open circuit and raises the tip by ``retract`` µm; after
    a successful ``body`` the retract is skipped when ``retract_on_success`` is False (an approach leaves the tip
    at its working distance).  ``stop_reason`` (called when the run ends successfully) gives the stop document's
    ``reason``, e.g. how many hops a map skipped.
    """
    devices = [d for d in stage_devices if d is not None]
    state = {"ok": False}

    def inner():
        plan = translate_failures(body)
        if devices:
            plan = bpp.stage_wrapper(plan, devices)
        state["ret"] = yield from plan
        state["ok"] = True
        return state["ret"]

    def cleanup():
        r = 0.0 if (state["ok"] and not retract_on_success) else retract
        yield from safe_cleanup(stage, potentiostat, r)

    if stop_reason is None:
        yield from bpp.run_wrapper(bpp.finalize_wrapper(inner(), cleanup), md=md)
        return state.get("ret")

    # run_wrapper with a reason on success (bluesky's closes a successful run without one)
    def closing():
        yield from bps.close_run(exit_status="success", reason=stop_reason() or None)

    def failing(exc):
        if isinstance(exc, RunEngineControlException):
            yield from bps.close_run(exit_status=exc.exit_status)
        else:
            yield from bps.close_run(exit_status="fail", reason=str(exc))

    yield from bps.open_run(md)
    yield from bpp.contingency_wrapper(bpp.finalize_wrapper(inner(), cleanup), except_plan=failing,
                                       else_plan=closing)
    return state.get("ret")
