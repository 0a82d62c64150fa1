"""The self-passivating SEI (solid-electrolyte interphase) reaction: one law for every model that needs it.

Electrolyte reduction below ~0.8 V vs Li+/Li forms a film that blocks further reduction.  Per unit area of a
fresh surface the SEI current density is ``sei_rate · g(E)`` (A/m²), with the drive

    g(E) = 1 / (1 + 10^((E − onset)/b))

Tafel-like (b V/decade) above the onset, saturating at 1 well below it (the reduction becomes transport limited).
The film covers θ = 1 − exp(−q/Q_cap) of the surface after a charge density q (C/m²) and the SEI current scales
with (1 − θ), so dq/dt = sei_rate·g(E)·exp(−q/Q_cap), which integrates exactly to

    q(t) = Q_cap · ln(exp(q₀/Q_cap) + sei_rate·R(t)/Q_cap),   R(t) = ∫ g(E(t')) dt'.
"""

from __future__ import annotations

import math

import numpy as np

LN10 = math.log(10.0)


def sei_drive(potential, onset: float = 0.8, tafel: float = 0.12):
    """Dimensionless drive g(E) in [0, 1] (E and onset in V, tafel in V/decade); ½ at the onset."""
    x = (np.asarray(potential, dtype=float) - onset) * (LN10 / tafel)
    return 0.5 * (1.0 - np.tanh(0.5 * x))


def sei_drive_scalar(potential: float, onset: float, tafel: float) -> float:
    """Fast scalar form of :func:`sei_drive` for per-step loops."""
    return 0.5 * (1.0 - math.tanh(0.5 * (potential - onset) * LN10 / tafel))


def sei_drive_slope_scalar(potential: float, onset: float, tafel: float) -> float:
    """dg/dE in 1/V (≤ 0) for Newton iterations."""
    g = sei_drive_scalar(potential, onset, tafel)
    return -(LN10 / tafel) * g * (1.0 - g)


def sei_drive_integral(time, potential, onset: float = 0.8, tafel: float = 0.12) -> float:
    """R = ∫ g(E(t)) dt in s over a potential program (trapezoid rule)."""
    t = np.asarray(time, dtype=float)
    if t.size < 2:
        return 0.0
    return float(np.trapezoid(sei_drive(potential, onset, tafel), t))


def sei_charge_after(q0, rate, capacity, drive_integral):
    """Exact SEI charge density (C/m²) after a program with drive integral R (s): see the module docstring."""
    q0 = np.asarray(q0, dtype=float)
    return capacity * np.log(np.exp(q0 / capacity) + rate * drive_integral / capacity)
