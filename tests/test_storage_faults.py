"""Nothing lost, nothing stalled: the write-ahead journal, the writer under server outages, and replay.

* the journal round-trips every value a RunEngine emits and reports damage (cut tail, corrupted middle);
* a Tiled server process killed mid-run for longer than the client's retry window, several times, with HDF5
  waveform runs: the RunEngine never waits longer than the writer's bound, and after a restart ``espt replay``
  (twice) leaves every event in Tiled exactly once with each run's real exit status;
* a damaged backup replays every intact document, reports the damage, and deletes nothing in Tiled.
"""

from __future__ import annotations

import datetime
import enum
import time

import numpy as np
import pytest

from espt_bluesky.storage import LocalCatalog, make_writer, read_map, replay
from espt_bluesky.storage.journal import (MAGIC, decode, encode, journal_in_use, open_journal, read_journal,
                                          write_journal)
from espt_bluesky.storage.replay import read_backup_file, tiled_events
from espt_bluesky.storage.server import free_port

from test_storage_helpers import hopping_plan, random_points, seccm_bench

# ------------------------------------------------------------------------------------------------ journal


class _Color(enum.Enum):
    RED = "red"


def _same(a, b) -> bool:
    """Deep equality that treats arrays by dtype, shape and value (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return a == b and type(a) is type(b)


def test_journal_encoding_round_trips_document_values():
    doc = {"f32": np.arange(6, dtype="<f4").reshape(2, 3), "i16": np.array([-1, 7], dtype=">i2"),
           "bool": np.array([True, False]), "str": np.array(["ab", "c"]), "cplx": np.array([1 + 2j]),
           "scalar": np.float64(2.5), "nan": float("nan"), "inf": -np.inf, "bytes": b"\x00\xff",
           "c": 1 - 1j, "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "nested": [{"a": (1, 2)}], "none": None}
    back = decode(encode(doc))
    want = dict(doc, scalar=2.5, nested=[{"a": [1, 2]}])
    assert _same(want, back), back
    assert decode(encode({"color": _Color.RED, "ints": {1, 3}, "np_int": np.int64(4)})) == \
        {"color": "red", "ints": [1, 3], "np_int": 4}
    # what JSON cannot hold at all is kept as its repr, never dropped
    assert decode(encode({"o": {(1, 2): 3}})) == {"o": {"(1, 2)": 3}}
    assert set(decode(encode({"x": object()}))["x"]) == {"__repr__"}
    assert b"\xff" not in encode(doc)  # the record marker cannot occur inside a payload


def _journal(tmp_path, n=12):
    docs = [("start", {"uid": "u", "time": 0.0})] + \
        [("event", {"seq_num": i + 1, "data": {"w": np.full(50, float(i))}}) for i in range(n)] + \
        [("stop", {"uid": "s", "run_start": "u", "exit_status": "success", "time": 1.0})]
    return write_journal(tmp_path, "u", docs), docs


def test_journal_damage_is_detected_not_guessed(tmp_path):
    path, docs = _journal(tmp_path)
    clean = read_journal(path)
    assert clean.closed and not clean.damage and len(clean) == len(docs)
    assert all(_same(a, b) for a, b in zip(clean.records, docs))
    raw = path.read_bytes()
    starts = [i for i in range(len(raw)) if raw.startswith(MAGIC, i)]  # one per record, + the end record
    assert len(starts) == len(docs) + 1

    # the writer died inside the last record: every earlier record, the tail reported as cut
    cut = tmp_path / "cut.journal"
    cut.write_bytes(raw[:starts[-2] + 20])
    got = read_journal(cut)
    assert not got.closed and [d.kind for d in got.damage] == ["truncated"]
    assert got.damage[0].offset == starts[-2] and _same(got.records, clean.records[:-1])

    # one flipped byte in record 3 and garbage over records 6-7: the rest intact, the loss named
    bad = bytearray(raw)
    bad[starts[3] + 30] ^= 0x20
    bad[starts[6] + 5:starts[8] - 3] = b"\x00" * (starts[8] - 3 - starts[6] - 5)
    mid = tmp_path / "mid.journal"
    mid.write_bytes(bytes(bad))
    got = read_journal(mid)
    assert got.closed
    kinds = [(d.kind, d.records) for d in got.damage]
    assert ("missing", (3, 3)) in kinds and ("missing", (6, 7)) in kinds
    assert [d.kind for d in got.damage].count("corrupt") == 2
    lost = {3, 6, 7}
    assert [n for n, _ in got.records] == [n for i, (n, _) in enumerate(docs) if i not in lost]
    assert [d["seq_num"] for n, d in got.records if n == "event"] == [i for i in range(1, 13) if i not in lost]
    # a file that is not a journal at all: nothing invented
    junk = tmp_path / "junk.journal"
    junk.write_bytes(b"not a journal\n" * 10)
    got = read_journal(junk)
    assert not got.records and got.damage


def test_journal_lock_and_modes(tmp_path):
    j = open_journal(tmp_path / "b", "run1")
    j.append("start", {"uid": "run1"})
    assert journal_in_use(j.path)
    assert (j.path.stat().st_mode & 0o777) == 0o600 and ((tmp_path / "b").stat().st_mode & 0o777) == 0o700
    j2 = open_journal(tmp_path / "b", "run1")  # never appends to someone else's journal
    assert j2.path != j.path
    j2.close()
    j.close()
    assert not journal_in_use(j.path) and read_journal(j.path).closed


def test_legacy_jsonl_with_half_written_documents(tmp_path):
    """TiledWriter's JSON-lines backup after numpy failed json.dump: hundreds of half documents on one line
    (a RecursionError in the old reader), then the stop.  Every whole document comes back; the rest is reported."""
    import json

    start = {"uid": "r1", "time": 1.0}
    stop = {"uid": "s1", "run_start": "r1", "exit_status": "success", "time": 2.0, "num_events": {"primary": 400}}
    half = '{"name": "event", "doc": {"uid": "e", "data": {"pstat_wf_current": ['
    text = json.dumps({"name": "start", "doc": start}) + "\n" + half * 400 + json.dumps({"name": "stop", "doc": stop})
    p = tmp_path / "r1.jsonl"
    p.write_text(text + "\n" + half)
    got = read_backup_file(p)
    assert got.records == [("start", start), ("stop", stop)]
    assert [(d.kind, d.offset) for d in got.damage] == [("corrupt", 1), ("truncated", 2)]


# ------------------------------------------------------------------------------------------ the writer


@pytest.fixture
def retry_window(monkeypatch):
    """The Tiled client retries a dead server for RETRY s (45 s by default); the writer must not wait that long."""
    import tiled.client.utils as tcu

    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 8.0)
    return 8.0


class GapMeter:
    """The longest time between two consecutive RunEngine messages or documents within one ``RE(...)`` call (s):
    how long the RunEngine was held by a subscriber (or the plan).  Subscribe it and set it as ``RE.msg_hook``;
    :meth:`reset` before each call."""

    def __init__(self):
        self.last = None
        self.longest = 0.0
        self.where = None

    def reset(self):
        self.last, self.longest, self.where = None, 0.0, None

    def _tick(self, what):
        now = time.monotonic()
        if self.last is not None and now - self.last > self.longest:
            self.longest, self.where = now - self.last, what
        self.last = now

    def __call__(self, name, doc):
        self._tick(name)

    def msg(self, msg):
        self._tick(msg.command)


def _run(RE, docs, bench, n, seed, *, kill=None, fail_at=None, gaps=None):
    """One hopping run of ``n`` spots; ``kill(i)`` before spot i; the plan raises before spot ``fail_at``.
    Returns (uid, [(x, y, current waveform) per event])."""
    record: list = []

    def hook(i):
        if kill is not None:
            kill(i)
        if fail_at is not None and i == fail_at:
            raise RuntimeError("the plan failed here")

    if gaps is not None:
        gaps.reset()
    try:
        RE(hopping_plan(bench, random_points(n, seed=seed), record=record, on_spot=hook))
    except RuntimeError as exc:
        assert fail_at is not None and "failed here" in str(exc)
    uid = [d for name, d in docs if name == "start"][-1]["uid"]
    return uid, record


@pytest.mark.slow
def test_server_killed_mid_run_then_replayed_twice(tmp_path, retry_window, capsys):
    """Outages longer than the client's retry window, at several points, with HDF5 waveform runs."""
    from bluesky import RunEngine

    from espt_bluesky.cli import main as espt_main
    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter

    data = tmp_path / "data"
    servers = [LocalCatalog.start(data)]
    port = int(servers[0].base_url.rsplit(":", 1)[1])
    probe = 1.0  # s: how long the writer waits without progress before it probes the server, and the probe
    try:
        RE = RunEngine({})
        writer = make_writer(servers[0], batch_size=5, probe_timeout=probe)
        RE.subscribe(writer)
        gaps = GapMeter()
        RE.subscribe(gaps)
        RE.msg_hook = gaps.msg
        docs: list = []
        RE.subscribe(lambda n, d: docs.append((n, d)))
        bench = seccm_bench(200)
        bench.potentiostat.asset_writer = HDF5WaveformWriter(servers[0].asset_dir)
        down = {}

        def kill_at(k):
            def kill(i):
                if i == k:
                    servers[-1].kill()
                    down["t"] = time.monotonic()
            return kill

        runs, longest = {}, {}
        runs["healthy"] = _run(RE, docs, bench, 20, 1, gaps=gaps)
        longest["healthy"] = (gaps.longest, gaps.where)
        assert writer.flush(120)  # (a busy machine may take longer than the bound to write it: not a failure)
        runs["killed"] = _run(RE, docs, bench, 40, 2, kill=kill_at(10), gaps=gaps)
        longest["killed"] = (gaps.longest, gaps.where)
        runs["down_at_start"] = _run(RE, docs, bench, 15, 3, gaps=gaps)
        longest["down_at_start"] = (gaps.longest, gaps.where)
        time.sleep(max(0.0, retry_window + 1.0 - (time.monotonic() - down["t"])))  # down > the retry window
        servers.append(LocalCatalog.start(data, port=port))  # the writer's server is back
        runs["back"] = _run(RE, docs, bench, 10, 4, gaps=gaps)
        longest["back"] = (gaps.longest, gaps.where)
        assert writer.flush(120)
        runs["killed_then_failed"] = _run(RE, docs, bench, 40, 5, kill=kill_at(25), fail_at=32, gaps=gaps)
        longest["killed_then_failed"] = (gaps.longest, gaps.where)
        assert writer.flush(120)

        # during the outages the writer gave each run up because a probe found the server unreachable (about
        # probe_timeout without progress, then a refused connection) or a write failed in its own thread -- never
        # by waiting out max_wait (the bound for a hung or slow server); so the RunEngine was never held as long as
        # that, nor as the client's retry window that the old writer waited out (a loaded machine stretches the
        # ~1 s hold, not to those bounds).  Healthy runs are not timed: there the RunEngine may wait for a slow but
        # working server, by design.
        assert 2 * probe < min(retry_window, writer.max_wait)
        for key in ("killed", "down_at_start", "killed_then_failed"):
            why = writer.runs[runs[key][0]].error
            assert "unreachable" in why or "writing to Tiled failed" in why, (key, why)
            assert longest[key][0] < min(retry_window, writer.max_wait), (key, longest[key])
        state = {k: writer.runs[uid].state for k, (uid, _) in runs.items()}
        assert state["healthy"] == state["back"] == "written"
        assert state["killed"] == state["down_at_start"] == state["killed_then_failed"] == "backup"
        assert sorted(p.name for p in writer.pending) == sorted(p.name for p in (data / "backup").iterdir())

        servers.append(LocalCatalog.start(data))
        capsys.readouterr()
        assert espt_main(["replay", str(data / "backup"), "--data-dir", str(data)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("written 3 run(s)") and "DAMAGE" not in out, out
        assert espt_main(["replay", str(data / "backup"), "--data-dir", str(data)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("written 0 run(s)") and "skipped 3 already complete" in out, out

        client = servers[-1].client()
        emitted = {d["run_start"]: d for n, d in docs if n == "stop"}
        assert sorted(client) == sorted(emitted)
        for key, (uid, record) in runs.items():
            run = client[uid]
            stop = run.metadata["stop"]
            assert stop == emitted[uid], key  # the real stop document: exit status, reason, counts
            n = len(record)
            assert stop["num_events"]["primary"] == n
            assert tiled_events(run) == {"primary": n}, key
            ds = read_map(run)
            assert sorted(ds.seq_num.values.tolist()) == list(range(1, n + 1)), key  # each event once
            np.testing.assert_allclose(np.c_[ds.x, ds.y], [r[:2] for r in record], atol=1e-9)
            np.testing.assert_array_equal(ds["pstat_wf_current"].values, np.array([r[2] for r in record]))
        assert client[runs["killed_then_failed"][0]].metadata["stop"]["exit_status"] == "fail"
        assert client[runs["killed"][0]].metadata["stop"]["exit_status"] == "success"
    finally:
        for s in servers:
            s.stop()


def test_server_down_at_run_start(tmp_path):
    """No server at all: the run completes into its journal without error, then replays with its waveforms."""
    from bluesky import RunEngine

    gone = LocalCatalog.connect(f"http://127.0.0.1:{free_port()}", api_key="nobody")
    RE = RunEngine({})
    writer = make_writer(gone, backup_directory=tmp_path / "backup", max_wait=1.0)
    RE.subscribe(writer)
    docs: list = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = seccm_bench(120)  # waveforms as numpy arrays inside the event documents
    uid, record = _run(RE, docs, bench, 12, 6)
    assert writer.flush(30) and writer.runs[uid].state == "backup"
    (path,) = writer.pending
    assert not journal_in_use(path)
    back = read_journal(path)
    assert back.closed and not back.damage
    assert all(_same(a, b) for a, b in zip(back.records, docs)) and len(back) == len(docs)
    cat = LocalCatalog.in_process(tmp_path / "data")
    try:
        first = replay(tmp_path / "backup", cat)
        assert first.written == [uid] and first.runs[0].events == {"primary": 12}
        assert first.runs[0].exit_status == "success"
        assert replay(tmp_path / "backup", cat).skipped == [uid]
        ds = read_map(cat.client()[uid])
        np.testing.assert_array_equal(ds["pstat_wf_current"].values, np.array([r[2] for r in record]))
    finally:
        cat.stop()


def test_replay_of_damaged_backups_deletes_nothing(tmp_path):
    """Cut tail, corrupted middle, and a damaged backup of a run Tiled partly has: every intact document is
    written, the damage reported, no stop invented, nothing in Tiled deleted."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    gone = LocalCatalog.connect(f"http://127.0.0.1:{free_port()}", api_key="nobody")
    RE = RunEngine({})
    writer = make_writer(gone, backup_directory=tmp_path / "backup", max_wait=1.0, keep_journals=True)
    RE.subscribe(writer)
    docs: list = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = seccm_bench(60)
    uids = [_run(RE, docs, bench, 12, seed)[0] for seed in (7, 8, 9)]
    assert writer.flush(30)
    paths = {uid: writer.runs[uid].journal for uid in uids}

    def starts(raw):
        return [i for i in range(len(raw)) if raw.startswith(MAGIC, i)]

    def run_docs(uid):
        out, descs = [], set()
        for n, d in docs:
            if d.get("uid") == uid or d.get("run_start") == uid or d.get("descriptor") in descs:
                out.append((n, d))
                if n == "descriptor":
                    descs.add(d["uid"])
        return out

    # run 0: cut inside its stop document -> written without a stop, end unknown
    raw = paths[uids[0]].read_bytes()
    paths[uids[0]].write_bytes(raw[:starts(raw)[-2] + 7])
    # run 1: records of events 4-5 overwritten -> the other events and the stop
    raw = bytearray(paths[uids[1]].read_bytes())
    s1 = starts(bytes(raw))
    ev1 = [i for i, (n, _) in enumerate(run_docs(uids[1])) if n == "event"]
    raw[s1[ev1[3]] + 2:s1[ev1[5]] - 1] = b"\x00" * (s1[ev1[5]] - 1 - s1[ev1[3]] - 2)
    paths[uids[1]].write_bytes(bytes(raw))
    # run 2: Tiled already holds events 1-8 (a partial copy); its backup lost events 2-3 but has the stop
    cat = LocalCatalog.in_process(tmp_path / "data")
    try:
        client = cat.client()
        tw = TiledWriter(client, batch_size=1)
        d2 = run_docs(uids[2])
        ev2 = [i for i, (n, _) in enumerate(d2) if n == "event"]
        for n, d in d2[:ev2[7] + 1]:
            tw(n, d)
        assert tiled_events(client[uids[2]]) == {"primary": 8}
        raw = bytearray(paths[uids[2]].read_bytes())
        s2 = starts(bytes(raw))
        raw[s2[ev2[1]] + 20] ^= 0xFF
        raw[s2[ev2[2]] + 20] ^= 0xFF
        paths[uids[2]].write_bytes(bytes(raw))
        before = {k: paths[k].read_bytes() for k in uids}

        report = replay(tmp_path / "backup", cat)
        by_uid = {r.uid: r for r in report.runs}
        r0, r1, r2 = (by_uid[u] for u in uids)
        assert (r0.action, r0.exit_status, r0.events) == ("written", "unknown", {"primary": 12})
        assert [d.split(":")[0] for d in r0.damage] == ["truncated"]
        assert (r1.action, r1.exit_status, r1.events) == ("written", "success", {"primary": 10})
        assert "records" in " ".join(r1.damage) and "corrupt" in " ".join(r1.damage)
        assert r2.action == "stop_added" and "only Tiled has seq 2-3" in r2.detail
        assert "only the backup has seq 9-12" in r2.detail
        assert "DAMAGE in 3 file(s)" in str(report)

        run0 = client[uids[0]]
        assert run0.metadata.get("stop") is None and run0.metadata["espt_replay"]["end"] == "unknown"
        assert sorted(read_map(run0).seq_num.values.tolist()) == list(range(1, 13))
        run1 = client[uids[1]]
        assert run1.metadata["stop"]["exit_status"] == "success"
        assert sorted(read_map(run1).seq_num.values.tolist()) == [1, 2, 3, 6, 7, 8, 9, 10, 11, 12]
        run2 = client[uids[2]]  # nothing of Tiled's copy was deleted; its real stop was added
        assert sorted(read_map(run2).seq_num.values.tolist()) == list(range(1, 9))
        assert run2.metadata["stop"]["exit_status"] == "success"

        again = replay(tmp_path / "backup", cat)
        assert not again.written and sorted(again.skipped) == sorted(uids[:3]) or \
            {r.action for r in again.runs} <= {"skipped", "kept"}
        assert {k: paths[k].read_bytes() for k in uids} == before  # backups never changed
    finally:
        cat.stop()


def test_a_journal_in_use_is_left_alone(tmp_path):
    j = open_journal(tmp_path, "busy")
    j.append("start", {"uid": "busy", "time": 0.0})
    try:
        report = replay(tmp_path, object())  # never reaches the client
        assert [r.action for r in report.runs] == ["in_use"]
    finally:
        j.close()


def test_writer_never_raises_into_the_run(tmp_path, caplog):
    """A backup directory that cannot be written: the run still completes (into Tiled), loudly."""
    from bluesky import RunEngine

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    cat = LocalCatalog.in_process(tmp_path / "data")
    try:
        RE = RunEngine({})
        writer = make_writer(cat, backup_directory=blocker / "backup")
        RE.subscribe(writer)
        bench = seccm_bench(50)
        docs: list = []
        RE.subscribe(lambda n, d: docs.append((n, d)))
        uid, record = _run(RE, docs, bench, 5, 1)
        assert writer.runs[uid].state == "written" and writer.runs[uid].journal_error
        assert "cannot open its backup journal" in caplog.text
        assert tiled_events(cat.client()[uid]) == {"primary": 5}
    finally:
        cat.stop()
