"""Fly scanning: detector → Tiled throughput, split into a fixed cost per run and a cost per sample, against the
event-row path and a raw h5py write; the HTTP requests a run costs; fly_hops per-hop cost.

Plain script: prints numbers and ratios measured in this one process (the machine is shared), asserts nothing.
Run: ``python benchmarks/bench_fly.py [--rows 256] [--samples 4096] [--pixels 256] [--hops 400] [--repeats 2]
[--directory /dev/shm]``.
Each size runs ``repeats`` times and the fastest run counts.

1. **Throughput**: ``fly_image`` of a ``pixels`` × ``rows`` EC-AFM image (the cheapest physics), every row forward
   and backward, ``samples`` samples per pass (256 × 256 px, 4096 samples per pass: 2.1e6 samples, six channels
   per sample), into a ``tiled serve`` process through ``make_writer`` (journal + TiledWriter thread; the run is in
   Tiled when ``RE(...)`` returns; on this server the lean writer: one request per data node, rows at most every
   ``live_interval``, see storage/writer.py).  One writer serves every run, as in a session.  The simulated controller
   streams its passes from a worker thread while the detector writes and collects them.  Software time = wall
   time − the CPU time the controller's thread spent simulating (``compute_time``: the instrument's own time on
   hardware; CPU, not wall, so that waiting for the GIL or for the shared machine counts against the software).
   The same image is also flown with a quarter of the samples per pass: the two sizes give the **fixed cost per
   run** (ms; what a run costs whatever its size) and the **cost per sample** (ns), in wall (software) time and
   in CPU seconds (this process without the controller's thread, plus the Tiled server process from ``/proc``),
   with Tiled, without Tiled (RunEngine, ophyd-async, the HDF5 file) and for a raw h5py write of the same arrays.
   Also: the *tail*, from the controller's last sample to the run being in Tiled -- what a user waits after the
   scan -- and the HTTP requests of one run (from the server's access log).
2. **Event-row path**: the same kind of data as one event per sample (a flyer whose ``collect()`` yields sample
   rows, what a fly scan cost before assets), into the same server, for ``samples_rows`` samples.
3. **Raw h5py**: the same arrays written with h5py to the same kind of file (one dataset per channel, the same
   chunk size), no bluesky.
   **Replayed**: the same image again, the passes recorded by a first run and handed out in the simulation's steps,
   each as soon as the detector has taken the one before (:func:`replay_steps`): the instrument costs nothing and
   is not in this process, so the wall time is the software's alone (no overlap with the simulation hiding it, no
   contention with it for the GIL).  Its fixed cost and cost per sample against the raw write's give the whole-run
   and the sustained (per-sample: what a longer scan tends to) ratios.
4. **fly_hops**: per-hop software cost (wall − controller compute) of ``fly_hops`` over ``hops`` hops, against
   ``hopping_scan`` device mode's overhead per hop and ``bp.grid_scan`` per point (from ``bench_plans``).

Goals (issue 15): ≥ 1e6 samples/s and ≥ 200× the event-row path; ≤ 1.5× the raw write; ≤ 1 ms per hop.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def server_cpu(cat) -> float:
    """CPU seconds (user + system) the Tiled server process has used so far (Linux /proc)."""
    import os

    fields = open(f"/proc/{cat.process.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.[01]"')


def server_requests(cat, since: int = 0) -> tuple[int, collections.Counter]:
    """(log size now, requests logged after byte ``since`` of the server's access log, by method and route)."""
    log = cat.data_dir.logs / "server.log"
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    routes = collections.Counter()
    for method, path in _REQUEST.findall(text):
        route = "healthz" if path.startswith("/healthz") else re.sub(r"^/api/v1/?([a-z_]*)(/[a-z_]*)?.*", r"\1\2",
                                                                     path.split("?")[0])
        if route.startswith("stream/close"):
            route = "stream/close"
        routes[f"{method} {route or '/'}"] += 1
    return since + len(text.encode()), routes


def replay_steps(ctl, det, recorded) -> None:
    """Make ``ctl`` (a SimFlyController) replay ``recorded`` (a FlyResult of the same program) instead of simulating:
    the passes come in the simulation's steps (``STEP_SAMPLES`` of path), each step released as soon as ``det``
    has taken the one before into its file.  The instrument then costs nothing and never waits, so the run's wall
    time is the software's alone -- no overlap with the simulation, no contention with it for the GIL (a real
    controller is not in this process).  The controller's thread sleeps on an event the detector's write sets (a
    thread polling for it would take the GIL from the writer every few ms and measure itself)."""
    import threading

    from espt_bluesky.devices.fly import devices as fdev
    from espt_bluesky.devices.fly.controller import STEP_SAMPLES, FlyResult

    state = det._state  # the detector's file state: how many passes it has taken (a benchmark may look inside)
    n = recorded.buffers["row"].size
    per_step = max(STEP_SAMPLES // recorded.buffers["time"].shape[1], 1)
    taken = threading.Event()
    write = fdev._write_rows

    def write_and_tell(st, *args, **kwargs):  # the bench's instrument: tells the replay a step was taken
        try:
            return write(st, *args, **kwargs)
        finally:
            if st is state:
                taken.set()

    fdev._write_rows = write_and_tell

    def steps(program):
        res = FlyResult("lines", recorded.buffers, recorded.planned_end_times, recorded.duration)

        def run():
            try:
                for k in range(per_step, n + per_step, per_step):
                    while state.n_appended < res.n_done:  # the detector has not taken the last step yet
                        taken.wait(1.0)
                        taken.clear()
                    res.n_done = min(k, n)
                    yield
            finally:
                fdev._write_rows = write

        return res, run()

    ctl._raster_steps = steps


def throughput(cat, writer, rows: int, samples: int, *, pixels: int = 256, replay: bool = False) -> dict:
    """One fly_image run; returns samples, wall, compute (controller CPU), tail (last sample → in Tiled), data,
    CPU of this process (controller excluded) and of the server, and the server's requests during the run.
    ``replay``: the program is simulated once first, then replayed (:func:`replay_steps`) in the measured run."""
    from bluesky import RunEngine

    from espt_bluesky.devices import make_sim_bench
    from espt_bluesky.devices.fly import make_fly_devices
    from espt_bluesky.plans.fly import fly_image

    bench = make_sim_bench("EC-AFM", "patterned", seed=1, noise=0.0)
    fs, fd = make_fly_devices(bench, cat.asset_dir, max_sample_rate=1e7)
    if replay:
        recorded = throughput(cat, None, rows, samples, pixels=pixels)["result"]
        replay_steps(fs.controller, fd, recorded)
    RE = RunEngine({})
    if writer is not None:
        RE.subscribe(writer)
    speed = 50.0
    length = 80.0
    rate = samples * speed / length
    log0, _ = server_requests(cat)
    c0, s0 = time.process_time(), server_cpu(cat)
    t0 = time.perf_counter()
    RE(fly_image(fs, fd, bench.stage, bench.potentiostat, technique="EC-AFM", x_range=(10.0, 10.0 + length, pixels),
                 y_range=(10.0, 90.0, rows), speed=speed, sample_rate=rate))
    if writer is not None:
        writer.flush(600)
    t1 = time.perf_counter()
    cpu, scpu = time.process_time() - c0, server_cpu(cat) - s0
    res = fs.controller.result
    if writer is not None and not all(r.state == "written" for r in writer.runs.values()):
        raise RuntimeError(f"the run did not reach Tiled: {writer.runs}")
    _, requests = server_requests(cat, log0)
    return dict(n=int(res.data["height"].size), wall=t1 - t0, compute=res.compute_time,
                soft=t1 - t0 - res.compute_time, tail=t1 - res.finished_at, data=res.data, cpu=cpu - res.compute_time,
                server_cpu=scpu, requests=requests, result=res)


def raw_h5py(directory: Path, data: dict, cpu: bool = False) -> float:
    """Seconds (wall, or CPU of this process) to write ``data`` (one dataset per channel), with h5py alone."""
    import h5py

    from espt_bluesky.devices.fly.devices import chunk_rows

    # the detector's chunks: every dataset's hold the same passes (~CHUNK_SAMPLES samples of a channel)
    rows = chunk_rows(max(np.shape(a)[1] for a in data.values() if np.ndim(a) == 2), True)
    t0 = time.process_time() if cpu else time.perf_counter()
    with h5py.File(directory / "raw.h5", "w", libver="latest") as f:
        for k, a in data.items():
            a = np.asarray(a)
            chunks = (rows, *a.shape[1:])
            ds = f.create_dataset(k, shape=(0, *a.shape[1:]), maxshape=(None, *a.shape[1:]), dtype=a.dtype,
                                  chunks=chunks)
            ds.resize(a.shape[0], axis=0)
            ds[:] = a
        f.flush()
    return (time.process_time() if cpu else time.perf_counter()) - t0


def event_rows(cat, writer, n: int) -> float:
    """n samples as n event rows (a flyer collecting one row per sample) into Tiled; seconds."""
    from bluesky import RunEngine
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from ophyd.status import StatusBase

    class RowFlyer:
        name = "rows"
        parent = None

        def kickoff(self):
            st = StatusBase()
            st.set_finished()
            return st

        def complete(self):
            return self.kickoff()

        def describe_collect(self):
            dk = {k: dict(source="sim", dtype="number", shape=[], units=u)
                  for k, u in (("rows_height", "um"), ("rows_x", "um"), ("rows_y", "um"), ("rows_time", "s"))}
            return {"primary": dk}

        def collect(self):
            now = time.time()
            for i in range(n):
                v = float(i)
                yield dict(time=now, timestamps={k: now for k in ("rows_height", "rows_x", "rows_y", "rows_time")},
                           data=dict(rows_height=v, rows_x=v, rows_y=v, rows_time=v))

    RE = RunEngine({})
    RE.subscribe(writer)
    fl = RowFlyer()

    @bpp.run_decorator()
    def plan():
        yield from bps.kickoff(fl, wait=True)
        yield from bps.complete(fl, wait=True)
        yield from bps.collect(fl)

    t0 = time.perf_counter()
    RE(plan())
    writer.flush(600)
    return time.perf_counter() - t0


def hops(n_hops: int) -> float:
    from bluesky import RunEngine

    from espt_bluesky.devices import make_sim_bench
    from espt_bluesky.devices.fly import make_fly_devices
    from espt_bluesky.plans.fly import fly_hops

    RE = RunEngine({})
    with tempfile.TemporaryDirectory(prefix="espt-bench-flyhops-") as d:
        bench = make_sim_bench("SICM", "patterned", seed=0, start=(30.0, 30.0))
        fs, fd = make_fly_devices(bench, d)
        side = int(round(n_hops ** 0.5))
        t0 = time.perf_counter()
        RE(fly_hops(fs, fd, bench.stage, bench.potentiostat, x_range=(30, 40, side), y_range=(30, 40, side),
                    hop_height=1.0, drop=0.02))
        wall = time.perf_counter() - t0
    return (wall - fs.controller.compute_time) / (side * side)


def split(n_small: int, t_small: float, n_big: int, t_big: float) -> tuple[float, float]:
    """(fixed cost per run, cost per sample) of a cost t = fixed + n · per_sample measured at two sizes (s, s)."""
    per = (t_big - t_small) / (n_big - n_small)
    return t_big - per * n_big, per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--pixels", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4096, help="samples per pass")
    ap.add_argument("--samples-rows", type=int, default=5000, help="samples sent as event rows")
    ap.add_argument("--hops", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2, help="runs per size; the fastest counts (shared machine)")
    ap.add_argument("--directory", default=None,
                    help="where the catalog and the files go (default: the system's temporary directory); "
                         "/dev/shm takes the shared disk's writeback out of every measurement, raw h5py included")
    args = ap.parse_args()

    from espt_bluesky.storage import LocalCatalog, make_writer

    # ~1 GB of HDF5 files: removed at the end
    tmp = Path(tempfile.mkdtemp(prefix="espt-bench-fly-", dir=args.directory))
    cat = LocalCatalog.start(tmp / "data")
    small = max(args.samples // 4, args.pixels)
    try:
        # max_wait 120 s: this measures throughput; on a machine loaded many times over a run's last requests can
        # take longer than the default 10 s without an answer, and the writer would leave the run to its journal
        writer = make_writer(cat, max_wait=120.0)
        throughput(cat, writer, 4, 2000, pixels=args.pixels)  # warm up imports, the server, the writer's client

        def best(samples, tiled=True, replay=False):
            runs = [throughput(cat, writer if tiled else None, args.rows, samples, pixels=args.pixels, replay=replay)
                    for _ in range(args.repeats)]
            return min(runs, key=lambda r: r["wall" if replay else "soft"])

        r1, r = best(small), best(args.samples)
        r01, r0 = best(small, tiled=False), best(args.samples, tiled=False)
        p1, p = best(small, replay=True), best(args.samples, replay=True)
        p01, p0 = best(small, tiled=False, replay=True), best(args.samples, tiled=False, replay=True)
        t_rows = event_rows(cat, writer, args.samples_rows)
        writer.close(60)
    finally:
        cat.stop()
    n, n1 = r["n"], r1["n"]
    raw = {k: min(raw_h5py(tmp, d, cpu=c) for _ in range(args.repeats))
           for k, d, c in (("wall", r["data"], False), ("cpu", r["data"], True), ("wall1", r1["data"], False),
                           ("cpu1", r1["data"], True))}
    fixed, per = split(n1, r1["soft"], n, r["soft"])
    fixed0, per0 = split(n1, r01["soft"], n, r0["soft"])
    fixed_raw, per_raw = split(n1, raw["wall1"], n, raw["wall"])
    shutil.rmtree(tmp, ignore_errors=True)
    cpu_of = lambda x: x["cpu"] + x["server_cpu"]  # noqa: E731
    cfixed, cper = split(n1, cpu_of(r1), n, cpu_of(r))
    cfixed0, cper0 = split(n1, r01["cpu"], n, r0["cpu"])
    cfixed_raw, cper_raw = split(n1, raw["cpu1"], n, raw["cpu"])
    fly_rate, raw_rate, row_rate = n / r["soft"], n / raw["wall"], args.samples_rows / t_rows
    requests = r["requests"]
    print(f"fly_image → Tiled: {args.pixels} × {args.rows} px, {n} samples ({args.rows} rows × 2 passes × "
          f"{args.samples}; 6 channels), wall {r['wall']:.2f} s, controller CPU {r['compute']:.2f} s, software "
          f"{r['soft']:.2f} s; tail after the last sample {r['tail']:.2f} s (without Tiled {r0['tail']:.2f} s); "
          f"small run: {n1} samples, software {r1['soft']:.2f} s")
    listed = ", ".join(f"{k} {v}" for k, v in sorted(requests.items()))
    from espt_bluesky.storage.writer import _lean_supported

    kind = "lean writer" if writer.lean and _lean_supported() else "stock TiledWriter"
    print(f"  HTTP requests of one run: {sum(requests.values())} ({listed}; {kind})")
    print("                               fixed per run    per sample      whole run")
    print(f"  detector → Tiled, wall   : {fixed * 1e3:10.0f} ms {per * 1e9:10.1f} ns  {fly_rate:12.4g} samples/s"
          f"   (goal >= 1e6)")
    print(f"  detector → HDF5, no Tiled: {fixed0 * 1e3:10.0f} ms {per0 * 1e9:10.1f} ns  {n / r0['soft']:12.4g} "
          "samples/s")
    print(f"  raw h5py write, wall     : {fixed_raw * 1e3:10.1f} ms {per_raw * 1e9:10.1f} ns  {raw_rate:12.4g} "
          f"samples/s   ({raw['wall']:.2f} s)")
    print(f"  detector → Tiled, CPU    : {cfixed * 1e3:10.0f} ms {cper * 1e9:10.1f} ns  {n / cpu_of(r):12.4g} "
          f"samples/CPU s   (this process {r['cpu']:.2f} s + server {r['server_cpu']:.2f} s)")
    print(f"  detector → HDF5, CPU     : {cfixed0 * 1e3:10.0f} ms {cper0 * 1e9:10.1f} ns  {n / r0['cpu']:12.4g} "
          "samples/CPU s")
    print(f"  raw h5py write, CPU      : {cfixed_raw * 1e3:10.1f} ms {cper_raw * 1e9:10.1f} ns  "
          f"{n / raw['cpu']:12.4g} samples/CPU s")
    print(f"  event rows → Tiled       :                                {row_rate:12.4g} samples/s   "
          f"({args.samples_rows} rows)")
    print(f"  ratio fly whole run / event rows    : {fly_rate / row_rate:8.1f} x   (goal >= 200)")
    print(f"  ratio raw h5py rate / fly whole run : {raw_rate / fly_rate:8.2f} wall, "
          f"{cpu_of(r) / raw['cpu']:.2f} CPU   (goal <= 1.5)")
    print(f"  ratio raw h5py rate / fly, no Tiled : {raw_rate * r0['soft'] / n:8.2f} wall, "
          f"{r0['cpu'] / raw['cpu']:.2f} CPU")
    print(f"  ratio per sample, fly / raw h5py    : {per / per_raw:8.2f} wall, {cper / cper_raw:.2f} CPU")
    # the software alone: the recorded passes replayed, each step as soon as the detector took the one before
    pf, pp = split(n1, p1["wall"], n, p["wall"])
    pf0, pp0 = split(n1, p01["wall"], n, p0["wall"])
    print(f"replayed passes (the instrument costs nothing; wall = the software's time; {n} and {n1} samples):")
    print(f"  detector → Tiled, wall   : {pf * 1e3:10.0f} ms {pp * 1e9:10.1f} ns  {n / p['wall']:12.4g} samples/s   "
          f"(whole run {p['wall']:.2f} s, tail {p['tail']:.2f} s)")
    print(f"  detector → HDF5, no Tiled: {pf0 * 1e3:10.0f} ms {pp0 * 1e9:10.1f} ns  {n / p0['wall']:12.4g} samples/s   "
          f"(whole run {p0['wall']:.2f} s)")
    print(f"  ratio fly / raw h5py, whole run     : {p['wall'] / raw['wall']:8.2f} with Tiled, "
          f"{p0['wall'] / raw['wall']:.2f} without   (goal <= 1.5)")
    print(f"  ratio fly / raw h5py, per sample    : {pp / per_raw:8.2f} with Tiled, {pp0 / per_raw:.2f} without "
          "(sustained: what a longer scan tends to)")
    print(f"  Tiled's cost per run (with − without): software {r['soft'] - r0['soft']:.2f} s, fixed "
          f"{(fixed - fixed0) * 1e3:.0f} ms wall / {(cfixed - cfixed0) * 1e3:.0f} ms CPU; tail "
          f"{r['tail'] - r0['tail']:.2f} s")

    import bench_plans  # this directory is on sys.path when run as a script
    from bluesky import RunEngine

    RE = RunEngine({})
    bench_plans.grid_per_point(RE, 5)
    g = bench_plans.grid_per_point(RE, 20)
    h, _ = bench_plans.hop_overhead_per_point(RE, 20)
    hops(16)
    f = hops(args.hops)
    print(f"fly_hops per hop (software)     : {f * 1e3:8.4f} ms   (goal <= 1 ms)")
    print(f"hopping_scan device, per hop    : {h * 1e3:8.4f} ms   ratio fly_hops/hopping {f / h:8.4f}")
    print(f"bp.grid_scan det/motor, per pt  : {g * 1e3:8.4f} ms   ratio fly_hops/grid_scan {f / g:8.4f}")


if __name__ == "__main__":
    main()
