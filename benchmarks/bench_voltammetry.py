"""Benchmark: time of a 2000-sample CV simulation, as a ratio to baselines measured in the same process.

Baselines: (a) a plain 2000-iteration Python loop with one float multiply-add per iteration; (b) np.convolve of
two 2000-sample arrays (an O(N²) numpy kernel of the same length).  No assertions; prints numbers only.
Run: python benchmarks/bench_voltammetry.py
"""

from __future__ import annotations

import time

import numpy as np

from espt_bluesky.physics import voltammetry as V


def best_of(fn, repeat: int = 7) -> float:
    """Smallest wall time of ``repeat`` calls, s."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def python_loop(n: int = 2000) -> float:
    acc = 0.0
    for k in range(n):
        acc = acc * 0.999 + k
    return acc


def main() -> None:
    n = 2000
    a = np.random.default_rng(0).random(n)
    t_loop = best_of(python_loop)
    t_conv = best_of(lambda: np.convolve(a, a))
    t, E = V.cv_waveform(0.3, -0.3, 0.3, 0.1, 1, n)
    p = V.CellParams(E0=0.0, k0=1e-4, c_dl=0.1)
    p_sei = V.CellParams(E0=2.0, k0=1e-4, sei_rate=1e-2, sei_tafel=0.25, sei_onset=0.8)
    t_sei, E_sei = V.cv_waveform(3.0, 0.01, 3.0, 0.1, 2, n)
    rows = [
        ("CV convolution planar", best_of(lambda: V.simulate(t, E, p))),
        ("CV convolution hemisphere", best_of(lambda: V.simulate(t, E, p, geometry="hemisphere", radius=5e-6))),
        ("CV convolution planar + SEI (2 cycles)", best_of(lambda: V.simulate(t_sei, E_sei, p_sei))),
        ("CV finite-volume reference", best_of(lambda: V.simulate(t, E, p, method="fd"), repeat=3)),
        ("galvanostatic convolution", best_of(lambda: V.simulate_galvanostatic(t, -1e-7, p), repeat=3)),
    ]
    print(f"baseline python loop ({n} steps): {t_loop * 1e3:8.3f} ms")
    print(f"baseline np.convolve ({n} x {n}):  {t_conv * 1e3:8.3f} ms")
    for name, dt in rows:
        print(f"{name:42s} {dt * 1e3:8.2f} ms   = {dt / t_loop:7.1f} x loop   {dt / t_conv:7.1f} x convolve")


if __name__ == "__main__":
    main()
