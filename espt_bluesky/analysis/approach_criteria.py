"""Approach criteria: convert a stop criterion into a tip–surface distance, and locate the surface on an
approach curve.  Plain numpy over the forward models of ``physics`` (the plans call these, never the physics).

Units: distances and heights in µm, currents normalised (SECM: I_T = i_T/i_T,inf; SICM: I/I_far).

The steered SECM approach (``approach(strategy="fit")``) uses :func:`secm_surface_estimate` /
:func:`secm_surface_estimate_local` (surface and κ with 3σ bounds from the curve so far, any κ),
:func:`next_approach_step` (the step towards the goal, never below the floor) and :func:`check_tip_state`;
SICM/SECCM heights come from :func:`sicm_surface_from_curve` / :func:`interpolate_crossing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import InvalidArgument, check_choice, check_positive, check_range
from ..physics import secm, sicm

SUBSTRATES = ("conductor", "insulator")
_KAPPA = {"conductor": np.inf, "insulator": 0.0}
_L_MIN, _L_MAX = 0.02, 200.0


def secm_current(L, rg: float, substrate: str):
    """SECM feedback I_T(L) over a diffusion-limited ``conductor`` or an inert ``insulator`` (dimensionless)."""
    substrate = check_choice("substrate", substrate, SUBSTRATES)
    return secm.feedback_current(np.asarray(L, float), rg, _KAPPA[substrate])


def secm_distance(current, rg: float, substrate: str) -> np.ndarray:
    """Invert the SECM feedback curve: L = d/a at which I_T equals ``current`` (interpolation on a dense table).

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
    >>> np.round(secm_distance(I_T, 10, "insulator"), 3).tolist()
    [0.5, 1.0, 2.0]
    """
    substrate = check_choice("substrate", substrate, SUBSTRATES)
    check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    i = np.asarray(current, float)
    # the monotonic curve on the dense ln L table (cached per RG), inverted by interpolation (< 1e-4 relative)
    keep = (_LN_L >= np.log(_L_MIN)) & (_LN_L <= np.log(_L_MAX))
    lnL = _LN_L[keep]
    c = _kappa_curve(float(rg), _KAPPA[substrate])[keep]
    if substrate == "conductor":  # I decreases with L
        c, lnL = c[::-1], lnL[::-1]
    c = np.maximum.accumulate(c)
    return np.exp(np.interp(i, c, lnL))


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


# --------------------------------------------------------------------------------------------------------------
# Online estimate of the surface from a partial SECM approach curve, for any substrate kinetics
# --------------------------------------------------------------------------------------------------------------

#: log10 κ grid of the profile fit when κ is unknown (plus κ = 0 and κ = ∞); refined locally around the best
_K_COARSE = np.concatenate([[0.0], np.logspace(-2.5, 2.5, 21), [np.inf]])
#: L = d/a of the last reading: grid of the profile fit (ratio 1.077 between neighbours)
_L_GRID = np.geomspace(0.01, 300.0, 140)


@dataclass
class SurfaceEstimate:
    """Where the surface is, from the SECM approach curve recorded so far (:func:`secm_surface_estimate`).

    Heights in µm (the unit of z), κ dimensionless.  ``z0_lo``/``z0_hi`` bound every surface height whose model
    curve fits the data within ``n_sigma`` (profile likelihood over κ when κ is unknown, one grid step wider):
    a tip above ``z0_hi`` is above the surface whatever the kinetics.  ``z0_err`` is the 1σ equivalent.
    """

    z0: float
    z0_err: float
    z0_lo: float
    z0_hi: float
    kappa: float
    kappa_lo: float
    kappa_hi: float
    distance: float  # z of the last reading − z0 (µm)
    noise: float  # 1σ noise of I_T used for the weights (after inflation by a poor fit)
    chi2: float  # χ² per degree of freedom of the best model with the given noise
    n: int  # readings used
    consistent: bool = True  # False: one substrate does not explain the whole curve (a shorter stretch was fitted)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}

    def predict(self, z, radius: float, rg: float) -> np.ndarray:
        """I_T the best model expects at tip height(s) z (µm)."""
        L = np.maximum((np.asarray(z, float) - self.z0) / radius, 1e-3)
        return secm.feedback_current(L, rg, self.kappa)

    def surprised_by(self, z: float, current: float, radius: float, rg: float, n_sigma: float = 5.0) -> bool:
        """True when a new reading (normalised ``current`` at height ``z``) lies more than ``n_sigma`` noise
        widths from what this estimate predicted: the substrate under the footprint is not the one fitted."""
        pred = float(self.predict(z, radius, rg))
        return abs(current - pred) > n_sigma * self.noise


def check_kappa(kappa) -> float:
    """κ validated: a number in [0, ∞] (``numpy.inf`` is the diffusion-limited conductor)."""
    try:
        k = float(kappa)
    except (TypeError, ValueError):
        raise InvalidArgument(f"kappa={kappa!r} is not a number; allowed: 0 <= kappa <= inf") from None
    if not k >= 0:
        raise InvalidArgument(f"kappa={kappa!r}; allowed: 0 <= kappa <= inf (0 insulator, inf conductor)")
    return k


def _parabola_min(x3, y3) -> float:
    """Abscissa of the vertex of the parabola through three points (the middle one if degenerate)."""
    (x0, x1, x2), (y0, y1, y2) = x3, y3
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    A = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den if den else 0.0
    B = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den if den else 0.0
    if A <= 0:
        return float(x1)
    return float(np.clip(-B / (2 * A), min(x0, x2), max(x0, x2)))


_LN_L = np.linspace(np.log(0.005), np.log(2000.0), 3001)  # dense ln L axis of the per-κ model tables


@lru_cache(maxsize=512)
def _kappa_curve(rg: float, kappa: float) -> np.ndarray:
    """I_T on the dense ln L axis for one (RG, κ): the exact model once, then linear interpolation (< 1e-5)."""
    return secm.feedback_current(np.exp(_LN_L), rg, kappa)


def _model(L: np.ndarray, rg: float, kappas: np.ndarray) -> np.ndarray:
    """I_T[κ, ...L] by interpolation of the cached per-κ curves (L clipped to the table, 0.005–2000)."""
    x = (np.log(np.clip(L, 0.005, 2000.0)) - _LN_L[0]) / (_LN_L[1] - _LN_L[0])
    i = np.minimum(x.astype(int), _LN_L.size - 2)
    f = x - i
    out = np.empty((kappas.size,) + L.shape)
    for j, k in enumerate(kappas):
        c = _kappa_curve(float(rg), float(k))
        out[j] = c[i] * (1.0 - f) + c[i + 1] * f
    return out


def _chi2(L_last: np.ndarray, kappas: np.ndarray, dz: np.ndarray, data: np.ndarray, w: np.ndarray, rg: float,
          scale_err: float) -> np.ndarray:
    """χ²[κ, L] of the model I_T(dz + L; κ) (times a near-1 scale with a Gaussian prior) against ``data``."""
    M = _model(dz[None, :] + L_last[:, None], rg, kappas)
    if scale_err > 0:
        p = 1.0 / scale_err**2
        s = (np.sum(w * M * data, axis=-1) + p) / (np.sum(w * M * M, axis=-1) + p)
        return np.sum(w * (s[..., None] * M - data) ** 2, axis=-1) + p * (s - 1.0) ** 2
    return np.sum(w * (M - data) ** 2, axis=-1)


def secm_surface_estimate(z, current, radius: float, rg: float, *, kappa: float | None = None,
                          noise: float = 0.005, scale_err: float = 0.0, n_sigma: float = 3.0,
                          start_distance: float = 0.0, max_points: int = 40,
                          footprint_scale: float | None = None) -> SurfaceEstimate:
    """Surface height under an SECM tip from the approach curve so far, for any substrate kinetics.

    Fits the contact offset z0 (and κ when ``kappa`` is None) of the exact feedback curve
    I_T((z − z0)/a; RG, κ) (:func:`espt_bluesky.physics.secm.feedback_current`) to the readings by a profile
    over a grid of the last reading's distance (L from 0.01 to 300, 140 steps) and of κ (0, 10^-2.5 … 10^2.5 in
    21 steps, ∞, then 9 values around the best), with parabolic refinement of the best point.  When the best model's χ²/dof exceeds 1 the noise is inflated
    accordingly, so that a model that does not quite fit (a mixed footprint, drift) widens the bounds instead of
    narrowing them.  Only the last ``max_points`` readings are used.

    Parameters
    ----------
    z : array_like
        Tip heights (µm), the probe approaching as z decreases.
    current : array_like
        Normalised tip currents I_T = i_T/i_T,∞ at those heights.
    radius, rg : float
        Tip radius a (µm) and RG.
    kappa : float, optional
        Known κ = k·a/D (0: insulator, ``inf``: conductor); None fits it.
    noise : float
        1σ noise of one normalised reading I_T (> 0), the same at every distance: an SECM tip current's noise is
        the amplifier's floor, a fraction of i_T,∞ whatever the feedback.
    scale_err : float
        Relative 1σ uncertainty of i_T,∞ (the normalisation); 0 holds it exact.
    n_sigma : float
        Width of the bounds ``z0_lo``/``z0_hi`` in σ (Δχ² = n_sigma²).
    footprint_scale : float, optional
        (µm) Down-weight readings taken far above the last one: their σ grows as √(1 + (Δz/scale)²).  The tip
        senses a footprint ≈ a + d wide, so far readings average over more of the neighbourhood than the last
        ones do and carry more model error over a heterogeneous sample.
    start_distance : float
        Prior (µm): the first reading was taken at least this far from the surface.  i_T,∞ is read there, so the
        start must be far anyway; without this prior a single height cannot tell a far tip from one close to a
        surface whose kinetics happen to give I_T = 1 there.

    Returns
    -------
    SurfaceEstimate
    """
    check_positive("radius", radius, units="µm")
    check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    check_positive("noise", noise)
    z = np.asarray(z, float)
    data = np.asarray(current, float)
    if z.size == 0 or z.size != data.size:
        raise InvalidArgument(f"z and current must be non-empty and of equal length, got {z.size} and {data.size}")
    L_min = (float(start_distance) - (float(z[0]) - float(z[-1]))) / radius  # the prior, on the last reading
    z, data = z[-int(max_points):], data[-int(max_points):]
    z_last = float(z[-1])
    dz = (z - z_last) / radius
    w = np.full(data.shape, 1.0 / noise**2)
    if footprint_scale:
        w = w / (1.0 + ((z - z_last) / float(footprint_scale)) ** 2)
    if kappa is None:
        kap = _K_COARSE
    else:
        kap = np.array([check_kappa(kappa)])
    c2 = _chi2(_L_GRID, kap, dz, data, w, rg, scale_err)
    c2[:, _L_GRID < L_min] = np.inf
    if kappa is None:
        ik = int(np.unravel_index(np.argmin(c2), c2.shape)[0])
        finite = np.isfinite(kap) & (kap > 0)
        if finite[ik]:  # refine κ between the neighbours of the best grid value
            lw = np.log10(kap[ik])
            fine = 10.0 ** np.linspace(lw - 0.25, lw + 0.25, 9)
            kap = np.concatenate([kap, fine])
            c2f = _chi2(_L_GRID, fine, dz, data, w, rg, scale_err)
            c2f[:, _L_GRID < L_min] = np.inf
            c2 = np.concatenate([c2, c2f])
    n_par = 1 + (kappa is None) + (scale_err > 0)
    dof = max(z.size - n_par, 1)
    c_min = float(c2.min())
    infl = max(1.0, c_min / dof)  # a fit worse than the noise: trust the noise less
    c2 = c2 / infl
    c_min /= infl
    # Occam for fast kinetics: a finite κ >= 1 is one parameter more than a conductor (AIC: Δχ² = 2); where the
    # data cannot tell (at L >~ 0.3 fast kinetics read like a conductor 1/κ farther away) the best estimate is
    # the conductor, while the bounds below keep every κ the data allow.  (No such preference for κ = 0: slow
    # kinetics read as an insulator would put the surface too far, the very bias this fit removes.)
    finite_k = ((kap >= 1.0) & np.isfinite(kap)).astype(float)
    pen = c2 + (2.0 * finite_k[:, None] if kappa is None else 0.0)
    ik, il = np.unravel_index(np.argmin(pen), pen.shape)
    lg = np.log(_L_GRID)
    if 0 < il < _L_GRID.size - 1 and np.all(np.isfinite(pen[ik, il - 1:il + 2])):
        L_best = float(np.exp(_parabola_min(lg[il - 1:il + 2], pen[ik, il - 1:il + 2])))
    else:
        L_best = float(_L_GRID[il])
    ok = c2 <= c_min + n_sigma**2
    rows, cols = np.nonzero(ok)
    i_lo = max(int(cols.min()) - 1, 0)
    i_hi = min(int(cols.max()) + 1, _L_GRID.size - 1)
    L_lo, L_hi = float(_L_GRID[i_lo]), float(_L_GRID[i_hi])
    if i_hi == _L_GRID.size - 1:
        L_hi = np.inf  # still far: no lower bound on the surface yet
    kap_ok = kap[np.unique(rows)]
    z0 = z_last - radius * L_best
    z0_lo = z_last - radius * L_hi
    z0_hi = z_last - radius * L_lo
    half = 0.5 * (z0_hi - z0_lo)
    return SurfaceEstimate(z0=z0, z0_err=float(half / n_sigma) if np.isfinite(half) else np.inf, z0_lo=z0_lo,
                           z0_hi=z0_hi, kappa=float(kap[ik]), kappa_lo=float(kap_ok.min()),
                           kappa_hi=float(kap_ok.max()), distance=radius * L_best,
                           noise=float(noise * np.sqrt(infl)), chi2=float(c_min * infl / dof), n=int(z.size))


def next_approach_step(z: float, estimate: SurfaceEstimate, target: float, *, margin: float, coarse_step: float,
                       radius: float, tolerance: float | None = None, accuracy: float | None = None,
                       gain: float = 0.6, previous: SurfaceEstimate | None = None) -> tuple[float, str]:
    """The next downward step (µm) of an approach steered by a surface estimate, or 0 with the reason to stop.

    The goal is ``estimate.z0 + target``; the tip never goes below ``estimate.z0_hi + margin`` (the highest
    surface the data allow plus the safety margin: a margin never spent) and moves at most ``gain`` of the room
    above that floor, so the steps shrink as the tip nears the surface and grow as the estimate tightens.

    Parameters
    ----------
    z : float
        Present tip height (µm).
    estimate : SurfaceEstimate
        From :func:`secm_surface_estimate` (or any estimate with ``z0``, ``z0_lo``, ``z0_hi``).
    target : float
        Requested tip–surface distance (µm).
    margin : float
        Safety margin (µm, < target): no step ends closer than this to the highest plausible surface.
    coarse_step : float
        Largest step (µm).
    radius : float
        Probe radius a (µm): sets the defaults ``tolerance`` = 0.02·a (how close to the goal is "there") and
        ``accuracy`` = 0.08·a (3σ bound half-width at which the goal is trusted).
    previous : SurfaceEstimate, optional
        The estimate one reading earlier: the goal is trusted only once the surface estimate also stopped
        moving (by less than half the accuracy), which a model that does not quite fit (a mixed footprint)
        would not show.

    Returns
    -------
    (step, status)
        ``step`` > 0 with status ``"approach"`` (towards the goal) or ``"probe"`` (at the goal, surface not yet
        pinned down: a little closer, still above the floor); ``step`` = 0 with ``"done"`` (at the goal within
        tolerance, estimate within accuracy) or ``"floor"`` (the floor is reached and the estimate is still wider
        than ``accuracy``: stop, the uncertainty is what it is).
    """
    tol = 0.02 * radius if tolerance is None else tolerance
    acc = 0.08 * radius if accuracy is None else accuracy
    goal = estimate.z0 + target
    half = 0.5 * (estimate.z0_hi - estimate.z0_lo)
    remaining = z - goal
    room = z - (estimate.z0_hi + margin)
    stable = previous is None or abs(estimate.z0 - previous.z0) <= 0.5 * acc
    if remaining <= tol and half <= acc and stable:
        return 0.0, "done"
    if room <= tol:
        return 0.0, "floor" if remaining <= tol else "floor"
    if remaining > tol:
        return float(min(coarse_step, remaining, gain * room)), "approach"
    return float(min(gain * room, 0.25 * radius)), "probe"


def secm_surface_estimate_local(z, current, radius: float, rg: float, *, max_chi2: float = 10.0, min_points: int = 4,
                                **kwargs) -> SurfaceEstimate:
    """:func:`secm_surface_estimate` over the longest recent stretch of the curve that one substrate explains.

    The tip senses a footprint of radius ≈ a + d: far away it averages over neighbouring materials (an Au disc
    in SiO2 reads as an insulator from afar, as a conductor close in), so no single κ fits the whole curve.
    When the fit's χ²/dof exceeds ``max_chi2`` the oldest readings are dropped (halving the stretch each time,
    down to ``min_points``) until it does not; the shorter stretch gives wider, honest bounds.
    """
    z = np.asarray(z, float)
    current = np.asarray(current, float)
    est = secm_surface_estimate(z, current, radius, rg, **kwargs)
    n = min(est.n, z.size)
    while est.chi2 > max_chi2 and n > min_points:
        n = max(min_points, n // 2)
        kw = dict(kwargs)
        # the prior on the first reading still bounds the last one: keep it by shifting it to the kept stretch
        if kw.get("start_distance"):
            kw["start_distance"] = kw["start_distance"] - (float(z[0]) - float(z[-n]))
        est = secm_surface_estimate(z[-n:], current[-n:], radius, rg, **kw)
    est.consistent = est.chi2 <= max_chi2
    return est


def noise_upper_bound(readings, confidence: float = 0.9) -> float:
    """1σ noise of one reading from repeated readings, at its upper ``confidence`` bound (0 for fewer than 2).

    The sample standard deviation of a few readings is itself uncertain (from 10 readings it comes out below
    0.6 σ one time in twenty); every bound of the approach fit scales with it, so an underestimate makes the fit
    overconfident and a good curve look inconsistent.  The upper bound s·√((m−1)/χ²_{1−c, m−1}) errs the safe way.
    """
    from scipy.stats import chi2

    v = np.asarray(readings, float)
    if v.size < 2:
        return 0.0
    m = v.size
    return float(np.std(v, ddof=1) * np.sqrt((m - 1) / chi2.ppf(1.0 - confidence, m - 1)))


def secm_cautious_distance(current: float, rg: float) -> float:
    """L = d/a to size cautious steps by, from one normalised reading whatever the kinetics.

    I_T < 1: the smallest L at which any κ in [0, ∞] reaches I_T (kinetic curves lie above the insulator's, so
    a partly active surface gives the same low current closer in); I_T ≥ 1: the conductor's L (a kinetic
    curve can peak at any I_T > 1 close in, so no reading above 1 bounds the distance; this is the classical
    rule of thumb that keeps each step below ~30 % of it)."""
    i = float(current)
    if i >= 1.0:
        return float(secm_distance(i, rg, "conductor"))
    C = np.stack([_kappa_curve(float(rg), float(k)) for k in _K_COARSE])
    reach = C >= i
    first = np.argmax(reach, axis=1)
    ok = reach[np.arange(C.shape[0]), first]
    return float(np.exp(_LN_L[first[ok]].min())) if ok.any() else float(_L_MIN)


def interpolate_crossing(z_above: float, s_above: float, z_below: float, s_below: float, threshold: float, *,
                         sigma: float | None = None, n_after: int = 1) -> tuple[float, float]:
    """Height (µm) at which a normalised signal crossed ``threshold`` between two readings, and its 1σ.

    Linear interpolation between the last reading on the near side of the threshold (``z_above``,
    ``s_above``) and the first past it (``z_below``, ``s_below``, the mean of ``n_after`` readings), clamped
    to the interval.  The uncertainty propagates the reading noise ``sigma`` (one reading, normalised units)
    through the interpolation and adds the step's own share (step/√12 when the slope is lost in the noise);
    without ``sigma`` it is step/√12.
    """
    dz = float(z_above - z_below)
    ds = float(s_above - s_below)
    if dz <= 0 or abs(ds) <= 0 or not np.isfinite(ds):
        return float(z_below), abs(dz) / np.sqrt(12.0)
    f = float(np.clip((threshold - s_below) / ds, 0.0, 1.0))
    z = float(z_below + f * dz)
    if sigma is None or not np.isfinite(sigma):
        return z, abs(dz) / np.sqrt(12.0)
    # ∂z/∂s_above = −dz·(thr − s_below)/ds², ∂z/∂s_below = dz·(thr − s_above)/ds²
    e_a = dz * (threshold - s_below) / ds**2 * sigma
    e_b = dz * (threshold - s_above) / ds**2 * sigma / np.sqrt(max(n_after, 1))
    err = float(np.hypot(e_a, e_b))
    return z, float(min(err, abs(dz) / np.sqrt(12.0)) if abs(ds) < 2 * sigma else err)


@dataclass
class TipState:
    """What an SECM approach curve says about the tip (:func:`check_tip_state`).

    ``findings`` is empty for a tip that matches its record; each entry is a sentence naming the quantity, the
    value and what was expected.
    """

    findings: list
    rg_apparent: float
    rg_apparent_err: float
    noise: float
    chi2: float
    radius_apparent: float | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def check_tip_state(z, current, radius: float, rg: float, *, kappa: float | None = None, noise: float,
                    noise_limit: float = 0.02, rg_tolerance: float = 0.35, chi2_limit: float = 9.0,
                    i_inf: float | None = None, expected_i_inf: float | None = None,
                    radius_tolerance: float = 0.2) -> TipState:
    """Check a recorded SECM approach curve against the tip's recorded geometry before the tip is used.

    * noise: the scatter of repeated readings (``noise``, normalised to i_T,∞) above ``noise_limit``
      (default 2 % of i_T,∞, ~10× a healthy amplifier's floor at SECM currents): a loose contact, a noisy
      reference or a bubble;
    * apparent RG: the curve fitted with RG free (κ held at ``kappa`` when given) gives an RG more than
      ``rg_tolerance`` (relative) from the recorded one: a broken, recessed or contaminated tip reads as
      another geometry;
    * shape: even the best geometry leaves χ²/dof > ``chi2_limit``: the curve is not an approach curve of a
      clean inlaid disk (recessed or contaminated electrode, or the tip touched);
    * apparent radius: with ``i_inf`` (measured bulk current, A) and ``expected_i_inf`` (4nFDc·a·β(RG) from the
      recorded radius), a radius more than ``radius_tolerance`` off.

    ``z`` (µm) and ``current`` (normalised I_T) are the approach readings.
    """
    from .approach_fit import fit_approach_curve  # same layer, imported late (approach_fit imports this module's peers)

    findings = []
    if noise > noise_limit:
        findings.append(f"noise {100 * noise:.2g} % of i_T,inf per reading, above {100 * noise_limit:.2g} %: "
                        "check the cell, the reference electrode and the tip connection")
    z = np.asarray(z, float)
    cur = np.asarray(current, float)
    rg_app = rg_err = chi2 = np.nan
    if z.size >= 8 and np.ptp(z) > 0:
        fix = {"kappa": kappa} if kappa is not None else {}
        try:
            fit = fit_approach_curve(z, cur, a=radius, rg=rg, fit_rg=True, fix=fix)
        except InvalidArgument:
            fit = None
        if fit is not None:
            rg_app, rg_err = fit.rg, fit.rg_err
            chi2 = float(np.sum(fit.residuals**2) / max(z.size - len(fit.parameters), 1) / noise**2)
            if abs(rg_app - rg) > rg_tolerance * rg and abs(rg_app - rg) > 3 * rg_err:
                findings.append(f"apparent RG {rg_app:.3g} ± {rg_err:.2g} from the approach curve, recorded RG "
                                f"{rg:.3g}: the tip is not the one recorded (broken, recessed or contaminated?)")
            if chi2 > chi2_limit:
                findings.append(f"the approach curve does not fit an inlaid disk of any RG (χ²/dof {chi2:.3g} > "
                                f"{chi2_limit:g}): recessed or contaminated electrode?")
    r_app = None
    if i_inf is not None and expected_i_inf:
        r_app = radius * abs(float(i_inf) / float(expected_i_inf))
        if abs(r_app - radius) > radius_tolerance * radius:
            findings.append(f"apparent radius {r_app:.3g} µm from i_T,inf = {i_inf:.3g} A, recorded {radius:.3g} "
                            f"µm (expected i_T,inf {expected_i_inf:.3g} A)")
    return TipState(findings, float(rg_app), float(rg_err), float(noise), float(chi2), r_app)


def sicm_surface_from_curve(z, current, drop: float, stop_distance: float, *, sigma: float | None = None,
                            n_reference: int = 0, iterations: int = 3) -> tuple[float, float]:
    """Surface height (µm) and 1σ from a SICM approach curve normalised to the current read at its start.

    The set drop is defined against the bulk current I_sat, but the reference is read at the start height,
    where the ohmic model (:func:`espt_bluesky.physics.sicm.distance_for_current_drop`) already gives
    I/I_sat = 1/(1 + K/d0) with K = d_stop·drop/(1 − drop): the threshold in units of the reference is
    (1 − drop)·(1 + K/d0), found by iterating on the surface estimate.  Its crossing is interpolated between the
    last height above it and the next one below (readings at one height averaged), the surface is the crossing
    minus ``stop_distance``.  Heights in µm, ``current`` normalised, ``sigma`` the noise of one reading; with
    ``n_reference`` (the readings averaged into the reference) the reference's own noise, which moves the
    threshold, is part of the uncertainty.
    """
    z = np.asarray(z, float)
    s = np.asarray(current, float)
    zu, inv = np.unique(z, return_inverse=True)
    su = np.bincount(inv, weights=s) / np.bincount(inv)
    nu = np.bincount(inv)
    zu, su, nu = zu[::-1], su[::-1], nu[::-1]  # from the start (highest) down
    K = stop_distance * drop / (1.0 - drop)
    surface = zu[-1] - stop_distance
    err = np.nan
    for _ in range(max(int(iterations), 1)):
        d0 = max(zu[0] - surface, 1e-6)
        thr = (1.0 - drop) * (1.0 + K / d0)
        above = np.flatnonzero(su >= thr)
        j = int(above[-1]) if above.size else 0
        if j + 1 < zu.size:
            zc, err = interpolate_crossing(zu[j], su[j], zu[j + 1], su[j + 1], thr, sigma=sigma,
                                           n_after=int(nu[j + 1]))
            slope = (su[j] - su[j + 1]) / (zu[j] - zu[j + 1])
            if sigma and n_reference and slope > 0:
                err = float(np.hypot(err, thr * sigma / np.sqrt(n_reference) / slope))
        else:
            zc, err = float(zu[-1]), 0.0
        surface = zc - stop_distance
    return float(surface), float(err)


# --------------------------------------------------------------------------------------------------------------
# Mixed footprints: is the substrate under the tip uniform enough for a one-κ fit to locate the surface?
# --------------------------------------------------------------------------------------------------------------

@dataclass
class LateralCheck:
    """What a small lateral probe (readings at the axis and at ±Δ in x and y, same height) says about the
    footprint (:func:`lateral_heterogeneity`).

    ``contrast`` is the largest symmetric ((I₊ + I₋)/2 − I₀) or antisymmetric ((I₊ − I₋)/2) change of the
    normalised current, ``significance`` its size in standard errors, ``height`` (µm) the same change read as a
    height through the slope of the fitted approach curve: the error a one-κ model would make over this
    footprint.  ``mixed`` is True when a contrast is both significant and worth more than the tolerance in
    height.
    """

    mixed: bool
    contrast: float
    significance: float
    height: float
    slope: float  # dI_T/dz of the fitted model at the check height, per µm
    delta: float  # µm, the lateral offset of the probe points
    n_per_point: int
    axis: str = "x"  # the axis along which the reported contrast was seen

    def describe(self) -> str:
        return (f"lateral contrast {100 * self.contrast:+.2g} % of i_T,inf at ±{self.delta:.3g} µm "
                f"({self.significance:.1f} σ), worth {self.height:.3g} µm of height on the fitted curve")


def lateral_heterogeneity(centre, plus_x, minus_x, plus_y, minus_y, *, noise: float, slope: float, radius: float,
                          delta: float, n_sigma: float = 5.0, tolerance: float | None = None,
                          feedback_ratio: float = 2.0, minimum: float | None = None) -> LateralCheck:
    """Is the footprint under an SECM tip uniform?  Compare readings taken at one height on the axis and at ±Δ.

    Over a uniform substrate (any κ) the current does not change when the tip moves sideways at constant height;
    a plane tilt changes it antisymmetrically by slope·Δ·tanθ (a height of Δ·tanθ: small); a feature inside the
    footprint (an active band in an inert plane, an edge) changes it by up to its share of the footprint, and
    symmetrically when the tip sits on the feature.  Each contrast is converted to a height through the slope of
    the fitted one-κ curve: a model that reads the present current as "far away" (a flat curve: a mixed
    footprint averaging to ~1) turns a small contrast into a large height, which is exactly when it cannot be
    trusted.

    Parameters
    ----------
    centre, plus_x, minus_x, plus_y, minus_y : array_like
        Normalised readings I_T at the axis and at (±Δ, 0), (0, ±Δ); an axis may be empty (off the stage).
    noise : float
        1σ noise of one normalised reading.
    slope : float
        dI_T/dz (per µm) of the fitted approach curve at this height.
    radius : float
        Tip radius a (µm), for the default ``tolerance`` (0.25 a).
    delta : float
        Lateral offset Δ (µm) of the side points.
    n_sigma : float
        Significance a contrast must exceed (standard errors of the difference of means).
    tolerance : float, optional
        Height (µm) a significant contrast must be worth to count as mixed.
    feedback_ratio : float
        A contrast counts only when it is at least 1/feedback_ratio of the feedback signal |I_T − 1| itself: where
        the distance dominates the current (an active or inert region larger than the footprint close in) the
        fit follows the distance; where the two are comparable (a feature narrower than the tip, averaging to ~1)
        it cannot.
    minimum : float, optional
        The lowest current (a few readings' mean) seen on the way down: a current risen clearly (``n_sigma``
        standard errors) above it has turned to positive feedback from a region that dominates the footprint,
        and is informative.

    Returns
    -------
    LateralCheck

    Examples
    --------
    >>> c = lateral_heterogeneity([0.97] * 4, [0.97] * 4, [0.97] * 4, [0.93] * 4, [0.94] * 4, noise=0.005,
    ...                           slope=0.004, radius=5.0, delta=5.0)
    >>> c.mixed, round(c.contrast, 3)
    (True, -0.035)
    """
    check_positive("noise", noise)
    check_positive("radius", radius, units="µm")
    tol = 0.25 * radius if tolerance is None else float(tolerance)
    c = np.asarray(centre, float)
    if c.size == 0:
        raise InvalidArgument("centre=[]: at least one reading on the axis is needed")
    cands = [(0.0, 0.0, 0.0, False, "x")]  # (contrast, significance, height, mixed, axis)
    n_pt = c.size
    s = max(abs(float(slope)), 1e-12)
    for p, m, ax in ((plus_x, minus_x, "x"), (plus_y, minus_y, "y")):
        p, m = np.asarray(p, float), np.asarray(m, float)
        if p.size == 0 or m.size == 0:
            continue
        n_pt = min(n_pt, p.size, m.size)
        sym = 0.5 * (p.mean() + m.mean()) - c.mean()
        sig_sym = noise * np.sqrt(0.25 / p.size + 0.25 / m.size + 1.0 / c.size)
        anti = 0.5 * (p.mean() - m.mean())
        sig_anti = noise * np.sqrt(0.25 / p.size + 0.25 / m.size)
        for val, sig in ((sym, sig_sym), (anti, sig_anti)):
            z, h = abs(val) / sig, abs(val) / s
            cands.append((float(val), float(z), float(h), bool(z > n_sigma and h > tol), ax))
    feedback = abs(float(c.mean()) - 1.0)
    risen = minimum is not None and float(c.mean()) - float(minimum) > n_sigma * noise / np.sqrt(c.size)
    cands = [c_[:3] + (c_[3] and abs(c_[0]) * feedback_ratio >= feedback and not risen,) + c_[4:] for c_ in cands]
    mixed = any(c_[3] for c_ in cands)
    # the worst mixed contrast (largest height), or else the most significant one
    best = max(cands, key=lambda c_: (c_[3], c_[2] if c_[3] else c_[1]))
    return LateralCheck(mixed, best[0], best[1], best[2], float(slope), float(delta), int(n_pt), best[4])


def model_slope(estimate: SurfaceEstimate, z: float, radius: float, rg: float) -> float:
    """dI_T/dz (per µm) of an estimate's model curve at tip height ``z`` (central difference over ±0.05 a)."""
    h = 0.05 * radius
    lo = max(z - h, estimate.z0 + 0.01 * radius)
    return float((estimate.predict(z + h, radius, rg) - estimate.predict(lo, radius, rg)) / (z + h - lo))


def secm_kappa_at_offset(z, current, radius: float, rg: float, z0: float, *, noise: float = 0.005,
                         scale_err: float = 0.1, n_sigma: float = 3.0) -> tuple[float, float, float]:
    """κ (best, low, high bound at ``n_sigma``) of the exact feedback curve with the contact offset held at ``z0``
    (µm), the SECM-Fitter way: the apparent κ of a curve whose surface was located elsewhere."""
    z = np.asarray(z, float)
    data = np.asarray(current, float)
    keep = z > z0
    if not keep.any():
        raise InvalidArgument(f"z0={z0!r} µm is not below any reading: the surface must lie under the tip")
    z, data = z[keep], data[keep]
    kap = np.concatenate([[0.0], np.logspace(-3, 3, 121), [np.inf]])
    L_last = np.array([(float(z[-1]) - z0) / radius])
    w = np.full(data.shape, 1.0 / noise**2)
    c2 = _chi2(L_last, kap, (z - float(z[-1])) / radius, data, w, rg, scale_err)[:, 0]
    c_min = float(c2.min())
    infl = max(1.0, c_min / max(z.size - 2, 1))
    ok = kap[c2 / infl <= c_min / infl + n_sigma**2]
    return float(kap[int(np.argmin(c2))]), float(ok.min()), float(ok.max())


def secm_current_bounds(L, rg: float) -> tuple[np.ndarray, np.ndarray]:
    """(I_T over an insulator, I_T over a conductor) at L = d/a: any substrate, uniform or a mixture of
    kinetics over a flat footprint, reads between the two (feedback rises monotonically with κ)."""
    L = np.asarray(L, float)
    return secm.feedback_current(L, rg, 0.0), secm.feedback_current(L, rg, np.inf)


def secm_transfer_conflict(z, current, z0: float, radius: float, rg: float, noise: float, *,
                           n_sigma: float = 5.0, scale_err: float = 0.02) -> str:
    """Why readings (heights ``z`` µm, normalised ``current``) taken at one point cannot lie above a surface at
    ``z0`` (µm) whatever its kinetics, or "" when they can.

    Any substrate, uniform or a mixture of kinetics under a flat footprint, reads between the insulator and the
    conductor curves at its distance (:func:`secm_current_bounds`); a reading below the insulator's current says
    the surface is closer than ``z0`` puts it, one above the conductor's that it is farther; a reading taken
    below ``z0`` is impossible (the tip would have touched).  Tolerance: ``n_sigma`` noise widths plus
    ``scale_err`` (the i_T,inf normalisation).
    """
    z = np.asarray(z, float)
    i = np.asarray(current, float)
    L = (z - float(z0)) / radius
    if np.any(L <= 0):
        k = int(np.argmin(L))
        return f"the tip read {i[k]:.3f} at z = {z[k]:.3f} µm, below the surface {z0:.3f} µm, without touching"
    lo, hi = secm_current_bounds(L, rg)
    tol = n_sigma * noise + scale_err
    below = i < lo - tol
    above = i > hi + tol
    if below.any():
        k = int(np.flatnonzero(below)[0])
        return (f"I_T = {i[k]:.3f} at L = {L[k]:.3g} is below the insulator's {lo[k]:.3f}: the surface is closer "
                f"than {z0:.3f} µm")
    if above.any():
        k = int(np.flatnonzero(above)[0])
        return (f"I_T = {i[k]:.3f} at L = {L[k]:.3g} is above the conductor's {hi[k]:.3f}: the surface is farther "
                f"than {z0:.3f} µm")
    return ""
