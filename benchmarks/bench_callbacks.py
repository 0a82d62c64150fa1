"""Does LiveFeedbackMap keep up with a 256 x 256 SECM image at time_scale=0?

Runs a snake grid scan of 256 columns (``--rows`` rows; 256 for the full image, default 16 to keep it short:
the per-event cost does not depend on the number of rows) on the simulated bench, twice: without and with the
callback (saving a PNG on every redraw, i.e. every row).  Prints the run's cost per point, the callback's cost
per event (timed inside the callback: every document it handles, redraws and PNGs included) and their ratio.

    python benchmarks/bench_callbacks.py [--rows 16] [--cols 256] [--redraw-every 256] [--no-no-png-run]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky import RunEngine

from espt_bluesky.callbacks.live_map import LiveFeedbackMap
from espt_bluesky.devices import make_sim_bench


class Timed:
    """Wrap a callback and accumulate the time spent in it."""

    def __init__(self, cb):
        self.cb, self.t, self.n_events = cb, 0.0, 0

    def __call__(self, name, doc):
        t0 = time.perf_counter()
        self.cb(name, doc)
        self.t += time.perf_counter() - t0
        self.n_events += name == "event"


def run(rows: int, cols: int, callback=None) -> float:
    bench = make_sim_bench("SECM", "patterned", seed=0, time_scale=0.0)
    RE = RunEngine({})
    if callback is not None:
        RE.subscribe(callback)
    RE(bps.mv(bench.stage.z, 5.1))
    dy = 100.0 / 255 * (rows - 1)
    t0 = time.perf_counter()
    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 0, dy, rows, bench.stage.x, 0, 100, cols, snake_axes=True,
                    md={"technique": "SECM", **bench.metadata()}))
    return (time.perf_counter() - t0) / (rows * cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--redraw-every", type=int, default=None, help="events between redraws (default: one row)")
    ap.add_argument("--no-png-run", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the callback without PNG output (a third run)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: import matplotlib, build the font cache
        run(2, 4, LiveFeedbackMap(directory=tmp))
    warm = time.perf_counter() - t0
    base = run(args.rows, args.cols)
    with tempfile.TemporaryDirectory() as tmp:
        live = LiveFeedbackMap(directory=tmp, redraw_every=args.redraw_every)
        timed = Timed(live)
        with_cb = run(args.rows, args.cols, timed)
        per_event = timed.t / max(timed.n_events, 1)
        per_event2 = float("nan")
        if args.no_png_run:
            live_cheap = LiveFeedbackMap(directory=None, redraw_every=args.redraw_every)
            timed2 = Timed(live_cheap)
            run(args.rows, args.cols, timed2)
            per_event2 = timed2.t / max(timed2.n_events, 1)
    n = args.rows * args.cols
    print(f"image {args.rows} rows x {args.cols} columns ({n} points), redraw every "
          f"{args.redraw_every or args.cols} events")
    print(f"one-time warm-up (matplotlib import, first figure): {warm:.2f} s, not counted below")
    print(f"run cost per point, no callback          : {1e3 * base:8.3f} ms")
    print(f"run cost per point, with LiveFeedbackMap : {1e3 * with_cb:8.3f} ms")
    print(f"callback cost per event (PNG per redraw) : {1e3 * per_event:8.3f} ms   ratio to run per point "
          f"{per_event / base:6.3f}")
    print(f"callback cost per event (no PNG, Agg)    : {1e3 * per_event2:8.3f} ms   ratio to run per point "
          f"{per_event2 / base:6.3f}")
    print(f"projected 256x256 image: run {65536 * base:7.1f} s, callback {65536 * per_event:7.1f} s")


if __name__ == "__main__":
    main()
