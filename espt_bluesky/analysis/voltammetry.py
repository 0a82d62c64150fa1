"""Analysis of cyclic voltammograms: cycle splitting, charges, passivation ratio, peaks, onset potential.

Units: time s, potential V, current A (IUPAC sign: anodic positive, cathodic negative), charge C.
Charges are returned as positive numbers for both directions.  Integrals use the exact integral of the
piecewise-linear interpolant of the samples (the positive/negative parts are split at the interpolated zero
crossings), so no charge is lost or double counted where the current changes sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from espt_bluesky.errors import InvalidArgument, check_choice, check_finite, check_range

__all__ = [
    "CycleCharges",
    "CyclePeaks",
    "split_cycles",
    "cycle_charges",
    "passivation_ratio",
    "peak_currents_and_potentials",
    "onset_potential",
]


# ------------------------------------------------------------------------------------------------ validation
def _arrays(**named) -> list[np.ndarray]:
    out = []
    n = None
    first = None
    for name, value in named.items():
        if value is None:
            raise InvalidArgument(f"{name} is None; an array is required")
        arr = np.asarray(value, dtype=float)
        if arr.ndim != 1:
            raise InvalidArgument(f"{name} must be one-dimensional, got shape {arr.shape}")
        if arr.size == 0:
            raise InvalidArgument(f"{name} is empty; at least 2 samples are required")
        arr = check_finite(name, arr)
        if n is None:
            n, first = arr.size, name
        elif arr.size != n:
            raise InvalidArgument(f"{name} has {arr.size} samples but {first} has {n}; lengths must match")
        out.append(arr)
    if n is not None and n < 2:
        raise InvalidArgument(f"{first} has {n} sample; at least 2 are required")
    return out


def _check_time(t: np.ndarray) -> None:
    if np.any(np.diff(t) <= 0):
        raise InvalidArgument("t must be strictly increasing")


# ------------------------------------------------------------------------------------------------ integrals
def _signed_part_integrals(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Exact integrals of max(y, 0) and max(-y, 0) of the piecewise-linear interpolant of (t, y)."""
    if t.size < 2:
        return 0.0, 0.0
    dt = np.diff(t)
    y0, y1 = y[:-1], y[1:]
    pos = np.where((y0 >= 0) & (y1 >= 0), 0.5 * (y0 + y1) * dt, 0.0)
    neg = np.where((y0 <= 0) & (y1 <= 0), -0.5 * (y0 + y1) * dt, 0.0)
    cross = (y0 * y1) < 0
    if np.any(cross):
        a, b, h = y0[cross], y1[cross], dt[cross]
        frac = a / (a - b)  # fraction of the interval before the zero crossing
        first = 0.5 * a * frac * h  # signed area before the crossing
        second = 0.5 * b * (1.0 - frac) * h
        pos_c = np.where(a > 0, first, second)
        neg_c = np.where(a < 0, -first, -second)
        pos[cross] = pos_c
        neg[cross] = neg_c
    return float(pos.sum()), float(neg.sum())


def charge_passed(t: np.ndarray, i: np.ndarray) -> float:
    """Net charge (C) of a current record: ∫ i dt, anodic positive (t in s, i in A; trapezoid rule)."""
    t, i = _arrays(t=t, i=i)
    _check_time(t)
    pos, neg = _signed_part_integrals(t, i)
    return pos - neg


