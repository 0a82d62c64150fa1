"""Waveforms as HDF5 assets under every plan that records them, read back from Tiled and compared with what the
bench drew.

Each test runs a plan with ``pstat.asset_writer = HDF5WaveformWriter(...)`` (the profile's default), records every
waveform the simulated potentiostat drew (a subscription to its waveform signals, with the tip position at that
moment), then reads the run back through Tiled (``read_map`` for maps, the stream for others) and checks that every
drawn waveform is there, once, in order, at the position where it was drawn.
"""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter, WaveformWriteError
from espt_bluesky.plans import combinatorial_sweep, hopping_scan, operando_imaging, sgtc
from espt_bluesky.storage import LocalCatalog, make_writer, read_map

WF = ("pstat_wf_time", "pstat_wf_potential", "pstat_wf_current", "pstat_wf_collector_current")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("espt_assets"))
    yield cat
    cat.stop()


@pytest.fixture
def RE_tiled(RE, catalog):
    """The validating RunEngine of conftest, writing to Tiled."""
    RE.subscribe(make_writer(catalog, batch_size=4))
    return RE


class Draws:
    """Every waveform the simulated potentiostat drew: ``time``, ``potential``, ``current`` and the tip (x, y)."""

    def __init__(self, bench):
        self.bench = bench
        self.rows: list[dict] = []
        self._pending: dict = {}
        for f in ("time", "potential", "current"):
            getattr(bench.potentiostat.wf, f).subscribe(self._on(f), run=False)

    def _on(self, field):
        def cb(value, **kw):
            self._pending[field] = np.array(value)
            if len(self._pending) == 3:
                x, y, _ = self.bench.model.position
                self.rows.append(dict(self._pending, x=float(x), y=float(y)))
                self._pending = {}
        return cb

    def array(self, field):
        return np.array([r[field] for r in self.rows])


def with_assets(bench, catalog):
    bench.potentiostat.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    return Draws(bench)


def last_run(RE, catalog):
    return catalog.client()[RE.collector.of("start")[-1]["uid"]]


def by_seq(ds, var):
    """Values of ``var`` of a read_map Dataset in event order (grids and point lists alike)."""
    seq = ds.seq_num.values.ravel()
    n_map = ds.seq_num.size
    vals = np.asarray(ds[var].values).reshape(n_map, *ds[var].shape[ds.seq_num.ndim:])
    keep = seq > 0
    order = np.argsort(seq[keep])
    return vals[keep][order]


def positions_by_seq(ds):
    if "x_measured" in ds.coords:
        return by_seq(ds, "x_measured"), by_seq(ds, "y_measured")
    return by_seq(ds, "x"), by_seq(ds, "y")


def assert_map_holds_draws(run, draws, *, positions=True):
    """Every CV of the map run, read through read_map, is the bench's draw of that spot."""
    ds = read_map(run)
    assert ds.attrs["exit_status"] == "success"
    assert ds["pstat_wf_current"].attrs["units"] == "A" and ds["pstat_wf_potential"].attrs["units"] == "V"
    cur = by_seq(ds, "pstat_wf_current")
    assert len(draws.rows) == cur.shape[0] > 0
    np.testing.assert_array_equal(cur, draws.array("current"))
    np.testing.assert_array_equal(by_seq(ds, "pstat_wf_potential"), draws.array("potential"))
    if positions:
        xs, ys = positions_by_seq(ds)
        np.testing.assert_allclose(xs, draws.array("x"), atol=1e-9)
        np.testing.assert_allclose(ys, draws.array("y"), atol=1e-9)
    # they came as registered HDF5 assets, not inside events
    (source,) = run["primary"]["pstat_wf_current"].data_sources()
    assert source.mimetype == "application/x-hdf5"
    return ds


def seccm_bench(seed=1):
    bench = make_sim_bench("SECCM", "patterned", seed=seed, start=(10, 10))
    bench.stage.z.set(bench.stage.z.position + 1.0).wait()
    return bench


def seccm_cv(bench, n=60):
    e0 = bench.model.environment["e_ocp"]
    return dict(technique="CV", e_start=e0, e_vertex1=e0 - 0.3, e_vertex2=e0 + 0.3, scan_rate=1.0, n_samples=n)


