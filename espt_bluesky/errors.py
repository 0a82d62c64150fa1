"""Exceptions and argument validation shared by every layer (imports nothing from the package).

One validation layer: every public entry point (plans, devices, the bench, storage readers, the session
configuration) checks its arguments with these functions, so a bad value always raises :class:`InvalidArgument`
naming the argument, the value and what is allowed -- before anything moves or is written.

* numbers: :func:`check_number`, :func:`check_range`, :func:`check_positive`, :func:`check_finite` (a bool, a string,
  None or a NaN is not a number), :func:`check_int` (counts: an ``int``, never ``1.5`` or ``2.0``),
  :func:`check_vector` (a fixed-length tuple of numbers);
* options: :func:`check_choice`, :func:`check_bool`;
* dict arguments: :func:`check_keys` (unknown keys and missing required keys);
* size caps: :data:`LIMITS` with :func:`check_points_cap` and :func:`check_samples_cap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np


class EsptError(Exception):
    """Base class of espt_bluesky errors."""


class InvalidArgument(EsptError, ValueError):
    """An argument is outside what is allowed.  The message names argument, value and allowed range."""


class TipCrash(EsptError, RuntimeError):
    """The probe touched or went below the sample surface."""


class Overload(EsptError, RuntimeError):
    """A measured current exceeded the potentiostat's current range."""


@dataclass
class Limits:
    """Caps on the size of one run, checked before anything moves.  Raise them on purpose::

        import espt_bluesky.errors
        espt_bluesky.errors.LIMITS.max_points = 4_000_000

    Attributes
    ----------
    max_points : int
        Points (hops, pixels, spots) of one run, images of an operando stack included.  Time: the RunEngine alone
        spends about 2.5 ms per point on set/trigger round trips (measured with ophyd.sim), so 10^6 points are
        40 min of pure overhead before any instrument time (a hop takes 0.1-1 s: 1-12 days); the plan also holds
        the positions in memory.  A grid of 10^7 or more points is far more often a step typed as a count.
    max_waveform_samples : int
        Samples of one waveform (a CV per hop, a force curve).  Memory: a potentiostat event holds 4 float64
        waveforms (32 bytes a sample): 10^5 samples are 3.2 MB per event, 80 MB in the Tiled writer's 25-event batch;
        10^8 samples would be 3.2 GB per event.
    """

    max_points: int = 1_000_000
    max_waveform_samples: int = 100_000


#: The caps in force (module-level setting; see :class:`Limits`).
LIMITS = Limits()


class ApproachLimitReached(EsptError, RuntimeError):
    """An approach travelled its hard limit without meeting its criterion.

    ``reason`` says which: ``"no_contact"`` (SECCM: the meniscus never landed) or ``"criterion_not_met"``
    (SECM/SICM: the current never crossed its threshold).
    """

    def __init__(self, message: str = "", reason: str = "no_contact"):
        super().__init__(message)
        self.reason = reason


class FaultLimitReached(EsptError, RuntimeError):
    """A map skipped more consecutive points after faults than it was allowed to (tip or sample lost?)."""


def fault_reason(exc: BaseException) -> str | None:
    """The reason a map may skip a point for after ``exc`` ("crash", "overload", "no_contact",
    "criterion_not_met"), or None for an error that must end the run (bad input, lost connection, ...)."""
    if isinstance(exc, TipCrash):
        return "crash"
    if isinstance(exc, Overload):
        return "overload"
    if isinstance(exc, ApproachLimitReached) and exc.reason in ("no_contact", "criterion_not_met"):
        return exc.reason
    return None


def _fmt(value: Any) -> str:
    try:
        arr = np.asarray(value) if not isinstance(value, (str, bytes)) else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim == 0:
        return repr(value.item() if isinstance(value, np.generic) else value)
    if arr.size <= 10:
        return repr(arr.tolist())
    return f"array of shape {arr.shape}"


def _numbers(name: str, value: Any) -> np.ndarray:
    """``value`` as a float array if it holds only real numbers (bools, strings, None and objects are not)."""
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        raise InvalidArgument(f"{name}={value!r} is not a number")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise InvalidArgument(f"{name}={value!r} is not a number or an array of numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidArgument(f"{name}={_fmt(value)} is not a number" if arr.ndim == 0 else
                              f"{name}={_fmt(value)} must hold numbers only (found dtype {arr.dtype})")
    return arr.astype(float, copy=False)


def check_finite(name: str, value: Any) -> np.ndarray:
    """Return ``value`` as a float array; raise :class:`InvalidArgument` if it holds NaN/inf or non-numbers."""
    arr = _numbers(name, value)
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"{name}={_fmt(value)} contains NaN or infinite values; finite numbers are required")
    return arr


