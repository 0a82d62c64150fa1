"""Surface height of one hop from its readings: unbiased SICM/SECCM heights, honest errors, a slope margin.

Plain numpy functions shared by the device-side hopping controller (:mod:`espt_bluesky.devices.hopper`) and the
plan-driven hop (:mod:`espt_bluesky.plans.hopping`), so both modes estimate a height the same way.

Why these and not "the height where the criterion fired": an approach stops at the first step whose reading
crosses the criterion, i.e. somewhere up to one step past the crossing, and the reading that fired was selected for
being low (noise).  Both bias the height downwards (about half a step, more with noise).  Here the stop only decides
*where* to measure; the height comes from fresh readings taken at the stop, which no decision selected, mapped
through the current–distance curve (SICM), or from the two heights that bracket a binary event (SECCM contact).

Units: heights and distances µm, currents A (any consistent unit: only ratios enter).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..physics import sicm

__all__ = ["sicm_gap_from_ratio", "sicm_far_current", "sicm_hop_surface", "contact_crossing", "local_slope",
           "sicm_stop_distance", "samples_for_precision", "pipette_access_length", "default_max_slope",
           "sicm_gap_lower_bound", "sicm_next_step", "sicm_reading_samples", "auto_max_slope"]

#: neighbour slopes (one hop spacing) underestimate the steepest slope under the end face near a rim
SLOPE_FACTOR = 2.0


def sicm_gap_from_ratio(ratio: ArrayLike, access_length: float) -> np.ndarray:
    """Gap d (µm) from the normalised ion current S = I/I_sat = d/(d + A): d = A·S/(1 − S).

    Ratios ≥ 1 (noise far from the surface) give +inf.
    """
    s = np.asarray(ratio, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(s < 1.0, access_length * s / (1.0 - s), np.inf)
    return d


def sicm_far_current(i_top: float, gap_top: float, access_length: float) -> float:
    """The far current I_sat from the current ``i_top`` read ``gap_top`` µm above the surface (top of a hop).

    I(d)/I_sat = d/(d + A), so I_sat = i_top·(d + A)/d: the top of a 2 µm hop already reads ~0.1 % low with a
    50 nm pipette, which shifts a 1–2 % setpoint by a few nm if left uncorrected.
    """
    if not math.isfinite(gap_top) or gap_top <= 0:
        return float(i_top)
    return float(i_top) * (gap_top + access_length) / gap_top


def sicm_hop_surface(z_stop: float, i_stop: float, i_top: float, z_top: float, access_length: float, *,
                     sigma_ratio: float = 0.0, n_iter: int = 4) -> tuple[float, float, float]:
    """Surface height under a pipette from fresh readings at the stop of a hop.

    Parameters
    ----------
    z_stop : float
        Tip height (µm) where the approach stopped.
    i_stop : float
        Mean of readings taken at ``z_stop`` *after* the stop was decided (A).
    i_top, z_top : float
        Mean current at the top of the hop (A) and the height it was read at (µm).
    access_length : float
        A of the pipette (µm), :func:`espt_bluesky.physics.sicm.access_length`.
    sigma_ratio : float
        Standard error of ``i_stop/I_sat`` (from the measured noise and the number of samples averaged).
    n_iter : int
        Fixed-point iterations of (surface → gap at the top → I_sat → surface); 2–3 converge to < 0.1 nm.

    Returns
    -------
    (surface_z, surface_z_err, i_sat)
        Surface height (µm), its standard error from the noise (µm), and the far current (A).
    """
    i_sat = float(i_top)
    surface = math.nan
    gap = math.nan
    for _ in range(max(1, int(n_iter))):
        s = abs(i_stop / i_sat)
        gap = float(sicm_gap_from_ratio(s, access_length))
        if s < 1:  # d(S) is convex: E[d(S + noise)] = d(S) + A σ²/(1 − S)³ to second order
            gap -= access_length * sigma_ratio**2 / (1.0 - s) ** 3
        surface = z_stop - gap
        i_sat = sicm_far_current(i_top, z_top - surface, access_length)
    s = abs(i_stop / i_sat)
    # dd/dS = A/(1 − S)²: the gap's sensitivity to the current at the stop
    err = sigma_ratio * access_length / max(1.0 - s, 1e-12) ** 2 if s < 1 else math.inf
    return float(surface), float(err), float(i_sat)


def contact_crossing(z_before: float, z_after: float) -> tuple[float, float]:
    """Height of a binary event (the meniscus touching) known to lie between two readings (µm).

    Returns the midpoint and its standard error |Δz|/√12 (uniform between the two readings); the height of the
    reading that saw it is half a step low on average.
    """
    return 0.5 * (z_before + z_after), abs(z_before - z_after) / math.sqrt(12.0)


def local_slope(xs: Sequence[float], ys: Sequence[float], zs: Sequence[float], x: float, y: float, *,
                reach: float = 1.6) -> float:
    """Steepest slope |Δz|/|Δxy| among the measured points around (x, y) (dimensionless; 0 if fewer than two).

    The neighbourhood is every point within ``reach`` times the distance to the nearest one; the slope is the
    largest over pairs of them.  Used before a hop to keep the pipette's end face clear of a steep sample
    (:func:`espt_bluesky.physics.sicm.slope_safe_distance`).
    """
    px, py, pz = (np.asarray(v, float) for v in (xs, ys, zs))
    ok = np.isfinite(pz)
    px, py, pz = px[ok], py[ok], pz[ok]
    if pz.size < 2:
        return 0.0
    dist = np.hypot(px - x, py - y)
    near = dist <= reach * max(float(dist.min()), 1e-9)
    px, py, pz = px[near], py[near], pz[near]
    if pz.size < 2:
        return 0.0
    dxy = np.hypot(px[:, None] - px[None, :], py[:, None] - py[None, :])
    dz = np.abs(pz[:, None] - pz[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(dxy > 1e-9, dz / dxy, 0.0)
    return float(s.max())


def sicm_stop_distance(d_set: float, outer_radius: float, max_slope: float = 0.0,
                       history: Sequence[tuple[float, float, float]] = (), x: float = 0.0, y: float = 0.0,
                       step: float = 0.0) -> float:
    """Axis gap (µm) a SICM hop stops at: the setpoint distance, or more where the sample may be steep.

    The end face's rim clears a slope s only if the axis gap exceeds s·r_o.  ``max_slope`` (the steepest slope the
    user expects) and the slopes between the hops already made around (x, y) (``history`` of (x, y, surface),
    times :data:`SLOPE_FACTOR`) raise the stop distance to s·r_o + max(d_set/4, step): an approach stops up to
    one ``step`` past the distance it looks for.
    """
    s = float(max_slope)
    if len(history) >= 2:
        hx, hy, hz = zip(*history)
        s = max(s, SLOPE_FACTOR * local_slope(hx, hy, hz, x, y))
    if s <= 0:
        return float(d_set)
    return max(float(d_set), s * float(outer_radius) + max(0.25 * float(d_set), float(step)))


def samples_for_precision(sigma_sample: float, ratio: float, access_length: float, target: float, *,
                          low: int = 16, high: int = 4096) -> int:
    """Samples to average so that the gap from a SICM reading at I/I_sat = ``ratio`` is known to ``target`` µm.

    The gap's sensitivity to the normalised current is A/(1 − S)²; with ``sigma_sample`` the relative noise of one
    sample, n = (σ·A/(1 − S)²/target)², clipped to [low, high].
    """
    per_sample = float(sigma_sample) * access_length / max(1.0 - float(ratio), 1e-9) ** 2
    return int(np.clip(np.ceil((per_sample / max(float(target), 1e-12)) ** 2), low, high))


def pipette_access_length(inner_radius: float, outer_radius: float, half_angle: float) -> float:
    """A (µm) of a pipette's current–distance curve I/I_sat = d/(d + A) (:func:`espt_bluesky.physics.sicm.
    access_length`)."""
    return float(sicm.access_length(inner_radius, outer_radius, half_angle))


def default_max_slope(half_angle: float) -> float:
    """The steepest slope a pipette of half-cone angle ``half_angle`` (degrees) can image: cot θ (dimensionless).

    A surface steeper than the pipette's own flank (90° − θ from the horizontal) meets the side wall whatever the
    end face does, so no hop can follow it (5°: cot θ = 11.4).
    """
    th = math.radians(float(half_angle))
    if not 0.0 < th < 0.5 * math.pi:
        raise ValueError(f"half_angle={half_angle!r} deg: allowed 0 < half_angle < 90")
    return float(min(1.0 / math.tan(th), 100.0))


def auto_max_slope(half_angle: float, outer_radius: float, access_length: float, d_set: float, step: float,
                   sigma_sample: float, *, n_max: int = 4096) -> float:
    """The slope margin of ``max_slope=None``: the steepest slope a hop can clear while its height is still
    measured to a quarter step within ``n_max`` samples, and never more than the pipette can image (cot θ).

    The further above the surface a hop stops, the smaller the current drop there and the more samples a
    quarter-step height takes (n ∝ (A/(1 − S)²)²); with ``sigma_sample`` the relative noise of one sample, the
    stop distance at which n reaches ``n_max`` is D = A/(1 − S) − A with (1 − S)² = σ·A/(t·√n_max),
    t = step/(4√2), and the slope it clears is (D − max(d_set/4, step))/r_o (0 if that is negative).  With the
    bench's 0.5 % noise and its 5° pipette: 7.5 at a 1 % drop, 5.4 at 2 %, i.e. rims up to ~80° — beyond them
    a hop may touch (recorded as a fault and skipped); pass ``max_slope`` up to cot θ to clear them at a cost
    in precision.  Noise 0: cot θ.
    """
    cap = default_max_slope(half_angle)
    sig = float(sigma_sample)
    if not math.isfinite(sig) or sig <= 0.0:
        return cap
    t = 0.25 * float(step) / math.sqrt(2.0)
    one_minus_s = math.sqrt(sig * float(access_length) / (t * math.sqrt(float(n_max))))
    if one_minus_s >= 1.0:
        return 0.0
    d_max = float(access_length) * (1.0 - one_minus_s) / one_minus_s
    s = (d_max - max(0.25 * float(d_set), float(step))) / float(outer_radius)
    return float(np.clip(s, 0.0, cap))


def sicm_gap_lower_bound(ratio: float, sigma_ratio: float, access_length: float, descended: float = math.inf,
                         k: float = 4.0) -> float:
    """A k-σ lower bound (µm) on the gap from a reading ``descended`` µm below the reference reading.

    ``ratio`` is the present current over the reference read at the top of the hop (standard error
    ``sigma_ratio``).  The reference itself lies on the curve, at the gap d + Δ (Δ = ``descended``), so the two
    readings fit I/I_sat = d/(d + A) with both the gap and I_sat unknown:
    r = [d/(d + A)]·[(d + Δ + A)/(d + Δ)], i.e. (1 − r)·d² + (1 − r)(A + Δ)·d − r·A·Δ = 0.  (Δ = inf: the
    reference is I_sat, d = A·r/(1 − r).)  No assumption on where the surface is: the first hop of a map, or one
    onto a rim higher than its neighbours, is bounded as safely as any other.  The bound is the gap of r − k·σ
    (0 when that is ≤ 0, +inf when it is ≥ 1); it grows as √(A·Δ/(k·σ)) while the current stays flat.
    """
    r = float(ratio) - float(k) * float(sigma_ratio)
    if r <= 0.0:
        return 0.0
    if r >= 1.0:
        return math.inf
    A = float(access_length)
    dz = float(descended)
    if not math.isfinite(dz):
        return A * r / (1.0 - r)
    if dz <= 0.0:
        return 0.0
    b = (1.0 - r) * (A + dz)
    return float(2.0 * r * A * dz / (b + math.sqrt(b * b + 4.0 * (1.0 - r) * r * A * dz)))


def sicm_next_step(ratio: float, sigma_ratio: float, access_length: float, d_stop: float, step_min: float,
                   step_max: float, *, descended: float = math.inf, k: float = 4.0, alpha: float = 0.7) -> float:
    """Next approach step (µm) of a SICM hop, adapted to the current–distance curve as it comes in.

    The readings so far bound the gap from below (:func:`sicm_gap_lower_bound`: the present reading against the
    reference read ``descended`` µm higher); the step is ``alpha`` of what lies between that bound and the stop
    distance ``d_stop``, clipped to [``step_min``, ``step_max``].  Far away the bound grows with the descent
    (the current stays flat) and the steps are coarse; as the current starts to drop the bound tightens onto the
    true gap and the steps shrink to ``step_min`` near the stop.  Because a step never exceeds ``alpha`` of a
    k-σ lower bound of the remaining distance, the tip cannot pass the stop by more than ``step_min`` unless a
    reading is off by several times k·σ.
    """
    d_lo = sicm_gap_lower_bound(ratio, sigma_ratio, access_length, descended, k)
    room = d_lo - float(d_stop)
    if not math.isfinite(room):
        return float(max(step_min, step_max))
    return float(np.clip(alpha * room, step_min, max(step_min, step_max)))


def sicm_reading_samples(sigma_sample: float, access_length: float, d_stop: float, *, k: float = 4.0,
                         reach: float = 4.0, low: int = 4, high: int = 4096) -> int:
    """Samples per approach reading so that the curve reaches ``reach``·``d_stop`` at k σ (see
    :func:`sicm_next_step`): n = (reach·k·σ·d_stop/A)², clipped to [low, high].

    This is also what resolves the stop itself: at ``d_stop`` the current has dropped by ≈ A/d_stop, which is then
    ``reach``·k reading-σ below the far current (no false stops far away, a crossing seen within a step or two).
    ``reach`` = 2 would minimise the samples per µm of descent far above the surface; 4 (default) halves the
    number of steps near it (a reading at a finite gap bounds it well below the curve's full reach) for about
    1.3× the samples of a hop.
    """
    n = (float(reach) * float(k) * float(sigma_sample) * float(d_stop) / max(float(access_length), 1e-15)) ** 2
    return int(np.clip(math.ceil(n), low, high))
