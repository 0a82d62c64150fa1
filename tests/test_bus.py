"""The facility pipeline over NATS JetStream: RunEngine -> bus -> `espt worker tiled` / `analysis` / `livemap`.

Against the real JetStream server on 127.0.0.1:4222 (skipped when it does not answer, unless
ESPT_REQUIRE_SERVICES=1) and real `tiled serve` processes.  Each test uses its own stream and subjects and deletes
the stream afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import xarray as xr

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from espt_bluesky.cli import main as espt_main
from espt_bluesky.storage import LocalCatalog, make_writer, read_map
from espt_bluesky.workers.bus import BusConfig

from test_storage_helpers import random_points

NATS = os.environ.get("ESPT_NATS_URL", "nats://127.0.0.1:4222")
REQUIRE = os.environ.get("ESPT_REQUIRE_SERVICES", "") not in ("", "0")


def _nats_answers() -> bool:
    import nats

    async def probe():
        nc = await nats.connect(NATS, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 5))
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def jetstream():
    if not _nats_answers():
        if REQUIRE:
            pytest.fail(f"NATS JetStream does not answer at {NATS} (ESPT_REQUIRE_SERVICES=1)")
        pytest.skip(f"NATS JetStream does not answer at {NATS}")


@pytest.fixture
def bus(jetstream):
    """A BusConfig with a stream and subjects of its own; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    cfg = BusConfig.from_mapping({"mode": "bus", "servers": NATS, "stream": f"ESPTTEST_{tag}",
                                  "subject": f"esptest.{tag}.docs", "live_subject": f"esptest.{tag}.live",
                                  "max_age_days": 1, "max_bytes": 2**30})
    yield cfg

    async def delete():
        import nats

        nc = await nats.connect(NATS)
        try:
            await nc.jetstream().delete_stream(cfg.stream)
        except Exception:  # noqa: BLE001 - never created
            pass
        await nc.close()

    asyncio.run(delete())


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = LocalCatalog.start(tmp_path_factory.mktemp("bus") / "data")
    yield cat
    cat.stop()


def _bus_args(cfg: BusConfig) -> list[str]:
    return ["--servers", ",".join(cfg.servers), "--stream", cfg.stream, "--subject", cfg.subject]


class _Spot:
    """One readable giving a hop's x, y and spot value 1000 y + x (no trigger, no motion: three RunEngine messages
    a hop, a fifth of the CPU of ophyd.sim axes and a detector)."""

    parent = None

    def __init__(self) -> None:
        self.name, self.x, self.y = "spot", 0.0, 0.0

    def describe(self) -> dict:
        return {k: {"source": f"sim:{k}", "dtype": "number", "shape": []} for k in ("spot_value", "x", "y")}

    def read(self) -> dict:
        t = time.time()
        return {"spot_value": {"value": 1000.0 * self.y + self.x, "timestamp": t},
                "x": {"value": self.x, "timestamp": t}, "y": {"value": self.y, "timestamp": t}}


def cheap_hops(points, *, on_spot=None, md=None):
    """A hop per point (an event with x, y and the spot value 1000 y + x): a cheap RunEngine hop."""
    spot = _Spot()
    start = {"map": {"x": "x", "y": "y", "order": "hopping"}, "plan_name": "cheap_hops", **(md or {})}

    @bpp.run_decorator(md=start)
    def inner():
        for i, (px, py) in enumerate(points):
            if on_spot is not None:
                on_spot(i)
            spot.x, spot.y = float(px), float(py)
            yield from bps.create("primary")
            yield from bps.read(spot)
            yield from bps.save()

    return (yield from inner())


class Timed:
    """Wraps a subscriber and records the longest time one document spent in it."""

    def __init__(self, cb):
        self.cb, self.longest, self.calls = cb, 0.0, 0

    def __call__(self, name, doc):
        t0 = time.perf_counter()
        self.cb(name, doc)
        self.longest = max(self.longest, time.perf_counter() - t0)
        self.calls += 1