# ------------------------------------------------------------------------------------------------ cycles
def split_cycles(
    t: np.ndarray,
    E: np.ndarray,
    e_ref: Optional[float] = None,
    include_partial: bool = False,
) -> list[slice]:
    """Split a cyclic potential program into cycles.

    A cycle starts where the sweep passes (or turns at) the reference potential ``e_ref`` (default ``E[0]``)
    moving in the initial sweep direction; for a program ``e_start → v1 → v2 → e_start`` repeated, this gives
    exactly one slice per programmed cycle, including when ``e_start`` is itself a vertex.  Adjacent cycles
    share their boundary sample, so integrals over all cycles add up to the integral over the whole record.

    Parameters
    ----------
    t : array_like
        Time, s (strictly increasing).
    E : array_like
        Potential, V (same length).
    e_ref : float, optional
        Cycle start potential, V (default ``E[0]``).
    include_partial : bool
        Also return a trailing incomplete cycle (one that does not return to ``e_ref`` after at least one
        reversal).

    Returns
    -------
    list of slice
        Index slices into the arrays, one per cycle, in order.
    """
    t, E = _arrays(t=t, E=E)
    _check_time(t)
    if e_ref is None:
        e_ref = float(E[0])
    else:
        e_ref = float(check_finite("e_ref", e_ref))
    dE = np.diff(E)
    nz = np.flatnonzero(dE != 0)
    if nz.size == 0:
        raise InvalidArgument("E is constant; there is no sweep to split into cycles")
    d0 = np.sign(dE[nz[0]])
    step = float(np.max(np.abs(dE)))
    tol = 1e-9 * max(1.0, float(np.max(np.abs(E))))
    # direction of travel per sample interval, with zero-length intervals taking the previous direction
    sgn = np.sign(dE)
    idx = np.where(sgn != 0, np.arange(sgn.size), 0)
    np.maximum.accumulate(idx, out=idx)
    sgn = sgn[idx]
    sgn[sgn == 0] = d0
    s = (E - e_ref) * d0  # < 0: behind e_ref relative to the initial direction
    bounds = {0}
    # crossings of e_ref moving in the initial direction
    cross = np.flatnonzero((s[:-1] < -tol) & (s[1:] >= -tol) & (sgn == d0)) + 1
    bounds.update(int(k) for k in cross)
    # turning points at e_ref (e_ref is a vertex): last sample before the direction becomes d0 again
    turn = np.flatnonzero((sgn[:-1] == -d0) & (sgn[1:] == d0)) + 1
    for k in turn:
        if abs(E[k] - e_ref) <= step + tol:
            bounds.add(int(k))
    b = sorted(bounds)
    # merge boundaries closer than 2 samples (a crossing right next to a turning point)
    merged = [b[0]]
    for k in b[1:]:
        if k - merged[-1] > 2:
            merged.append(k)
    last = E.size - 1
    slices = [slice(a, c + 1) for a, c in zip(merged[:-1], merged[1:])]
    if merged[-1] < last:
        tail = slice(merged[-1], last + 1)
        seg = sgn[merged[-1] : last]
        reversed_ = np.any(seg != seg[0]) if seg.size else False
        complete = reversed_ and abs(E[last] - e_ref) <= step + tol
        if complete or include_partial:
            slices.append(tail)
    return slices


@dataclass
class CycleCharges:
    """Per-cycle charges.

    Attributes
    ----------
    cathodic : ndarray
        Cathodic charge per cycle, C (positive numbers): ∫ max(-i, 0) dt.
    anodic : ndarray
        Anodic charge per cycle, C (positive): ∫ max(i, 0) dt.
    cycles : list of slice
        The index slices used.
    """

    cathodic: np.ndarray
    anodic: np.ndarray
    cycles: list

    @property
    def net(self) -> np.ndarray:
        """Net charge per cycle, C (anodic - cathodic; negative = net reduction)."""
        return self.anodic - self.cathodic


def _window_mask(E: np.ndarray, e_window) -> Optional[np.ndarray]:
    if e_window is None:
        return None
    lo, hi = (float(v) for v in check_finite("e_window", e_window))
    if not lo < hi:
        raise InvalidArgument(f"e_window={e_window!r} must be (low, high) with low < high, V")
    return (E >= lo) & (E <= hi)


def _cycle_inputs(t, E, i, e_window, cycles, include_partial):
    """Validated arrays, the cycles (split unless given) and the potential-window mask of a CV record."""
    t, E, i = _arrays(t=t, E=E, i=i)
    _check_time(t)
    if cycles is None:
        cycles = split_cycles(t, E, include_partial=include_partial)
    return t, E, i, cycles, _window_mask(E, e_window)


