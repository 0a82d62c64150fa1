"""The bench over EPICS: caproto IOCs as real processes on loopback, driven through pyepics by the same plans.

Every IOC of this module gets its own ``EPICS_CA_SERVER_PORT`` (picked free by the OS); the client's
``EPICS_CA_ADDR_LIST`` lists them all and is set at import, before this process creates any PV (libca reads it
when the first channel is created).  Runs are written to a throwaway Tiled server and read back from it.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from espt_bluesky.ioc.launch import IOCProcess, ca_environment, configure_client_env, free_ports

# bench SECM, bench SICM, split stage, split potentiostat, spare, real-time split stage and potentiostat;
# then the repeater port
PORTS = free_ports(8)
ENV = ca_environment(PORTS[:7], PORTS[7])
configure_client_env(ENV)

import bluesky.plan_stubs as bps  # noqa: E402

from espt_bluesky.devices import make_sim_bench  # noqa: E402
from espt_bluesky.devices.epics import PVConnectionError, make_epics_bench  # noqa: E402
from espt_bluesky.errors import TipCrash  # noqa: E402

SEED = 2
NOISE = 0.005  # the bench's relative current noise (1 sigma), default BenchOptions.noise
FLOOR = 2e-14  # A, its additive noise floor (1 sigma), default BenchOptions.current_noise_floor


def within_noise(a, b, scale: float = 0.0):
    """|a - b| within 4 sigma of the difference of two independent noisy readings of the same current.

    The bench's noise is ``NOISE`` times the current (or times ``scale``, A, for additive amplifier noise) plus
    ``FLOOR``.
    """
    sigma = np.sqrt(2.0) * (NOISE * (np.abs(b) + scale) + FLOOR)
    return np.all(np.abs(np.asarray(a) - np.asarray(b)) <= 4.0 * sigma)



def _ioc(role, prefix, port, tmp_path_factory, **kw):
    log = tmp_path_factory.mktemp("ioc") / f"{prefix.strip(':').replace(':', '_')}.log"
    # the timeout only bounds a hang: a bench IOC took > 30 s to start at a load average of 20
    return IOCProcess(role, prefix, port, ENV, log_path=str(log), **kw).start(timeout=120)


@pytest.fixture(scope="module")
def secm_ioc(tmp_path_factory):
    p = _ioc("bench", "E1:", PORTS[0], tmp_path_factory, technique="SECM", sample="patterned", seed=SEED)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def sicm_ioc(tmp_path_factory):
    p = _ioc("bench", "E2:", PORTS[1], tmp_path_factory, technique="SICM", sample="composite_cathode", seed=SEED)
    yield p
    p.stop()


@pytest.fixture
def split_iocs(tmp_path_factory):
    """Stage and potentiostat in two processes; the potentiostat reads the tip position from the stage IOC."""
    stage = _ioc("stage", "E3:stage:", PORTS[2], tmp_path_factory, technique="SECM", seed=SEED)
    pstat = _ioc("potentiostat", "E3:pstat:", PORTS[3], tmp_path_factory, technique="SECM", seed=SEED,
                 stage_prefix="E3:stage:")
    yield stage, pstat
    pstat.stop()
    stage.stop()


@pytest.fixture
def realtime_split_iocs(tmp_path_factory):
    """Split IOCs whose potentiostat runs in instrument time (time_scale=1): a 6 s CA takes 6 s."""
    stage = _ioc("stage", "E5:stage:", PORTS[5], tmp_path_factory, technique="SECM", seed=SEED)
    pstat = _ioc("potentiostat", "E5:pstat:", PORTS[6], tmp_path_factory, technique="SECM", seed=SEED,
                 stage_prefix="E5:stage:", time_scale=1.0)
    yield stage, pstat
    pstat.stop()
    stage.stop()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from espt_bluesky.storage import LocalCatalog

    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("tiled"))
    yield cat
    cat.stop()


@pytest.fixture
def RE_tiled(RE, catalog):
    """The validating RunEngine of conftest, writing to Tiled (one event per write: nothing waits in a buffer)."""
    from espt_bluesky.storage import make_writer

    RE.subscribe(make_writer(catalog, batch_size=1))
    RE.catalog = catalog.client()
    return RE


@pytest.fixture
def RE_sim():
    """A second validating RunEngine, not writing to Tiled, for the in-process bench an EPICS run is compared with
    (only the EPICS run is read back from Tiled; writing the in-process one too cost ~30 s of one-event writes)."""
    from bluesky import RunEngine

    from conftest import DocumentCollector

    engine = RunEngine({}, call_returns_result=True)
    engine.collector = DocumentCollector()
    engine.subscribe(engine.collector)
    return engine


def _primary(RE, uid):
    return RE.catalog[uid]["primary"].read()


def _run_uids(RE):
    return [d["uid"] for d in RE.collector.of("start")]


# ------------------------------------------------------------------------------- same physics, no network
@pytest.mark.parametrize("technique,sample", [("SECM", "patterned"), ("SICM", "composite_cathode"),
                                              ("SECCM", "hopg")])
def test_ioc_reading_is_the_simulated_potentiostat_reading(technique, sample):
    """The IOC's steady-state reading (READ) is the simulated potentiostat's, noise draw for noise draw."""
    from espt_bluesky.ioc.bench_ioc import PotentiostatGroup, SharedModelPosition, build_model, pstat_defaults

    sim = make_sim_bench(technique, sample, seed=SEED)
    model = build_model(technique, sample, SEED)
    group = PotentiostatGroup("X:", model=model, position=SharedModelPosition())
    d = pstat_defaults(model)
    pstat = sim.potentiostat
    assert (d["e_tip"], d["e_sub"]) == (pstat.tip.potential.get(), pstat.substrate.potential.get())
    assert d["compliance"] == tuple(sim.potentiostat.compliance)
    # the group's PVs hold the defaults once the IOC starts; here set them by hand (no event loop)
    group.tip_potential._data["value"] = d["e_tip"]
    group.sub_potential._data["value"] = d["e_sub"]
    for z in (sim.model.position[2], sim.model.position[2] + 0.5):
        sim.model.position[2] = model.position[2] = z
        for _ in range(3):
            sim.potentiostat.trigger().wait(1)
            i_tip, i_sub = group._read_scalar()
            assert i_tip == sim.potentiostat.tip.current.get()
            assert i_sub == sim.potentiostat.substrate.current.get()


# ------------------------------------------------------------------------------------------ connection
def test_missing_ioc_names_the_pv(secm_ioc):
    with pytest.raises(PVConnectionError, match=r"NOPE:stage:x"):
        make_epics_bench("NOPE:", connection_timeout=0.5)


def test_epics_bench_mirrors_the_simulated_one(secm_ioc):
    eb = make_epics_bench("E1:")
    sb = make_sim_bench("SECM", "patterned", seed=SEED)
    assert eb.technique == "SECM" and eb.metadata() == {**sb.metadata(), "probe": eb.probe.metadata()}
    assert eb.probe.metadata() == sb.probe.metadata()
    for dev_e, dev_s in ((eb.potentiostat, sb.potentiostat), (eb.stage, sb.stage)):
        assert set(dev_s.component_names) <= set(dev_e.component_names)
    for sub in ("tip", "substrate", "params", "wf"):
        assert set(getattr(sb.potentiostat, sub).component_names) <= set(getattr(eb.potentiostat, sub).component_names)
    assert eb.potentiostat.compliance == pytest.approx(sb.potentiostat.compliance)
    assert eb.stage.z.limits == pytest.approx(sb.stage.z.limits)
    assert [eb.stage.x.name, eb.stage.y.name, eb.stage.z.name] == ["stage_x", "stage_y", "stage_z"]
    assert set(eb.stage.x.read()) >= {"stage_x"}


# ------------------------------------------------------------------------------------ same plans, same map
def _approach_and_image(RE, bench):
    from espt_bluesky.plans.approach import approach
    from espt_bluesky.plans.imaging import constant_height_image

    RE(bps.mv(bench.stage.z, 60.0))
    z_s = RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="positive",
                      working_distance=1.0, context=bench.metadata())).plan_result
    n0 = len(RE.collector.of("event"))
    RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(35, 65, 5), y_range=(35, 65, 5),
                             height=5.0, plane=z_s, context=bench.metadata()))
    ev = RE.collector.of("event")[n0:]
    img = np.array([e["data"]["pstat_tip_current"] for e in ev]).reshape(5, 5)
    return z_s, img, _run_uids(RE)[-1]


def test_approach_and_constant_height_image_match_in_process(RE_tiled, RE_sim, secm_ioc):
    RE = RE_tiled
    sim = make_sim_bench("SECM", "patterned", seed=SEED)
    z_sim, img_sim, _ = _approach_and_image(RE_sim, sim)
    eb = make_epics_bench("E1:")
    z_epi, img_epi, uid = _approach_and_image(RE, eb)
    # same sample, same physics: the surface found agrees within a small fraction of a tip radius ...
    assert abs(z_epi - z_sim) < 0.05 * sim.model.probe.radius
    # ... and the image agrees within the current noise (3 sigma, relative)
    assert within_noise(img_epi, img_sim, scale=sim.model.i_tip_inf()), (img_epi / img_sim)
    # the image has contrast (Au discs vs SiO2), so the comparison is not trivially of a flat map
    assert img_sim.max() / img_sim.min() > 1.5
    # the EPICS run landed in Tiled: same values, positions in µm
    ds = _primary(RE, uid)
    assert np.allclose(ds["pstat_tip_current"].values, img_epi.ravel())
    assert set(ds["stage_x"].values) == {35.0, 42.5, 50.0, 57.5, 65.0}
    start = RE.catalog[uid].metadata["start"]
    assert start["plan_name"] == "constant_height_image" and start["sample"]["name"] == "patterned"


def test_hopping_scan_matches_in_process(RE_tiled, RE_sim, sicm_ioc):
    from espt_bluesky.plans.hopping import hopping_scan

    RE = RE_tiled
    topo = {}
    for kind, bench, RE in (("sim", make_sim_bench("SICM", "composite_cathode", seed=SEED), RE_sim),
                            ("epics", make_epics_bench("E2:"), RE_tiled)):
        RE(bps.mv(bench.stage.z, 3.0))
        topo[kind] = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(20, 24, 3),
                                     y_range=(20, 22, 2), hop_height=2.0, mode="plan",
                                     context=bench.metadata())).plan_result
    uid = _run_uids(RE)[-1]
    # topography from the ion-current setpoint: equal within a fraction of the pipette radius (0.05 µm)
    assert np.all(np.abs(topo["epics"] - topo["sim"]) < 0.02), (topo["epics"], topo["sim"])
    ds = _primary(RE, uid)
    assert np.allclose(ds["surface_z"].values, topo["epics"])
    assert RE.catalog[uid].metadata["stop"]["exit_status"] == "success"


def test_waveforms_over_epics_land_in_tiled(RE_tiled, secm_ioc):
    import bluesky.plans as bp

    RE = RE_tiled
    cv = dict(e_start=0.0, e_vertex1=0.0, e_vertex2=0.5, scan_rate=1.0, n_samples=150)
    waves = {}
    for kind, bench in (("sim", make_sim_bench("SECM", "patterned", seed=SEED)), ("epics", make_epics_bench("E1:"))):
        # the same place on both benches; an earlier plan's cleanup may have opened the cell
        RE(bps.mv(bench.stage.z, 30.0, bench.stage.x, 50.0, bench.stage.y, 50.0, bench.potentiostat.cell_on, 1))
        bench.potentiostat.configure_technique("CV", channel="tip", **cv)
        RE(bp.count([bench.potentiostat], 2))
        waves[kind] = np.array([e["data"]["pstat_wf_current"] for e in RE.collector.of("event")[-2:]])
        bench.potentiostat.configure_technique("READ", channel="tip")
    uid = _run_uids(RE)[-1]
    desc = RE.collector.of("descriptor")[-1]["data_keys"]["pstat_wf_current"]
    assert desc["shape"] == [150] and desc["dims"] == ["waveform_index"] and desc["units"] == "A"
    assert desc["source"] == "PV:E1:pstat:Wf:Current"
    assert waves["epics"].shape == (2, 150)
    assert np.abs(waves["sim"]).max() > 1e-10  # a real wave (limiting current ~ nA), not the noise floor
    assert within_noise(waves["epics"], waves["sim"])
    ds = _primary(RE, uid)
    sim_ds = _primary(RE, _run_uids(RE)[-2])
    # read back like the in-process bench's run (Tiled 0.2.20 names the sample axis itself on read)
    assert ds["pstat_wf_current"].dims == sim_ds["pstat_wf_current"].dims
    assert ds["pstat_wf_current"].shape == (2, 150) and ds["pstat_wf_current"].dtype == np.float64
    assert np.allclose(ds["pstat_wf_current"].values, waves["epics"])


def test_epics_waveforms_as_hdf5_assets(RE_tiled, secm_ioc, catalog):
    """The EPICS potentiostat with an asset writer: every CV the IOC drew lands in Tiled as an HDF5 asset, also
    when an earlier plan left the cell open (the CV connects it)."""
    import bluesky.plans as bp

    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter

    RE = RE_tiled
    bench = make_epics_bench("E1:")
    ps = bench.potentiostat
    ps.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    RE(bps.mv(bench.stage.z, 30.0, bench.stage.x, 50.0, bench.stage.y, 50.0))
    ps.open_circuit()
    ps.configure_technique("CV", channel="tip", e_start=0.0, e_vertex1=0.0, e_vertex2=0.5, scan_rate=1.0,
                           n_samples=120)
    drawn = []

    def shot(dets):
        yield from bps.trigger_and_read(dets)
        drawn.append(np.asarray(ps.wf.current.get(use_monitor=False), dtype=float)[:120])  # the IOC's record

    try:
        RE(bp.count([ps], 3, per_shot=shot))
    finally:
        ps.configure_technique("READ", channel="tip")
    uid = _run_uids(RE)[-1]
    node = RE.catalog[uid]["primary"]["pstat_wf_current"]
    assert node.data_sources()[0].mimetype == "application/x-hdf5"
    np.testing.assert_array_equal(node.read(), np.array(drawn))
    assert np.abs(np.array(drawn)).max() > 1e-10 and int(ps.cell_on.get()) == 1
    assert not any("pstat_wf_current" in e["data"] for e in RE.collector.of("event")[-3:])


# ------------------------------------------------------------------------------------------- failures
def test_tip_crash_over_epics_is_a_tipcrash_and_the_tip_retracts(RE_tiled, secm_ioc):
    from espt_bluesky.plans.imaging import constant_height_image

    RE = RE_tiled
    eb = make_epics_bench("E1:")
    RE(bps.mv(eb.stage.z, 20.0, eb.stage.x, 50.0, eb.stage.y, 50.0))
    # a plane 10 µm below the real surface: the first move down to "5 µm above it" hits the sample
    with pytest.raises(TipCrash, match="tip crash"):
        RE(constant_height_image(eb.stage, eb.potentiostat, x_range=(45, 55, 2), y_range=(45, 55, 2),
                                 height=5.0, plane=-10.0, retract=20.0))
    stop = RE.collector.of("stop")[-1]
    assert stop["exit_status"] == "fail" and "tip crash" in stop["reason"]
    # the motor record reported the crash as an alarm; the cleanup's retract moved it up and cleared it
    assert int(eb.stage.crash_count.get()) >= 1
    assert eb.stage.z.position > 15.0
    assert eb.stage.z.user_readback.alarm_severity == 0


def test_kill_potentiostat_ioc_mid_run(RE_tiled, split_iocs):
    from espt_bluesky.plans.imaging import constant_height_image

    RE = RE_tiled
    stage_ioc, pstat_ioc = split_iocs
    eb = make_epics_bench(stage_prefix="E3:stage:", pstat_prefix="E3:pstat:")
    RE(bps.mv(eb.stage.z, 20.0))
    kill_after = 6
    at_kill = {}

    def killer(name, doc):
        if name == "event" and "pstat_tip_current" in doc["data"] and doc["seq_num"] == kill_after:
            at_kill["z"] = doc["data"]["stage_z"]
            pstat_ioc.proc.send_signal(signal.SIGKILL)
            pstat_ioc.proc.wait(10)

    RE.subscribe(killer)
    with pytest.raises(PVConnectionError) as info:
        RE(constant_height_image(eb.stage, eb.potentiostat, x_range=(35, 65, 4), y_range=(35, 65, 4),
                                 height=6.0, plane=0.1, retract=15.0))
    # a clear error naming the lost PV of the potentiostat IOC
    assert "E3:pstat:" in str(info.value), str(info.value)
    # the stage IOC is alive and was told to retract: z ends above where it was when the IOC died
    assert stage_ioc.alive and not pstat_ioc.alive
    assert eb.stage.z.connected
    assert eb.stage.z.position >= at_kill["z"] + 15.0 - 1e-6
    # the run is closed as failed, and the events recorded before the loss are kept (also in Tiled)
    uid = _run_uids(RE)[-1]
    stop = RE.collector.of("stop")[-1]
    assert stop["run_start"] == uid and stop["exit_status"] == "fail" and "E3:pstat:" in stop["reason"]
    n_events = stop["num_events"]["primary"]
    assert n_events >= kill_after
    ds = _primary(RE, uid)
    assert ds["pstat_tip_current"].shape == (n_events,)
    assert np.all(np.isfinite(ds["pstat_tip_current"].values))


def test_real_time_ioc_stop_and_abort(tmp_path_factory):
    """With a time scale, a STOP leaves the tip part-way and an Abort ends the acquisition as ABORTED."""
    import time

    from espt_bluesky.devices.epics import PotentiostatError

    ioc = _ioc("bench", "E4:", PORTS[4], tmp_path_factory, technique="SECM", seed=SEED, time_scale=1.0)
    try:
        eb = make_epics_bench("E4:")
        z = eb.stage.z
        z0 = z.position
        st = z.set(z0 + 40.0)  # 2 s at 20 µm/s in real time; stopped after ~0.1 s
        time.sleep(0.1)
        z.stop()
        st.wait(10)
        assert z0 < z.position < z0 + 40.0
        p = eb.potentiostat
        p.cell_on.put(1, wait=True)  # the IOC starts with the cell off
        # 4 s in real time; aborted after ~0.1 s
        p.configure_technique("CA", channel="tip", e_hold=0.6, duration=4.0, n_samples=50)
        st = p.trigger()
        time.sleep(0.1)
        p.stop()
        with pytest.raises(PotentiostatError, match="ABORTED"):
            st.wait(10)
    finally:
        ioc.stop()


def test_kill_potentiostat_ioc_during_a_long_acquisition(RE_tiled, realtime_split_iocs):
    """The IOC dies as the second step's acquisition starts: the run ends at once (by the lost connection, not by
    the acquisition's end or the trigger timeout) with PVConnectionError naming the PV; the tip is retracted, the
    run closed as failed, the first step's event kept."""
    from espt_bluesky.devices.epics import PVTimeoutError
    from espt_bluesky.plans.sgtc import sgtc

    RE = RE_tiled
    stage_ioc, pstat_ioc = realtime_split_iocs
    eb = make_epics_bench(stage_prefix="E5:stage:", pstat_prefix="E5:pstat:")
    hold = 2.0  # s per potential step, in instrument time
    order = []  # what happened, in order: "kill", then the RunEngine's messages

    def kill_when_second_step_starts(*, value, **kw):
        # Busy = 1 of the second acquisition (an event of the first step exists): the IOC dies mid-acquisition
        if int(value) == 1 and "kill" not in order and RE.collector.of("event"):
            pstat_ioc.proc.send_signal(signal.SIGKILL)
            order.append("kill")

    def record(msg):
        if order:
            order.append((msg.command, getattr(msg.obj, "name", None)))

    cid = eb.potentiostat.busy.subscribe(kill_when_second_step_starts, run=False)
    RE.msg_hook = record
    e_tip = float(eb.potentiostat.tip.potential.get())
    try:
        with pytest.raises(PVConnectionError) as info:
            RE(sgtc(eb.stage, eb.potentiostat, tip_potential=e_tip, steps=[0.0, 0.1], hold_time=hold,
                    n_samples=50, locations=[(50.0, 50.0)], height=10.0, plane=0.0, retract=15.0))
    finally:
        RE.msg_hook = None
        eb.potentiostat.busy.unsubscribe(cid)
    stop = RE.collector.of("stop")[-1]
    # the killed acquisition failed by the lost connection while it ran: not by its trigger timeout (that is a
    # PVTimeoutError, "did not increment within"), and nothing was read or saved after the kill (the step's other
    # triggers may follow it: they are sent in the same bundle as the potentiostat's)
    assert order and order[0] == "kill", order
    assert not isinstance(info.value, PVTimeoutError)
    assert "lost the connection to E5:pstat:AcqCount during an acquisition" in str(info.value), str(info.value)
    assert not [m for m in order[1:] if m[0] in ("read", "save") or m == ("trigger", "pstat")], order
    assert not pstat_ioc.alive and stage_ioc.alive
    # cleanup: tip retracted from 10 um above the plane
    assert eb.stage.z.position >= 10.0 + 15.0 - 1e-6
    assert stop["exit_status"] == "fail" and "E5:pstat:AcqCount" in stop["reason"]
    assert stop["num_events"]["primary"] == 1
    assert _primary(RE, _run_uids(RE)[-1])["pstat_wf_current"].shape == (1, 50)

    # between acquisitions (the IOC is still gone): our error, naming the PV, not ophyd's connection timeout
    _check_dead_potentiostat(eb.potentiostat, "E5:pstat:")
    # the IOC restarts with the cell off, whatever it was before (it was on for the run)
    from caproto.sync.client import read

    pstat_ioc.start()
    assert read("E5:pstat:CellOn", timeout=10).data[0] == 0


def _check_dead_potentiostat(p, prefix):
    """Every access to a potentiostat whose IOC is gone is our PVConnectionError naming a PV, at once."""
    for what in (p.trigger, p.read, p.describe,
                 lambda: p.configure_technique("CA", channel="tip", e_hold=0.1, duration=1.0, n_samples=20),
                 lambda: p.tip.potential.set(0.2).wait(5)):
        with pytest.raises(PVConnectionError, match=prefix):
            what()
    p.open_circuit()  # a cleanup step never raises