# ---------------------------------------------------------------------------------------------- our plans
@pytest.mark.parametrize("mode", ["device", "plan"])
def test_hopping_scan_cv_per_spot(RE_tiled, catalog, mode):
    bench = seccm_bench()
    draws = with_assets(bench, catalog)
    RE_tiled(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(10, 30, 3),
                          y_range=(10, 30, 2), measure=seccm_cv(bench), mode=mode, hopper=bench.hopper))
    run = last_run(RE_tiled, catalog)
    ds = assert_map_holds_draws(run, draws)
    assert ds.sizes["sample"] == 60 and len(draws.rows) == 6
    # the droplet was in contact: a faradaic wave, not the open-circuit zero
    assert np.all(np.abs(draws.array("current")).max(axis=1) > 1e-13)
    if mode == "plan":  # the approach stream (READ, no waveform) interleaves with the CV events
        assert "approach" in run and not any(k in run["approach"] for k in WF)


@pytest.mark.parametrize("mode", ["device", "plan"])
def test_skipped_hop_keeps_its_row(RE_tiled, catalog, mode):
    """A hop over a pit deeper than max_travel is skipped: its CV row is NaN in Tiled, every other row is the
    bench's draw (nothing shifted)."""
    bench = seccm_bench()
    s = bench.model.sample
    xx, yy = np.meshgrid(s.x, s.y)
    s.topography = s.topography - 30.0 * (np.hypot(xx - 20.0, yy - 10.0) <= 1.0)
    bench.model.invalidate()
    draws = with_assets(bench, catalog)
    # an extra detector with its own asset file: the skipped spot's spectrum row is NaN, not the previous spot's
    from espt_bluesky.devices.raman import SimRamanSpectrometer

    raman = SimRamanSpectrometer(name="raman")
    raman.attach(bench.model)
    raman.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    RE_tiled(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(10, 30, 3),
                          y_range=(10, 30, 2), measure=seccm_cv(bench, 40), mode=mode, hopper=bench.hopper,
                          max_travel=8.0, detectors=[raman]))
    run = last_run(RE_tiled, catalog)
    ds = read_map(run, valid_only=False)
    cur = by_seq(ds, "pstat_wf_current")
    valid = by_seq(ds, run.metadata["start"]["valid_key"]).astype(bool)
    assert cur.shape == (6, 40) and valid.sum() == 5 and not valid[1]
    assert np.all(np.isnan(cur[~valid]))
    np.testing.assert_array_equal(cur[valid], draws.array("current"))
    spectra = by_seq(ds, "raman_spectrum")
    assert spectra.shape[0] == 6
    assert np.all(np.isnan(spectra[~valid])) and np.all(np.isfinite(spectra[valid]))
    assert len({spectra[i].tobytes() for i in np.flatnonzero(valid)}) == 5  # five different spots, none repeated


@pytest.mark.parametrize("mode", ["plan", "device"])
def test_combinatorial_sweep(RE_tiled, catalog, mode):
    bench = make_sim_bench("SECCM", "hopg", start=(10, 10))
    RE_tiled(bps.mv(bench.stage.z, bench.stage.z.position + 1.5))
    draws = with_assets(bench, catalog)
    table = RE_tiled(combinatorial_sweep(
        bench.stage, bench.potentiostat, seed=3, x_range=(10, 90, 2), y_range=(10, 90, 2), mode=mode,
        hopper=bench.hopper, parameters={"scan_rate": [0.5, 2.0]}, repeats=2,
        fixed={"e_start": 3.0, "e_vertex1": 0.5, "e_vertex2": 3.0, "n_samples": 50})).plan_result
    ds = assert_map_holds_draws(last_run(RE_tiled, catalog), draws)
    # each spot's CV ran at its own scan rate: the recorded time axis says so
    t_end = by_seq(ds, "pstat_wf_time")[:, -1]
    expected = [2 * 2.5 / r["scan_rate"] for r in table]
    np.testing.assert_allclose(t_end, expected, rtol=1e-9)