def cycle_charges(
    t: np.ndarray,
    E: np.ndarray,
    i: np.ndarray,
    e_window: Optional[Sequence[float]] = None,
    cycles: Optional[list] = None,
    include_partial: bool = False,
) -> CycleCharges:
    """Cathodic and anodic charge per cycle.

    Parameters
    ----------
    t, E, i : array_like
        Time (s), potential (V), current (A; cathodic negative), same length.
    e_window : (float, float), optional
        Only count charge passed while E is within [low, high] V (e.g. the SEI region below ~0.8 V vs Li+/Li);
        samples outside the window contribute zero current.
    cycles : list of slice, optional
        Precomputed cycles (default :func:`split_cycles`).
    include_partial : bool
        Passed to :func:`split_cycles`.

    Returns
    -------
    CycleCharges
    """
    t, E, i, cycles, mask = _cycle_inputs(t, E, i, e_window, cycles, include_partial)
    y = i if mask is None else np.where(mask, i, 0.0)
    qc, qa = [], []
    for sl in cycles:
        pos, neg = _signed_part_integrals(t[sl], y[sl])
        qa.append(pos)
        qc.append(neg)
    return CycleCharges(cathodic=np.asarray(qc, float), anodic=np.asarray(qa, float), cycles=list(cycles))


def passivation_ratio(
    t: np.ndarray,
    E: np.ndarray,
    i: np.ndarray,
    e_window: Optional[Sequence[float]] = None,
    first: int = 0,
    second: int = 1,
) -> float:
    """Passivation ratio Q_p2/Q_p1: cathodic charge of cycle ``second`` over that of cycle ``first``.

    The SECCM screening quantity of Martín-Yerga et al. (2021, 2022): < 1 when the first cycle's
    irreversible (SEI) charge is not repeated.  Use ``e_window`` to restrict to the SEI region.

    Returns
    -------
    float
        Dimensionless ratio.
    """
    q = cycle_charges(t, E, i, e_window=e_window)
    n = q.cathodic.size
    for name, k in (("first", first), ("second", second)):
        if not isinstance(k, (int, np.integer)) or not -n <= k < n:
            raise InvalidArgument(f"{name}={k!r} is not a valid cycle index; the record has {n} complete cycles")
    if q.cathodic[first] <= 0:
        raise InvalidArgument(f"cycle {first} has zero cathodic charge; the ratio is undefined")
    return float(q.cathodic[second] / q.cathodic[first])


@dataclass
class CyclePeaks:
    """Cathodic and anodic peaks per cycle (arrays of length n_cycles).

    Attributes
    ----------
    ip_cathodic, ip_anodic : ndarray
        Peak currents, A (cathodic negative, anodic positive; as measured, no baseline subtraction).
    Ep_cathodic, Ep_anodic : ndarray
        Peak potentials, V (parabolic refinement through the three samples around the extremum).
    delta_Ep : ndarray
        Peak separation Ep_anodic - Ep_cathodic, V.
    cycles : list of slice
    """

    ip_cathodic: np.ndarray
    ip_anodic: np.ndarray
    Ep_cathodic: np.ndarray
    Ep_anodic: np.ndarray
    delta_Ep: np.ndarray
    cycles: list


