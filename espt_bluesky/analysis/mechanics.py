"""Young's modulus (and DMT adhesion) from EC-AFM approach force curves.

Model (see :mod:`espt_bluesky.physics.afm` for the conventions): with travel s = x − x0 past the contact point x0,
points with s < 0 carry no force; points with s ≥ 0 are in contact with indentation

    δ = s − F/k   (raw curve: x = z_piezo, F = k·deflection)      or   δ = s   (x = indentation already)

and F = C·δ^1.5 − F_ad with C = (4/3)·E/(1 − ν²)·√R (F_ad = 0 for "hertz").  For a fixed x0 the model is linear
in (C, F_ad), so those are solved by linear least squares and the contact point is found by minimising the
residual over x0 (a 1-D profile: every interval between consecutive data x values is screened, the best few are
refined with a bounded scalar minimiser).  Uncertainties are the usual least-squares ones, s²·(JᵀJ)⁻¹ with the
contact set held fixed at the optimum, propagated to E; they ignore the noise carried into δ through F/k.
For Hertz fits of 1 %-noise curves the reported modulus_err matches the seed-to-seed scatter (≈1 %; the estimate
is biased low by ≈1 %, errors-in-variables).  For DMT the fixed-contact-set linearisation cannot see that the
jump at contact pins x0, so adhesion_err is conservative (≈25 % reported vs ≈5 % actual scatter at 1 % noise).

SI units throughout: x in m, F in N, k in N/m, R in m, E in Pa.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

from ..errors import InvalidArgument, check_choice, check_finite, check_positive, check_range

__all__ = ["HertzFit", "ModulusMap", "fit_hertz", "fit_force_curve", "modulus_map"]


@dataclass(frozen=True)
class HertzFit:
    """Result of :func:`fit_hertz`.

    Attributes
    ----------
    modulus, modulus_err : float
        Young's modulus E of the sample and its 1σ uncertainty (Pa).
    contact_point, contact_point_err : float
        Contact point x0 in the units of the fitted x (m); err = 0 when it was given, not fitted.
    adhesion, adhesion_err : float
        DMT adhesion force F_ad (N) and 1σ; 0 for the Hertz model.
    reduced_modulus : float
        E* = E/(1 − ν²) (Pa).
    residual_rms : float
        RMS of the force residuals (N).
    n_contact : int
        Number of points in contact used by the fit.
    model : str
        "hertz" or "dmt".
    """

    modulus: float
    modulus_err: float
    contact_point: float
    contact_point_err: float
    adhesion: float
    adhesion_err: float
    reduced_modulus: float
    residual_rms: float
    n_contact: int
    model: str


@dataclass(frozen=True)
class ModulusMap:
    """Result of :func:`modulus_map`: arrays of the map's shape; NaN where a curve could not be fitted."""

    modulus: np.ndarray
    modulus_err: np.ndarray
    contact_point: np.ndarray
    adhesion: np.ndarray
    adhesion_err: np.ndarray
    residual_rms: np.ndarray


def _design(x, F, x0, k_inv, dmt):
    """Contact mask, δ, and the linear LSQ solution p (C[, F_ad]) for contact point(s) x0 (broadcast)."""
    s = x - x0
    m = s >= 0.0
    delta = np.where(m, np.clip(s - F * k_inv, 0.0, None), 0.0)
    a = delta**1.5
    mf = m.astype(float)
    Saa = (a * a).sum(-1)
    SaF = (a * F).sum(-1)
    if not dmt:
        with np.errstate(divide="ignore", invalid="ignore"):
            C = np.where(Saa > 0, SaF / Saa, 0.0)
        model = C[..., None] * a
        return m, delta, (C, np.zeros_like(C)), model
    # columns a and -m: normal equations [[Saa, -Sa], [-Sa, n]] p = [SaF, -SF]
    Sa = a.sum(-1)
    n = mf.sum(-1)
    SF = (mf * F).sum(-1)
    det = Saa * n - Sa * Sa
    with np.errstate(divide="ignore", invalid="ignore"):
        C = np.where(det > 0, (n * SaF - Sa * SF) / det, 0.0)
        Fad = np.where(det > 0, (Sa * SaF - Saa * SF) / det, 0.0)
    model = C[..., None] * a - Fad[..., None] * mf
    return m, delta, (C, Fad), model