def _wait_complete(client_factory, uid, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = client_factory()
            if uid in client and client[uid].metadata.get("stop"):
                return client[uid]
        except Exception:  # noqa: BLE001 - server restarting
            pass
        time.sleep(0.5)
    raise AssertionError(f"run {uid} not complete in Tiled after {timeout} s")


def _inprocess_copy(cat, docs, tmp_path):
    """The same documents written by today's in-process writer into a container of the same catalog."""
    client = cat.client()
    key = "inproc_" + uuid.uuid4().hex[:6]
    node = client.create_container(key)
    w = make_writer(node, backup_directory=tmp_path / f"backup_{key}", batch_size=500)  # (read_map: any batch)
    for name, doc in docs:
        w(name, doc)
    w.flush(120)
    return cat.client()[key][docs[0][1]["uid"]]


def _seq_nums(run) -> np.ndarray:
    return np.asarray(run["primary"].base["internal"].read()["seq_num"])


def _spawn_worker(cfg, cat, *extra):
    env = dict(os.environ, TILED_RETRY_ATTEMPTS="2", TILED_RETRY_TIMEOUT="2")
    cmd = [sys.executable, "-m", "espt_bluesky.cli", "worker", "tiled", *_bus_args(cfg), "--uri", cat.uri,
           "--api-key", cat.api_key, "--batch", "100", "--ack-wait", "5", *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    line = p.stdout.readline()
    assert "consumer espt-tiled" in line, line + p.stdout.read()
    return p


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_2000_hops_through_bus_exactly_once_through_worker_and_server_kills(bus, tmp_path):
    """2000 hops published while `espt worker tiled` is SIGKILLed and restarted and the Tiled server is killed
    and restarted: the run lands complete, every event once, read_map as the in-process writer gives it, and the
    RunEngine never waited on the bus beyond a publish."""
    from bluesky import RunEngine

    from espt_bluesky.storage.server import free_port
    from espt_bluesky.workers.publisher import BusPublisher

    data, port = tmp_path / "data", free_port()
    state = {"cat": LocalCatalog.start(data, port=port)}
    state["worker"] = _spawn_worker(bus, state["cat"])
    pub = BusPublisher(bus, tmp_path / "backup")
    timed = Timed(pub)
    RE = RunEngine({})
    RE.subscribe(timed)
    docs: list = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    pts = np.random.default_rng(3).uniform(0, 100, size=(2000, 2))

    def fault(i):
        if i == 400:
            state["worker"].send_signal(signal.SIGKILL)  # the Tiled worker dies mid-batch, unacknowledged
            state["worker"].wait()
        elif i == 700:
            state["worker"] = _spawn_worker(bus, state["cat"])
        elif i == 1100:
            state["cat"].kill()  # the Tiled server dies (SIGKILL)
        elif i == 1500:
            state["cat"] = LocalCatalog.start(data, port=port)

    t0 = time.monotonic()
    try:
        (uid,) = RE(cheap_hops(pts, on_spot=fault))
        t_re = time.monotonic() - t0
        run_state = pub.runs[uid]
        assert run_state.state == "published", run_state  # the bus took every document: no fallback
        assert run_state.journal is None  # and its journal was removed
        print(f"\nlongest RunEngine wait on the publisher: {1e3 * timed.longest:.1f} ms over {timed.calls} docs")
        cat = state["cat"]
        run = _wait_complete(cat.client, uid)
        t_done = time.monotonic() - t0
        seqs = _seq_nums(run)
        assert len(seqs) == 2000 and sorted(seqs) == list(range(1, 2001))  # every event exactly once
        assert run.metadata["stop"]["exit_status"] == "success"
        ds_bus = read_map(run)
        ds_ref = read_map(_inprocess_copy(cat, docs, tmp_path))
        print(f"RunEngine {t_re:.1f} s, complete in Tiled at {t_done:.1f} s, checked at {time.monotonic() - t0:.1f} s")
        xr.testing.assert_identical(ds_bus, ds_ref)
        np.testing.assert_allclose(ds_bus["spot_value"], 1000 * ds_bus["y"] + ds_bus["x"])
    finally:
        pub.close()
        w = state["worker"]
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            out = w.communicate(timeout=30)[0]
            print(out[-3000:])
        state["cat"].stop()


def test_session_bus_mode_tiled_and_analysis_workers_idempotent(bus, catalog, tmp_path, capsys):
    """A session in bus mode (the profile's path) publishes a SECCM screen with HDF5 waveform assets; the Tiled
    worker lands it as the in-process writer would; the analysis worker writes its screening product, and after a
    crash between writing and acknowledging, the restarted worker does not write it again."""
    from espt_bluesky.callbacks.products import screening_dataset
    from espt_bluesky.session import build_session
    from espt_bluesky.storage.maps import read_product
    from espt_bluesky.workers.analysis_worker import AnalysisWorker
    from espt_bluesky.workers.tiled_worker import TiledWorker

    bus_section = {k: getattr(bus, k) for k in ("mode", "servers", "stream", "subject", "live_subject")}
    s = build_session({"bench": {"technique": "SECCM", "sample": "hopg", "seed": 4}, "session": {"md_dir": "", "suspenders": False},
                       "storage": {"mode": "connect", "tiled_uri": catalog.uri, "api_key": catalog.api_key,
                                   "data_dir": str(catalog.data_dir.root)},
                       "bus": bus_section})
    try:
        assert s.writer is None and s.publisher is not None  # bus mode: nothing written in-process
        assert "bus:" in s.banner() and "connected" in s.banner()
        from espt_bluesky.plans.hopping import hopping_scan

        measure = dict(technique="CV", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=1.0, n_cycles=2,
                       n_samples=200)
        docs: list = []
        s.RE.subscribe(lambda n, d: docs.append((n, d)))
        (uid,) = s.RE(hopping_scan(s.stage, s.pstat, technique="SECCM", x_range=(10, 90, 4), y_range=(10, 90, 4),
                                   hop_height=2.0, measure=measure, mode="device", hopper=s.hopper,
                                   context=s.bench.metadata())).run_start_uids
        assert any(n == "stream_resource" for n, _ in docs)  # waveforms stayed in HDF5 files on shared storage
        assert s.publisher.runs[uid].state == "published"
    finally:
        s.close()

    tw = TiledWorker(bus, catalog.client, health_url=f"{catalog.base_url}/healthz", batch=50)
    tw.run(until_idle=1.5)
    tw.close()
    assert tw.written == [uid] and not tw.errors
    run = catalog.client()[uid]
    xr.testing.assert_identical(read_map(run), read_map(_inprocess_copy(catalog, docs, tmp_path)))

    # analysis worker: killed after writing the product, before acknowledging the stop
    aw = AnalysisWorker(bus, catalog.client, ack_wait=1.0, k_max=3)
    aw.connect()
    batch = []
    deadline = time.monotonic() + 30
    while not batch and time.monotonic() < deadline:
        batch = aw.fetch()
    aw.handle(batch)  # no ack: as if SIGKILLed here
    aw.close()
    assert aw.written == [(uid, "screening")]
    prod = read_product(run, "screening")
    ref = screening_dataset(run)
    np.testing.assert_allclose(prod["x"], ref["x"])
    created = catalog.client()["products"][uid]["screening"].metadata["created"]

    aw2 = AnalysisWorker(bus, catalog.client, ack_wait=1.0, k_max=3)
    aw2.run(until_idle=3.0)
    aw2.close()
    # the stop came again, and nothing was written twice.  JetStream delivers at least once: on a loaded machine a
    # handling that outlasts ack_wait (1 s) brings the stop back once more; each delivery must find the product
    assert aw2.handled >= 1 and aw2.written == []
    assert aw2.skipped == [(uid, "product 'screening' already written")] * aw2.handled
    assert catalog.client()["products"][uid]["screening"].metadata["created"] == created
    assert list(catalog.client()["products"][uid]) == ["screening"]

    # espt status: the consumers have caught up, the last run is named, Tiled answers
    code = espt_main(["status", *_bus_args(bus), "--uri", catalog.uri, "--api-key", catalog.api_key])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"last run:  {uid}" in out and "ended success" in out
    assert "espt-tiled       lag 0 undelivered, 0 unacknowledged" in out
    assert "espt-analysis    lag 0 undelivered, 0 unacknowledged" in out


def test_jetstream_unreachable_run_goes_to_backup_and_replay_delivers(catalog, tmp_path, caplog, capsys):
    from bluesky import RunEngine

    from espt_bluesky.storage.server import free_port
    from espt_bluesky.workers.publisher import BusPublisher

    dead = BusConfig.from_mapping({"mode": "bus", "servers": f"nats://127.0.0.1:{free_port()}",
                                   "connect_timeout": 0.3, "subject": "esptest.dead.docs",
                                   "live_subject": "esptest.dead.live"})
    backup = tmp_path / "backup"
    with caplog.at_level(logging.ERROR):
        pub = BusPublisher(dead, backup)
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(cheap_hops(random_points(30, seed=2)))
    pub.close()
    assert RE.state == "idle"
    assert pub.runs[uid].state == "backup" and pub.pending == [backup / f"{uid}.journal"]
    assert any("BUS DOWN" in r.message and uid in r.message for r in caplog.records)  # said loudly

    code = espt_main(["replay", str(backup), "--uri", catalog.uri, "--api-key", catalog.api_key])
    assert code == 0
    assert "written 1 run(s)" in capsys.readouterr().out
    run = catalog.client()[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert sorted(_seq_nums(run)) == list(range(1, 31))


@pytest.mark.parametrize("journal", ["on_failure", "always"])
def test_jetstream_failing_mid_run_whole_run_to_backup(bus, catalog, tmp_path, caplog, capsys, journal):
    """The stream disappears in the middle of a run: the publisher says so loudly, the run completes into its
    journal (which holds the whole run, journaled from memory or written ahead), and `espt replay` delivers every
    event."""
    import threading

    from bluesky import RunEngine

    from espt_bluesky.workers.publisher import BusPublisher

    backup = tmp_path / "backup"
    pub = BusPublisher(bus, backup, journal=journal)

    def delete_stream():
        import nats

        async def run():
            nc = await nats.connect(NATS)
            await nc.jetstream().delete_stream(bus.stream)
            await nc.close()

        asyncio.run(run())

    def fault(i):
        if i == 20:
            t = threading.Thread(target=delete_stream)
            t.start()
            t.join()

    RE = RunEngine({})
    timed = Timed(pub)
    RE.subscribe(timed)
    with caplog.at_level(logging.ERROR):
        (uid,) = RE(cheap_hops(random_points(50, seed=4), on_spot=fault))
    pub.close()
    assert pub.runs[uid].state == "backup" and pub.pending == [backup / f"{uid}.journal"]
    assert any("BUS DOWN" in r.message and uid in r.message for r in caplog.records)
    assert "publishing failed" in pub.runs[uid].error  # found by the acknowledgement, not by waiting it out
    print(f"\nlongest RunEngine wait on the publisher: {1e3 * timed.longest:.1f} ms")
    assert espt_main(["replay", str(backup), "--uri", catalog.uri, "--api-key", catalog.api_key]) == 0
    assert "written 1 run(s)" in capsys.readouterr().out
    run = catalog.client()[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert sorted(_seq_nums(run)) == list(range(1, 51))


def test_bus_config_refuses_bad_settings():
    from espt_bluesky.errors import InvalidArgument
    from espt_bluesky.session import load_config

    assert load_config({"bus": {"mode": "bus"}})["bus"]["servers"] == ["nats://127.0.0.1:4222"]
    for bad, named in [({"mode": "kafka"}, "bus.mode"), ({"stream_name": "x"}, "stream_name"),
                       ({"servers": "http://h:4222"}, "bus.servers"), ({"subject": "a.*"}, "bus.subject"),
                       ({"live_subject": "espt.docs.default.map"}, "bus.live_subject"),
                       ({"publish_timeout": "2 s"}, "bus.publish_timeout"), ({"max_pending": 0}, "bus.max_pending"),
                       ({"journal": "never"}, "bus.journal"), ({"keep_journals": "yes"}, "bus.keep_journals")]:
        with pytest.raises(InvalidArgument, match=named.replace(".", r"\.")):
            load_config({"bus": bad})


def test_livemap_publisher_feeds_a_remote_view(bus):
    from bluesky import RunEngine

    from espt_bluesky.workers.livemap import LiveMapPublisher, LiveMapView
    from espt_bluesky.workers.publisher import BusPublisher

    lm = LiveMapPublisher(bus, interval=0.0)
    lm.connect()  # a new consumer: documents from now on
    view = LiveMapView(bus)
    pub = BusPublisher(bus, "/tmp/unused-espt-backup", journal="on_failure")
    try:
        xs, ys = np.linspace(0, 40, 5), np.linspace(10, 40, 4)
        pts = [(x, y) for y in ys for x in xs]
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(cheap_hops(pts, md={"shape": [4, 5], "extents": [[10, 40], [0, 40]]}))
        lm.run(until_idle=1.0)
        deadline = time.monotonic() + 10
        while not (view.latest and view.latest.get("final")) and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = view.latest
        assert snap["uid"] == uid and snap["final"] and snap["n"] == 20
        img = view.image("spot_value")
        np.testing.assert_allclose(img, 1000 * ys[:, None] + xs[None, :])
    finally:
        pub.close()
        view.close()
        lm.close()


def test_product_callback_wait_is_bounded_on_the_runengine_thread():
    """ProductCallback's wait for the run in Tiled is bounded however Tiled behaves: a request that hangs is
    abandoned after ``timeout``, and when the in-process writer already spent the wait at the stop (the stop
    document is old), one short look only -- not another ``timeout``."""
    import threading

    from espt_bluesky.callbacks.products import LAST_LOOK, ProductCallback

    release = threading.Event()

    class Hung:  # a Tiled client whose every request hangs (server stopped answering mid-request)
        def __getitem__(self, key):
            release.wait(120)
            raise KeyError(key)

    class Absent:  # the run never reaches Tiled (the writer left it to its journal)
        calls = 0

        def __getitem__(self, key):
            Absent.calls += 1
            raise KeyError(key)

    start = {"uid": "u-hung", "technique": "SECCM", "plan_name": "hopping_scan", "time": time.time()}
    try:
        cb = ProductCallback(Hung(), "SECCM", timeout=1.0)
        cb.start(start)
        t0 = time.monotonic()
        cb.stop({"uid": "s1", "run_start": "u-hung", "time": time.time(), "exit_status": "success"})
        hung = time.monotonic() - t0
    finally:
        release.set()
    assert cb.errors and cb.errors[0][0] == "u-hung" and "not found in Tiled" in cb.errors[0][1]
    assert hung < 60  # the request hangs 120 s: the RunEngine went on after its 1 s

    cb = ProductCallback(Absent(), "SECCM", timeout=30.0)
    cb.start({**start, "uid": "u-absent"})
    t0 = time.monotonic()
    cb.stop({"uid": "s2", "run_start": "u-absent", "time": time.time() - 40.0, "exit_status": "success"})
    late = time.monotonic() - t0
    assert cb.errors and "not found in Tiled" in cb.errors[0][1]
    assert Absent.calls >= 1  # it did look once
    assert late < 15 * LAST_LOOK < 30  # the writer spent the 30 s already: not another 30 s


def test_publishing_process_killed_mid_run_whole_run_journaled_next_run_published(bus, tmp_path, caplog):
    """The publisher's own process (which holds the NATS connection) is SIGKILLed mid-run: the run goes loudly to
    its journal, whole; the next run starts a new publishing process and is published."""
    from bluesky import RunEngine

    from espt_bluesky.storage.journal import read_journal
    from espt_bluesky.workers.publisher import BusPublisher

    pub = BusPublisher(bus, tmp_path / "backup")
    first = pub._proc.pid

    def fault(i):
        if i == 15:
            os.kill(first, signal.SIGKILL)
            pub._proc.wait(10)

    RE = RunEngine({})
    RE.subscribe(pub)
    try:
        with caplog.at_level(logging.ERROR):
            (uid,) = RE(cheap_hops(random_points(40, seed=5), on_spot=fault))
        run = pub.runs[uid]
        assert run.state == "backup" and "publishing process" in run.error, run
        assert any("BUS DOWN" in r.message and uid in r.message for r in caplog.records)
        events = [d for n, d in read_journal(run.journal) if n == "event"]
        assert sorted(d["seq_num"] for d in events) == list(range(1, 41))  # the whole run, not the rest of it
        (uid2,) = RE(cheap_hops(random_points(10, seed=6)))
        assert pub.runs[uid2].state == "published" and pub._proc.pid != first
    finally:
        pub.close()


_DYING_SESSION = """
import os, signal, sys
from bluesky import RunEngine
import bluesky.plans as bp
from ophyd.sim import det
from espt_bluesky.workers.bus import BusConfig
from espt_bluesky.workers.publisher import BusPublisher

pub = BusPublisher(BusConfig.from_mapping(dict(mode="bus", servers=[sys.argv[1]], stream=sys.argv[2],
                                               subject=sys.argv[3], live_subject=sys.argv[4])), sys.argv[5])
RE = RunEngine({})
RE.subscribe(pub)

def die(name, doc):
    if name == "event" and doc["seq_num"] == 30:  # right after the publisher wrote event 30 to its pipe
        os.kill(os.getpid(), signal.SIGKILL)

RE.subscribe(die)
RE(bp.count([det], num=50))
"""


def test_documents_in_the_pipe_survive_the_runengine_process_killed(bus, tmp_path):
    """The RunEngine's process is SIGKILLed right after handing event 30 to the publisher: the publishing process
    reads its pipe to the end and publishes the start, the descriptor and the 30 events before it exits."""
    import nats

    from pathlib import Path

    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _DYING_SESSION, NATS, bus.stream, bus.subject, bus.live_subject,
                           str(tmp_path / "backup")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    async def names():
        from espt_bluesky.workers.bus import doc_name

        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 60
            while (await js.stream_info(bus.stream)).state.messages < 32 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            n = (await js.stream_info(bus.stream)).state.messages
            sub = await js.subscribe(bus.filter_subject, stream=bus.stream, ordered_consumer=True)
            out = [doc_name((await sub.next_msg(timeout=10)).subject) for _ in range(n)]
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    got = asyncio.run(names())
    assert got[:2] == ["start", "descriptor"] and got[2:] == ["event"] * 30, got
