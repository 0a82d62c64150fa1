"""Fly-scan analysis: undo the probe's scan-direction lag, and tell from forward/backward lines whether the speed
was too high.

The forward model is :mod:`espt_bluesky.physics.scan_dynamics`: along a pass the recorded signal y is the
stationary signal x seen through a cascade of first-order lags, τ_k·y_k' = y_{k−1} − y_k.  Each stage inverts
exactly as y_{k−1} = y_k + τ_k·y_k'; :func:`lag_correct` applies that with a smoothed derivative (a
Savitzky–Golay derivative over ``smooth`` µm, which bounds the noise gain), pass by pass in acquisition order.

:func:`fly_speed_check` measures the shift between forward and backward images by cross-correlating each row
(sub-pixel, refined by the low-frequency slope of the cross-spectrum's phase), converts it to a time constant
(shift = 2·v·Στ) and compares the shift with the pixel.  The estimate is biased low by up to ~15 % when the shift is
comparable to the features (the phase of two mirror-image blurs is not linear in frequency): it tells whether the
speed was too high and by roughly how much; the exact time constants are the bench's or the instrument's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import signal

from ..errors import InvalidArgument, check_positive

__all__ = ["lag_correct", "lag_correct_lines", "forward_backward_shift", "fly_speed_check", "edge_width"]


def lag_correct(values: np.ndarray, dt: float, taus: Sequence[float], *, smooth: int | None = None,
                axis: int = -1) -> np.ndarray:
    """Invert the first-order lags of a signal sampled every ``dt`` s along its acquisition order.

    Parameters
    ----------
    values : ndarray
        Recorded signal, samples in acquisition (time) order along ``axis``.
    dt : float
        Sample interval (s).
    taus : sequence of float
        Time constants of the cascade (s), as the bench or the instrument reports them.
    smooth : int, optional
        Savitzky–Golay window (samples, odd, >= 5) of the derivative; default: the number of samples in
        max(Στ/4, 2·dt), at least 5.  Larger windows amplify noise less and sharpen edges less.

    Returns
    -------
    ndarray
        The estimate of the stationary signal (same shape).
    """
    y = np.asarray(values, float)
    dt = float(check_positive("dt", dt, units="s"))
    ts = [float(t) for t in taus if float(t) > 0]
    if not ts:
        return y.copy()
    if smooth is None:
        smooth = max(int(round(max(sum(ts) / 4.0, 2.0 * dt) / dt)), 5)
    w = int(smooth) | 1  # odd
    n = y.shape[axis]
    if w > n:
        w = n if n % 2 else n - 1
    if w < 5:
        raise InvalidArgument(f"lag_correct: {n} samples per line are too few to differentiate (need >= 5)")
    for tau in reversed(ts):
        deriv = signal.savgol_filter(y, w, 2, deriv=1, delta=dt, axis=axis, mode="interp")
        y = y + tau * deriv
    return y


def lag_correct_lines(lines: np.ndarray, dt: float, taus: Sequence[float], **kwargs: Any) -> np.ndarray:
    """:func:`lag_correct` on an array of passes (n_passes, samples): each pass in its own acquisition order."""
    return lag_correct(np.asarray(lines, float), dt, taus, axis=-1, **kwargs)


def _row_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Shift s (samples) that best maps ``a`` onto ``b`` (b(x) ≈ a(x − s)), sub-sample by a parabolic peak fit."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 8:
        return math.nan
    a = np.where(ok, a, np.nanmean(a[ok])) - np.nanmean(a[ok])
    b = np.where(ok, b, np.nanmean(b[ok])) - np.nanmean(b[ok])
    if not (np.any(a) and np.any(b)):
        return math.nan
    c = signal.correlate(b, a, mode="full")
    k = int(np.argmax(c))
    if 0 < k < c.size - 1:
        den = c[k - 1] - 2 * c[k] + c[k + 1]
        frac = 0.5 * (c[k - 1] - c[k + 1]) / den if den != 0 else 0.0
    else:
        frac = 0.0
    s = (k - (a.size - 1)) + frac
    # refine with the slope of the cross-spectrum's phase at low frequencies (b = a shifted by s: phase = -ω·s);
    # the correlation peak of two mirror-image blurs is biased towards zero, the low-frequency phase is not
    n = 4 * a.size
    cross = np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n))
    w = 2 * np.pi * np.fft.rfftfreq(n)
    for _ in range(3):
        sel = (w > 0) & (np.abs(w * s) < np.pi / 2) if s else (w > 0) & (w < np.pi / 8)
        phi = np.angle(cross[sel] * np.exp(1j * w[sel] * s))
        wt = np.abs(cross[sel])
        if not np.any(wt):
            break
        s = s - float(np.sum(wt * w[sel] * phi) / np.sum(wt * w[sel] ** 2))
    return s


def forward_backward_shift(forward: np.ndarray, backward: np.ndarray, pixel: float) -> tuple[float, float]:
    """Shift (µm) of the backward image relative to the forward one along x, and its row-to-row scatter.

    A probe lagging by ℓ = v·Στ draws forward lines displaced by +ℓ and backward lines by −ℓ, so the returned
    shift is about −2ℓ (backward features sit at smaller x).  Rows without contrast are skipped.

    Returns
    -------
    (shift, scatter) : float, µm
        Median shift over rows and the median absolute deviation of the per-row shifts.
    """
    f = np.atleast_2d(np.asarray(forward, float))
    b = np.atleast_2d(np.asarray(backward, float))
    if f.shape != b.shape:
        raise InvalidArgument(f"forward {f.shape} and backward {b.shape} images differ in shape")
    shifts = np.array([_row_shift(fr, br) for fr, br in zip(f, b)])
    shifts = shifts[np.isfinite(shifts)]
    if shifts.size == 0:
        return math.nan, math.nan
    med = float(np.median(shifts))
    return med * float(pixel), float(np.median(np.abs(shifts - med))) * float(pixel)


def fly_speed_check(forward: np.ndarray, backward: np.ndarray, *, pixel: float, speed: float,
                    tolerance: float | None = None) -> dict[str, Any]:
    """Was the speed too high?  Compare forward and backward images of a fly scan.

    Parameters
    ----------
    forward, backward : ndarray (ny, nx)
        Images of the same rows scanned in both directions.
    pixel : float
        Pixel size along x (µm).
    speed : float
        Scan speed (µm/s).
    tolerance : float, optional
        Largest forward/backward shift (µm) accepted; default one pixel.

    Returns
    -------
    dict
        ``shift`` (µm, backward relative to forward), ``scatter`` (µm), ``lag`` (µm, half the shift's size),
        ``tau`` (s, the response time the shift implies: |shift|/(2v)), ``too_fast`` (bool),
        ``max_speed`` (µm/s at which the shift would equal the tolerance) and ``message`` (a sentence for the user).
    """
    tol = float(pixel) if tolerance is None else float(tolerance)
    shift, scatter = forward_backward_shift(forward, backward, pixel)
    v = abs(float(speed))
    tau = abs(shift) / (2.0 * v) if math.isfinite(shift) and v > 0 else math.nan
    too_fast = bool(math.isfinite(shift) and abs(shift) > tol)
    max_speed = tol / (2.0 * tau) if tau and math.isfinite(tau) else math.inf
    if not math.isfinite(shift):
        msg = "no contrast to compare forward and backward lines"
    elif too_fast:
        msg = (f"too fast: backward lines are shifted by {shift:.3g} µm from forward ones (> {tol:.3g} µm), a "
               f"response time of {tau:.3g} s; scan at <= {max_speed:.3g} µm/s or apply lag_correct")
    else:
        msg = f"speed fine: forward/backward shift {shift:.3g} µm is within {tol:.3g} µm"
    return dict(shift=shift, scatter=scatter, lag=abs(shift) / 2 if math.isfinite(shift) else math.nan, tau=tau,
                too_fast=too_fast, max_speed=max_speed, message=msg)


def edge_width(x: np.ndarray, profile: np.ndarray, low: float = 0.1, high: float = 0.9) -> float:
    """Distance (same units as ``x``) over which a single edge in ``profile`` goes from ``low`` to ``high`` of its
    step: the profile is normalised to 0 on its left plateau and 1 on its right one (means of the first and last
    15 % of points, ordered by x) and the first crossings of the two levels are interpolated linearly."""
    x = np.asarray(x, float)
    order = np.argsort(x)
    x, p = x[order], np.asarray(profile, float)[order]
    n = max(int(0.15 * p.size), 1)
    p0, p1 = np.nanmean(p[:n]), np.nanmean(p[-n:])
    u = (p - p0) / (p1 - p0)

    def crossing(level: float) -> float:
        idx = np.flatnonzero((u[:-1] < level) & (u[1:] >= level))
        if idx.size == 0:
            return math.nan
        i = int(idx[0])
        return float(x[i] + (level - u[i]) * (x[i + 1] - x[i]) / (u[i + 1] - u[i]))

    return abs(crossing(high) - crossing(low))
