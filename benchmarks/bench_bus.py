"""What publishing to NATS JetStream costs the RunEngine, how fast the Tiled worker writes, and the latency from an
event to Tiled.

One ``tiled serve`` process (its own data directory in a temporary folder), the JetStream server on
127.0.0.1:4222 (a stream of its own, deleted at the end).  The hopping run of bench_writer.py: N spots with a
2000-sample CV per spot carried in the event documents (the heaviest documents there are), timed as the RunEngine sees
it (``RE(...)`` wall time):

1. no subscriber (the baseline: RunEngine and simulation alone);
2. ``BusPublisher`` with ``journal="on_failure"`` (a pack and a pipe write per document, published by the
   publisher's own process; the journal only if the bus fails);
3. ``BusPublisher`` with ``journal="always"`` (every document also journaled locally first);
4. today's in-process writer (``make_writer``: journal, TiledWriter on a thread; the stop waits for Tiled).

Then:

5. the Tiled worker's throughput: the run of (2), waiting in the stream, written by a ``TiledWorker`` in this process
   (spots/s, from its first fetch to the run complete in Tiled);
6. end-to-end latency: ``espt worker tiled`` running in its own process while a run hops every 0.2 s; for each event,
   the time from its document (``time``) to the moment a reader of Tiled sees it (polled every 50 ms).

Prints seconds, ms per spot added to the baseline and ratios measured in this one process (the machine is shared:
compare ratios; ``--repeat`` runs the configurations in turn and keeps each one's minimum), the CPU time of the
RunEngine's thread inside the subscriber (what the RunEngine pays itself, robust to load) and the CPU time of the
publishing process.  No assertions.

Usage: ``python benchmarks/bench_bus.py [--spots 1000] [--samples 2000] [--latency-spots 30] [--assets] [--repeat 2]
[--batch N] [--skip-latency]``
(``--assets``: the waveforms in HDF5 files, as a session writes them, the documents small)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench_storage import hopping  # the same hopping run (this directory is on sys.path when run as a script)


def _pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (Linux)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _child_cpu(subscriber) -> float | None:
    """CPU seconds of a BusPublisher's publishing process so far."""
    proc = getattr(subscriber, "_proc", None)
    return None if proc is None else _pid_cpu(proc.pid)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--latency-spots", type=int, default=30)
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    ap.add_argument("--batch", type=int, default=None, help="the Tiled worker's batch (default: its own)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each configuration, in turn (minimum kept)")
    ap.add_argument("--assets", action="store_true",
                    help="waveforms written to HDF5 files (StreamResource/StreamDatum), as the session does, "
                         "instead of carried in the event documents")
    args = ap.parse_args()

    import numpy as np
    from bluesky import RunEngine

    from espt_bluesky.devices import make_sim_bench
    from espt_bluesky.storage import LocalCatalog, make_writer
    from espt_bluesky.workers.bus import BusConfig
    from espt_bluesky.workers.publisher import BusPublisher
    from espt_bluesky.workers.tiled_worker import TiledWorker

    tmp = Path(tempfile.mkdtemp(prefix="espt-bench-bus-"))
    tag = uuid.uuid4().hex[:8]
    cfg = BusConfig.from_mapping({"mode": "bus", "servers": args.nats, "stream": f"ESPTBENCH_{tag}",
                                  "subject": f"esptbench.{tag}.docs", "live_subject": f"esptbench.{tag}.live",
                                  "max_age_days": 1})
    pts = np.random.default_rng(0).uniform(10, 90, size=(args.spots, 2))

    def bench():
        b = make_sim_bench("SECCM", "patterned", seed=1)
        e0 = b.model.environment["e_ocp"]
        b.potentiostat.configure_technique("CV", e_start=e0, e_vertex1=e0 - 0.3, e_vertex2=e0 + 0.3,
                                           scan_rate=0.5, n_samples=args.samples)
        if args.assets:
            from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter

            b.potentiostat.asset_writer = HDF5WaveformWriter(cat.asset_dir)
        return b

    cpu: dict[str, float] = {}
    child_cpu: dict[str, float] = {}
    inside: dict[str, float] = {}
    per_event: dict[str, float] = {}
    ends: dict[str, float] = {}

    def timed(subscriber=None, after=None, points=pts, label=None):
        """RE(...) wall time; with ``label``, also this process's CPU time (every thread: the writer's thread
        included; the publisher's process apart), the CPU time of the RunEngine's thread inside the subscriber and
        the CPU time of the publisher's own process."""
        RE = RunEngine({})
        spent = [0.0]
        ev: list[float] = []
        end = [0.0]
        if subscriber is not None:
            def wrapped(name, doc):
                t = time.thread_time()  # CPU of the RunEngine's thread in the subscriber (waits excluded)
                subscriber(name, doc)
                dt = time.thread_time() - t
                spent[0] += dt
                if name == "event":
                    ev.append(dt)
                elif name in ("start", "stop"):
                    end[0] += dt

            RE.subscribe(wrapped)
        b = bench()
        k0 = _child_cpu(subscriber)
        c0, t0 = time.process_time(), time.perf_counter()
        (uid,) = RE(hopping(b, points))
        t = time.perf_counter() - t0
        if label is not None and k0 is not None:
            child_cpu[label] = min(child_cpu.get(label, float("inf")), _child_cpu(subscriber) - k0)
        if after is not None:
            after()
        if label is not None:
            cpu[label] = min(cpu.get(label, float("inf")), time.process_time() - c0)
            inside[label] = min(inside.get(label, float("inf")), spent[0])
            per_event[label] = min(per_event.get(label, float("inf")), statistics.median(ev) if ev else 0.0)
            ends[label] = min(ends.get(label, float("inf")), end[0])
        return t, uid

    cat = LocalCatalog.start(tmp / "data")
    results: dict[str, float] = {}
    try:
        timed(points=pts[:20])  # warm up imports and the simulation's caches
        base = "no subscriber"
        k1 = "JetStream publish (journal on failure)"
        k2 = "JetStream publish + local journal"
        k3 = "in-process writer (make_writer)"
        pub = BusPublisher(cfg, tmp / "backup-bus", journal="on_failure")
        pub2 = BusPublisher(cfg, tmp / "backup-bus2", journal="always")
        w = make_writer(cat)
        uid_bus = None
        # the configurations in turn, --repeat times: the minimum of each is the least disturbed by the other jobs
        for _ in range(args.repeat):
            for label, sub, after in ((base, None, None), (k1, pub, None), (k2, pub2, None),
                                      (k3, w, lambda: w.flush(600))):
                t, uid = timed(sub, after=after, label=label)
                results[label] = min(results.get(label, float("inf")), t)
                if sub is pub or sub is pub2:
                    assert sub.runs[uid].state == "published", sub.runs[uid]
                if sub is pub and uid_bus is None:
                    uid_bus = uid

        # 5. worker throughput on the first published run (the second waits behind it: both are written)
        wkw = {} if args.batch is None else {"batch": args.batch}
        worker = TiledWorker(cfg, cat.client, health_url=f"{cat.base_url}/healthz", **wkw)
        worker.connect()
        w_cpu0, s_cpu0 = time.process_time(), _pid_cpu(cat.process.pid)
        t0 = time.perf_counter()
        client = cat.client()
        t_first = None
        while not (uid_bus in client and client[uid_bus].metadata.get("stop")):
            worker.run_once()
            if uid_bus in worker.written and t_first is None:
                t_first = time.perf_counter() - t0
                break
        t_worker = t_first or (time.perf_counter() - t0)
        # CPU of the worker (this process: nothing else runs in it now) and of the Tiled server for that run
        worker_cpu = (time.process_time() - w_cpu0, _pid_cpu(cat.process.pid) - s_cpu0)
        worker.run(until_idle=2.0)
        worker.close()

        # 6. latency through `espt worker tiled` in its own process
        lat: list[float] = []
        pub.close()
        pub2.close()
        if args.skip_latency:
            return report(args, results, cpu, child_cpu, inside, per_event, ends, t_worker, worker.batch, lat,
                          worker_cpu)
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-m", "espt_bluesky.cli", "worker", "tiled", "--servers",
                                 args.nats, "--stream", cfg.stream, "--subject", cfg.subject, "--uri", cat.uri,
                                 "--api-key", cat.api_key, "--batch", str(worker.batch)], stdout=subprocess.PIPE,
                                text=True,
                                env=env)
        proc.stdout.readline()
        seen: dict[int, float] = {}
        sent: dict[int, float] = {}
        stop = threading.Event()
        uid_box: dict[str, str] = {}

        def record(name, doc):
            if name == "start":
                uid_box["uid"] = doc["uid"]
            elif name == "event":
                sent[doc["seq_num"]] = doc["time"]

        def poll():
            c, table = cat.client(), None
            while not stop.is_set():
                uid = uid_box.get("uid")
                try:
                    if table is None and uid and uid in c and "primary" in c[uid]:
                        table = c[uid]["primary"].base["internal"]
                    if table is not None:
                        seqs = table.read()["seq_num"]
                        now = time.time()
                        for s in seqs:
                            seen.setdefault(int(s), now)
                except Exception:  # noqa: BLE001 - the table is not there yet
                    pass
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        pub3 = BusPublisher(cfg, tmp / "backup-bus3", journal="on_failure")
        import bluesky.plan_stubs as bps
        import bluesky.preprocessors as bpp

        b = bench()
        lat_pts = pts[: args.latency_spots]
        RE = RunEngine({})
        RE.subscribe(pub3)
        RE.subscribe(record)

        @bpp.run_decorator(md={"plan_name": "latency"})
        def latency_plan():
            for x, y in lat_pts:
                yield from bps.mv(b.stage.x, float(x), b.stage.y, float(y))
                yield from bps.trigger_and_read([b.potentiostat, b.stage.x, b.stage.y])
                yield from bps.sleep(0.2)

        RE(latency_plan())
        deadline = time.monotonic() + 120
        while len(seen) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        proc.terminate()
        proc.wait(30)
        lat = [seen[s] - sent[s] for s in sent if s in seen]
        pub3.close()
    finally:
        cat.stop()

        async def delete():
            import nats

            nc = await nats.connect(args.nats)
            try:
                await nc.jetstream().delete_stream(cfg.stream)
            finally:
                await nc.close()

        asyncio.run(delete())

    report(args, results, cpu, child_cpu, inside, per_event, ends, t_worker, worker.batch, lat, worker_cpu)


