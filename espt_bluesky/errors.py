"""Exceptions and argument validation shared by every layer (imports nothing from the package)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


class EsptError(Exception):
    """Base class of espt_bluesky errors."""


class InvalidArgument(EsptError, ValueError):
    """An argument is outside what is allowed.  The message names argument, value and allowed range."""


class TipCrash(EsptError, RuntimeError):
    """The probe touched or went below the sample surface."""


class Overload(EsptError, RuntimeError):
    """A measured current exceeded the potentiostat's current range."""


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
    arr = np.asarray(value)
    if arr.ndim == 0:
        return repr(value)
    return f"array of shape {arr.shape}"


def check_finite(name: str, value: Any) -> np.ndarray:
    """Return ``value`` as a float array; raise :class:`InvalidArgument` if it holds NaN/inf."""
    arr = np.asarray(value, dtype=float)
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
    """Validate that every element of ``value`` lies in the given interval; return it as a float array.

    The error names the argument, the offending value and the allowed interval.
    """
    arr = np.asarray(value, dtype=float)
    if np.any(np.isnan(arr)):
        raise InvalidArgument(f"{name}={_fmt(value)} contains NaN; a number is required")
    if not allow_inf and np.any(np.isinf(arr)):
        raise InvalidArgument(f"{name}={_fmt(value)} is infinite; a finite number is required")
    lo_ok = arr >= low if low_inclusive else arr > low
    hi_ok = arr <= high if high_inclusive else arr < high
    bad = ~(lo_ok & hi_ok)
    if np.any(bad):
        first = arr[bad].flat[0] if arr.ndim else float(arr)
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        u = f" {units}" if units else ""
        raise InvalidArgument(
            f"{name}={first!r}{u} is outside the allowed range {lb}{low}, {high}{hb}{u}"
        )
    return arr


def check_positive(name: str, value: Any, *, units: str = "", allow_inf: bool = False) -> np.ndarray:
    """Validate strictly positive value(s)."""
    return check_range(name, value, 0.0, math.inf, low_inclusive=False, allow_inf=allow_inf, units=units)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Validate a string option (case-insensitive); return the canonical spelling from ``choices``."""
    choices = list(choices)
    if isinstance(value, str):
        for c in choices:
            if value.lower() == c.lower():
                return c
    raise InvalidArgument(f"{name}={value!r} is not one of {choices}")
