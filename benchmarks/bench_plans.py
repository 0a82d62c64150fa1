"""Software overhead per hop of ``hopping_scan`` vs bluesky's ``grid_scan`` over ophyd.sim det/motor per point.

Plain script: prints numbers, asserts nothing.  Run: ``python benchmarks/bench_plans.py [n_side] [repeats]``.

How the overhead is measured (all in this process, time_scale = 0, no subscribers):

* baseline: wall time of ``bp.grid_scan([det], motor1, ..., motor2, ..., snake_axes=True)`` over ophyd.sim
  ``det``/``motor1``/``motor2`` divided by the number of points;
* hopping (device mode): wall time of ``hopping_scan(..., mode="device", hopper=bench.hopper)`` on a SICM bench
  minus ``bench.hopper.device_time`` (the time spent inside the controller's ``trigger()``: on the bench that is
  the simulated approach/measure/retract, on hardware it is the controller's firmware), divided by the number of
  hops.  Each hop is one ``set`` of the (x, y) target and one ``trigger``/``read`` of the controller.
* hopping (plan mode) is printed for reference: there the approach is step by step from the plan, so its time is
  dominated by the RunEngine messages of every approach step (physics not subtracted).

The ratio overhead-per-hop / grid_scan-per-point is the figure of merit (target <= 1.2).
"""

from __future__ import annotations

import statistics
import sys
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky import RunEngine
from ophyd.sim import det, motor1, motor2

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.plans import hopping_scan


def grid_per_point(RE: RunEngine, n: int) -> float:
    t0 = time.perf_counter()
    RE(bp.grid_scan([det], motor1, 0, 1, n, motor2, 0, 1, n, snake_axes=True))
    return (time.perf_counter() - t0) / (n * n)


def hop_overhead_per_point(RE: RunEngine, n: int, mode: str = "device") -> tuple[float, float]:
    bench = make_sim_bench("SICM", "patterned", seed=0, start=(30.0, 30.0))
    RE(bps.mv(bench.stage.z, bench.stage.z.position + 1.0))
    bench.hopper.device_time = 0.0
    t0 = time.perf_counter()
    RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(30, 40, n), y_range=(30, 40, n),
                    hop_height=1.0, drop=0.02, mode=mode, hopper=bench.hopper))
    wall = time.perf_counter() - t0
    dev = bench.hopper.device_time if mode == "device" else 0.0
    return (wall - dev) / (n * n), dev / (n * n)


def main(n: int = 20, repeats: int = 3) -> None:
    RE = RunEngine({})
    grid_per_point(RE, 5)  # warm up
    hop_overhead_per_point(RE, 3)
    grid, hop, dev = [], [], []
    for _ in range(repeats):
        grid.append(grid_per_point(RE, n))
        h, d = hop_overhead_per_point(RE, n)
        hop.append(h)
        dev.append(d)
    g, h, d = statistics.median(grid), statistics.median(hop), statistics.median(dev)
    print(f"points per run: {n * n}, repeats: {repeats} (medians)")
    print(f"grid_scan det/motor          : {g * 1e3:8.3f} ms/point")
    print(f"hopping_scan device, overhead: {h * 1e3:8.3f} ms/hop  (device/physics time {d * 1e3:.3f} ms/hop excluded)")
    print(f"overhead ratio hop/grid      : {h / g:8.3f}   (target <= 1.2)")
    m = max(4, n // 4)
    p, _ = hop_overhead_per_point(RE, m, mode="plan")
    print(f"hopping_scan plan mode       : {p * 1e3:8.3f} ms/hop including its step-by-step approach "
          f"({m * m} hops, physics not subtracted)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
