"""Approach criteria: convert a stop criterion into a tip–surface distance, and locate the surface on an
approach curve.  Plain numpy over the forward models of ``physics`` (the plans call these, never the physics).

Units: distances and heights in µm, currents normalised (SECM: I_T = i_T/i_T,inf; SICM: I/I_far).
"""

from __future__ import annotations

import numpy as np

from ..errors import check_choice, check_positive, check_range
from ..physics import secm, sicm

SUBSTRATES = ("conductor", "insulator")
_KAPPA = {"conductor": np.inf, "insulator": 0.0}
_L_MIN, _L_MAX = 0.02, 200.0


def secm_current(L, rg: float, substrate: str):
    """SECM feedback I_T(L) over a diffusion-limited ``conductor`` or an inert ``insulator`` (dimensionless)."""
    substrate = check_choice("substrate", substrate, SUBSTRATES)
    return secm.feedback_current(np.asarray(L, float), rg, _KAPPA[substrate])


def secm_distance(current, rg: float, substrate: str) -> np.ndarray:
    """Invert the SECM feedback curve: L = d/a at which I_T equals ``current`` (vectorised bisection).

    Parameters
    ----------
    current : array_like
        Normalised tip current(s) I_T.  Conductor: I_T > 1; insulator: 0 < I_T < 1.  Values beyond the curve's
        range (noise far away) are clipped to L in [0.02, 200].
    rg : float
        RG of the tip (> 1).
    substrate : {"conductor", "insulator"}

    Returns
    -------
    numpy.ndarray
        L (dimensionless; multiply by the tip radius a for µm).

    Examples
    --------
    >>> I_T = secm_current([0.5, 1.0, 2.0], 10, "insulator")   # 0.286, 0.491, 0.722 (exact model)
    >>> np.round(secm_distance(I_T, 10, "insulator"), 6).tolist()
    [0.5, 1.0, 2.0]
    """
    substrate = check_choice("substrate", substrate, SUBSTRATES)
    check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    i = np.asarray(current, float)
    lo = np.full(i.shape, np.log(_L_MIN))
    hi = np.full(i.shape, np.log(_L_MAX))
    sign = -1.0 if substrate == "conductor" else 1.0  # I decreases (conductor) / increases (insulator) with L
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        f = secm.feedback_current(np.exp(mid), rg, _KAPPA[substrate])
        too_close = sign * (f - i) < 0  # at mid the current is still "closer" than the target: go farther
        lo = np.where(too_close, mid, lo)
        hi = np.where(too_close, hi, mid)
    return np.exp(0.5 * (lo + hi))


def secm_threshold_distance(threshold: float, rg: float, substrate: str) -> float:
    """L at which the feedback curve crosses ``threshold`` (validated: > 1 for a conductor, in (0, 1) for an
    insulator, and reachable for L >= 0.02)."""
    substrate = check_choice("substrate", substrate, SUBSTRATES)
    lim = float(secm_current(_L_MIN, rg, substrate))
    if substrate == "conductor":
        check_range("threshold", threshold, 1.0, lim, low_inclusive=False, high_inclusive=False)
    else:
        check_range("threshold", threshold, lim, 1.0, low_inclusive=False, high_inclusive=False)
    return float(secm_distance(threshold, rg, substrate))


def surface_from_secm_curve(z, current, radius: float, rg: float, substrate: str, threshold: float,
                            n_last: int = 3) -> tuple[float, float]:
    """Surface height (µm) from the end of a recorded SECM approach curve.

    Each of the last ``n_last`` points that lie beyond 80 % of the way from 1 to ``threshold`` (the steep part of
    the curve, where the footprint a + d is smallest) gives z_s = z − a·L(I); the mean is returned with its
    standard error (µm; 0 for a single point).

    Parameters
    ----------
    z : array_like
        Tip heights (µm) of the approach curve, in acquisition order.
    current : array_like
        Normalised tip currents I_T at those heights.
    radius : float
        Tip radius a (µm).
    rg : float
        RG of the tip.
    substrate : {"conductor", "insulator"}
    threshold : float
        The stop threshold that ended the approach.
    """
    check_positive("radius", radius, units="µm")
    z = np.asarray(z, float)
    i = np.asarray(current, float)
    near = np.abs(i - 1.0) >= 0.8 * abs(threshold - 1.0)
    idx = np.flatnonzero(near)[-int(n_last):]
    if idx.size == 0:
        idx = np.array([z.size - 1])
    zs = z[idx] - radius * secm_distance(i[idx], rg, substrate)
    err = float(np.std(zs, ddof=1) / np.sqrt(zs.size)) if zs.size > 1 else 0.0
    return float(np.mean(zs)), err


def sicm_setpoint_distance(drop: float, inner_radius: float, outer_radius: float, half_angle: float) -> float:
    """Tip–surface distance (µm) at which the SICM ion current has dropped by the fraction ``drop``
    (0 < drop < 1), from the ohmic model :func:`espt_bluesky.physics.sicm.distance_for_current_drop`."""
    check_range("drop", drop, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return float(sicm.distance_for_current_drop(drop, inner_radius, outer_radius, half_angle))


def predicted_remaining(z, progress, fine_step: float, coarse_step: float, gain: float = 0.3) -> float:
    """Next approach step (µm) from the slope of the normalised progress signal.

    ``progress`` runs from 0 (far) to 1 (criterion met).  The remaining travel is extrapolated linearly from a
    least-squares slope over the last three points; the step is ``gain`` times that, clipped to
    [fine_step, coarse_step].  A flat or noisy slope gives the coarse step.
    """
    z = np.asarray(z, float)[-3:]
    p = np.asarray(progress, float)[-3:]
    if z.size < 2 or np.ptp(z) == 0:
        return float(coarse_step if p[-1] < 0.5 else fine_step)
    slope = -np.polyfit(z, p, 1)[0]  # progress gained per µm of downward travel
    if p[-1] >= 0.5:
        cap = fine_step if p[-1] >= 0.85 else max(fine_step, 0.25 * coarse_step)
    else:
        cap = coarse_step
    if slope <= 0:
        return float(cap)
    remaining = (1.0 - p[-1]) / slope
    if remaining <= 0:
        return float(fine_step)
    return float(np.clip(gain * remaining, fine_step, cap))


def secm_distance_estimate(current, rg: float) -> np.ndarray:
    """L = d/a estimated from a normalised SECM current whatever the substrate: I_T < 1 read on the insulator
    curve, I_T > 1 on the conductor curve (the larger of the two possible distances for a partly active
    substrate is never overestimated by more than the kinetics allow; used to bound approach steps)."""
    i = np.asarray(current, float)
    L_ins = secm_distance(np.clip(i, 1e-6, 1 - 1e-9), rg, "insulator")
    L_con = secm_distance(np.clip(i, 1 + 1e-9, None), rg, "conductor")
    return np.where(i < 1.0, L_ins, L_con)
