"""Generate (and validate) the exact SECM feedback tables shipped as ``physics/data/secm_tables.npz``.

Usage::

    python -m espt_bluesky.physics.secm_tables                    # regenerate with the default grid
    python -m espt_bluesky.physics.secm_tables --processes 2 --out /tmp/secm_tables.npz
    python -m espt_bluesky.physics.secm_tables --validate 40      # compare tables with fresh direct solves

Table layout (all from :mod:`espt_bluesky.physics.secm_solver`, Richardson-extrapolated from two mesh levels):

``x_rg``   uniform grid in x = ln(RG − 0.9), RG ∈ [1.1, 101.1] (12 points span [1.1, 20])
``x_L``    uniform grid in ln L, L ∈ [0.05, 10]
``w``      uniform grid in w = log10 κ, κ ∈ [1e-6, 1e4]
``logI``   ln I_T on that (RG, L, w) grid
``logI_ins``, ``logI_cond``  ln I_T for κ = 0 and κ = ∞ on the (RG, L) grid
``t_inf``  uniform grid in t = arccos(1/RG), RG ∈ [1.02, ∞] (t = π/2 is RG = ∞)
``iinf``   i_T,∞/(n·F·D·c*·a) on that grid

The transforms were chosen from 1-D scans (cubic interpolation error in 1-D: 12 RG points ~1e-4, 17 L points
~6e-5, 4 points per decade of κ ~5e-5).  Outside [1e-6, 1e4] the κ dependence is first order in κ (resp. 1/κ):
the evaluator blends linearly to the κ = 0 / κ = ∞ tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from . import secm_solver

DATA_PATH = Path(__file__).with_name("data") / "secm_tables.npz"

RG_MIN, RG_MAX = 1.1, 20.0  # the RG grid has 12 points on [1.1, 20] ...
N_RG_CORE = 12
N_RG = 16  # ... continued with the same spacing to RG = 101.1
L_MIN, L_MAX = 0.05, 10.0
RG_SHIFT = 0.9
RG_INF_MIN = 1.02


def rg_to_x(rg: ArrayLike) -> np.ndarray:
    """Table coordinate of RG: ln(RG − 0.9)."""
    return np.log(np.asarray(rg, dtype=float) - RG_SHIFT)


def x_to_rg(x: ArrayLike) -> np.ndarray:
    """Inverse of :func:`rg_to_x`."""
    return np.exp(np.asarray(x, dtype=float)) + RG_SHIFT


W_MIN, W_MAX = -6.0, 4.0


def default_grid(
    n_rg: int = N_RG, n_L: int = 17, n_w: int = 41, n_inf: int = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The default table grid (transformed coordinates).

    RG: uniform in ln(RG − 0.9) with the spacing that puts ``N_RG_CORE`` points on [1.1, 20], ``n_rg`` points in
    all (16: up to RG = 101.1).
    """
    dx = (rg_to_x(RG_MAX) - rg_to_x(RG_MIN)) / (N_RG_CORE - 1)
    x_rg = rg_to_x(RG_MIN) + dx * np.arange(n_rg)
    x_L = np.linspace(np.log(L_MIN), np.log(L_MAX), n_L)
    w = np.linspace(W_MIN, W_MAX, n_w)
    t_inf = np.linspace(np.arccos(1.0 / RG_INF_MIN), np.pi / 2, n_inf)
    return x_rg, x_L, w, t_inf


def _richardson(values, levels):
    (l1, l2), (f1, f2) = levels, values
    return f2 + (f2 - f1) * l1**2 / (l2**2 - l1**2)


def _iinf_job(args):
    rg, levels = args
    vals = [secm_solver.isolated_tip_current(rg, lv) for lv in levels]
    return _richardson(vals, levels), vals


def _pair_job(args):
    rg, L, kap, levels = args
    vals = [secm_solver.tip_current(L, rg, kap, lv) for lv in levels]
    return _richardson(vals, levels), vals


def _map(fn, jobs, processes):
    if processes <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(processes) as pool:
        return pool.map(fn, jobs, chunksize=1)


