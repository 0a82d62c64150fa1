"""Gaussian-process sampling of a map: where to hop next, given the hops so far.

Plain numpy + scikit-learn; nothing here knows about bluesky.  Positions are (x, y) in µm; the objective is any
scalar per hop, in its own units (µm for a height, A for a current, dimensionless for a ratio).

The model (:func:`fit_gp`) is scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor` with a
constant × Matérn kernel plus a white-noise term; the length scale, amplitude and noise are chosen by maximising
the log marginal likelihood, always starting from the same initial kernel, so the same hops give the same model
and the same proposal (a decision can be replayed from the recorded hops).

Acquisition by strategy (:func:`acquisition`), on the candidates of a bounded grid (:func:`candidate_grid`) that lie
inside the region and farther than the minimum separation from every attempted landing (:func:`far_enough`):

``"mapping"``
    the largest predicted standard deviation σ (uncertainty sampling: the map converges everywhere);
``"hotspots"``
    the upper confidence bound μ + β·σ (Srinivas et al. 2010): high values of the objective found and refined;
``"balanced"``
    the mean of the two scores above, each scaled to 0…1 over the candidates;
``"boundary"``
    the straddle score 1.96·σ − |μ − t| (Bryan et al. 2005): points whose predicted class (above / below the
    threshold t) is least certain, i.e. along the edges of an edge/basal or particle/binder map.  t defaults to the
    midpoint of the objective values measured so far;
``"gradient"``
    σ · (|∇μ| + 0.2·max|∇μ|): the uncertainty weighted by the local slope of the predicted map, so that hops go
    where a map's error lives (particle rims, steps) while flat ground is still visited (the 0.2 floor).  A
    stationary GP's σ depends on where the hops are, not on what they measured; the slope brings the values in.

Proposal (:func:`propose`) = the best candidate; ties go to the first in the candidate order (deterministic).

The kernel is isotropic by default; ``anisotropic=True`` fits one length scale per axis (ARD), which pools the
evidence along straight features (HOPG step bands): the map then places an edge from many hops along it.

Maps (:func:`reconstruct`): ``"gp"`` (the GP mean) or ``"piecewise"`` (two-phase samples: the hops are split at a
class threshold, each class gets its own GP and each map point takes the GP of its class; between hops of both
classes the boundary is where the upper class's GP, with the lower class's hops as censored values, crosses the
threshold).  One stationary GP cannot serve flat binder and steep particle
rims at once; two can.  Each class's GP is fitted to a power (Box-Cox) transform of its values' distance from the
other class's level (a particle's height above the binder), the power chosen by marginal likelihood
(:func:`fit_warped_gp`, a warped GP, Snelson et al. 2004):
a particle whose height rises steeply at its rim and flattens on top is a smooth function of (x, y) only after
such a warp (a spheroidal cap h ∝ √(r² − ρ²) exactly at power 2), and a stationary GP then serves rim and top.
:func:`cv_error` (k-fold cross-validation on the hops) chooses between map models without any truth.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import InvalidArgument, check_choice, check_positive

__all__ = ["STRATEGIES", "SURVEYS", "Proposal", "points_in_polygon", "candidate_grid", "survey_points",
           "far_enough", "fit_gp", "fit_warped_gp", "predict", "acquisition", "propose", "map_error", "reconstruct",
           "RECONSTRUCTIONS", "BOUNDARIES", "WARP_POWERS", "cv_error"]

STRATEGIES = ("mapping", "hotspots", "balanced", "boundary", "gradient")
RECONSTRUCTIONS = ("gp", "piecewise")
#: Where the piecewise map puts a class boundary between hops of both classes (see :func:`reconstruct`).
BOUNDARIES = ("censored", "midway")
#: Floor of the slope weight of ``"gradient"`` (fraction of the largest predicted slope).
GRADIENT_FLOOR = 0.2
SURVEYS = ("corners", "3x3")
#: Box-Cox powers λ tried by :func:`fit_warped_gp` (1: no warp).
WARP_POWERS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
#: Most candidates a grid may hold (the spacing grows to stay under it).
MAX_CANDIDATES = 20_000


@dataclass
class Proposal:
    """The next hop and why.

    Attributes
    ----------
    x, y : float
        Proposed landing, µm.
    strategy : str
    mean, std : float
        Predicted objective and its standard deviation there (objective units; NaN for a survey point).
    score : float
        Acquisition value of the chosen candidate.
    reason : str
        One line a person can read ("max σ = ...", "survey 3 of 5", ...).
    n_model : int
        Number of valid hops the model was fitted to.
    n_attempted : int
        Number of landings (valid or not) excluded by the minimum separation.
    length_scale, noise, amplitude : float
        Kernel hyperparameters: length scale (µm; the x one of an anisotropic kernel), white-noise and signal
        variances (normalised units); NaN without a model.
    length_scale_y : float
        The y length scale (µm) of an anisotropic kernel; equal to ``length_scale`` for an isotropic one.
    refit : bool
        True when they were fitted for this proposal (by maximum marginal likelihood), False when kept.
    threshold : float
        The class threshold used by ``"boundary"`` (NaN otherwise).
    n_candidates : int
        Candidates left after the region and the minimum separation.
    """

    x: float
    y: float
    strategy: str
    mean: float = math.nan
    std: float = math.nan
    score: float = math.nan
    reason: str = ""
    n_model: int = 0
    n_attempted: int = 0
    length_scale: float = math.nan
    noise: float = math.nan
    amplitude: float = math.nan
    length_scale_y: float = math.nan
    refit: bool = False
    threshold: float = math.nan
    n_candidates: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- geometry
def _as_xy(name: str, pts: Any) -> np.ndarray:
    a = np.asarray(pts, float)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise InvalidArgument(f"{name} of shape {a.shape} must be a list of (x, y) pairs in µm")
    return a


def check_polygon(polygon: Any) -> np.ndarray:
    """A region polygon as an (M, 2) array of finite vertices (µm) with a nonzero area."""
    poly = _as_xy("region", polygon)
    if poly.shape[0] < 3 or not np.all(np.isfinite(poly)):
        raise InvalidArgument(f"region={polygon!r} must be at least three finite (x, y) vertices in µm")
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if area <= 0:
        raise InvalidArgument(f"region={polygon!r} encloses no area (its vertices are on one line)")
    return poly


def points_in_polygon(x: Any, y: Any, polygon: Any) -> np.ndarray:
    """True where (x, y) µm lies inside ``polygon`` ((M, 2) vertices, µm; even-odd rule, vectorised ray casting).

    Points exactly on an edge may fall either side.
    """
    poly = check_polygon(polygon)
    x = np.asarray(x, float)[..., None]
    y = np.asarray(y, float)[..., None]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (np.count_nonzero(crosses & (x < xi), axis=-1) % 2) == 1


def candidate_grid(bounds: Sequence[float], spacing: float, polygon: Any = None) -> np.ndarray:
    """Candidate landings: a square grid of pitch ``spacing`` µm over ``bounds`` = (x0, x1, y0, y1) µm, kept
    inside ``polygon`` when given.  The pitch grows if the grid would exceed :data:`MAX_CANDIDATES`.

    Returns
    -------
    ndarray (N, 2)
        (x, y) µm, in row order (y slow, x fast).
    """
    x0, x1, y0, y1 = (float(b) for b in bounds)
    spacing = float(check_positive("spacing", spacing, units="µm"))
    if not (x1 >= x0 and y1 >= y0):
        raise InvalidArgument(f"bounds={tuple(bounds)!r} must be (x0, x1, y0, y1) with x0 <= x1 and y0 <= y1")
    n = ((x1 - x0) / spacing + 1) * ((y1 - y0) / spacing + 1)
    if n > MAX_CANDIDATES:
        spacing *= math.sqrt(n / MAX_CANDIDATES)
    xs = np.arange(x0, x1 + 1e-9 * max(1.0, abs(x1)), spacing)
    ys = np.arange(y0, y1 + 1e-9 * max(1.0, abs(y1)), spacing)
    # centre the lattice in the box (the leftover is split on both sides)
    xs = xs + 0.5 * (x1 - xs[-1]) if xs.size else xs
    ys = ys + 0.5 * (y1 - ys[-1]) if ys.size else ys
    X, Y = np.meshgrid(xs, ys)
    pts = np.column_stack([X.ravel(), Y.ravel()])
    if polygon is not None:
        pts = pts[points_in_polygon(pts[:, 0], pts[:, 1], polygon)]
    return pts


def survey_points(candidates: np.ndarray, kind: str = "corners", *, margin: float = 0.0) -> np.ndarray:
    """The seed hops: ``"corners"`` (the four corners and the centre of the candidates' bounding box, moved in by
    ``margin`` µm) or ``"3x3"`` (a 3 × 3 grid over it), each snapped to the nearest candidate; duplicates dropped.
    """
    kind = check_choice("survey", kind, SURVEYS)
    c = _as_xy("candidates", candidates)
    if c.shape[0] == 0:
        raise InvalidArgument("the region holds no candidate landing: nothing to survey")
    lo, hi = c.min(axis=0), c.max(axis=0)
    m = np.minimum(float(margin), 0.5 * (hi - lo))
    lo, hi = lo + m, hi - m
    if kind == "corners":
        f = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    else:
        g = np.array([0.0, 0.5, 1.0])
        f = np.array([[a, b] for b in g for a in (g if int(b * 2) % 2 == 0 else g[::-1])])
    nominal = lo + f * (hi - lo)
    idx = [int(np.argmin(np.hypot(*(c - p).T))) for p in nominal]
    return c[list(dict.fromkeys(idx))]


def far_enough(candidates: np.ndarray, attempted: Any, min_separation: float) -> np.ndarray:
    """True for the candidates farther than ``min_separation`` µm from every attempted landing."""
    c = _as_xy("candidates", candidates)
    a = _as_xy("attempted", attempted)
    if a.shape[0] == 0 or min_separation <= 0:
        return np.ones(c.shape[0], bool)
    keep = np.ones(c.shape[0], bool)
    r2 = float(min_separation) ** 2
    for i in range(0, a.shape[0], 256):  # chunked: candidates × landings can be large
        d2 = ((c[:, None, :] - a[None, i:i + 256, :]) ** 2).sum(-1)
        keep &= (d2 >= r2).all(axis=1)
    return keep


# ----------------------------------------------------------------------------------------------- model
def fit_gp(X: Any, y: Any, *, span: float, min_length: float, nu: float = 1.5,
           kernel_params: Mapping[str, float] | None = None, anisotropic: bool = False):
    """Fit the map model to valid hops.

    Parameters
    ----------
    X : (n, 2) µm
    y : (n,) objective values (finite)
    span : float, µm
        Size of the mapped region (largest side); bounds the length scale from above (2·span).
    min_length : float, µm
        Smallest length scale allowed (e.g. half the probe footprint: the map cannot resolve finer).
    nu : {0.5, 1.5, 2.5}
        Matérn smoothness (1.5: once-differentiable maps, which tolerates edges better than a squared
        exponential).
    kernel_params : dict, optional
        ``length_scale``, ``amplitude``, ``noise`` (and ``length_scale_y`` when anisotropic; from
        :func:`gp_parameters` of an earlier fit): keep these hyperparameters instead of maximising the marginal
        likelihood again (a cheap update between refits).
    anisotropic : bool
        One length scale per axis (x, y), each within the same bounds.

    Returns
    -------
    sklearn.gaussian_process.GaussianProcessRegressor (fitted, ``normalize_y=True``)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    X = _as_xy("X", X)
    y = np.asarray(y, float).ravel()
    if X.shape[0] != y.size or y.size < 2:
        raise InvalidArgument(f"fit_gp needs at least 2 hops with one value each (got {X.shape[0]} positions, "
                              f"{y.size} values)")
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(X)):
        raise InvalidArgument("fit_gp: positions and values must be finite (leave invalid hops out)")
    lo = float(min_length)
    hi = max(2.0 * float(span), 2.0 * lo)
    l0 = float(np.clip(0.2 * span, lo, hi))
    ls0: Any = [l0, l0] if anisotropic else l0
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=ls0, length_scale_bounds=(lo, hi), nu=nu)
              + WhiteKernel(1e-2, (1e-6, 1.0)))
    if kernel_params is not None:
        ls: Any = float(kernel_params["length_scale"])
        if anisotropic:
            ls = [ls, float(kernel_params.get("length_scale_y", ls))]
        kernel = (ConstantKernel(float(kernel_params["amplitude"]), "fixed")
                  * Matern(length_scale=ls, length_scale_bounds="fixed", nu=nu)
                  + WhiteKernel(float(kernel_params["noise"]), "fixed"))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0)
    # one BLAS thread: on a shared machine threaded BLAS is 10x slower for these small matrices, and a single
    # thread makes the fit bit-for-bit reproducible (a decision replays exactly)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if np.ptp(y) == 0 or kernel_params is not None:  # flat so far (nothing to learn from), or kept
            gp.set_params(optimizer=None)
        gp.fit(X, y)
    return gp