def fit_hertz(indentation_or_z: ArrayLike, force: ArrayLike, tip_radius: float, poisson: float = 0.5,
              model: str = "hertz", contact_point: Optional[float] = None,
              spring_constant: Optional[float] = None) -> HertzFit:
    """Fit the Hertz or DMT law to an approach force curve; return modulus, contact point and adhesion.

    Parameters
    ----------
    indentation_or_z : array_like
        1-D.  Without ``spring_constant``: the indentation-like coordinate (m) — δ = x − x0 in contact.
        With ``spring_constant``: the piezo position z (m, increasing toward the sample) — δ = z − x0 − F/k.
    force : array_like
        Force on the tip (N, repulsive positive), same length; from a raw curve F = k·deflection.
    tip_radius : float
        Tip radius R (m, > 0).
    poisson : float
        Sample Poisson ratio ν (default 0.5).
    model : {"hertz", "dmt"}
        Contact law; "dmt" also fits a constant adhesion force F_ad (N).
    contact_point : float, optional
        Known contact point x0 (m).  Default: fitted.
    spring_constant : float, optional
        Cantilever spring constant k (N/m, > 0): selects the raw-curve interpretation above.

    Returns
    -------
    HertzFit
        modulus (Pa) ± modulus_err, contact_point (m) ± err, adhesion (N) ± err, reduced_modulus, residual_rms,
        n_contact, model.
    """
    x = check_finite("indentation_or_z", indentation_or_z).ravel()
    F = check_finite("force", force).ravel()
    if x.shape != F.shape:
        raise InvalidArgument(f"force has {F.size} points but indentation_or_z has {x.size}; they must match")
    R = float(check_positive("tip_radius", tip_radius, units="m"))
    nu = float(check_range("poisson", poisson, -1.0, 0.5, low_inclusive=False))
    model = check_choice("model", model, ["hertz", "dmt"])
    dmt = model == "dmt"
    k_inv = 0.0 if spring_constant is None else 1.0 / float(check_positive("spring_constant", spring_constant,
                                                                           units="N/m"))
    npar = (2 if dmt else 1) + (1 if contact_point is None else 0)
    if x.size < npar + 2:
        raise InvalidArgument(f"indentation_or_z has {x.size} points; at least {npar + 2} are needed")

    # scale to O(1) numbers
    xs = float(np.ptp(x)) or 1.0
    Fs = float(np.max(np.abs(F))) or 1.0
    xo = float(np.min(x))
    X = (x - xo) / xs
    Fn = F / Fs
    kin = k_inv * Fs / xs  # (F/k) in scaled x units = Fn * kin

    def sse(x0):
        _, _, _, mdl = _design(X, Fn, x0, kin, dmt)
        return ((Fn - mdl) ** 2).sum(-1)

    if contact_point is None:
        Xs = np.unique(X)
        nmin = npar + 1
        if Xs.size < nmin + 1:
            raise InvalidArgument("indentation_or_z has too few distinct values to locate the contact point")
        # candidate intervals (lo, hi]: contact set fixed inside each; allow x0 below the data (cropped curves)
        his = Xs[: Xs.size - nmin + 1]
        los = np.concatenate([[Xs[0] - 0.5], his[:-1]])
        mids = 0.5 * (los + his)
        prof = sse(mids[:, None])
        best = np.argsort(prof)[:3]
        cands = []
        for j in best:
            r = minimize_scalar(sse, bounds=(los[j], his[j]), method="bounded",
                                options={"xatol": 1e-12 * max(1.0, abs(his[j]))})
            cands.append((float(r.fun), float(r.x)))
            cands.append((float(sse(np.array(his[j]))), float(his[j])))
        x0n = min(cands)[1]
    else:
        x0n = (float(check_finite("contact_point", contact_point)) - xo) / xs

    m, delta, (C, Fad), mdl = _design(X, Fn, np.array(x0n), kin, dmt)
    C = float(C)
    Fad = float(Fad)
    resid = Fn - mdl
    n_contact = int(m.sum())
    if n_contact < (2 if dmt else 1) + 1 or not C > 0:
        raise InvalidArgument("the force curve has no usable contact region (no repulsive loading found)")

    # covariance with the contact set fixed: columns d/dC, d/dF_ad, d/dx0 of the model
    mf = m.astype(float)
    cols = [delta**1.5]
    if dmt:
        cols.append(-mf)
    if contact_point is None:
        cols.append(-1.5 * C * np.sqrt(delta) * mf)
    J = np.stack(cols, axis=-1)
    dof = max(X.size - J.shape[1], 1)
    s2 = float((resid**2).sum()) / dof
    try:
        cov = s2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        cov = np.full((J.shape[1], J.shape[1]), np.nan)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))

    # back to SI: F = Fs·Fn, δ = xs·Δ  ->  C_SI = C·Fs / xs^1.5
    C_si = C * Fs / xs**1.5
    E_red = 3.0 * C_si / (4.0 * np.sqrt(R))
    E = E_red * (1.0 - nu**2)
    E_err = E * sd[0] / C
    ad = Fad * Fs if dmt else 0.0
    ad_err = float(sd[1] * Fs) if dmt else 0.0
    x0 = xo + x0n * xs
    x0_err = float(sd[-1] * xs) if contact_point is None else 0.0
    return HertzFit(
        modulus=float(E), modulus_err=float(E_err), contact_point=float(x0), contact_point_err=x0_err,
        adhesion=float(ad), adhesion_err=ad_err, reduced_modulus=float(E_red),
        residual_rms=float(np.sqrt(np.mean(resid**2)) * Fs), n_contact=n_contact, model=model,
    )