def generate(
    out: Path = DATA_PATH,
    *,
    n_rg: int = N_RG,
    n_L: int = 17,
    n_w: int = 41,
    n_inf: int = 25,
    levels: tuple[float, float] = (1.0, 1.5),
    processes: int = 2,
    verbose: bool = True,
    reuse: Path | None = None,
) -> dict:
    """Solve on the whole grid and write the ``.npz``; returns the arrays written.

    ``reuse``: an earlier table file; RG rows present there with the same L, κ grid and mesh levels are copied
    instead of re-solved (every (RG, L) solve is independent and deterministic, so the result is the same).
    """
    t0 = time.time()
    x_rg, x_L, w, t_inf = default_grid(n_rg, n_L, n_w, n_inf)
    kap = np.concatenate([[0.0], 10.0**w, [np.inf]])
    n_s = len(kap)
    rg_vals = x_to_rg(x_rg)
    L_vals = np.exp(x_L)
    rg_inf = 1.0 / np.cos(t_inf)
    rg_inf[-1] = np.inf
    old_rows: dict[int, int] = {}
    old = None
    if reuse is not None:
        old = np.load(reuse)
        if (old["x_L"].shape == x_L.shape and np.allclose(old["x_L"], x_L) and old["w"].shape == w.shape
                and np.allclose(old["w"], w) and np.allclose(old["levels"], levels)):
            for i, x in enumerate(x_rg):
                j = np.nonzero(np.isclose(old["x_rg"], x, rtol=0, atol=1e-9))[0]
                if j.size:
                    old_rows[i] = int(j[0])
    new = [i for i in range(n_rg) if i not in old_rows]
    if verbose:
        print(f"reusing {len(old_rows)} RG rows, solving {len(new)}", flush=True)
    # i_inf on the 3-D grid RG values (for normalisation) and on its own 1-D grid
    iinf_grid = np.empty(n_rg)
    res = _map(_iinf_job, [(rg_vals[i], levels) for i in new], processes)
    iinf_grid[new] = [r[0] for r in res]
    iinf_grid_lv = np.array([r[1] for r in res]).reshape(len(new), 2)
    for i, j in old_rows.items():
        iinf_grid[i] = old["iinf_on_rg_grid"][j]
    if old is not None and old["t_inf"].shape == t_inf.shape and np.allclose(old["t_inf"], t_inf):
        iinf = old["iinf"]
    else:
        res = _map(_iinf_job, [(r, levels) for r in rg_inf], processes)
        iinf = np.array([r[0] for r in res])
    if verbose:
        print(f"i_inf done in {time.time() - t0:.0f} s", flush=True)
    jobs = [(rg_vals[i], L, kap, levels) for i in new for L in L_vals]
    res = _map(_pair_job, jobs, processes)
    I = np.empty((n_rg, n_L, n_s))
    I[new] = np.array([r[0] for r in res]).reshape(len(new), n_L, n_s) / iinf_grid[new][:, None, None]
    for i, j in old_rows.items():
        I[i, :, 0] = np.exp(old["logI_ins"][j])
        I[i, :, 1:-1] = np.exp(old["logI"][j])
        I[i, :, -1] = np.exp(old["logI_cond"][j])
    # level-wise normalised currents of the newly solved rows, kept for the convergence record
    itip_lv = np.array([r[1] for r in res]).reshape(len(new), n_L, 2, n_s)
    I_lv = itip_lv / iinf_grid_lv[:, None, :, None]
    max_change = float(np.max(np.abs(I_lv[:, :, 1, :] / I_lv[:, :, 0, :] - 1.0))) if new else 0.0
    max_rich = float(np.max(np.abs(I[new] / I_lv[:, :, 1, :] - 1.0))) if new else 0.0
    if old is not None and old_rows:
        max_change = max(max_change, float(old["max_level_change"]))
        max_rich = max(max_rich, float(old["max_richardson_correction"]))
    if verbose:
        print(f"3-D table done in {time.time() - t0:.0f} s", flush=True)
    data = dict(
        x_rg=x_rg,
        x_L=x_L,
        w=w,
        logI=np.log(I[:, :, 1:-1]),
        logI_ins=np.log(I[:, :, 0]),
        logI_cond=np.log(I[:, :, -1]),
        t_inf=t_inf,
        iinf=iinf,
        iinf_on_rg_grid=iinf_grid,
        max_level_change=np.array(max_change),
        max_richardson_correction=np.array(max_rich),
        levels=np.array(levels),
        rg_shift=np.array(RG_SHIFT),
        info=np.array(
            "exact SECM feedback tables, espt_bluesky.physics.secm_solver; "
            f"G0={secm_solver.G0}, HMIN0={secm_solver.HMIN0}, R_FAR={secm_solver.R_FAR}; "
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} in {time.time() - t0:.0f} s"
        ),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **data)
    if verbose:
        print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)", flush=True)
    return data