def report(args, results, cpu, child_cpu, inside, per_event, ends, t_worker, batch, lat, worker_cpu) -> None:
    base = results["no subscriber"]
    where = "in HDF5 asset files" if args.assets else "in the event documents"
    print(f"hopping run, {args.spots} spots x {args.samples}-sample CV {where}")
    print("  wall time of RE(...) (noisy on a shared machine):")
    for k, t in results.items():
        print(f"    {k:40s} {t:8.2f} s   {t / base:6.2f} x baseline   {1e3 * t / args.spots:7.2f} ms/spot "
              f"({1e3 * (t - base) / args.spots:+7.2f})")
    print("  CPU time of this process (all threads), of the RunEngine's thread inside the subscriber, and of the bus "
          "publisher's own process, per spot:")
    cb = cpu["no subscriber"]
    for k, c in cpu.items():
        extra = f"   publishing process {1e3 * child_cpu[k] / args.spots:6.2f} ms/spot" if k in child_cpu else ""
        print(f"    {k:40s} {1e3 * c / args.spots:7.2f} ms/spot CPU  (+{1e3 * (c - cb) / args.spots:6.2f} over the "
              f"baseline, {c / cb:5.2f} x)   in the subscriber {1e3 * inside[k] / args.spots:6.3f} ms/spot{extra}")
    print("  the RunEngine's thread in the subscriber: per event document (median CPU), and at start + stop "
          "(once a run):")
    for k in per_event:
        if k != "no subscriber":
            print(f"    {k:40s} {1e3 * per_event[k]:7.3f} ms per event   {1e3 * ends[k]:8.1f} ms at start + stop")
    print(f"  Tiled worker (batch {batch}): {args.spots} spots written in {t_worker:.2f} s = "
          f"{args.spots / t_worker:.0f} spots/s; CPU per spot: worker {1e3 * worker_cpu[0] / args.spots:.2f} ms, "
          f"Tiled server {1e3 * worker_cpu[1] / args.spots:.2f} ms (what a free core each would allow: "
          f"{args.spots / max(worker_cpu):.0f} spots/s)")
    if lat:
        print(f"  event -> readable in Tiled via `espt worker tiled` ({len(lat)} events seen): "
              f"median {1e3 * statistics.median(lat):.0f} ms, max {1e3 * max(lat):.0f} ms")
    elif not args.skip_latency:
        print("  latency: no event seen in Tiled")


if __name__ == "__main__":
    main()
