"""Benchmark of the exact SECM feedback tables (plain script; prints numbers, asserts nothing).

(a) ``feedback_current`` on 10^6 points, and its time relative to the analytical approximation on the same points;
(b) ``kappa_from_current`` on a 1000×1000 image, and its time relative to the analytical forward evaluation;
(c) how far κ and the contact offset come out when the same noisy synthetic approach curves (generated from the
    exact tables) are fitted with the analytical approximation instead of the exact model.

Run:  python benchmarks/bench_secm.py
"""

from __future__ import annotations

import time

import numpy as np

from espt_bluesky.analysis.approach_fit import fit_approach_curve, kappa_from_current
from espt_bluesky.physics import secm, secm_analytical


def _best(fn, repeat=3):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def bench_forward(n: int = 1_000_000, rg: float = 10.0) -> None:
    rng = np.random.default_rng(0)
    L = np.exp(rng.uniform(np.log(0.05), np.log(10.0), n))
    kap = 10.0 ** rng.uniform(-3, 3, n)
    t = time.perf_counter()
    secm.feedback_current(L[:10], rg, kap[:10])  # loads the tables
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    secm.feedback_current(L, rg, kap)  # first large call at this RG builds a dense (L, κ) table
    t_first = time.perf_counter() - t
    t_exact = _best(lambda: secm.feedback_current(L, rg, kap))
    t_an = _best(lambda: secm_analytical.kinetic(L, rg, kap))
    rgv = rng.uniform(1.1, 20.0, n)
    t_var = _best(lambda: secm.feedback_current(L, rgv, kap), repeat=1)
    print("(a) feedback_current, 10^6 points")
    print(f"    table load {t_load:.3f} s; first call at a new RG {t_first:.3f} s")
    print(f"    fixed RG: exact {t_exact:.3f} s, analytical {t_an:.3f} s, ratio exact/analytical = {t_exact / t_an:.2f}")
    print(f"    per-point RG (tricubic path): {t_var:.3f} s, ratio to analytical = {t_var / t_an:.2f}")


def bench_kappa_map(rg: float = 10.0, L: float = 0.3) -> None:
    rng = np.random.default_rng(1)
    kap = 10.0 ** rng.uniform(-2, 2, (1000, 1000))
    N = secm.feedback_current(L, rg, kap)
    t = time.perf_counter()
    kappa_from_current(N, L, rg)
    t_first = time.perf_counter() - t
    t_inv = _best(lambda: kappa_from_current(N, L, rg))
    back = kappa_from_current(N, L, rg)
    err = np.nanmax(np.abs(back / kap - 1.0))
    t_an = _best(lambda: secm_analytical.kinetic(L, rg, kap))
    print("(b) kappa_from_current, 1000x1000 image at fixed L")
    print(f"    first call {t_first:.3f} s, warm {t_inv:.3f} s; ratio to analytical forward = {t_inv / t_an:.2f}")
    print(f"    round-trip max |kappa error| = {100 * err:.3f} %")


def bench_fits(rg: float = 10.0, a: float = 5.0, n_curves: int = 5) -> None:
    z0 = 12.0
    i_inf = 3e-9
    for title, noise, known, n in (
        ("1 % of i_inf constant noise, i_inf given, 500 points", "absolute", True, 500),
        ("1 % proportional noise, i_inf fitted, 400 points", "relative", False, 400),
    ):
        print(f"(c) approach-curve fits of exact synthetic curves (L 0.05-10 log-spaced; {title})")
        print(f"    {'kappa':>7} {'exact: |kappa err| %':>21} {'|z0 err|/a':>10} {'analytical: kappa err %':>24}"
              f" {'z0 err/a':>9}")
        L = np.geomspace(0.05, 10.0, n)
        z = z0 + a * L
        for kap in (0.01, 0.1, 1.0, 10.0):
            I = secm.feedback_current(L, rg, kap)
            ex, an = [], []
            for seed in range(n_curves):
                rng = np.random.default_rng(seed)
                if noise == "absolute":
                    cur = i_inf * (I + 0.01 * rng.standard_normal(L.size))
                else:
                    cur = i_inf * I * (1.0 + 0.01 * rng.standard_normal(L.size))
                for store, mdl in ((ex, "exact"), (an, "analytical")):
                    r = fit_approach_curve(z, cur, a=a, rg=rg, model=mdl, noise=noise,
                                           i_inf=i_inf if known else None)
                    store.append((r.kappa / kap - 1.0, (r.z0 - z0) / a))
            ex, an = np.array(ex), np.array(an)
            print(
                f"    {kap:7.2f} {100 * np.median(np.abs(ex[:, 0])):21.2f} {np.median(np.abs(ex[:, 1])):10.4f}"
                f" {100 * np.median(an[:, 0]):+24.2f} {np.median(an[:, 1]):+9.4f}"
            )
    print("    (exact: median |error| over the seeds; analytical: median signed error = its bias)")


if __name__ == "__main__":
    bench_forward()
    bench_kappa_map()
    bench_fits()