def _refine(E: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    """Vertex of the parabola through samples k-1, k, k+1 in (E, y); falls back to the sample."""
    if 0 < k < y.size - 1:
        x0, x1, x2 = E[k - 1], E[k], E[k + 1]
        y0, y1, y2 = y[k - 1], y[k], y[k + 1]
        # samples closer than ~1e-9 of the window (a waveform's repeated set point, rounding at a vertex) make the
        # parabola meaningless (seen: a singular 3x3 solve on a bench CV): keep the sample itself
        tiny = 1e-9 * max(abs(x0), abs(x2), 1.0)
        if abs(x1 - x0) > tiny and abs(x2 - x1) > tiny and (x1 - x0) * (x2 - x1) > 0:
            # vertex of the parabola through three points, in divided differences about x1 (well conditioned)
            d0, d2 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
            a = (d2 - d0) / (x2 - x0)
            if a != 0:
                xv = 0.5 * (x1 + x0) - d0 / (2 * a)
                if min(x0, x2) <= xv <= max(x0, x2):
                    return float(xv), float(y1 + d0 * (xv - x1) + a * (xv - x1) * (xv - x0))
    return float(E[k]), float(y[k])


def peak_currents_and_potentials(
    t: np.ndarray,
    E: np.ndarray,
    i: np.ndarray,
    e_window: Optional[Sequence[float]] = None,
    cycles: Optional[list] = None,
    include_partial: bool = False,
) -> CyclePeaks:
    """Cathodic (most negative) and anodic (most positive) current per cycle, with potentials and ΔEp.

    The extremum is searched in the interior of each cycle (optionally only within ``e_window`` V) and refined
    by a parabola through the neighbouring samples.  Pick the window so that the extremum is a true peak and
    not the current at a vertex (e.g. exclude the SEI region when measuring a redox couple's peaks).

    Parameters
    ----------
    t, E, i : array_like
        Time (s), potential (V), current (A), same length.
    e_window : (float, float), optional
        Potential window, V.
    cycles, include_partial
        As for :func:`cycle_charges`.

    Returns
    -------
    CyclePeaks
    """
    t, E, i, cycles, mask = _cycle_inputs(t, E, i, e_window, cycles, include_partial)
    out = {k: [] for k in ("ipc", "ipa", "Epc", "Epa")}
    for sl in cycles:
        Ec, ic = E[sl], i[sl]
        m = np.ones(ic.size, bool) if mask is None else mask[sl]
        if not np.any(m):
            raise InvalidArgument(f"e_window={e_window!r} contains no samples of a cycle")
        kc = int(np.flatnonzero(m)[np.argmin(ic[m])])
        ka = int(np.flatnonzero(m)[np.argmax(ic[m])])
        Epc, ipc = _refine(Ec, ic, kc)
        Epa, ipa = _refine(Ec, ic, ka)
        out["ipc"].append(ipc)
        out["ipa"].append(ipa)
        out["Epc"].append(Epc)
        out["Epa"].append(Epa)
    Epc, Epa = np.asarray(out["Epc"]), np.asarray(out["Epa"])
    return CyclePeaks(
        ip_cathodic=np.asarray(out["ipc"]), ip_anodic=np.asarray(out["ipa"]),
        Ep_cathodic=Epc, Ep_anodic=Epa, delta_Ep=Epa - Epc, cycles=list(cycles),
    )


def onset_potential(E: np.ndarray, i: np.ndarray, threshold: float, direction: str = "cathodic") -> float:
    """Potential where |i| first exceeds ``threshold`` (A) in the given direction, linearly interpolated.

    Parameters
    ----------
    E, i : array_like
        Potential (V) and current (A) of one sweep, in acquisition order.
    threshold : float
        Current magnitude, A (> 0).
    direction : {"cathodic", "anodic"}
        Cathodic: first sample with i ≤ -threshold; anodic: first with i ≥ threshold.

    Returns
    -------
    float
        Onset potential, V; NaN if the threshold is never reached.
    """
    E, i = _arrays(E=E, i=i)
    threshold = float(check_range("threshold", threshold, 0.0, low_inclusive=False, units="A"))
    direction = check_choice("direction", direction, ["cathodic", "anodic"])
    y = -i if direction == "cathodic" else i
    hit = np.flatnonzero(y >= threshold)
    if hit.size == 0:
        return float("nan")
    k = int(hit[0])
    if k == 0:
        return float(E[0])
    y0, y1 = y[k - 1], y[k]
    frac = (threshold - y0) / (y1 - y0)
    return float(E[k - 1] + frac * (E[k] - E[k - 1]))
