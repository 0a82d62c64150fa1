"""What the write-ahead journal and the background writer cost the RunEngine, and what an outage costs it.

One ``tiled serve`` process (its own data directory in a temporary folder).  A hopping run of N spots with a
2000-sample CV per spot carried in the event documents (the heaviest documents the writer sees), timed as the
RunEngine sees it (``RE(...)`` wall time), for:

1. no subscriber (the baseline: RunEngine and simulation alone);
2. the journal alone (``open_journal``/``append``, fsync by a background thread, and in every append);
3. ``TiledWriter`` called synchronously (what ``make_writer`` did before the journal);
4. ``make_writer`` (journal, then TiledWriter on its own thread; the stop waits until the run is in Tiled);
5. ``make_writer`` with the server killed before the run (the run goes to its journal).

Prints seconds and ratios to the baseline measured in this one process (the machine is shared: compare ratios).
No assertions.

Usage: ``python benchmarks/bench_writer.py [--spots 200] [--samples 2000]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def hopping(bench, points):
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    st, ps, model = bench.stage, bench.potentiostat, bench.model
    r = model.probe.radius

    @bpp.run_decorator(md=dict(bench.metadata(), plan_name="bench_writer"))
    def inner():
        for x, y in points:
            yield from bps.mv(st.z, st.z.position + 5.0)
            yield from bps.mv(st.x, float(x), st.y, float(y))
            yield from bps.mv(st.z, float(model.surface_z(x, y)) + 0.25 * r)
            yield from bps.trigger_and_read([ps, st.x, st.y])

    return (yield from inner())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=200)
    ap.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args()

    import numpy as np
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from espt_bluesky.devices import make_sim_bench
    from espt_bluesky.storage import LocalCatalog, make_writer
    from espt_bluesky.storage.journal import open_journal

    tmp = Path(tempfile.mkdtemp(prefix="espt-bench-writer-"))
    pts = np.random.default_rng(0).uniform(10, 90, size=(args.spots, 2))

    def bench():
        b = make_sim_bench("SECCM", "patterned", seed=1)
        e0 = b.model.environment["e_ocp"]
        b.potentiostat.configure_technique("CV", e_start=e0, e_vertex1=e0 - 0.3, e_vertex2=e0 + 0.3,
                                           scan_rate=0.5, n_samples=args.samples)
        return b

    def timed(subscriber=None, after=None):
        RE = RunEngine({})
        if subscriber is not None:
            RE.subscribe(subscriber)
        b = bench()
        t0 = time.perf_counter()
        RE(hopping(b, pts))
        t = time.perf_counter() - t0
        if after is not None:
            after()
        return t

    class JournalOnly:
        def __init__(self, fsync):
            self.fsync, self.j = fsync, None

        def __call__(self, name, doc):
            if name == "start":
                self.j = open_journal(tmp / f"journal-{self.fsync}", doc["uid"], fsync=self.fsync)
            self.j.append(name, doc)
            if name == "stop":
                self.j.close()

    cat = LocalCatalog.start(tmp / "data")
    results = {}
    try:
        timed()  # warm up imports and the simulation's caches
        results["no subscriber"] = timed()
        results["journal (fsync: background)"] = timed(JournalOnly("group"))
        results["journal (fsync: every append)"] = timed(JournalOnly("always"))
        results["TiledWriter, synchronous"] = timed(TiledWriter(cat.client(), batch_size=25))
        w = make_writer(cat)
        results["make_writer (journal + thread)"] = timed(w, after=lambda: w.flush(300))
        cat.kill()
        w2 = make_writer(cat)
        results["make_writer, server down"] = timed(w2)
    finally:
        cat.stop()
    base = results["no subscriber"]
    print(f"hopping run, {args.spots} spots x {args.samples}-sample CV in the event documents")
    for k, t in results.items():
        print(f"  {k:34s} {t:8.2f} s   {t / base:6.2f} x baseline   {1e3 * t / args.spots:7.1f} ms/spot")


if __name__ == "__main__":
    main()