def validate(
    n: int = 20, seed: int = 1, levels: tuple[float, float] = (1.0, 1.5), processes: int = 2, verbose: bool = True
) -> np.ndarray:
    """Relative error of the shipped tables against fresh direct solves at random off-grid points.

    Returns an array of rows (L, RG, κ, I_exact, I_table, rel_err) plus the i_inf check rows
    (nan, RG, nan, iinf_exact, iinf_table, rel_err).
    """
    from . import secm

    rng = np.random.default_rng(seed)
    rgs = x_to_rg(rng.uniform(rg_to_x(RG_MIN), default_grid()[0][-1], n))
    Ls = np.exp(rng.uniform(np.log(L_MIN), np.log(L_MAX), n))
    kaps = 10.0 ** rng.uniform(-3.0, 3.0, n)
    kaps[: max(n // 10, 1)] = 0.0
    kaps[-max(n // 10, 1):] = np.inf
    jobs = [(r, L, np.array([k]), levels) for r, L, k in zip(rgs, Ls, kaps)]
    res = _map(_pair_job, jobs, processes)
    iinf = _map(_iinf_job, [(r, levels) for r in rgs], processes)
    rows = []
    for q in range(n):
        exact = res[q][0][0] / iinf[q][0]
        tab = float(secm.feedback_current(Ls[q], rgs[q], kaps[q]))
        rows.append((Ls[q], rgs[q], kaps[q], exact, tab, tab / exact - 1.0))
    for q in range(n):
        tab = float(secm.tip_current_inf(rgs[q]))
        rows.append((np.nan, rgs[q], np.nan, iinf[q][0], tab, tab / iinf[q][0] - 1.0))
    rows = np.array(rows)
    if verbose:
        print(f"{'L':>8} {'RG':>7} {'kappa':>10} {'exact':>10} {'table':>10} {'err %':>8}")
        for r in rows:
            print(f"{r[0]:8.4f} {r[1]:7.3f} {r[2]:10.4g} {r[3]:10.5f} {r[4]:10.5f} {100 * r[5]:8.4f}")
        e = np.abs(rows[:n, 5])
        ei = np.abs(rows[n:, 5])
        print(f"I_T: max |err| = {100 * e.max():.4f} %, rms = {100 * np.sqrt(np.mean(e**2)):.4f} %")
        print(f"i_inf: max |err| = {100 * ei.max():.4f} %")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DATA_PATH, help="output .npz (default: the package data file)")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--n-rg", type=int, default=N_RG, help="RG points (12 span [1.1, 20]; 16 reach 101)")
    p.add_argument("--reuse", type=Path, default=None,
                   help="copy RG rows already solved in this earlier table file instead of re-solving them")
    p.add_argument("--n-L", type=int, default=17)
    p.add_argument("--n-w", type=int, default=41, help="points in log10(kappa) over [-6, 4]")
    p.add_argument("--n-inf", type=int, default=25)
    p.add_argument("--levels", type=float, nargs=2, default=(1.0, 1.5), help="two mesh levels for Richardson")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="do not generate; compare the shipped tables with N random direct solves")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.validate:
        validate(a.validate, a.seed, tuple(a.levels), a.processes)
        return 0
    generate(a.out, n_rg=a.n_rg, n_L=a.n_L, n_w=a.n_w, n_inf=a.n_inf, levels=tuple(a.levels),
             reuse=a.reuse,
             processes=a.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
