"""SECM approach-curve fitting and per-pixel κ maps, using the exact feedback tables.

Sign convention
---------------
``z`` is the probe position (µm, or any length unit as long as ``a`` uses the same one).  With the default
``z_direction="decreasing"`` the probe approaches the substrate as z decreases and the normalised distance is
``L = (z − z0)/a``; with ``z_direction="increasing"`` (e.g. a piezo that extends towards the sample)
``L = (z0 − z)/a``.  ``z0`` is the contact offset: the z at which the tip plane would touch the substrate (L = 0).

Units
-----
``a`` in the unit of z (µm), ``D`` in m²/s; the rate constant k = κ·D/a is returned in m/s (a converted from µm
to m, i.e. the unit of z is assumed to be µm when ``D`` is given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from ..errors import InvalidArgument, check_choice, check_finite, check_positive, check_range
from ..physics import secm_analytical
from ..physics.secm import feedback_current

_W_MIN, _W_MAX = -6.0, 4.0  # log10 κ range of the tables (beyond: first-order blend to κ = 0 / ∞)
_UM = 1e-6


@dataclass
class ApproachFitResult:
    """Result of :func:`fit_approach_curve`.

    Attributes
    ----------
    z0, z0_err : float
        Contact offset (z at L = 0) and its 1σ uncertainty, in the unit of z (µm).
    kappa, kappa_err : float
        κ = k·a/D (dimensionless) and 1σ; 0 / inf (err 0) for the insulator / conductor models.
    k, k_err : float or None
        Rate constant k = κ·D/a in m/s (only when D is given).
    rg, rg_err : float
        RG used (fixed: err 0) or fitted.
    i_inf, i_inf_err : float
        Bulk tip current in the unit of ``current`` (given: err 0; otherwise fitted).
    L : numpy.ndarray
        Normalised distance of every point with the fitted offset.
    residuals : numpy.ndarray
        Model − data in normalised current I_T (``noise="absolute"``) or relative ((model − data)/model).
    rms : float
        Root-mean-square residual (normalised current).
    model : str
        ``"<substrate>/<exact|analytical>"``.
    success : bool
        Optimiser convergence flag; ``message`` gives its text.
    covariance : numpy.ndarray
        Covariance of the fitted internal parameters (order in ``parameters``).
    """

    z0: float
    z0_err: float
    kappa: float
    kappa_err: float
    k: float | None
    k_err: float | None
    rg: float
    rg_err: float
    i_inf: float
    i_inf_err: float
    L: np.ndarray
    residuals: np.ndarray
    rms: float
    model: str
    success: bool
    message: str
    parameters: list[str] = field(default_factory=list)
    covariance: np.ndarray | None = None


def _model_fn(kind: str):
    if kind == "exact":
        return feedback_current
    return lambda L, rg, kappa: secm_analytical.kinetic(L, rg, kappa)


def fit_approach_curve(
    z: ArrayLike,
    current: ArrayLike,
    *,
    a: float,
    D: float | None = None,
    rg: float | None = None,
    fit_rg: bool = False,
    substrate: str = "kinetic",
    i_inf: float | None = None,
    z_direction: str = "decreasing",
    model: str = "exact",
    noise: str = "absolute",
    fix: dict | None = None,
) -> ApproachFitResult:
    """Fit an SECM feedback approach curve for the contact offset, κ (and optionally RG, i_inf).

    Parameters
    ----------
    z : array_like
        Probe positions (µm; same unit as ``a``).  See the module docstring for the sign convention.
    current : array_like
        Tip currents (any unit).  Divided by ``i_inf`` if given; otherwise i_inf is fitted as well.
    a : float
        Tip (disk) radius, same unit as z (µm).
    D : float, optional
        Diffusion coefficient (m²/s); when given, k = κ·D/a is reported in m/s.
    rg : float, optional
        RG = r_glass/a.  Required unless ``fit_rg`` (then it is the starting value, default 10).
    fit_rg : bool
        Fit RG as well (bounded to [1.05, 50]).
    substrate : {"kinetic", "conductor", "insulator"}
        Finite first-order kinetics (fit κ), κ = ∞ or κ = 0.
    i_inf : float, optional
        Bulk current in the unit of ``current``.
    z_direction : {"decreasing", "increasing"}
        Direction of z in which the probe approaches the substrate.
    model : {"exact", "analytical"}
        Exact tables (default) or the published analytical approximations (for comparison only).
    noise : {"absolute", "relative"}
        Noise model: residuals are model − data ("absolute", constant noise) or (model − data)/model
        ("relative", noise proportional to the current).  ``residuals``/``rms`` in the result follow it.
    fix : dict, optional
        Hold any subset of the parameters at given values: ``{"z0": µm, "kappa": κ (0 … inf), "rg": RG,
        "i_inf": bulk current}``.  A fixed ``z0`` must lie beyond every point (all L > 0); a fixed ``kappa``
        overrides ``substrate``; fixed ``rg``/``i_inf`` are the same as passing ``rg=``/``i_inf=`` without
        ``fit_rg``.  Fixed parameters have zero uncertainty in the result.  Example: SECM-Fitter's analysis
        (offset from the distance axis, RG and i_T,∞ from the user) is ``fix={"z0": 0.0, "rg": 5, "i_inf": i}``.

    Returns
    -------
    ApproachFitResult
    """
    fix = dict(fix or {})
    from ..errors import check_keys

    check_keys("fix", fix, optional=("z0", "kappa", "rg", "i_inf"))
    if "rg" in fix:
        rg, fit_rg = fix["rg"], False
    if "i_inf" in fix:
        i_inf = fix["i_inf"]
    z = check_finite("z", z).ravel()
    cur = check_finite("current", current).ravel()
    if z.size != cur.size:
        raise InvalidArgument(f"z and current must have the same length, got {z.size} and {cur.size}")
    if z.size < 5:
        raise InvalidArgument(f"z has {z.size} points; at least 5 are required")
    a = float(check_positive("a", a, units="µm"))
    if D is not None:
        D = float(check_positive("D", D, units="m²/s"))
    substrate = check_choice("substrate", substrate, ["kinetic", "conductor", "insulator"])
    z_direction = check_choice("z_direction", z_direction, ["decreasing", "increasing"])
    model = check_choice("model", model, ["exact", "analytical"])
    noise = check_choice("noise", noise, ["absolute", "relative"])
    rel = noise == "relative"
    if rg is None:
        if not fit_rg:
            raise InvalidArgument("rg=None: give the tip's RG or set fit_rg=True")
        rg = 10.0
    rg = float(check_range("rg", rg, 1.0, np.inf, low_inclusive=False))
    if i_inf is not None:
        i_inf = float(check_finite("i_inf", i_inf))
        if i_inf == 0:
            raise InvalidArgument("i_inf=0.0 is not allowed; a non-zero bulk current is required")
    f = _model_fn(model)
    sgn = 1.0 if z_direction == "decreasing" else -1.0
    # distance from the closest point, in units of a (>= 0): L = (z - z0)*sgn/a = dz + l_off
    dz = sgn * (z - (z.min() if sgn > 0 else z.max())) / a

    fit_k = substrate == "kinetic"
    fixed_kappa = {"conductor": np.inf, "insulator": 0.0}.get(substrate, None)
    if "kappa" in fix:
        from .approach_criteria import check_kappa

        fixed_kappa, fit_k = check_kappa(fix["kappa"]), False
        substrate = f"kappa={fixed_kappa:g}"
    z_close = z.min() if sgn > 0 else z.max()
    l_fixed = None
    if "z0" in fix:
        z0_fix = float(check_finite("fix['z0']", fix["z0"]))
        l_fixed = sgn * (z_close - z0_fix) / a
        if l_fixed <= 0:
            raise InvalidArgument(f"fix['z0']={z0_fix!r} lies within the data (closest point z={z_close!r}); "
                                  f"allowed: a contact offset beyond every point, L = d/a > 0 everywhere")
    fit_i = i_inf is None
    # fit in normalised units: with i_inf unknown the current is divided by its largest magnitude
    cscale = float(np.max(np.abs(cur))) if fit_i else float(i_inf)
    if cscale == 0.0:
        raise InvalidArgument("current is identically zero")
    data = cur / cscale

    # parameter vector: [log10 l_off, (log10 κ), (ln(rg - 1)), (i_inf)]
    fit_l = l_fixed is None
    names = (["log10_l_off"] if fit_l else []) + (["log10_kappa"] if fit_k else []) + (
        ["ln_rg_minus_1"] if fit_rg else []) + (["i_inf"] if fit_i else [])

    def unpack(p):
        q = 0
        l_off = l_fixed
        if fit_l:
            l_off = 10.0 ** p[q]
            q += 1
        kap = fixed_kappa
        if fit_k:
            kap = 10.0 ** p[q]
            q += 1
        r = rg
        if fit_rg:
            r = 1.0 + np.exp(p[q])
            q += 1
        ii = p[q] if fit_i else 1.0
        return l_off, kap, r, ii

    def resid(p):
        l_off, kap, r, ii = unpack(p)
        mdl = ii * f(dz + l_off, r, kap)
        return (mdl - data) / np.abs(mdl) if rel else mdl - data

    # --- coarse start: grid over (l_off, κ), i_inf by linear least squares -----------------------------------
    l_grid = np.geomspace(2e-3, 3.0, 36) if fit_l else np.array([l_fixed])
    k_grid = np.logspace(-3.5, 3.5, 36) if fit_k else np.array([fixed_kappa])
    LL = dz[None, None, :] + l_grid[:, None, None]
    KK = np.broadcast_to(k_grid[None, :, None], (l_grid.size, k_grid.size, dz.size))
    I = f(np.broadcast_to(LL, KK.shape), rg, KK)
    if fit_i:
        scale = np.sum(I * data, axis=-1) / np.maximum(np.sum(I * I, axis=-1), 1e-300)
    else:
        scale = np.ones(I.shape[:2])
    if rel:
        cost = np.sum((1.0 - data / (scale[..., None] * I)) ** 2, axis=-1)
    else:
        cost = np.sum((scale[..., None] * I - data) ** 2, axis=-1)
    # starts: the best offset for each κ column, keep the few best local minima along κ (multi-start guards
    # against the near-degeneracy of a fast-kinetics substrate with a conductor farther away)
    best_l = np.argmin(cost, axis=0)
    col_cost = cost[best_l, np.arange(k_grid.size)]
    order = np.argsort(col_cost)
    starts = []
    for ik in order:
        if all(abs(ik - s) > 2 for s in starts):
            starts.append(int(ik))
        if len(starts) == (4 if fit_k else 1):
            break
    lo, hi = ([np.log10(1e-4)], [np.log10(50.0)]) if fit_l else ([], [])
    if fit_k:
        lo.append(_W_MIN - 1.0)
        hi.append(_W_MAX + 1.0)
    if fit_rg:
        lo.append(np.log(0.05))
        hi.append(np.log(49.0))
    if fit_i:
        lo.append(-np.inf)
        hi.append(np.inf)
    sol = None
    if not names:  # everything fixed: just the residuals of the given model
        from types import SimpleNamespace

        r0 = resid(np.array([]))
        sol = SimpleNamespace(x=np.array([]), fun=r0, cost=0.5 * float(r0 @ r0), jac=np.zeros((r0.size, 0)),
                              success=True, message="all parameters fixed")
        starts = []
    for ik in starts:
        il = best_l[ik]
        p0 = [np.log10(l_grid[il])] if fit_l else []
        if fit_k:
            p0.append(np.log10(k_grid[ik]))
        if fit_rg:
            p0.append(np.log(rg - 1.0))
        if fit_i:
            p0.append(scale[il, ik])
        p0 = np.clip(np.array(p0, dtype=float), np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        s = least_squares(resid, p0, bounds=(lo, hi), x_scale="jac", method="trf")
        if sol is None or s.cost < sol.cost:
            sol = s

    # --- uncertainties from the Jacobian -------------------------------------------------------------------
    n, m = data.size, sol.x.size
    J = sol.jac
    s2 = 2.0 * sol.cost / max(n - m, 1)
    try:
        cov = np.linalg.pinv(J.T @ J) * s2 if m else np.zeros((0, 0))
    except np.linalg.LinAlgError:  # pragma: no cover
        cov = np.full((m, m), np.nan)
    perr = np.sqrt(np.abs(np.diag(cov)))
    l_off, kap, r, ii = unpack(sol.x)
    scale_i = i_inf if not fit_i else ii * cscale
    norm_res = sol.fun / ii if (fit_i and not rel) else sol.fun
    # contact offset: z0 = z_closest - sgn*a*l_off
    z_close = z.min() if sgn > 0 else z.max()
    z0 = z_close - sgn * a * l_off
    z0_err = a * l_off * np.log(10.0) * perr[0] if fit_l else 0.0
    q = 1 if fit_l else 0
    kap_err = 0.0
    if fit_k:
        kap_err = kap * np.log(10.0) * perr[q]
        q += 1
    r_err = 0.0
    if fit_rg:
        r_err = (r - 1.0) * perr[q]
        q += 1
    i_err = perr[q] * cscale if fit_i else 0.0
    k = k_err = None
    if D is not None:
        k = kap * D / (a * _UM)
        k_err = kap_err * D / (a * _UM)
    return ApproachFitResult(
        z0=float(z0),
        z0_err=float(z0_err),
        kappa=float(kap),
        kappa_err=float(kap_err),
        k=None if k is None else float(k),
        k_err=None if k_err is None else float(k_err),
        rg=float(r),
        rg_err=float(r_err),
        i_inf=float(scale_i),
        i_inf_err=float(i_err),
        L=dz + l_off,
        residuals=np.asarray(norm_res),
        rms=float(np.sqrt(np.mean(norm_res**2))),
        model=f"{substrate}/{model}",
        success=bool(sol.success),
        message=str(sol.message),
        parameters=names,
        covariance=cov,
    )


# --------------------------------------------------------------------------------------------------------------
# κ maps
# --------------------------------------------------------------------------------------------------------------

_NW = 2001  # log10 κ samples of the inversion table
_BISECT_STEPS = 24  # bisection steps when the distance varies per pixel


def _curves(Ls: tuple, rg: float):
    """I_T(κ) at fixed RG for each L in ``Ls`` on a dense log10 κ grid, plus the κ = 0 / ∞ ends."""
    w = np.linspace(_W_MIN, _W_MAX, _NW)
    Lc = np.asarray(Ls, dtype=float)[:, None]
    I = feedback_current(Lc, rg, 10.0 ** w[None, :])
    I = np.maximum.accumulate(I, axis=1)  # guard against interpolation wiggles (I is monotonic in κ)
    ends = feedback_current(Lc, rg, np.array([[0.0, np.inf]]))
    return w, np.log(I), ends[:, 0], ends[:, 1]


@lru_cache(maxsize=256)
def _curve(L: float, rg: float):
    w, logI, I0, Iinf = _curves((L,), rg)
    return w, logI[0], float(I0[0]), float(Iinf[0])


def _invert(N: np.ndarray, w, logI, I0: float, Iinf: float) -> np.ndarray:
    Ilo, Ihi = np.exp(logI[0]), np.exp(logI[-1])
    out = np.full(N.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mid = (N >= Ilo) & (N <= Ihi)
        out[mid] = 10.0 ** np.interp(np.log(N[mid]), logI, w)
        lo = (N >= I0) & (N < Ilo)
        out[lo] = 10.0**_W_MIN * (N[lo] - I0) / (Ilo - I0)
        hi = (N > Ihi) & (N <= Iinf)
        out[hi] = 10.0**_W_MAX * (Iinf - Ihi) / (Iinf - N[hi])
    out[N == I0] = 0.0
    out[N == Iinf] = np.inf
    return out


def kappa_from_current(N_T: ArrayLike, L: ArrayLike, rg: float) -> np.ndarray:
    """Per-pixel κ from normalised currents at known distance(s): inverts the monotonic I_T(κ).

    Parameters
    ----------
    N_T : array_like
        Normalised tip currents i_T/i_T,∞ (dimensionless); NaN pixels give NaN.
    L : array_like
        d/a (dimensionless, > 0), scalar or broadcastable to ``N_T`` (per-pixel distances).
    rg : float
        RG of the tip (scalar, > 1).

    Returns
    -------
    numpy.ndarray
        κ = k·a/D per pixel: 0 at the insulator current, ``inf`` at the conductor current, NaN outside
        [I_ins(L), I_cond(L)] (and for NaN input).

    Notes
    -----
    One dense I_T(κ) curve (2001 points in log10 κ over [1e-6, 1e4], first-order blends to κ = 0 / ∞ beyond)
    is computed per distinct L (cached) and inverted by linear interpolation in (ln I, log10 κ); the inversion
    error is < 1e-4 relative and a 1000×1000 image at one L takes a fraction of a second.  With more than 16
    distinct L values (per-pixel distances) a vectorised bisection on s = κL/(1 + κL) with the forward model
    is used (24 steps and a regula-falsi step; a few seconds per 10^6 pixels).
    """
    N = np.asarray(N_T, dtype=float)
    Larr = check_range("L", L, 0.0, np.inf, low_inclusive=False)
    rg = float(check_range("rg", rg, 1.0, np.inf, low_inclusive=False))
    N, Larr = np.broadcast_arrays(N, Larr)
    shape = N.shape
    N = np.ascontiguousarray(N).ravel()
    Lf = np.ascontiguousarray(Larr).ravel()
    if Lf.size == 0:
        return np.empty(shape)
    uniq = np.unique(Lf)
    if uniq.size <= 16:
        out = np.empty(N.shape)
        for Lv in uniq:
            m = slice(None) if uniq.size == 1 else (Lf == Lv)
            out[m] = _invert(N[m], *_curve(float(Lv), rg))
        return out.reshape(shape)
    # per-pixel distances: vectorised bisection on s = κL/(1 + κL) ∈ [0, 1] with the forward model, then one
    # regula-falsi step inside the final bracket
    I0 = feedback_current(Lf, rg, 0.0)
    I1 = feedback_current(Lf, rg, np.inf)
    lo = np.zeros(N.shape)
    hi = np.ones(N.shape)
    f_lo = I0.copy()
    f_hi = I1.copy()
    inside = (N > I0) & (N < I1)
    idx = np.nonzero(inside)[0]
    Ni, Li = N[idx], Lf[idx]
    lo_i, hi_i, flo_i, fhi_i = lo[idx], hi[idx], f_lo[idx], f_hi[idx]
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo_i + hi_i)
        fm = feedback_current(Li, rg, mid / ((1.0 - mid) * Li))
        up = fm < Ni
        lo_i = np.where(up, mid, lo_i)
        flo_i = np.where(up, fm, flo_i)
        hi_i = np.where(up, hi_i, mid)
        fhi_i = np.where(up, fhi_i, fm)
    s = lo_i + (hi_i - lo_i) * (Ni - flo_i) / (fhi_i - flo_i)
    out = np.full(N.shape, np.nan)
    out[idx] = s / ((1.0 - s) * Li)
    out[N == I0] = 0.0
    out[N == I1] = np.inf
    return out.reshape(shape)
