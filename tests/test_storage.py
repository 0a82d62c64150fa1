"""Runs land in Tiled and read back as µm maps: hopping with HDF5 waveforms, snake grids, products, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import bluesky.plans as bp

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.storage import LocalCatalog, make_writer, read_map, read_product, write_product

from test_storage_helpers import hopping_plan, position_detector, random_points, seccm_bench


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("espt_data"))
    yield cat
    cat.stop()


@pytest.fixture
def RE_tiled(RE, catalog):
    RE.subscribe(make_writer(catalog))
    return RE


@pytest.fixture(scope="module")
def hopping_run(catalog):
    """400 random spots, a 2000-sample CV each, waveforms as HDF5 assets."""
    from bluesky import RunEngine

    bench = seccm_bench(2000)
    bench.potentiostat.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(make_writer(catalog))
    RE.subscribe(lambda n, d: docs.append((n, d)))
    pts = random_points(400, seed=7)
    record: list = []
    (uid,) = RE(hopping_plan(bench, pts, record=record))
    return dict(uid=uid, bench=bench, points=pts, record=record, docs=docs)


def test_hopping_round_trip(catalog, hopping_run):
    run = catalog.client()[hopping_run["uid"]]
    ds = read_map(run)
    pts, record, bench = hopping_run["points"], hopping_run["record"], hopping_run["bench"]
    assert ds.sizes["spot"] == 400 and ds.sizes["sample"] == 2000
    assert ds["pstat_wf_current"].dims == ("spot", "sample")
    np.testing.assert_allclose(ds.x.values, pts[:, 0], atol=1e-9)
    np.testing.assert_allclose(ds.y.values, pts[:, 1], atol=1e-9)
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(1, 401))
    expected = np.array([w for _, _, w in record])
    np.testing.assert_array_equal(ds["pstat_wf_current"].values, expected)
    assert ds["pstat_wf_current"].attrs["units"] == "A" and ds.x.attrs["units"] == "µm"
    assert np.all(np.abs(expected).max(axis=1) > 0)  # the droplet was in contact at every spot
    # potential program: a CV from e_start through both vertices and back
    e = ds["pstat_wf_potential"].values[0]
    e0 = bench.model.environment["e_ocp"]
    assert e.min() == pytest.approx(e0 - 0.3, abs=1e-3) and e.max() == pytest.approx(e0 + 0.3, abs=1e-3)
    # metadata
    assert ds.attrs["technique"] == "SECCM" and ds.attrs["map_order"] == "hopping"
    assert ds.attrs["probe"] == bench.probe.metadata()
    assert ds.attrs["sample"]["name"] == "patterned"
    assert ds.attrs["reference_electrode"] == bench.model.environment["reference_electrode"]
    assert ds.attrs["uid"] == hopping_run["uid"] and ds.attrs["exit_status"] == "success"


def test_waveforms_are_registered_hdf5_assets(catalog, hopping_run):
    node = catalog.client()[hopping_run["uid"]]["primary"]["pstat_wf_current"]
    (source,) = node.data_sources()
    assert source.mimetype == "application/x-hdf5"
    (asset,) = source.assets
    path = Path(asset.data_uri.replace("file://localhost", "").replace("file://", ""))
    assert path.is_file() and catalog.asset_dir in path.parents
    assert node.shape == (400, 2000)
    # no waveform rides in an event document
    events = [d for n, d in hopping_run["docs"] if n == "event"]
    assert events and all("pstat_wf_current" not in e["data"] for e in events)


def test_read_map_offline_from_documents(catalog, hopping_run):
    offline = read_map(hopping_run["docs"])
    online = read_map(catalog.client()[hopping_run["uid"]], variables=["pstat_wf_current", "pstat_substrate_current"])
    np.testing.assert_array_equal(offline["pstat_wf_current"].values, online["pstat_wf_current"].values)
    np.testing.assert_array_equal(offline.x.values, online.x.values)
    scalars = read_map(catalog.client()[hopping_run["uid"]], waveforms=False)
    assert "pstat_wf_current" not in scalars and scalars.sizes == {"spot": 400}


def test_snake_grid_reads_back_unsnaked(RE_tiled, catalog):
    RE = RE_tiled
    bench = make_sim_bench("SECCM", "patterned", seed=3)
    det = position_detector(bench.stage)
    RE(bp.grid_scan([det, bench.potentiostat], bench.stage.y, 10, 50, 5, bench.stage.x, 20, 80, 7,
                    snake_axes=True))
    uid = RE.collector.of("start")[-1]["uid"]
    ds = read_map(catalog.client()[uid])
    assert ds["spot_value"].dims == ("y", "x") and ds.sizes == {"y": 5, "x": 7}
    np.testing.assert_allclose(ds["spot_value"].values, 1000 * ds.y.values[:, None] + ds.x.values[None, :])
    np.testing.assert_allclose(ds.x.values, np.linspace(20, 80, 7))
    np.testing.assert_allclose(ds.y.values, np.linspace(10, 50, 5))
    # every cell holds the event recorded at that position
    for ev in RE.collector.events():
        ix = int(np.argmin(np.abs(ds.x.values - ev["data"]["stage_x"])))
        iy = int(np.argmin(np.abs(ds.y.values - ev["data"]["stage_y"])))
        assert ds["pstat_substrate_current"].values[iy, ix] == ev["data"]["pstat_substrate_current"]
        assert ds.seq_num.values[iy, ix] == ev["seq_num"]
    np.testing.assert_allclose(ds.x_measured.values, np.broadcast_to(ds.x.values, (5, 7)))
    # the snake: odd rows were scanned right to left
    assert np.all(np.diff(ds.seq_num.values[1]) < 0) and np.all(np.diff(ds.seq_num.values[0]) > 0)
    assert ds.attrs["map_order"] == "snake"


def test_grid_placed_by_recorded_position_not_by_order(RE):
    """A grid visited in a shuffled order still reads back as the right image."""
    bench = make_sim_bench("SECCM", "patterned", seed=3)
    det = position_detector(bench.stage)
    xs, ys = np.meshgrid(np.linspace(0, 30, 4), np.linspace(0, 20, 3))
    perm = np.random.default_rng(1).permutation(12)
    md = {"map": {"x": "stage_x", "y": "stage_y", "order": "raster"}, "shape": [3, 4],
          "extents": [[0, 20], [0, 30]], "snaking": [False, False]}
    RE(bp.list_scan([det], bench.stage.x, list(xs.ravel()[perm]),
                    bench.stage.y, list(ys.ravel()[perm]), md=md))
    ds = read_map(RE.collector.docs)
    for ev in RE.collector.events():
        ix = int(round(ev["data"]["stage_x"] / 10))
        iy = int(round(ev["data"]["stage_y"] / 10))
        assert ds["spot_value"].values[iy, ix] == ev["data"]["spot_value"]
    np.testing.assert_allclose(ds["spot_value"].values, 1000 * ys + xs)
    np.testing.assert_allclose(ds.x_measured.values, xs)
    np.testing.assert_allclose(ds.y_measured.values, ys)


def test_random_points_kept_as_point_list(RE):
    bench = make_sim_bench("SECCM", "patterned", seed=3)
    pts = random_points(9, seed=3)
    md = {"map": {"x": "stage_x", "y": "stage_y", "order": "points"}}
    RE(bp.list_scan([position_detector(bench.stage)], bench.stage.x, list(pts[:, 0]), bench.stage.y, list(pts[:, 1]), md=md))
    ds = read_map(RE.collector.docs)
    assert ds["spot_value"].dims == ("spot",)
    np.testing.assert_allclose(np.c_[ds.x, ds.y], pts)
    np.testing.assert_allclose(ds["spot_value"].values, 1000 * pts[:, 1] + pts[:, 0])


def test_bad_input_names_what_is_missing(RE):
    bench = make_sim_bench("SECCM", "patterned", seed=3)
    RE(bp.count([bench.potentiostat], 2))
    with pytest.raises(InvalidArgument, match="map"):
        read_map(RE.collector.docs)
    RE.collector.docs.clear()
    RE(bp.count([bench.potentiostat], 2, md={"map": {"x": "stage_q", "y": "stage_y", "order": "hopping"}}))
    with pytest.raises(InvalidArgument, match="stage_q"):
        read_map(RE.collector.docs)
    RE.collector.docs.clear()
    RE(bp.count([bench.potentiostat, bench.stage.x, bench.stage.y], 1,
                md={"map": {"x": "stage_x", "y": "stage_y", "order": "spiral"}}))
    with pytest.raises(InvalidArgument, match="spiral"):
        read_map(RE.collector.docs)
    with pytest.raises(InvalidArgument, match="'y'"):
        read_map([("start", {"uid": "u", "time": 0, "map": {"x": "stage_x"}})])


def test_write_product_next_to_source(catalog, hopping_run):
    run = catalog.client()[hopping_run["uid"]]
    ds = read_map(run, waveforms=False)
    q = (ds["pstat_substrate_current"] * 2).rename("charge_ratio")
    node = write_product(run, "ratio_map", q.to_dataset(), {"method": "test", "units": "1"})
    assert node.metadata["source_uid"] == hopping_run["uid"] and node.metadata["method"] == "test"
    back = read_product(run, "ratio_map")
    np.testing.assert_array_equal(back["charge_ratio"].values, q.values)
    np.testing.assert_array_equal(back.x.values, ds.x.values)
    write_product(run, "peaks", pd.DataFrame({"spot": [1, 2], "e_peak": [0.1, 0.2]}), {"units": "V"})
    pd.testing.assert_frame_equal(read_product(run, "peaks"), pd.DataFrame({"spot": [1, 2], "e_peak": [0.1, 0.2]}))
    write_product(run, "raw", np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(read_product(run, "raw"), np.arange(6.0).reshape(2, 3))
    with pytest.raises(InvalidArgument, match="already has a product"):
        write_product(run, "raw", np.zeros(2))
    write_product(run, "raw", np.zeros(2), overwrite=True)
    np.testing.assert_array_equal(read_product(run, "raw"), np.zeros(2))
    with pytest.raises(InvalidArgument, match="name"):
        write_product(run, "bad name/", np.zeros(2))
    # the run itself is untouched and still a run
    assert catalog.client()[hopping_run["uid"]].metadata["stop"]["exit_status"] == "success"


def test_run_visible_while_running(catalog):
    """With the live batch size, rows reach Tiled before the run ends."""
    from bluesky import RunEngine

    bench = seccm_bench(50)
    bench.potentiostat.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    RE = RunEngine({})
    writer = make_writer(catalog, batch_size=5)
    RE.subscribe(writer)
    seen = {}
    uid_box = {}
    RE.subscribe(lambda n, d: uid_box.setdefault("uid", d["uid"]) if n == "start" else None)

    def peek(i):
        if i == 30:
            assert writer.flush(60)  # the writer thread has sent what it was given (full batches only)
            run = catalog.client()[uid_box["uid"]]
            seen["stop"] = run.metadata.get("stop")
            seen["n"] = read_map(run, waveforms=False).sizes["spot"]

    RE(hopping_plan(bench, random_points(40, seed=2), on_spot=peek))
    assert seen["stop"] is None and 20 <= seen["n"] <= 30


def test_session_from_config(tmp_path, catalog, monkeypatch):
    from espt_bluesky.session import build_session

    cfg = tmp_path / "espt.toml"
    cfg.write_text(f'[bench]\ntechnique = "SECCM"\nseed = 2\n[storage]\ndata_dir = "{catalog.data_dir.root}"\n'
                   f'tiled_uri = "{catalog.uri}"\nbatch_size = 5\n')
    monkeypatch.setenv("ESPT_CONFIG", str(cfg))
    monkeypatch.setenv("ESPT_BENCH", "SECCM:hopg:4")  # the environment overrides the file
    s = build_session()
    try:
        assert s.bench.technique == "SECCM" and s.bench.model.sample.name == "hopg" and s.pstat is s.bench.potentiostat
        assert isinstance(s.pstat.asset_writer, HDF5WaveformWriter)
        assert s.pstat.asset_writer.directory == catalog.asset_dir
        (uid,) = s.RE(bp.count([s.pstat], 2)).run_start_uids
        assert uid in catalog.client() and s.writer.batch_size == 5
        assert {"RE", "stage", "pstat", "probe", "catalog"} <= set(s.namespace())
    finally:
        s.close()


def test_replay_of_a_backup_without_stop(catalog, tmp_path):
    """The acquisition process died: an old-style JSON-lines backup without a stop, its last line cut.

    Replay writes the five events, records the end as unknown (no stop is invented), reports the cut line, and
    writes nothing the second time."""
    import json
    import time

    from event_model import compose_run

    from espt_bluesky.storage import replay

    b = compose_run(metadata={"map": {"x": "x", "y": "y", "order": "points"}})
    desc = b.compose_descriptor(name="primary", data_keys={
        k: {"source": "test", "dtype": "number", "shape": [], "units": "um"} for k in ("x", "y")})
    docs = [("start", b.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", desc.compose_event(data={"x": float(i), "y": 2.0 * i}, timestamps={"x": time.time(),
              "y": time.time()}, seq_num=i + 1)) for i in range(5)]
    with open(tmp_path / "dead.jsonl", "w") as fh:
        for name, doc in docs:
            fh.write(json.dumps({"name": name, "doc": doc}) + "\n")
        fh.write('{"name": "event", "doc": {"trunc')  # the process died mid-line
    uid = b.start_doc["uid"]
    first = replay(tmp_path, catalog)
    assert first.written == [uid] and not first.failed
    (entry,) = first.runs
    assert entry.events == {"primary": 5} and entry.exit_status == "unknown"
    assert entry.damage == ["truncated: line 8"]
    run = catalog.client()[uid]
    assert run.metadata.get("stop") is None and run.metadata["espt_replay"]["end"] == "unknown"
    ds = read_map(run)
    np.testing.assert_allclose(ds.y.values, 2 * ds.x.values)
    assert ds.sizes["spot"] == 5 and ds.attrs["exit_status"] is None
    second = replay(tmp_path, catalog)
    assert second.skipped == [uid] and second.runs[0].action == "kept" and not second.written


def test_read_map_of_the_espt_hopping_plan(RE):
    """The conventions the plans emit read back: a random-order grid as an image, explicit points as a list."""
    from espt_bluesky.plans import hopping_scan

    bench = make_sim_bench("SECCM", "patterned", seed=1)
    cv = {"technique": "CV", "e_start": 0.0, "e_vertex1": -0.3, "e_vertex2": 0.3, "scan_rate": 0.5, "n_samples": 100}
    RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", order="random", seed=1, mode="plan",
                    x_range=(10, 40, 4), y_range=(10, 30, 3), measure=cv))
    ds = read_map(RE.collector.docs)
    assert ds.sizes == {"y": 3, "x": 4, "sample": 100}
    np.testing.assert_allclose(ds.x_measured.values, np.broadcast_to([10, 20, 30, 40], (3, 4)))
    np.testing.assert_allclose(ds.y_measured.values, np.broadcast_to([[10], [20], [30]], (3, 4)))
    assert sorted(ds.seq_num.values.ravel()) == list(range(1, 13))
    RE.collector.docs.clear()
    pts = [(12.0, 15.0), (33.0, 21.0), (25.0, 40.0)]
    RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", order="points", points=pts, mode="plan",
                    measure=cv))
    ds = read_map(RE.collector.docs)
    assert ds["pstat_wf_current"].dims == ("spot", "sample")
    np.testing.assert_allclose(np.c_[ds.x, ds.y], pts, atol=1e-6)
    assert ds.attrs["technique"] == "SECCM"
