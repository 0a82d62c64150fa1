"""A fly run into Tiled through ``make_writer``: what it costs in HTTP requests, and what happens when its stop is slow.

* A fly image is a handful of data keys (signal, ``position``, ``time``, ``pass``), so a run costs the writer a
  fixed, small number of requests.  On a server this package configured (no streaming cache, no webhooks) the lean
  writer sends: 2 containers, per data key one registration carrying its rows (the first ones, made while the run
  goes on, once they have waited ``live_interval``; or all of them at the stop of a shorter run), one data-source
  update per key for rows that came later (at most every ``live_interval``), the stop metadata, and no
  ``close_stream`` (the server would do nothing with it).  The run reads back from Tiled as from its
  documents.  On a bluesky-tiled-plugins release the lean writer was not written for, the stock TiledWriter writes.
* A refused registration sends the run to its journal loudly; replaying it writes the run whole.
* The stop of a run is many requests: on a slow server they may take longer than ``max_wait`` in all; each answered
  request is progress, so the run is written, not journaled.
* A stop that gets no answer for longer than ``max_wait`` sends the run to its journal with a warning naming
  ``espt replay``; the journal holds the whole run (stream resources, datums, stop), and replaying it leaves the
  run complete in Tiled.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from bluesky import RunEngine

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.fly import make_fly_devices
from espt_bluesky.plans.fly import fly_image
from espt_bluesky.storage import LocalCatalog, make_writer, read_map
from espt_bluesky.storage.journal import read_journal
from espt_bluesky.storage.replay import replay
from espt_bluesky.storage.server import _needs_stream_close, tiled_config

GRID = dict(technique="EC-AFM", x_range=(30.0, 70.0, 21), y_range=(45.0, 55.0, 2), speed=50.0,
            sample_rate=250.0)  # 2 rows × 2 directions × 200 samples; EC-AFM: the cheapest physics


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("fly_tiled") / "data")
    yield cat
    cat.stop()


def fly(RE, catalog, seed=1):
    """One small EC-AFM fly image; returns (uid, its documents)."""
    bench = make_sim_bench("EC-AFM", "patterned", seed=seed)
    fs, fd = make_fly_devices(bench, catalog.asset_dir)
    docs = []
    uid = RE(fly_image(fs, fd, bench.stage, bench.potentiostat, **GRID), lambda n, d: docs.append((n, d)))[0]
    return uid, docs


def _fly_written(catalog, seed):
    """Fly into a fresh ``make_writer(catalog)``: the run must be written.  Returns (writer, uid, docs, data keys)."""
    writer = make_writer(catalog)
    RE = RunEngine({})
    RE.subscribe(writer)
    uid, docs = fly(RE, catalog, seed=seed)
    assert writer.runs[uid].state == "written", writer.runs[uid].error
    return writer, uid, docs, [d for n, d in docs if n == "descriptor"][0]["data_keys"]


def test_a_fly_run_costs_few_requests_and_reads_back(catalog, monkeypatch):
    import fastapi.dependencies.utils as fdu

    # an in-process server shares the user's process: FastAPI is left as it is (only our own server process
    # memoises its dependency analysis, storage/fastapi_speedup.py)
    assert not hasattr(fdu.get_dependant, "cache_info")
    assert catalog.streams_need_closing is False  # started here from tiled_config: no streaming cache, no webhooks
    assert LocalCatalog.connect(catalog.uri, api_key=catalog.api_key).streams_need_closing is True  # unknown server
    cfg = tiled_config(catalog.data_dir, "key")
    monkeypatch.setenv("TILED_STREAMING_CACHE_URI", "redis://127.0.0.1:1")  # how Tiled also reads its cache
    assert _needs_stream_close(cfg) is True
    monkeypatch.delenv("TILED_STREAMING_CACHE_URI")
    assert _needs_stream_close(cfg) is False

    writer, uid, docs, keys = _fly_written(catalog, 2)
    assert sorted(keys) == ["fly_error", "fly_height", "fly_pass", "fly_position", "fly_time"]
    # run + stream containers, per key one registration carrying its rows (all 4 passes came in one collect), the
    # stop metadata; no close_stream (nothing to close on this server); the client's own set-up requests (made
    # before the writer counts) excluded
    assert writer.requests_answered == 2 + len(keys) + 1
    run = catalog.client()[uid]
    assert sorted(run["primary"]) == sorted(keys)
    assert run["primary"]["fly_position"].shape == (4, 3, 200)
    from_tiled, from_docs = read_map(run), read_map(docs)
    assert sorted(from_tiled.data_vars) == sorted(from_docs.data_vars) == sorted(
        f"fly_{k}_{d}" for k in ("height", "error", "z") for d in ("forward", "backward")) + ["n_backward",
                                                                                           "n_forward"]
    for var in from_docs.data_vars:
        np.testing.assert_array_equal(from_tiled[var].values, from_docs[var].values, err_msg=var)
    assert from_tiled.fly_z_forward.attrs["units"] == "um"
    writer.close(30)


def test_fly_hops_cost_few_requests_and_read_back(catalog):
    """A fly_hops run is five data keys (position and the two currents grouped): 5 + 3 requests; read back from
    Tiled it gives the map its documents give, and a channel of a group can be asked for by its name."""
    from espt_bluesky.plans.fly import fly_hops

    writer = make_writer(catalog)
    RE = RunEngine({})
    RE.subscribe(writer)
    bench = make_sim_bench("SICM", "patterned", seed=6)
    fs, fd = make_fly_devices(bench, catalog.asset_dir)
    docs = []
    uid = RE(fly_hops(fs, fd, bench.stage, bench.potentiostat, x_range=(40.0, 60.0, 3), y_range=(45.0, 55.0, 2),
                      hop_height=1.0, drop=0.01), lambda n, d: docs.append((n, d)))[0]
    assert writer.flush(30) and writer.runs[uid].state == "written", writer.runs[uid].error
    keys = [d for n, d in docs if n == "descriptor"][0]["data_keys"]
    assert len(keys) == 5 and writer.requests_answered == 2 + len(keys) + 1
    run = catalog.client()[uid]
    from_tiled, from_docs = read_map(run), read_map(docs)
    assert sorted(from_tiled.data_vars) == sorted(from_docs.data_vars)
    for var in [*from_docs.data_vars, "x_measured", "y_measured"]:
        np.testing.assert_array_equal(from_tiled[var].values, from_docs[var].values, err_msg=var)
    assert list(read_map(run, variables=["fly_current"]).data_vars) == ["fly_current"]
    writer.close(30)


def _delay(client, seconds, when):
    """Hold every request of ``client`` for which ``when(request)`` is true ``seconds`` before it is sent."""
    def hook(request):
        if when(request):
            time.sleep(seconds)

    client.context.http_client.event_hooks["request"].append(hook)


def test_a_slow_stop_is_waited_for_while_requests_are_answered(catalog, tmp_path):
    client = catalog.client()  # a client target: every close_stream is sent too (13 requests at the stop)
    stopping = []
    # 0.3 s a request against max_wait 1 s: 0.7 s to spare per answer on a loaded machine (0.5 s with 0.15 s a
    # request failed once at load 10)
    _delay(client, 0.3, lambda request: bool(stopping))
    writer = make_writer(client, backup_directory=tmp_path / "backup", max_wait=1.0)
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: stopping.append(1) if name == "stop" else None)
    RE.subscribe(writer)
    uid, _ = fly(RE, catalog, seed=3)
    # the stop took > 3.9 s in all, over three times max_wait, with an answer every 0.3 s: written, not journaled
    assert writer.runs[uid].state == "written", writer.runs[uid].error
    assert catalog.client()[uid].metadata["stop"]["exit_status"] == "success"
    writer.close(30)


def _fly_to_journal(RE, catalog, writer, caplog, seed, error):
    """Fly with ``writer`` subscribed (after whatever ``RE`` already has): the run must end in its journal, its
    error naming ``error``, and a WARNING naming ``espt replay`` and the run.  Returns (uid, docs, run record)."""
    RE.subscribe(writer)
    with caplog.at_level(logging.WARNING, logger="espt_bluesky.storage.writer"):
        uid, docs = fly(RE, catalog, seed=seed)
    run = writer.runs[uid]
    assert run.state == "backup" and error in run.error, run.error
    assert any("espt replay" in r.getMessage() and uid in r.getMessage() for r in caplog.records)
    return uid, docs, run


def test_a_stop_stuck_past_max_wait_goes_to_the_journal_loudly(catalog, tmp_path, caplog):
    client = catalog.client()
    hold = {}
    # the stop's metadata update of the run (PATCH on the run's own node) gets no answer for 1.5 s
    _delay(client, 1.5, lambda request: request.method == "PATCH" and request.url.path.endswith(hold.get("uid", "?")))
    backup = tmp_path / "backup"
    writer = make_writer(client, backup_directory=backup, max_wait=0.4)
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: hold.setdefault("uid", doc["uid"]) if name == "start" else None)
    uid, docs, run = _fly_to_journal(RE, catalog, writer, caplog, 4, "max_wait=0.4")
    assert writer.flush(30)  # the writer thread finishes its late stop; the journal stays
    back = read_journal(run.journal)
    assert back.closed and not back.damage
    names = [n for n, _ in back.records]
    assert names == [n for n, _ in docs]  # every document of the run, the stop last
    assert names.count("stream_resource") == 5 and names[-1] == "stop"
    report = replay(backup, catalog)
    assert [r.action for r in report.runs] in (["skipped"], ["stop_added"], ["written"]), str(report.runs)
    np.testing.assert_array_equal(read_map(catalog.client()[uid]).fly_height_forward.values,
                                  read_map(docs).fly_height_forward.values)
    writer.close(30)


def test_a_failed_file_write_ends_the_run_at_once_and_keeps_what_was_written(catalog, monkeypatch):
    """The detector's HDF5 write fails (disk full) on the second batch while the stage flies on: ``complete``
    fails with the detector's error naming the file and the cause (not the exposure timeout, 4 line times + 60 s,
    later), the run closes with exit_status "fail", and the pass written before reads back from Tiled."""
    import threading

    from espt_bluesky.devices.fly import controller as fc
    from espt_bluesky.devices.fly import devices as fdev

    monkeypatch.setattr(fc, "STEP_SAMPLES", 100)  # the controller hands out one pass per step
    first_written = threading.Event()
    block = fdev.FlyDataset.block

    def failing_block(self, data, i, j):
        if i > 0:  # every write after the first one
            raise OSError(28, "No space left on device")
        first_written.set()
        return block(self, data, i, j)

    monkeypatch.setattr(fdev.FlyDataset, "block", failing_block)
    bench = make_sim_bench("EC-AFM", "patterned", seed=5)
    fs, fd = make_fly_devices(bench, catalog.asset_dir)
    ctl = fs.controller
    advance = ctl.advance

    def paced_advance():  # the controller waits, after its first pass, until the detector has written it
        if ctl.result.n_done >= 1:
            first_written.wait(30)
        return advance()

    monkeypatch.setattr(ctl, "advance", paced_advance)
    writer = make_writer(catalog)
    RE = RunEngine({})
    RE.subscribe(writer)
    docs = []
    with pytest.raises(fdev.FlyWriteError) as err:
        RE(fly_image(fs, fd, bench.stage, bench.potentiostat, **GRID), lambda n, d: docs.append((n, d)))
    path = fd.file_path
    msg = str(err.value)
    assert str(path) in msg and "No space left on device" in msg and "the 1 passes written before" in msg, msg
    # the plan halted the stage at the end of a step (one pass per step here): it did not fly on to the 4th pass
    # unless it was already there
    assert ctl.result.finished and ctl.result.error is None and 1 <= ctl.result.n_done <= 4
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "fail" and str(path) in stop["reason"]
    import h5py

    with h5py.File(path, "r") as f:  # cut back to the rows written: no half-written pass in the file
        assert {k: f[k].shape[0] for k in f} == {k: 1 for k in ("error", "height", "pass", "position", "time")}
    uid = docs[0][1]["uid"]
    assert writer.flush(30) and writer.runs[uid].state == "written", writer.runs[uid].error
    run = catalog.client()[uid]
    assert run.metadata["stop"]["exit_status"] == "fail"
    np.testing.assert_array_equal(run["primary"]["fly_height"].read(), ctl.result.buffers["height"][:1])
    np.testing.assert_array_equal(read_map(run).fly_height_forward.values, read_map(docs).fly_height_forward.values)
    writer.close(30)


def _one_pass_then_wait(monkeypatch, ctl, event):
    """The controller hands out one pass per step and, after its first pass, waits until ``event`` is set."""
    from espt_bluesky.devices.fly import controller as fc

    monkeypatch.setattr(fc, "STEP_SAMPLES", 100)
    advance = ctl.advance

    def paced_advance():
        if ctl.result.n_done >= 1:
            assert event.wait(30), "the writer never registered the run's data nodes"
        return advance()

    monkeypatch.setattr(ctl, "advance", paced_advance)


def _spy_registrations(monkeypatch, n_keys):
    """Record (key, shape) of every data node registered; returns (records, event set after ``n_keys``)."""
    import threading

    from tiled.client.container import Container

    records, done = [], threading.Event()
    new = Container.new

    def spy_new(self, *args, **kwargs):
        node = new(self, *args, **kwargs)
        sources = kwargs.get("data_sources") or []
        if sources and sources[0].assets:
            records.append((kwargs["key"], tuple(sources[0].structure.shape)))
            if len(records) >= n_keys:
                done.set()
        return node

    monkeypatch.setattr(Container, "new", spy_new)
    return records, done


def test_data_nodes_are_registered_with_their_first_rows_while_the_run_goes_on(catalog, monkeypatch):
    """With ``live_interval=0`` each data node is registered, in one request, with the rows of the first collect
    while the stage flies on (the controller here waits after its first pass until the five nodes exist); the
    rows that follow reach Tiled by data-source updates, and the run reads back whole."""
    bench = make_sim_bench("EC-AFM", "patterned", seed=7)
    fs, fd = make_fly_devices(bench, catalog.asset_dir)
    records, registered = _spy_registrations(monkeypatch, 5)
    _one_pass_then_wait(monkeypatch, fs.controller, registered)
    writer = make_writer(catalog, batch_size=2, live_interval=0.0)
    RE = RunEngine({})
    RE.subscribe(writer)
    docs = []
    uid = RE(fly_image(fs, fd, bench.stage, bench.potentiostat, **GRID), lambda n, d: docs.append((n, d)))[0]
    assert writer.runs[uid].state == "written", writer.runs[uid].error
    keys = [d for n, d in docs if n == "descriptor"][0]["data_keys"]
    # registered with the first pass only, while three passes were still to come
    assert sorted(k for k, _ in records) == sorted(keys)
    assert all(shape[0] == 1 for _, shape in records), records
    # 2 containers, one registration per key, at least one update per key, the stop metadata
    assert writer.requests_answered >= 2 + 2 * len(keys) + 1
    run = catalog.client()[uid]
    assert run["primary"]["fly_position"].shape == (4, 3, 200)
    from_tiled, from_docs = read_map(run), read_map(docs)
    for var in from_docs.data_vars:
        np.testing.assert_array_equal(from_tiled[var].values, from_docs[var].values, err_msg=var)
    writer.close(30)


def test_rows_wait_live_interval_then_go_in_one_request_per_node(catalog, monkeypatch):
    """A run shorter than ``live_interval`` (60 s here) costs one request per data node however many collects
    bring its passes (here two: the controller waits after its first pass until it was collected): each node is
    registered at the stop with all four passes; with the stop metadata and the two containers, K + 3 requests."""
    import threading

    bench = make_sim_bench("EC-AFM", "patterned", seed=10)
    fs, fd = make_fly_devices(bench, catalog.asset_dir)
    records, _ = _spy_registrations(monkeypatch, 5)
    collected = threading.Event()
    _one_pass_then_wait(monkeypatch, fs.controller, collected)
    writer = make_writer(catalog, batch_size=2, live_interval=60.0)
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: collected.set() if name == "stream_datum" else None)
    RE.subscribe(writer)
    docs = []
    uid = RE(fly_image(fs, fd, bench.stage, bench.potentiostat, **GRID), lambda n, d: docs.append((n, d)))[0]
    assert writer.runs[uid].state == "written", writer.runs[uid].error
    keys = [d for n, d in docs if n == "descriptor"][0]["data_keys"]
    assert sum(n == "stream_datum" for n, _ in docs) >= 2 * len(keys)  # the passes came in two collects or more
    assert sorted(k for k, _ in records) == sorted(keys) and all(shape[0] == 4 for _, shape in records), records
    assert writer.requests_answered == 2 + len(keys) + 1
    from_tiled, from_docs = read_map(catalog.client()[uid]), read_map(docs)
    for var in from_docs.data_vars:
        np.testing.assert_array_equal(from_tiled[var].values, from_docs[var].values, err_msg=var)
    writer.close(30)


def test_a_failed_registration_sends_the_run_to_its_journal_loudly(catalog, monkeypatch, tmp_path, caplog):
    """The server refuses a data node's registration: the run is not written half and called done; it goes to its
    journal with an error naming the cause, a warning names ``espt replay``, and replaying it writes it whole."""
    from tiled.client.container import Container

    new = Container.new

    def refusing_new(self, *args, **kwargs):
        sources = kwargs.get("data_sources") or []
        if sources and sources[0].assets:
            raise RuntimeError("507 Insufficient Storage: the server refused the registration")
        return new(self, *args, **kwargs)

    monkeypatch.setattr(Container, "new", refusing_new)
    backup = tmp_path / "backup"
    writer = make_writer(catalog, backup_directory=backup)
    uid, docs, run = _fly_to_journal(RunEngine({}), catalog, writer, caplog, 8, "507 Insufficient Storage")
    writer.close(30)
    monkeypatch.setattr(Container, "new", new)
    report = replay(backup, catalog)
    assert [r.action for r in report.runs if r.uid == uid] in (["written"], ["replaced"]), str(report.runs)
    np.testing.assert_array_equal(read_map(catalog.client()[uid]).fly_height_forward.values,
                                  read_map(docs).fly_height_forward.values)


def test_an_unknown_bluesky_tiled_plugins_release_gets_the_stock_writer(catalog, monkeypatch):
    """The lean writer subclasses a private class of bluesky-tiled-plugins 2.0: on another release the stock
    TiledWriter writes (a registration and an update per key, the two containers closed), and the run reads back."""
    import importlib.metadata as md

    from bluesky_tiled_plugins import TiledWriter

    from espt_bluesky.storage.writer import tiled_writer

    assert type(tiled_writer(catalog.client(), lean=True)) is not TiledWriter
    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "2.1.0" if name == "bluesky-tiled-plugins" else real(name))
    assert type(tiled_writer(catalog.client(), lean=True)) is TiledWriter
    writer, uid, docs, keys = _fly_written(catalog, 9)
    assert writer.requests_answered == 2 + 2 * len(keys) + 1 + 2
    np.testing.assert_array_equal(read_map(catalog.client()[uid]).fly_height_forward.values,
                                  read_map(docs).fly_height_forward.values)
    writer.close(30)


def _two_file_run(directory):
    """Documents of a run whose one data key ``x`` (rows of 3) spans two HDF5 files (two stream resources), two rows
    per StreamDatum; returns (documents, the 6 × 3 rows they hold)."""
    import uuid

    import h5py
    from event_model import compose_run, compose_stream_resource

    from espt_bluesky.devices.waveform_assets import MIMETYPE

    data = np.arange(18.0).reshape(6, 3)
    run = compose_run()
    desc = run.compose_descriptor(name="primary", data_keys={"x": dict(source="sim", dtype="array", shape=[3],
                                                                       dtype_numpy="<f8", external="STREAM:")})
    docs, seq = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)], 1
    for part in (data[:4], data[4:]):
        path = directory / f"{uuid.uuid4()}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("/x", data=part, maxshape=(None, 3), chunks=(2, 3))
        res = compose_stream_resource(mimetype=MIMETYPE, uri=path.as_uri(), data_key="x", start=run.start_doc,
                                      parameters={"dataset": "/x", "chunk_shape": [2, 3]})
        docs.append(("stream_resource", res.stream_resource_doc))
        for i in range(0, len(part), 2):
            docs.append(("stream_datum", res.compose_stream_datum(indices={"start": i, "stop": i + 2},
                                                                  seq_nums={"start": seq, "stop": seq + 2},
                                                                  descriptor=desc.descriptor_doc)))
            seq += 2
    docs.append(("stop", run.compose_stop()))
    return docs, data


@pytest.mark.parametrize("batch_size, min_interval", [(1, 0.0), (2, 0.0), (25, 60.0)])
def test_the_lean_writer_writes_what_the_stock_writer_writes(catalog, batch_size, min_interval):
    """Every row the stock TiledWriter writes, the lean one writes: every row at once (batch_size 1), in batches, or
    all at the stop, including a data key whose rows span two files (the second resource extends the node)."""
    from bluesky_tiled_plugins import TiledWriter

    from espt_bluesky.storage.writer import tiled_writer

    for lean in (False, True):
        docs, data = _two_file_run(catalog.asset_dir)
        tw = tiled_writer(catalog.client(), batch_size, lean=lean, min_interval=min_interval)
        assert (type(tw) is TiledWriter) is not lean
        for name, doc in docs:
            tw(name, doc)
        np.testing.assert_array_equal(catalog.client()[docs[0][1]["uid"]]["primary"]["x"].read(), data)