def fit_force_curve(z_piezo: ArrayLike, deflection: ArrayLike, spring_constant: float, tip_radius: float,
                    poisson: float = 0.5, model: str = "hertz",
                    contact_point: Optional[float] = None) -> HertzFit:
    """Fit a raw approach curve (z_piezo in m toward the sample, deflection in m, k in N/m).

    Equivalent to ``fit_hertz(z_piezo, k·deflection, tip_radius, poisson, model, contact_point,
    spring_constant=k)``; the contact point is returned as a piezo position (m).
    """
    k = float(check_positive("spring_constant", spring_constant, units="N/m"))
    F = k * check_finite("deflection", deflection)
    return fit_hertz(z_piezo, F, tip_radius, poisson=poisson, model=model, contact_point=contact_point,
                     spring_constant=k)


def modulus_map(z_piezo: ArrayLike, deflections: ArrayLike, spring_constant: float, tip_radius: float,
                poisson: float = 0.5, model: str = "hertz") -> ModulusMap:
    """Fit many raw approach curves (e.g. a force-volume map).

    Parameters
    ----------
    z_piezo : array_like
        Piezo positions (m): shape (n,) shared by all curves, or the shape of ``deflections``.
    deflections : array_like
        Deflections (m), shape (..., n): one curve per leading index (a map is (ny, nx, n)).
    spring_constant, tip_radius, poisson, model
        As in :func:`fit_force_curve`.

    Returns
    -------
    ModulusMap
        Arrays of shape ``deflections.shape[:-1]``: modulus, modulus_err (Pa), contact_point (m), adhesion,
        adhesion_err (N), residual_rms (N).  Curves that cannot be fitted give NaN.
    """
    D = check_finite("deflections", deflections)
    if D.ndim < 1:
        raise InvalidArgument("deflections must have at least one axis (points of a curve)")
    Z = check_finite("z_piezo", z_piezo)
    Z = np.broadcast_to(Z, D.shape) if Z.shape != D.shape else Z
    shape = D.shape[:-1]
    out = {name: np.full(shape, np.nan) for name in
           ("modulus", "modulus_err", "contact_point", "adhesion", "adhesion_err", "residual_rms")}
    for idx in np.ndindex(*shape):
        try:
            r = fit_force_curve(Z[idx], D[idx], spring_constant, tip_radius, poisson=poisson, model=model)
        except InvalidArgument:
            continue
        for name in out:
            out[name][idx] = getattr(r, name)
    return ModulusMap(**out)