def check_range(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_inf: bool = False,
    units: str = "",
) -> np.ndarray:
    """Validate that every element of ``value`` is a number in the given interval; return it as a float array.

    The error names the argument, the offending value and the allowed interval.
    """
    arr = _numbers(name, value)
    if np.any(np.isnan(arr)):
        raise InvalidArgument(f"{name}={_fmt(value)} contains NaN; a number is required")
    if not allow_inf and np.any(np.isinf(arr)):
        raise InvalidArgument(f"{name}={_fmt(value)} is infinite; a finite number is required")
    lo_ok = arr >= low if low_inclusive else arr > low
    hi_ok = arr <= high if high_inclusive else arr < high
    bad = ~(lo_ok & hi_ok)
    if np.any(bad):
        first = float(arr[bad].flat[0]) if arr.ndim else float(arr)
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        u = f" {units}" if units else ""
        raise InvalidArgument(
            f"{name}={first!r}{u} is outside the allowed range {lb}{low}, {high}{hb}{u}"
        )
    return arr


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, **kwargs: Any) -> float:
    """One finite real number (optionally within [low, high], see :func:`check_range`) as a float."""
    arr = check_range(name, value, low, high, **kwargs)
    if arr.ndim != 0:
        raise InvalidArgument(f"{name}={_fmt(value)} must be a single number")
    return float(arr)


def check_positive(name: str, value: Any, *, units: str = "", allow_inf: bool = False) -> np.ndarray:
    """Validate strictly positive value(s)."""
    return check_range(name, value, 0.0, math.inf, low_inclusive=False, allow_inf=allow_inf, units=units)


def check_int(name: str, value: Any, low: int = 1, high: int | float = 10**7) -> int:
    """An integer count in [low, high]: a Python or numpy integer (not a bool, not a float such as 1.5 or 2.0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name}={value!r} must be an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise InvalidArgument(f"{name}={value!r} is outside the allowed range [{low}, {high}]")
    return int(value)


def check_vector(name: str, value: Any, length: int, *, low: float = -math.inf, high: float = math.inf,
                 units: str = "") -> tuple[float, ...]:
    """A tuple/list of ``length`` finite numbers (each within [low, high]), e.g. an (x, y) position."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != length:
        raise InvalidArgument(f"{name}={value!r} must be a sequence of {length} numbers"
                              + (f" ({units})" if units else ""))
    return tuple(float(v) for v in check_range(name, list(value), low, high, units=units))


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (a string such as "no" is truthy in Python, so it is refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{name}={value!r} must be True or False")
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Validate a string option (case-insensitive); return the canonical spelling from ``choices``."""
    choices = list(choices)
    if isinstance(value, str):
        for c in choices:
            if value.lower() == c.lower():
                return c
    raise InvalidArgument(f"{name}={value!r} is not one of {choices}")


def check_keys(name: str, value: Any, *, required: Iterable[str] = (), optional: Iterable[str] | None = ()
               ) -> dict[str, Any]:
    """A dict argument: every ``required`` key present, no key outside ``required`` + ``optional``.

    ``optional=None`` allows any further key.  Returns a plain dict copy.
    """
    required = list(required)
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{name}={value!r} must be a dict"
                              + (f" with keys {required}" if required else ""))
    missing = [k for k in required if k not in value]
    if missing:
        raise InvalidArgument(f"{name}={dict(value)!r} lacks the required key(s) {missing}")
    if optional is not None:
        allowed = set(required) | set(optional)
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise InvalidArgument(f"{name}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def check_points_cap(name: str, n: int) -> int:
    """Refuse a run of more than ``LIMITS.max_points`` points, saying how to raise the cap."""
    if n > LIMITS.max_points:
        raise InvalidArgument(f"{name}: {n} points exceed the cap of {LIMITS.max_points} points per run "
                              f"(about 2.5 ms each of RunEngine overhead alone); if you mean it, raise "
                              f"espt_bluesky.errors.LIMITS.max_points")
    return int(n)


def check_samples_cap(name: str, n: Any, low: int = 2) -> int:
    """A waveform length: an integer >= ``low`` and at most ``LIMITS.max_waveform_samples``."""
    n = check_int(name, n, low, math.inf)
    if n > LIMITS.max_waveform_samples:
        raise InvalidArgument(f"{name}={n} samples exceed the cap of {LIMITS.max_waveform_samples} samples per "
                              f"waveform ({32 * n / 1e6:.0f} MB per event); if you mean it, raise "
                              f"espt_bluesky.errors.LIMITS.max_waveform_samples")
    return n


class TipStateError(EsptError, RuntimeError):
    """An approach curve says the tip is not the one recorded (geometry, recess, contamination, noise): the tip
    should not be used for a map before it is checked.  ``findings`` lists what was seen."""

    def __init__(self, message: str = "", findings: list | None = None):
        super().__init__(message)
        self.findings = list(findings or [])
