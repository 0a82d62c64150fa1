"""Signals that carry their units, display precision and limits, and enforce the limits themselves.

``describe()`` gives ``units`` and ``precision`` (the BestEffortCallback's table shows pA currents with
``precision=14``) and, when they are finite, the limits as ``limits.control``.  ``put``/``set`` check the value
against the limits *before* anything changes and raise :class:`LimitViolation` naming the signal, the value and
the limits, so ``RE(bps.mv(pstat.tip.potential, 50.0))`` fails with nothing written, exactly as a plan's own
argument check would.  Limits may be fixed or computed when checked (the potentiostat's compliance, an axis's
soft limits).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

from ophyd import EpicsSignal, EpicsSignalRO, Signal
from ophyd.utils import LimitError

from ..errors import InvalidArgument

__all__ = ["CURRENT_PRECISION", "LimitViolation", "QuantityEpicsSignal", "QuantityEpicsSignalRO", "QuantitySignal"]

#: digits after the decimal point for currents in A: 1e-14 A resolution, so pA readings are not shown as 0.000
CURRENT_PRECISION = 14

Limits = Union[tuple[float, float], Callable[[Any], tuple[float, float]], None]


class LimitViolation(InvalidArgument, LimitError):
    """A value outside a device's compliance or soft limits (nothing was written or moved)."""


class QuantityMixin:
    """Units, precision and enforced limits for an ophyd signal class (see the module docstring).

    Parameters
    ----------
    units : str or callable, optional
        Engineering units ("um", "V", "A", "s", "V/s", "1" for a dimensionless number ...); a callable receives the
        signal (units that depend on a mode).
    precision : int, optional
        Digits after the decimal point for displays.
    limits : (low, high) or callable, optional
        Allowed values, inclusive; a callable receives the signal and returns them when a value is checked.
    limits_name : str
        What the limits are, for the error message (e.g. "potentiostat compliance").
    """

    def __init__(self, *args: Any, units: str | Callable[[Any], str] | None = None, precision: int | None = None,
                 limits: Limits = None, limits_name: str = "limits", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._q_units = units
        self._q_precision = precision
        self._q_limits = limits
        self._q_limits_name = limits_name

    @property
    def units(self) -> str | None:
        u = self._q_units
        return u(self) if callable(u) else u

    @property
    def limits(self) -> tuple[float, float]:
        lim = self._q_limits
        if lim is None:
            return super().limits
        lo, hi = lim(self) if callable(lim) else lim
        return float(lo), float(hi)

    def check_value(self, value: Any) -> None:
        if self._q_limits is None:
            return super().check_value(value)
        if value is None or isinstance(value, str):
            return
        lo, hi = self.limits
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise LimitViolation(f"{self.name}={value!r} is not a number; allowed: [{lo:g}, {hi:g}]"
                                 f"{' ' + self.units if self.units else ''}") from None
        if not (lo <= v <= hi) or math.isnan(v):
            u = f" {self.units}" if self.units else ""
            raise LimitViolation(f"{self.name}={value!r}{u} is outside its {self._q_limits_name} "
                                 f"[{lo:g}, {hi:g}]{u}; nothing was changed")

    def set(self, value: Any, **kwargs: Any):
        self.check_value(value)  # raise here, in the caller (the RunEngine), not in ophyd's set thread
        return super().set(value, **kwargs)

    def describe(self) -> dict[str, dict]:
        desc = super().describe()
        entry = desc[self.name]
        if self.units is not None:
            entry["units"] = self.units
        if self._q_precision is not None:
            entry["precision"] = int(self._q_precision)
        if self._q_limits is not None:
            lo, hi = self.limits
            if math.isfinite(lo) and math.isfinite(hi):
                entry["limits"] = {"control": {"low": lo, "high": hi}}
        return desc


class QuantitySignal(QuantityMixin, Signal):
    """A soft signal with units, precision and enforced limits."""


class QuantityEpicsSignal(QuantityMixin, EpicsSignal):
    """An EPICS signal with units, precision and limits enforced before the put (the IOC may also refuse)."""


class QuantityEpicsSignalRO(QuantityMixin, EpicsSignalRO):
    """A read-only EPICS signal with units and precision."""
