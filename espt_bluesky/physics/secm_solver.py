"""Exact (numerically converged) steady-state SECM feedback for an inlaid disk in an insulating sheath.

Problem (everything dimensionless: lengths in units of the disk radius a, concentration in units of c*):

* axisymmetric Laplace equation  (1/r)·∂_r(r·∂_r c) + ∂_z² c = 0  for the tip reactant c(r, z);
* substrate: the plane z = 0, first-order regeneration of the mediator
  ``∂c/∂z = -κ·(1 - c)`` (i.e. D·∂c/∂n = k·(c* − c), κ = k·a/D); κ = 0 is an inert insulator (no flux),
  κ = ∞ a diffusion-limited conductor (c = 1);
* tip: the plane z = L; the disk r ≤ 1 is diffusion limited (c = 0), the sheath 1 < r ≤ RG is insulating;
  the tip body is an insulating cylinder r ≤ RG reaching back (z > L) to the outer boundary, so the region
  r > RG behind the tip plane is part of the domain (back diffusion);
* far field: c → 1.  The outer boundary (a few thousand a away) carries the monopole (Robin) condition
  ``∂c/∂n = -(c - 1)·cos(θ)/ρ`` (ρ measured from the tip centre), which is exact for the leading 1/ρ term.

Discretisation: cell-centred finite volumes on a tensor-product (r, z) mesh.  Cell sizes follow
``h(x) = min_f (h_f + g·|x - f|)`` over the features f (disk edge r = 1 and tip plane z = L with h_f = h_min,
sheath corner r = RG, the substrate z = 0), i.e. geometric grading towards the disk-edge singularity and
geometric growth to the far boundary.  The refinement level ``m`` divides g by m and h_min by m²
(cost grows roughly like m²).  The sparse system is solved with ``scipy.sparse.linalg.splu``.

The κ dependence is obtained from one factorisation per (L, RG): the substrate boundary term is a diagonal
update ``A(κ) = A0 + U·diag(t(κ))·Uᵀ`` (U selects the cells next to the substrate), so every κ (including 0 and
∞) follows from a small dense capacitance system.

Public helpers
--------------
``isolated_tip_current(rg, level)``      i_T,∞/(n·F·D·c*·a) (4 for RG → ∞, 4·β(RG) otherwise);
``tip_current(L, rg, kappas, level)``    i_T/(n·F·D·c*·a) for several κ at one (L, RG);
``feedback_current_exact(L, rg, kappas, level, richardson)``  I_T = i_T/i_T,∞, optionally Richardson
extrapolated from levels (level, 2·level).

Only numpy and scipy are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
import scipy.sparse as sp
import scipy.sparse.linalg as spla

#: distance of the outer (Robin) boundary from the tip, in units of a
R_FAR = 3000.0
#: base geometric grading factor (cell size grows by ~(1 + G0/level) per cell away from a feature)
G0 = 0.12
#: base smallest cell size at the disk edge
HMIN0 = 2e-4


def _faces(breaks, features, g, n_sample=3000):
    """Face coordinates on [breaks[0], breaks[-1]] containing every break point.

    ``features`` is a list of (position, h_at_feature); the local cell size is ``min_f(h_f + g·|x - f|)``.
    Cells are placed by equidistributing ∫ dx / h(x) on every segment between consecutive breaks.
    """
    feats = np.array(features, dtype=float)

    def h(x):
        return np.min(feats[:, 1][None, :] + g * np.abs(x[:, None] - feats[:, 0][None, :]), axis=1)

    out = [float(breaks[0])]
    for A, B in zip(breaks[:-1], breaks[1:]):
        span = B - A
        d = np.geomspace(1e-10 * span, 0.5 * span, n_sample)
        x = np.unique(np.concatenate([[A, B], A + d, B - d, np.linspace(A, B, n_sample)]))
        w = 1.0 / h(x)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(x))])
        n = max(int(np.ceil(cum[-1])), 2)
        targets = np.linspace(0.0, cum[-1], n + 1)
        xf = np.interp(targets, cum, x)
        xf[0], xf[-1] = A, B
        out.extend(xf[1:].tolist())
    return np.array(out)


@dataclass
class _Mesh:
    rf: np.ndarray  # r faces
    zf: np.ndarray  # z faces
    rg: float
    L: float | None  # None: isolated tip (no substrate)
    ztip: float  # z of the tip plane


def build_mesh(L: float | None, rg: float, level: float = 1.0, r_far: float | None = None) -> _Mesh:
    """Graded tensor mesh for a tip at height L above the substrate (L=None: isolated tip).

    Lengths in units of the disk radius a; ``r_far`` (default :data:`R_FAR`) is the outer boundary distance.
    """
    r_far = R_FAR if r_far is None else r_far
    g = G0 / level
    hmin = HMIN0 / level**2
    h_rg = 4.0 * hmin if np.isfinite(rg) else hmin
    rfeat = [(1.0, hmin)]
    rbreaks = [0.0, 1.0]
    rmax = r_far
    if np.isfinite(rg):
        rfeat.append((rg, h_rg))
        rbreaks.append(rg)
        rmax = max(r_far, 10.0 * rg)
    rbreaks.append(rmax)
    rf = _faces(rbreaks, rfeat, g)
    if L is None:
        ztip = rmax
        zbreaks = [0.0, ztip, 2.0 * rmax]
        zfeat = [(ztip, hmin)]
    else:
        ztip = float(L)
        hs = 0.5 * g * min(L, 2.0) + hmin
        zbreaks = [0.0, ztip, ztip + rmax]
        zfeat = [(ztip, hmin), (0.0, hs)]
    zf = _faces(zbreaks, zfeat, g)
    return _Mesh(rf=rf, zf=zf, rg=rg, L=L, ztip=ztip)


class _System:
    """Assembled finite-volume system for one geometry; factorised once."""

    def __init__(self, mesh: _Mesh):
        rf, zf = mesh.rf, mesh.zf
        nr, nz = len(rf) - 1, len(zf) - 1
        rc = 0.5 * (rf[1:] + rf[:-1])
        zc = 0.5 * (zf[1:] + zf[:-1])
        dr = np.diff(rf)
        dz = np.diff(zf)
        R, Z = np.meshgrid(rc, zc, indexing="ij")
        # tip body: r < rg and z > ztip (cells lie entirely on one side since rg, ztip are faces)
        body = (R < mesh.rg) & (Z > mesh.ztip)
        active = ~body
        idx = -np.ones((nr, nz), dtype=np.int64)
        idx[active] = np.arange(active.sum())
        n = int(active.sum())
        axial_area = 0.5 * (rf[1:] ** 2 - rf[:-1] ** 2)  # per unit 2π

        rows, cols, vals = [], [], []
        diag = np.zeros(n)
        rhs = np.zeros(n)

        def couple(a, b, t):
            """Internal faces between cells a and b with transmissibility t (both cells in the domain)."""
            ok = (a >= 0) & (b >= 0)
            t = np.broadcast_to(t, a.shape)[ok]
            a, b = a[ok], b[ok]
            rows.extend([a, b])
            cols.extend([b, a])
            vals.extend([-t, -t])
            np.add.at(diag, a, t)
            np.add.at(diag, b, t)

        # radial internal faces between (i, j) and (i+1, j); axial ones between (i, j) and (i, j+1)
        couple(idx[:-1, :], idx[1:, :], (rf[1:-1][:, None] * dz[None, :]) / (rc[1:] - rc[:-1])[:, None])
        couple(idx[:, :-1], idx[:, 1:], axial_area[:, None] / (zc[1:] - zc[:-1])[None, :])

        # far-field Robin faces: outer r face and top z face (and bottom for the isolated tip)
        x0, z0 = 0.0, mesh.ztip

        def robin(cells, area, delta, xb, zb, nx, nz_):
            rho = np.hypot(xb - x0, zb - z0)
            lam = (nx * (xb - x0) + nz_ * (zb - z0)) / rho**2
            lam = np.maximum(lam, 0.0)
            tt = area / (delta + 1.0 / np.maximum(lam, 1e-300))
            np.add.at(diag, cells, tt)
            np.add.at(rhs, cells, tt)

        jj = np.arange(nz)
        cells = idx[-1, :]
        ok = cells >= 0
        robin(cells[ok], (rf[-1] * dz)[ok], (rf[-1] - rc[-1]), rf[-1], zc[ok], 1.0, 0.0)
        cells = idx[:, -1]
        ok = cells >= 0
        robin(cells[ok], axial_area[ok], zf[-1] - zc[-1], rc[ok], zf[-1], 0.0, 1.0)

        # tip disk (c = 0) on the faces z = ztip, r < 1, seen from the cells just below
        jt = int(np.argmin(np.abs(zf - mesh.ztip)))  # face index of the tip plane
        assert abs(zf[jt] - mesh.ztip) < 1e-12 * max(1.0, mesh.ztip)
        disk_i = np.nonzero(rf[1:] <= 1.0 + 1e-12)[0]
        disk_cells = idx[disk_i, jt - 1]
        tdisk = axial_area[disk_i] / (zf[jt] - zc[jt - 1])
        np.add.at(diag, disk_cells, tdisk)
        self.disk_cells = disk_cells
        self.tdisk = tdisk

        # substrate / bottom boundary
        bottom = idx[:, 0]
        self.bottom_cells = bottom
        self.bottom_area = axial_area
        self.bottom_delta = zc[0] - zf[0]
        if mesh.L is None:
            robin(bottom, axial_area, self.bottom_delta, rc, zf[0], 0.0, -1.0)

        rows.append(np.arange(n))
        cols.append(np.arange(n))
        vals.append(diag)
        A = sp.csc_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        self.n = n
        self.A = A
        self.rhs = rhs
        self.lu = spla.splu(A, permc_spec="COLAMD")
        self.mesh = mesh
        self.shape = (nr, nz)
        self.idx = idx

    def current_functional(self, c):
        """Dimensionless current 2π·Σ flux into the disk for solution(s) c (n,) or (n, k)."""
        return 2.0 * np.pi * (self.tdisk @ c[self.disk_cells])

    def solve_plain(self):
        c = self.lu.solve(self.rhs)
        return c, self.current_functional(c)

    def currents_vs_kappa(self, kappas, chunk=64):
        """Tip current for every κ in ``kappas`` (0 and inf allowed), one factorisation."""
        kappas = np.asarray(kappas, dtype=float)
        c0 = self.lu.solve(self.rhs)
        J0 = self.current_functional(c0)
        U = self.bottom_cells
        k = len(U)
        # adjoint of the current functional (A is symmetric)
        gvec = np.zeros(self.n)
        np.add.at(gvec, self.disk_cells, 2.0 * np.pi * self.tdisk)
        wg = self.lu.solve(gvec)
        gW = wg[U]
        y0 = c0[U]
        G = np.empty((k, k))
        for s in range(0, k, chunk):
            e = np.zeros((self.n, min(chunk, k - s)))
            e[U[s : s + chunk], np.arange(e.shape[1])] = 1.0
            W = self.lu.solve(e)
            G[:, s : s + chunk] = W[U, :]
        out = np.empty(kappas.shape)
        for q, kap in enumerate(kappas.ravel()):
            if kap == 0:
                out.flat[q] = J0
                continue
            inv = 0.0 if np.isinf(kap) else 1.0 / kap
            t = self.bottom_area / (self.bottom_delta + inv)
            M = np.eye(k) + G * t[None, :]
            y = np.linalg.solve(M, y0 + G @ t)
            out.flat[q] = J0 + gW @ (t * (1.0 - y))
        return out


def isolated_tip_current(rg: float, level: float = 1.0) -> float:
    """i_T,∞ / (n·F·D·c*·a) for an inlaid disk in a sheath of radius RG·a (RG = inf: bare-plane disk, 4).

    Parameters
    ----------
    rg : float
        RG = r_glass/a (> 1, or ``numpy.inf`` for an infinite insulating plane).
    level : float
        Mesh refinement level (1: default; cost ~ level²).

    Returns
    -------
    float
        Dimensionless steady-state current.
    """
    sys_ = _System(build_mesh(None, rg, level))
    return float(sys_.solve_plain()[1])


def tip_current(L: float, rg: float, kappas: ArrayLike, level: float = 1.0) -> np.ndarray:
    """i_T / (n·F·D·c*·a) at distance L (units of a) over a substrate with rate constants ``kappas``.

    Parameters
    ----------
    L : float
        Tip–substrate distance d/a (> 0).
    rg : float
        RG = r_glass/a.
    kappas : array_like
        κ = k·a/D values (0 = insulator, inf = conductor).
    level : float
        Mesh refinement level.

    Returns
    -------
    numpy.ndarray
        Dimensionless currents, same shape as ``kappas``.
    """
    sys_ = _System(build_mesh(float(L), rg, level))
    return sys_.currents_vs_kappa(np.atleast_1d(kappas))


def feedback_current_exact(
    L: float, rg: float, kappas: ArrayLike, level: float = 1.0, richardson: bool = True
) -> np.ndarray:
    """Normalised feedback current I_T = i_T/i_T,∞ from direct solves (slow: about a second per call).

    With ``richardson=True`` both currents are computed on meshes ``level`` and ``2·level`` and extrapolated
    assuming second-order convergence in the grading factor (error ∝ 1/level²).

    Parameters
    ----------
    L : float
        d/a (> 0).
    rg : float
        r_glass/a (> 1).
    kappas : array_like
        κ = k·a/D (0 … inf).
    level : float
        Base mesh refinement level.
    richardson : bool
        Extrapolate from two levels.

    Returns
    -------
    numpy.ndarray
        I_T (dimensionless), shape of ``kappas``.
    """
    def one(lv):
        return tip_current(L, rg, kappas, lv) / isolated_tip_current(rg, lv)

    if not richardson:
        return one(level)
    f1 = one(level)
    f2 = one(2 * level)
    return f2 + (f2 - f1) / 3.0