def gp_parameters(gp) -> dict[str, float]:
    """Fitted ``length_scale`` (µm; x of an anisotropic kernel), ``length_scale_y`` (µm), ``amplitude``
    (normalised variance) and ``noise`` (normalised variance)."""
    k = gp.kernel_
    ls = np.atleast_1d(np.asarray(k.k1.k2.length_scale, float))
    return dict(length_scale=float(ls[0]), length_scale_y=float(ls[-1]), amplitude=float(k.k1.k1.constant_value),
                noise=float(k.k2.noise_level))


def slope(gp, X: Any, h: float) -> np.ndarray:
    """|∇μ| of the GP mean at X (µm), by central differences of step ``h`` µm (objective units per µm)."""
    X = _as_xy("X", X)
    with threadpool_limits(1):
        gx = gp.predict(X + [h, 0.0]) - gp.predict(X - [h, 0.0])
        gy = gp.predict(X + [0.0, h]) - gp.predict(X - [0.0, h])
    return np.hypot(gx, gy) / (2.0 * h)


def predict(gp, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted mean and standard deviation (objective units) at X (µm); the white noise is not included in σ
    (it is the uncertainty of the map, not of one more measurement)."""
    X = _as_xy("X", X)
    with threadpool_limits(1):
        mu, sd = gp.predict(X, return_std=True)
    noise = gp_parameters(gp)["noise"] * float(np.atleast_1d(gp._y_train_std)[0]) ** 2
    var = np.clip(sd ** 2 - noise, 0.0, None)
    return np.asarray(mu, float), np.sqrt(var)


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(a)), float(np.max(a))
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def acquisition(strategy: str, mean: np.ndarray, std: np.ndarray, *, scale: float = 1.0, beta: float = 2.0,
                threshold: float = math.nan, slope: np.ndarray | None = None) -> np.ndarray:
    """Acquisition score of each candidate (higher is better); see the module docstring.

    ``scale`` (objective units) puts μ and σ on the scale of the measured values (their standard deviation), so
    β has the same meaning whatever the objective's units.  ``slope`` (|∇μ|, objective units per µm) is needed by
    ``"gradient"``.
    """
    strategy = check_choice("strategy", strategy, STRATEGIES)
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    s = float(scale) if scale > 0 else 1.0
    if strategy == "mapping":
        return std / s
    if strategy == "gradient":
        if slope is None:
            raise InvalidArgument("strategy='gradient' needs the slope |∇μ| of the predicted map at the candidates")
        g = np.asarray(slope, float)
        return std / s * (g + GRADIENT_FLOOR * float(np.max(g, initial=0.0)))
    ucb = (mean + beta * std) / s
    if strategy == "hotspots":
        return ucb
    if strategy == "balanced":
        return 0.5 * _unit(std) + 0.5 * _unit(ucb)
    return (1.96 * std - np.abs(mean - threshold)) / s


def propose(X: Any, y: Any, attempted: Any, candidates: np.ndarray, *, strategy: str, min_separation: float,
            span: float, min_length: float, beta: float = 2.0, threshold: float | None = None,
            nu: float = 1.5, kernel_params: Mapping[str, float] | None = None,
            anisotropic: bool = False) -> Proposal | None:
    """The next landing from the valid hops (``X``, ``y``) and every attempted landing (valid or not).

    ``kernel_params`` keeps earlier hyperparameters (see :func:`fit_gp`); otherwise they are fitted.
    Returns None when no candidate is left (every one is within ``min_separation`` of a landing).
    """
    X = _as_xy("X", X)
    y = np.asarray(y, float).ravel()
    att = _as_xy("attempted", attempted)
    ok = far_enough(candidates, att, min_separation)
    cand = np.asarray(candidates, float)[ok]
    if cand.shape[0] == 0:
        return None
    gp = fit_gp(X, y, span=span, min_length=min_length, nu=nu, kernel_params=kernel_params,
                anisotropic=anisotropic)
    mu, sd = predict(gp, cand)
    t = math.nan
    if strategy == "boundary":
        t = float(0.5 * (y.min() + y.max())) if threshold is None else float(threshold)
    g = slope(gp, cand, 0.5 * float(min_length)) if strategy == "gradient" else None
    score = acquisition(strategy, mu, sd, scale=float(np.std(y)) or 1.0, beta=beta, threshold=t, slope=g)
    k = int(np.argmax(score))
    p = gp_parameters(gp)
    refit = "kept" if kernel_params is not None else "fitted"
    what = {"mapping": "max σ", "hotspots": f"max μ+{beta:g}σ", "balanced": "max ½(σ̂ + UCB̂)",
            "boundary": f"max straddle at t={t:.4g}", "gradient": "max σ·(|∇μ| + floor)"}[strategy]
    ell = f"{p['length_scale']:.3g}" + (f"/{p['length_scale_y']:.3g}" if anisotropic else "")
    reason = (f"{what}: μ={mu[k]:.4g}, σ={sd[k]:.4g} among {cand.shape[0]} candidates "
              f"(GP on {y.size} hops, ℓ={ell} µm {refit})")
    return Proposal(x=float(cand[k, 0]), y=float(cand[k, 1]), strategy=strategy, mean=float(mu[k]),
                    std=float(sd[k]), score=float(score[k]), reason=reason, n_model=int(y.size),
                    n_attempted=int(att.shape[0]), length_scale=p["length_scale"], noise=p["noise"],
                    amplitude=p["amplitude"], length_scale_y=p["length_scale_y"], refit=kernel_params is None,
                    threshold=t,
                    n_candidates=int(cand.shape[0]))


def map_error(predicted: Any, truth: Any, *, kind: str = "rmse", threshold: float | None = None) -> float:
    """Error of a predicted map against the truth on the same points: ``"rmse"`` (objective units), ``"nrmse"``
    (RMSE over the truth's standard deviation) or ``"misclassified"`` (fraction of points on the wrong side of
    ``threshold``)."""
    p, t = np.asarray(predicted, float).ravel(), np.asarray(truth, float).ravel()
    if p.shape != t.shape:
        raise InvalidArgument(f"predicted {p.shape} and truth {t.shape} must have the same size")
    kind = check_choice("kind", kind, ("rmse", "nrmse", "misclassified"))
    if kind == "misclassified":
        if threshold is None:
            raise InvalidArgument("kind='misclassified' needs a threshold")
        return float(np.mean((p > threshold) != (t > threshold)))
    rmse = float(np.sqrt(np.mean((p - t) ** 2)))
    return rmse / float(np.std(t)) if kind == "nrmse" else rmse


def fit_warped_gp(X: Any, u: Any, *, powers: Sequence[float] = WARP_POWERS, **kw) -> tuple[Any, float]:
    """GP of the Box-Cox transform z = (u^λ − 1)/λ of positive values ``u``, the power λ chosen among ``powers``
    by the marginal likelihood of ``u`` (that of z plus the log Jacobian (λ − 1)·Σ log u, so that the powers
    compare on the same data).  ``kw`` as :func:`fit_gp`.

    Returns
    -------
    (sklearn GaussianProcessRegressor fitted to z, λ)
    """
    u = np.asarray(u, float).ravel()
    if not np.all(u > 0):
        raise InvalidArgument("fit_warped_gp: the values must be positive (a power transform of a distance)")
    best: tuple[float, Any, float] | None = None
    for lam in powers:
        z = (u ** lam - 1.0) / lam
        gp = fit_gp(X, z, **kw)
        # sklearn's likelihood is of z normalised by its std: undo that, then add the warp's Jacobian
        ll = gp.log_marginal_likelihood_value_ - z.size * math.log(float(np.std(z)) or 1.0) \
            + (lam - 1.0) * float(np.sum(np.log(u)))
        if best is None or ll > best[0]:
            best = (ll, gp, float(lam))
    return best[1], best[2]


def _predict_warped(gp, lam: float, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back-transformed prediction of :func:`fit_warped_gp`: u at the GP's median, σ by the delta method."""
    return _unwarp(*predict(gp, P), lam)


def _unwarp(mz: np.ndarray, sz: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """A warped GP's prediction (mean, std of z) back in u (see :func:`_predict_warped`)."""
    base = np.clip(lam * mz + 1.0, 0.0, None)
    u = base ** (1.0 / lam)
    with np.errstate(divide="ignore"):
        du = np.where(base > 0, base ** (1.0 / lam - 1.0), 0.0)
    return u, sz * du


def _class_field(X: np.ndarray, hi: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Linear interpolation at ``P`` of the hops' class indicator (1 upper, 0 lower; nearest hop outside their hull
    or when the hops lie on one line)."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    ind = hi.astype(float)
    try:
        c = LinearNDInterpolator(X, ind)(P)
    except Exception:  # hops on one line (no triangulation): nearest hop only
        c = np.full(P.shape[0], np.nan)
    miss = np.isnan(c)
    if miss.any():
        c[miss] = NearestNDInterpolator(X, ind)(P[miss])
    return c


def _censored_upper(X: np.ndarray, y: np.ndarray, hi: np.ndarray, P: np.ndarray, t: float, kw: Mapping[str, Any],
                    warp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upper class's map with the lower class's hops as censored data: (mean, std, is_upper) at ``P``.

    The upper class's GP (warped as in :func:`fit_warped_gp`, hyperparameters by marginal likelihood on its own hops)
    is extrapolated to each lower-class hop; that hop is known to lie below ``t`` but not by how much, so it enters a
    second GP (same hyperparameters, in physical units) at the smaller of that extrapolation and ``t`` (a one-step
    data augmentation of a censored observation).  A point is of the upper class where this GP is above ``t``.
    """
    ref = float(np.median(y[~hi]))
    u = y[hi] - ref
    if warp:
        gp, lam = fit_warped_gp(X[hi], u, **kw)
    else:
        gp, lam = fit_gp(X[hi], u, **kw), 1.0
    z = (u ** lam - 1.0) / lam
    zt = ((t - ref) ** lam - 1.0) / lam if t > ref else -1.0 / lam
    zb, _ = predict(gp, X[~hi])
    za = np.concatenate([z, np.minimum(zb, zt)])
    p = gp_parameters(gp)
    r = float(np.var(z) / np.var(za)) if np.var(za) > 0 else 1.0  # normalize_y: keep the physical amplitude
    gpa = fit_gp(np.vstack([X[hi], X[~hi]]), za, kernel_params=dict(p, amplitude=p["amplitude"] * r,
                                                                     noise=p["noise"] * r), **kw)
    mz, sz = predict(gpa, P)
    um, us = _unwarp(mz, sz, lam)
    return ref + um, us, mz > zt


def reconstruct(X: Any, y: Any, points: Any, *, how: str = "gp", span: float, min_length: float, nu: float = 1.5,
                anisotropic: bool = False, threshold: float | None = None, warp: bool = True,
                boundary: str = "censored") -> tuple[np.ndarray, np.ndarray]:
    """The map at ``points`` (µm) from valid hops (``X`` µm, ``y``): predicted value and its standard deviation.

    ``how="gp"``: the GP mean (:func:`fit_gp`, hyperparameters by marginal likelihood).  ``how="piecewise"``: a
    two-phase map (particles on a flat binder, where one stationary length scale would smear the rims into the flat
    ground).  The hops are split at ``threshold`` (objective units; default the midpoint of ``y``); each class is
    mapped by its own GP of the values' distance from the other class's level (median), power-transformed
    (:func:`fit_warped_gp`, λ by marginal likelihood; ``warp=False``: no transform); a class with fewer than two hops
    gets their mean, σ NaN.  Where a map point lies is decided by the hops around it: inside a triangle of hops of
    one class (Delaunay, linear interpolation of the class indicator; nearest hop outside their hull), that class.
    Between hops of both classes, ``boundary``:

    ``"censored"``
        the upper class's warped GP, with the lower class's hops added as censored values (below the threshold by
        an unknown amount: each enters at the smaller of the upper GP's extrapolation there and the threshold);
        the boundary is where it crosses the threshold, and the upper class's values come from it.  A particle's
        rim is then placed by the curvature of its cap (a spheroid is exactly quadratic after the warp), not
        midway between the last hop on it and the first hop off it;
    ``"midway"``
        the class of the interpolated indicator (> 0.5): the boundary lies midway between hops of the two classes.

    Returns
    -------
    mean, std : ndarray (n,)
        Objective units.
    """
    how = check_choice("how", how, RECONSTRUCTIONS)
    boundary = check_choice("boundary", boundary, BOUNDARIES)
    X = _as_xy("X", X)
    y = np.asarray(y, float).ravel()
    P = _as_xy("points", points)
    kw = dict(span=span, min_length=min_length, nu=nu, anisotropic=anisotropic)
    if how == "gp" or y.size < 3:
        return predict(fit_gp(X, y, **kw), P)
    t = float(0.5 * (y.min() + y.max())) if threshold is None else float(threshold)
    hi = y > t
    if hi.all() or not hi.any():  # one class only: one map
        return predict(fit_gp(X, y, **kw), P)
    c = _class_field(X, hi, P)
    upper = c > 0.5
    mean, std = np.empty(P.shape[0]), np.full(P.shape[0], np.nan)
    censored = boundary == "censored" and hi.sum() >= 2
    if censored:
        both = (c > 1e-9) & (c < 1.0 - 1e-9)  # between hops of both classes
        mu_u, sd_u, up = _censored_upper(X, y, hi, P, t, kw, warp)
        upper[both] = up[both]
        mean[upper], std[upper] = mu_u[upper], sd_u[upper]
    for cls, sel, sign in ((hi, upper, 1.0), (~hi, ~upper, -1.0)):
        if not sel.any() or (censored and sign > 0):
            continue
        if cls.sum() < 2:
            mean[sel] = float(np.mean(y[cls]))
            continue
        # distance from the other class's level (a particle's height above the binder), > 0 in either class
        ref = float(np.median(y[~cls]))
        u = sign * (y[cls] - ref)
        if warp and np.all(u > 0):
            gp, lam = fit_warped_gp(X[cls], u, **kw)
            um, us = _predict_warped(gp, lam, P[sel])
            mean[sel], std[sel] = ref + sign * um, us
        else:
            mean[sel], std[sel] = predict(fit_gp(X[cls], y[cls], **kw), P[sel])
    return mean, std


def cv_error(X: Any, y: Any, *, folds: int = 5, **kw) -> float:
    """K-fold cross-validated RMS error (objective units) of :func:`reconstruct` on the hops themselves: hop i is
    in fold i mod ``folds``, each fold predicted from the others.  Needs no truth, so it can choose a map model the
    same way for any set of hops (``kw`` as :func:`reconstruct`)."""
    X = _as_xy("X", X)
    y = np.asarray(y, float).ravel()
    folds = int(folds)
    if not 2 <= folds <= y.size // 2:
        raise InvalidArgument(f"folds={folds} must be between 2 and half the number of hops ({y.size})")
    fold = np.arange(y.size) % folds
    se = np.empty(y.size)
    for f in range(folds):
        te = fold == f
        se[te] = (reconstruct(X[~te], y[~te], X[te], **kw)[0] - y[te]) ** 2
    return float(np.sqrt(np.mean(se)))