@pytest.mark.parametrize("program", ["sweep", "steps"])
def test_sgtc(RE_tiled, catalog, program):
    bench = make_sim_bench("SECM", "composite_cathode")
    draws = with_assets(bench, catalog)
    kw = dict(sweep=dict(technique="LSV", e_start=3.7, e_end=4.8, scan_rate=0.05)) if program == "sweep" else \
        dict(steps=[4.0, 4.7], hold_time=2.0)
    RE_tiled(sgtc(bench.stage, bench.potentiostat, tip_potential=2.5, locations=[(60, 56.7), (35, 35)],
                  height=7.0, plane=0.0, n_samples=80, **kw))
    ds = assert_map_holds_draws(last_run(RE_tiled, catalog), draws)
    assert len(draws.rows) == (2 if program == "sweep" else 4)
    # the tip collects O2 released above ~4.5 V at the particle: the collector current is recorded too
    coll = by_seq(ds, "pstat_wf_collector_current")
    assert coll.shape == (len(draws.rows), 80) and np.ptp(coll[0]) > 0


def test_operando_cycle_stream(RE_tiled, catalog):
    bench = make_sim_bench("SECM", "hopg")
    draws = with_assets(bench, catalog)
    RE_tiled(operando_imaging(bench.stage, bench.potentiostat, x_range=(30, 70, 3), y_range=(30, 70, 3),
                              height=2.5, plane=0.0, n_images=3,
                              cycle=dict(technique="CV", e_start=3.0, e_vertex1=0.6, e_vertex2=3.0,
                                         scan_rate=0.5, n_samples=70)))
    run = last_run(RE_tiled, catalog)
    cyc = run["cycle"].read()
    assert cyc["pstat_wf_current"].shape == (2, 70) and len(draws.rows) == 2
    np.testing.assert_array_equal(cyc["pstat_wf_current"].values, draws.array("current"))
    np.testing.assert_array_equal(cyc["pstat_wf_potential"].values, draws.array("potential"))
    # the plan integrated the waveform it read from the device: cumulative charge of the drawn CVs (trapezoid)
    q_drawn = np.cumsum([np.trapezoid(r["current"], r["time"]) for r in draws.rows])
    img = run["primary"].read()
    for k, q in ((1, q_drawn[0]), (2, q_drawn[1])):
        got = np.unique(img["charge_passed"].values[img["image_index"].values == k])
        assert got.size == 1 and got[0] == pytest.approx(q, rel=1e-9) and q != 0
    assert not any(k in run["primary"] for k in WF)


# ---------------------------------------------------------------------------------------------- stock plans
def test_count_after_a_plan_left_the_cell_open(RE_tiled, catalog):
    """The profile's case: a plan's cleanup opened the cell, then configure_technique + bp.count."""
    bench = seccm_bench()
    bench.model.position[2] = float(bench.model.surface_z(10, 10)) + 0.05  # droplet on the surface
    bench.stage.z.sync()
    draws = with_assets(bench, catalog)
    bench.potentiostat.open_circuit()
    p = seccm_cv(bench, 40)
    bench.potentiostat.configure_technique(p.pop("technique"), **p)
    RE_tiled(bp.count([bench.potentiostat], 3))
    stream = last_run(RE_tiled, catalog)["primary"]
    assert len(draws.rows) == 3 and bench.potentiostat.cell_on.get() == 1  # the CV connected the cell
    np.testing.assert_array_equal(stream["pstat_wf_current"].read(), draws.array("current"))
    np.testing.assert_array_equal(stream["pstat_wf_potential"].read(), draws.array("potential"))
    assert np.abs(draws.array("current")).max() > 1e-13


def test_scan_with_a_waveform_per_point(RE_tiled, catalog):
    bench = make_sim_bench("SECM", "patterned")
    draws = with_assets(bench, catalog)
    bench.potentiostat.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5,
                                           scan_rate=1.0, n_samples=50)
    RE_tiled(bp.scan([bench.potentiostat], bench.stage.x, 20, 80, 4))
    stream = last_run(RE_tiled, catalog)["primary"]
    ds = stream.read()
    np.testing.assert_array_equal(ds["pstat_wf_current"].values, draws.array("current"))
    np.testing.assert_allclose(ds["stage_x"].values, draws.array("x"))
    meta = stream.metadata["data_keys"]["pstat_wf_current"]
    assert meta["units"] == "A" and meta["dims"] == ["waveform_index"] and meta["external"] == "STREAM:"


