"""SECM feedback: public, vectorised entry points backed by exact numerical tables.

``feedback_current(L, rg, kappa)`` returns I_T = i_T/i_T,∞ at normalised distance L = d/a over a substrate with
dimensionless first-order rate constant κ = k·a/D (0: insulator, ``numpy.inf``: diffusion-limited conductor).
``tip_current_inf(rg)`` returns i_T,∞ in units of n·F·D·c*·a.

Both interpolate tables computed with the finite-volume solver :mod:`espt_bluesky.physics.secm_solver`
(package data ``physics/data/secm_tables.npz``, regenerated with ``python -m espt_bluesky.physics.secm_tables``;
see ``docs/secm_exact.md``).  The solver is converged to better than 0.01 % (Richardson-extrapolated); the cubic
interpolation adds well under 0.1 % inside the tabulated range.

Tabulated range and what happens outside it
-------------------------------------------
* 0.05 ≤ L ≤ 10, 1.1 ≤ RG ≤ 101, every κ in [0, ∞]: tricubic interpolation in (ln(RG − 0.9), ln L, log10 κ)
  for 1e-6 ≤ κ ≤ 1e4; below/above, a first-order (in κ, resp. 1/κ) blend to the κ = 0 / κ = ∞ tables.
  Checked against direct solves at random off-grid points: max error 0.02 % (docs/secm_exact.md).
* L outside [0.05, 10]: the analytical approximation's L trend (:func:`secm_analytical.kinetic`) times the
  exact/analytical ratio at the table edge.  Above L = 10 that correction fades as 10/L (both tend to 1; at
  L = 20 within 0.3 %).  Below L = 0.05 expect up to ~6 % with slow kinetics (insulator/conductor ≲ 0.3 %).
* RG outside [1.1, 101]: the table at the RG edge times the analytical insulator / conductor RG trends
  (good to ~3 %), weighted by where the current lies between insulator and conductor.  At RG = 150:
  insulator/conductor within 0.7 %, finite κ up to 8 % off at L ≤ 0.5; RG = 1.05 within 0.3 %.  (The kinetic
  approximation is not used for the RG trend: it is off by tens of % at large RG.)
* ``tip_current_inf`` is tabulated over RG ∈ [1.02, ∞] (uniform in arccos(1/RG); exact to < 0.01 %); below
  1.02 the analytical β(RG) trend is used, scaled to match at 1.02.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.interpolate import CubicSpline

from ..errors import check_range
from . import secm_analytical
from .secm_tables import DATA_PATH, RG_SHIFT

_PAD = 8  # padding points on every side before the B-spline prefilter


def _pad_axis(values: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """Extend ``values`` by _PAD points on both sides of ``axis`` with not-a-knot cubic extrapolation."""
    dx = x[1] - x[0]
    xe = np.concatenate([x[0] - dx * np.arange(_PAD, 0, -1), x, x[-1] + dx * np.arange(1, _PAD + 1)])
    return CubicSpline(x, values, axis=axis, extrapolate=True)(xe)


class _Grid:
    """Uniform-grid cubic B-spline interpolant (padded, prefiltered) evaluated with ndimage.map_coordinates."""

    def __init__(self, axes: list[np.ndarray], values: np.ndarray):
        v = np.asarray(values, dtype=float)
        for ax, x in enumerate(axes):
            v = _pad_axis(v, x, ax)
        self.coef = ndimage.spline_filter(v, order=3, mode="mirror")
        self.x0 = np.array([x[0] for x in axes])
        self.dx = np.array([x[1] - x[0] for x in axes])
        self.lo = np.array([x[0] for x in axes])
        self.hi = np.array([x[-1] for x in axes])

    def __call__(self, *coords: np.ndarray) -> np.ndarray:
        c = np.empty((len(coords), coords[0].size))
        for k, x in enumerate(coords):
            c[k] = (np.clip(x.ravel(), self.lo[k], self.hi[k]) - self.x0[k]) / self.dx[k] + _PAD
        return ndimage.map_coordinates(self.coef, c, order=3, prefilter=False, mode="nearest")


class _Tables:
    def __init__(self, path=DATA_PATH):
        d = np.load(path)
        self.x_rg, self.x_L, self.w = d["x_rg"], d["x_L"], d["w"]
        self.rg_shift = float(d["rg_shift"]) if "rg_shift" in d else RG_SHIFT
        self.rg_min = float(np.exp(self.x_rg[0]) + self.rg_shift)
        self.rg_max = float(np.exp(self.x_rg[-1]) + self.rg_shift)
        self.L_min = float(np.exp(self.x_L[0]))
        self.L_max = float(np.exp(self.x_L[-1]))
        self.k_min = float(10.0 ** self.w[0])
        self.k_max = float(10.0 ** self.w[-1])
        self.main = _Grid([self.x_rg, self.x_L, self.w], d["logI"])
        self.ins = _Grid([self.x_rg, self.x_L], d["logI_ins"])
        self.cond = _Grid([self.x_rg, self.x_L], d["logI_cond"])
        self.t_inf = d["t_inf"]
        self.iinf_spline = CubicSpline(self.t_inf, d["iinf"])
        self.rg_inf_min = float(1.0 / np.cos(self.t_inf[0]))
        self.info = str(d["info"])

    def eval_in_range(self, L: np.ndarray, rg: np.ndarray, kappa: np.ndarray) -> np.ndarray:
        """I_T for L, rg inside the tabulated box (clamped), any κ ≥ 0; 1-D float arrays of equal size."""
        if L.size >= _DENSE_MIN_POINTS and rg.size and np.all(rg == rg[0]):
            return self._dense(float(rg[0])).eval(L, kappa, self)
        xr = np.log(rg - self.rg_shift)
        xl = np.log(L)
        with np.errstate(divide="ignore"):
            w = np.log10(kappa)
        out = np.exp(self.main(xr, xl, w))
        return self._blend_ends(out, kappa, lambda m: np.exp(self.ins(xr[m], xl[m])),
                                lambda m: np.exp(self.cond(xr[m], xl[m])))

    def _blend_ends(self, out, kappa, ins_fn, cond_fn):
        low = kappa < self.k_min
        if np.any(low):
            ins = ins_fn(low)
            out[low] = ins + (out[low] - ins) * (kappa[low] / self.k_min)
        high = kappa > self.k_max
        if np.any(high):
            cond = cond_fn(high)
            out[high] = cond - (cond - out[high]) * (self.k_max / kappa[high])
        return out

    @lru_cache(maxsize=32)
    def _dense(self, rg: float) -> "_Dense":
        return _Dense(self, rg)


#: from this many points on, a fixed-RG call is served from a dense bilinear (L, κ) table built once per RG
_DENSE_MIN_POINTS = 50_000
_DENSE_N = 513


class _Dense:
    """Dense 2-D (ln L, log10 κ) table of ln I_T at one RG (from the cubic interpolant), bilinear lookup.

    The grid spacing (0.010 in ln L, 0.020 in log10 κ) keeps the bilinear error below ~3e-5.
    """

    def __init__(self, T: "_Tables", rg: float):
        xl = np.linspace(T.x_L[0], T.x_L[-1], _DENSE_N)
        w = np.linspace(T.w[0], T.w[-1], _DENSE_N)
        XL, W = np.meshgrid(xl, w, indexing="ij")
        xr = np.full(XL.size, np.log(rg - T.rg_shift))
        self.grid = T.main(xr, XL.ravel(), W.ravel()).reshape(XL.shape)
        self.ins = np.exp(T.ins(xr[:_DENSE_N], xl))
        self.cond = np.exp(T.cond(xr[:_DENSE_N], xl))
        self.xl0, self.dxl = xl[0], xl[1] - xl[0]
        self.w0, self.dw = w[0], w[1] - w[0]

    def eval(self, L: np.ndarray, kappa: np.ndarray, T: "_Tables") -> np.ndarray:
        il = (np.log(L) - self.xl0) / self.dxl
        with np.errstate(divide="ignore"):
            iw = (np.clip(np.log10(kappa), T.w[0], T.w[-1]) - self.w0) / self.dw
        np.clip(il, 0.0, _DENSE_N - 1.000001, out=il)
        np.clip(iw, 0.0, _DENSE_N - 1.000001, out=iw)
        i0 = il.astype(np.intp)
        j0 = iw.astype(np.intp)
        fi = il - i0
        fj = iw - j0
        g = self.grid.ravel()
        k = i0 * _DENSE_N + j0
        top = g[k] + fj * (g[k + 1] - g[k])
        k += _DENSE_N
        bot = g[k] + fj * (g[k + 1] - g[k])
        out = np.exp(top + fi * (bot - top))
        return T._blend_ends(out, kappa, lambda m: np.interp(il[m], np.arange(_DENSE_N), self.ins),
                             lambda m: np.interp(il[m], np.arange(_DENSE_N), self.cond))


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    return _Tables()


def _validate(L, rg, kappa):
    L = check_range("L", L, 0.0, np.inf, low_inclusive=False)
    rg = check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    kappa = check_range("kappa", kappa, 0.0, np.inf, allow_inf=True)
    return L, rg, kappa


def feedback_current(L: ArrayLike, rg: ArrayLike, kappa: ArrayLike) -> np.ndarray:
    """Normalised tip current I_T = i_T / i_T,∞ (dimensionless), exact (tabulated numerical solution).

    Parameters
    ----------
    L : array_like
        Tip–substrate distance over tip radius, d/a (dimensionless, > 0).
    rg : array_like
        RG = r_glass / a (dimensionless, > 1).
    kappa : array_like
        κ = k·a/D (dimensionless, >= 0); 0 for an insulator, ``numpy.inf`` for a diffusion-limited conductor.

    Returns
    -------
    numpy.ndarray
        I_T with the broadcast shape of the arguments (a 0-d array for scalars).

    Raises
    ------
    espt_bluesky.errors.InvalidArgument
        L ≤ 0, RG ≤ 1, κ < 0 or any NaN (the message names the argument).

    Notes
    -----
    Inside 0.05 ≤ L ≤ 10 and 1.1 ≤ RG ≤ 20 the error is < 0.1 % (interpolation of converged solutions).
    Outside, see the module docstring for the fallback and its accuracy.
    """
    L, rg, kappa = _validate(L, rg, kappa)
    L, rg, kappa = np.broadcast_arrays(L, rg, kappa)
    shape = L.shape
    L, rg, kappa = (np.ascontiguousarray(v, dtype=float).ravel() for v in (L, rg, kappa))
    T = _tables()
    Lc = np.clip(L, T.L_min, T.L_max)
    rgc = np.clip(rg, T.rg_min, T.rg_max)
    out = T.eval_in_range(Lc, rgc, kappa)
    outside = (L < T.L_min) | (L > T.L_max) | (rg < T.rg_min) | (rg > T.rg_max)
    if np.any(outside):
        out[outside] = _outside(T, L[outside], rg[outside], kappa[outside], Lc[outside], rgc[outside],
                                out[outside])
    return out.reshape(shape)


def _outside(T, L, rg, kappa, Lc, rgc, val):
    """Fallback outside the tabulated box; ``val`` is the table at the clamped point (Lc, rgc)."""
    val = val.copy()
    lo = L != Lc
    if np.any(lo):
        # L direction: analytical L trend times the exact/analytical ratio at the edge (fading as 10/L above)
        a_true = secm_analytical.kinetic(L[lo], rgc[lo], kappa[lo])
        a_edge = secm_analytical.kinetic(Lc[lo], rgc[lo], kappa[lo])
        fade = np.where(L[lo] > T.L_max, T.L_max / L[lo], 1.0)
        val[lo] = a_true * (1.0 + (val[lo] / a_edge - 1.0) * fade)
    ro = rg != rgc
    if np.any(ro):
        # RG direction: the analytical insulator / conductor RG trends (good to ~3 %), weighted by where the
        # current lies between the exact insulator and conductor values at the edge
        Le, re_ = Lc[ro], rgc[ro]
        ins = T.eval_in_range(Le, re_, np.zeros(Le.size))
        cond = T.eval_in_range(Le, re_, np.full(Le.size, np.inf))
        edge = T.eval_in_range(Le, re_, kappa[ro])
        q = np.clip((edge - ins) / (cond - ins), 0.0, 1.0)
        Lr = L[ro]
        r_ins = secm_analytical.insulator(Lr, rg[ro]) / secm_analytical.insulator(Lr, re_)
        r_cond = secm_analytical.conductor(Lr, rg[ro]) / secm_analytical.conductor(Lr, re_)
        val[ro] = val[ro] * ((1.0 - q) * r_ins + q * r_cond)
    return val


def tip_current_inf(rg: ArrayLike) -> np.ndarray:
    """i_T,∞ / (n·F·D·c*·a) for an inlaid disk in an insulating sheath, exact (tabulated).

    Parameters
    ----------
    rg : array_like
        RG = r_glass/a (dimensionless, > 1; ``numpy.inf`` allowed).

    Returns
    -------
    numpy.ndarray
        Dimensionless current; 4 for RG → ∞, ≈ 4·1.019 at RG = 10, ≈ 4·1.163 at RG = 1.5.

    Notes
    -----
    Tabulated for RG ≥ 1.02 (error < 0.05 %); below, the analytical β(RG) trend scaled to the table at 1.02.
    """
    rg = check_range("rg", rg, 1.0, np.inf, low_inclusive=False, allow_inf=True)
    T = _tables()
    rgc = np.maximum(rg, T.rg_inf_min)
    with np.errstate(divide="ignore"):
        t = np.arccos(1.0 / rgc)
    out = np.asarray(T.iinf_spline(t), dtype=float)
    low = rg < T.rg_inf_min
    if np.any(low):
        scale = T.iinf_spline(np.arccos(1.0 / T.rg_inf_min)) / (4.0 * secm_analytical.beta(T.rg_inf_min))
        out = np.where(low, 4.0 * secm_analytical.beta(np.where(low, rg, 2.0)) * scale, out)
    return out