def test_unstaged_plan_and_a_new_descriptor_mid_run(RE_tiled, catalog):
    """No stage at all; ``bps.configure`` mid-run makes a new descriptor of the same stream; a spurious
    ``describe()`` starts a second file -- Tiled still holds every waveform in order."""
    bench = make_sim_bench("SECM", "patterned")
    draws = with_assets(bench, catalog)
    ps = bench.potentiostat
    ps.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5, scan_rate=1.0,
                           n_samples=30)

    @bpp.run_decorator()
    def plan():
        for i in range(4):
            if i == 2:
                yield from bps.configure(ps, {"params.scan_rate": 0.25})
                ps.describe()
            yield from bps.trigger_and_read([ps])

    RE_tiled(plan())
    assert len([d for d in RE_tiled.collector.of("descriptor") if d["name"] == "primary"]) >= 2
    assert len({d["uri"] for d in RE_tiled.collector.of("stream_resource") if d["data_key"] == "pstat_wf_current"}) == 2
    stream = last_run(RE_tiled, catalog)["primary"]
    np.testing.assert_array_equal(stream["pstat_wf_current"].read(), draws.array("current"))
    t_end = stream["pstat_wf_time"].read()[:, -1]
    np.testing.assert_allclose(t_end, [1.0, 1.0, 4.0, 4.0])
    assert len(ps.asset_writer.paths) == 2


def test_interleaved_streams_of_different_waveforms(RE_tiled, catalog):
    """Two streams of one run alternate CVs (30 samples) and chronoamperograms (20 samples)."""
    bench = make_sim_bench("SECM", "patterned")
    draws = with_assets(bench, catalog)
    ps = bench.potentiostat
    kinds = []

    @bpp.stage_decorator([ps])
    @bpp.run_decorator()
    def plan():
        for i in range(3):
            ps.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5,
                                   scan_rate=1.0, n_samples=30)
            yield from bps.trigger_and_read([ps], name="cv")
            kinds.append("cv")
            ps.configure_technique("CA", channel="tip", e_hold=0.4, duration=0.5, n_samples=20)
            yield from bps.trigger_and_read([ps], name="ca")
            kinds.append("ca")

    RE_tiled(plan())
    run = last_run(RE_tiled, catalog)
    for name, n in (("cv", 30), ("ca", 20)):
        mine = [r["current"] for r, k in zip(draws.rows, kinds) if k == name]
        got = run[name]["pstat_wf_current"].read()
        assert got.shape == (3, n)
        np.testing.assert_array_equal(got, np.array(mine))


# ---------------------------------------------------------------------------------------------- failing loudly
def test_waveform_that_does_not_fit_its_stream_fails_the_run(RE_tiled, catalog):
    """n_samples changed within a stream: the run stops with WaveformWriteError (fail), it does not finish
    without the data; the events before are kept."""
    bench = make_sim_bench("SECM", "patterned")
    with_assets(bench, catalog)
    ps = bench.potentiostat
    ps.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5, scan_rate=1.0,
                           n_samples=30)

    @bpp.stage_decorator([ps])
    @bpp.run_decorator()
    def plan():
        for i in range(4):
            if i == 2:
                ps.configure_technique("CV", channel="tip", n_samples=40)
            yield from bps.trigger_and_read([ps])

    with pytest.raises(WaveformWriteError, match="does not match any stream"):
        RE_tiled(plan())
    run = last_run(RE_tiled, catalog)
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert run["primary"]["pstat_wf_current"].read().shape == (2, 30)


def test_technique_switched_on_within_a_stream_fails(RE_tiled, catalog):
    """A stream first read with READ (no waveform keys) cannot take a CV later: loud failure."""
    bench = make_sim_bench("SECM", "patterned")
    with_assets(bench, catalog)
    ps = bench.potentiostat
    ps.configure_technique("READ", channel="tip")

    @bpp.run_decorator()
    def plan():
        yield from bps.trigger_and_read([ps])
        ps.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5, scan_rate=1.0,
                               n_samples=30)
        yield from bps.trigger_and_read([ps])

    with pytest.raises(WaveformWriteError, match="does not match any stream"):
        RE_tiled(plan())
