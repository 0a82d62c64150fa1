"""Hop fault policy: a map with injected faults (a spike higher than the hop height, a pit deeper than the travel)
finishes, marks the faulty hops invalid with their reason and keeps every other hop's data intact.

The spike (3 µm, hop height 1 µm) is hit on the lateral move towards it; the hop after it moves across the spike
again from the retracted height (1 µm above the crash point, still below its top) and may crash too: a controller
cannot see an obstacle before touching it.
"""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import FaultLimitReached, TipCrash
from espt_bluesky.plans import hopping_scan
from espt_bluesky.storage import read_map

SPIKE, PIT = (32.0, 31.0), (33.0, 33.0)
XR, YR = (30.0, 34.0, 5), (30.0, 34.0, 5)


def _bench_with_faults(seed=3):
    """SICM over SiO2 of the patterned sample, with a 3 µm spike and a 10 µm deep pit on two grid points."""
    bench = make_sim_bench("SICM", "patterned", seed=seed, start=(30.0, 30.0))
    s = bench.model.sample
    xx, yy = np.meshgrid(s.x, s.y)
    s.topography = s.topography + 3.0 * (np.hypot(xx - SPIKE[0], yy - SPIKE[1]) <= 0.4)
    s.topography = s.topography - 10.0 * (np.hypot(xx - PIT[0], yy - PIT[1]) <= 0.6)
    bench.model.invalidate()
    return bench


def _events(RE, stream="primary"):
    return RE.collector.events(stream)


@pytest.mark.parametrize("mode", ["device", "plan"])
def test_faulty_hops_are_skipped_and_marked_invalid(RE, mode):
    bench = _bench_with_faults()
    model = bench.model
    RE(bps.mv(bench.stage.z, float(model.surface_z(30, 30)) + 1.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=XR, y_range=YR,
                          hop_height=1.0, max_travel=4.0, drop=0.02, mode=mode, hopper=bench.hopper,
                          measure=dict(technique="READ")))
    stop = RE.collector.of("stop")[-1]
    start = RE.collector.of("start")[-1]
    assert res.exit_status == "success" and stop["exit_status"] == "success"
    ev = _events(RE)
    assert len(ev) == 25 and stop["num_events"]["primary"] == 25
    valid_key, topo_key = start["valid_key"], start["topography_key"]
    xk, yk = start["map"]["x"], start["map"]["y"]
    valid = np.array([e["data"][valid_key] for e in ev])
    fault_key = valid_key.replace("valid", "fault")
    reasons = [e["data"][fault_key] for e in ev]
    topo = np.array([e["data"][topo_key] for e in ev])
    # visiting order (snake): the spike is hop 7 (row 1 runs 34 -> 30), the pit hop 16 (row 3 runs 34 -> 30)
    assert reasons[7] == "crash" and reasons[16] == "criterion_not_met"
    assert set(np.flatnonzero(valid == 0)) <= {7, 8, 16} and reasons[8] in ("", "crash")
    n_bad = int((valid == 0).sum())
    assert f"{n_bad} of 25 hops skipped" in stop["reason"] and "1 criterion_not_met" in stop["reason"]
    assert np.all(np.isnan(topo[valid == 0])) and np.all(np.isnan(res.plan_result[valid == 0]))
    # the faults stream names each skipped hop and where it was aimed
    faults = _events(RE, "faults")
    assert [f["data"]["fault_reason"] for f in faults] == [r for r in reasons if r]
    assert [f["data"]["fault_hop"] for f in faults] == list(np.flatnonzero(valid == 0))
    assert (faults[0]["data"]["fault_x"], faults[0]["data"]["fault_y"]) == SPIKE
    assert (faults[-1]["data"]["fault_x"], faults[-1]["data"]["fault_y"]) == PIT
    # every other hop's data intact: heights on the true surface, the measurement recorded
    x, y = np.array([e["data"][xk] for e in ev]), np.array([e["data"][yk] for e in ev])
    ok = valid == 1
    err = topo[ok] - model.surface_z(x[ok], y[ok])
    assert np.abs(err).max() < 0.1, err
    assert np.all(np.isfinite([e["data"]["pstat_tip_current"] for e, v in zip(ev, valid) if v]))
    assert all(np.isnan(e["data"]["pstat_tip_current"]) for e, v in zip(ev, valid) if not v)
    assert model.clearance() > 0 and bench.potentiostat.cell_on.get() == 0
    # read_map leaves the invalid hops out of the map (NaN cells) and counts them; the raw run keeps them
    ds = read_map(RE.collector.docs)
    assert ds.attrs["n_invalid"] == n_bad and ds.sizes == {"y": 5, "x": 5}
    z = ds[topo_key].values
    assert np.isnan(z).sum() == n_bad and np.isnan(z[1, 2]) and np.isnan(z[3, 3])
    everything = read_map(RE.collector.docs, valid_only=False)
    assert int((everything[valid_key] == 0).sum()) == n_bad


def test_stop_policy_and_consecutive_limit(RE):
    bench = _bench_with_faults()
    RE(bps.mv(bench.stage.z, float(bench.model.surface_z(30, 30)) + 1.0))
    with pytest.raises(TipCrash):
        RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=XR, y_range=YR,
                        hop_height=1.0, max_travel=4.0, drop=0.02, hopper=bench.hopper, on_fault="stop"))
    stop = RE.collector.of("stop")[-1]
    ev = _events(RE)
    assert stop["exit_status"] == "fail" and "crash" in stop["reason"]
    assert ev[-1]["data"]["hopper_valid"] == 0 and stop["num_events"]["primary"] == len(ev) == 8
    RE.collector.docs.clear()
    bench = _bench_with_faults()
    RE(bps.mv(bench.stage.z, float(bench.model.surface_z(30, 30)) + 1.0))
    with pytest.raises(FaultLimitReached, match="max_consecutive_faults=1"):
        RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=XR, y_range=YR,
                        hop_height=1.0, max_travel=4.0, drop=0.02, hopper=bench.hopper, max_consecutive_faults=1))
    assert RE.collector.of("stop")[-1]["exit_status"] == "fail"
    assert len(_events(RE, "faults")) == 1 and bench.model.clearance() > 0


def test_seccm_lost_contact_is_skipped_and_landings_are_unbiased(RE):
    """SECCM (device mode) over a pit deeper than the travel: the meniscus never lands there ("no_contact"); the
    other landings lie midway between the last two heights, so they scatter around the true surface."""
    bench = make_sim_bench("SECCM", "patterned", seed=5, start=(30.0, 30.0))
    s = bench.model.sample
    xx, yy = np.meshgrid(s.x, s.y)
    # wider than the pipette's end face (r_o = 1.3 µm): the face goes down into it without touching its edge
    s.topography = s.topography - 10.0 * (np.hypot(xx - PIT[0], yy - PIT[1]) <= 2.0)
    bench.model.invalidate()
    RE(bps.mv(bench.stage.z, float(bench.model.surface_z(30, 30)) + 2.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(29.0, 37.0, 3),
                          y_range=(29.0, 37.0, 3), hop_height=2.0, max_travel=4.0, mode="device",
                          hopper=bench.hopper))
    stop = RE.collector.of("stop")[-1]
    assert res.exit_status == "success" and "1 of 9 hops skipped" in stop["reason"] and "no_contact" in stop["reason"]
    ev = _events(RE)
    valid = np.array([e["data"]["hopper_valid"] for e in ev])
    assert [e["data"]["hopper_fault"] for e in ev].count("no_contact") == 1 and valid.sum() == 8
    x, y = (np.array([e["data"][k] for e in ev]) for k in ("hopper_x", "hopper_y"))
    z, zerr = (np.array([e["data"][k] for e in ev]) for k in ("hopper_surface_z", "hopper_surface_z_err"))
    bad = int(np.flatnonzero(valid == 0)[0])
    assert (x[bad], y[bad]) == PIT and np.isnan(z[bad])
    ok = valid == 1
    # the meniscus lands meniscus_height below the pipette end: the landing height is surface + reach
    err = z[ok] - bench.model.meniscus_height() - bench.model.surface_z(x[ok], y[ok])
    step = RE.collector.of("start")[-1]["plan_args"]["approach_step"]
    assert np.all(np.abs(err) <= 0.5 * step + 1e-9) and np.allclose(zerr[ok], step / np.sqrt(12))
    assert abs(err.mean()) < 0.25 * step  # the landing height of the old controller was half a step low


@pytest.mark.parametrize("mode", ["device", "plan"])
def test_seccm_first_contact_is_confirmed_without_driving_the_meniscus_in(RE, mode):
    """A glitch on the contact line (one reading far above the contact current while the droplet is still in the
    air) does not end the approach: fresh readings at the same height must confirm it.  A real landing is
    confirmed where it happened: the pipette stops one step at most below the landing height, never lower, and
    its end never touches."""
    bench = make_sim_bench("SECCM", "patterned", seed=6, start=(30.0, 30.0))
    model = bench.model
    real = model.contact_current
    calls = {"n": 0}

    def glitchy(e_sub):  # the third reading of every hop reads a spike, wherever the pipette is
        calls["n"] += 1
        return 5e-11 if calls["n"] % 40 == 3 else real(e_sub)

    model.contact_current = glitchy
    RE(bps.mv(bench.stage.z, float(model.surface_z(30, 30)) + 2.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(29.0, 33.0, 3),
                          y_range=(29.0, 33.0, 3), hop_height=2.0, max_travel=4.0, mode=mode,
                          hopper=bench.hopper))
    assert res.exit_status == "success" and not model.crashed
    start = RE.collector.of("start")[-1]
    step = start["plan_args"]["approach_step"]
    ev = _events(RE)
    xk, yk, tk = start["map"]["x"], start["map"]["y"], start["topography_key"]
    ck = "hopper_contact_z" if mode == "device" else "contact_z"
    x, y = (np.array([e["data"][k] for e in ev]) for k in (xk, yk))
    stop_z, surf = (np.array([e["data"][k] for e in ev]) for k in (ck, tk))
    landing = model.surface_z(x, y) + model.meniscus_height()  # where the droplet first touches
    assert np.all(stop_z <= landing + 1e-9) and np.all(stop_z > landing - step - 1e-9)
    assert np.all(stop_z - model.surface_z(x, y) > 0)  # the glass never reaches the surface
    assert np.all(np.abs(surf - model.meniscus_height() - model.surface_z(x, y)) <= 0.5 * step + 1e-9)
    if mode == "plan":  # the readings that confirmed the contact were taken at the stop height
        appr = _events(RE, "approach")
        zs = np.array([e["data"]["stage_z"] for e in appr])
        assert np.sum(np.isclose(zs, stop_z[-1])) >= 2


def _messages(plan):
    """The messages of a plan stub driven without a RunEngine (every yield answered with None), with the
    per-call group ids replaced by their order of appearance, so two stubs can be compared message for message."""
    out, groups = [], {}
    for msg in plan:
        kw = dict(msg.kwargs)
        if kw.get("group") is not None:
            kw["group"] = groups.setdefault(kw["group"], len(groups))
        out.append((msg.command, msg.obj, msg.args, kw))
    return out


def test_plan_mode_inline_stubs_send_bluesky_s_own_messages():
    """Plan-mode hops use cheap copies of ``bps.trigger_and_read`` and ``bps.mv`` (made once per map): they must
    send exactly bluesky's messages, so the documents and the RunEngine's behaviour (pause, rewind) are unchanged."""
    from espt_bluesky.plans.hopping import _move, _Reading, hop_signals

    bench = make_sim_bench("SICM", "composite_cathode", seed=0)
    devices = [bench.potentiostat, bench.stage.x, bench.stage.y, *hop_signals().values()]
    assert _messages(_Reading(devices, "primary")()) == _messages(bps.trigger_and_read(devices, name="primary"))
    assert _messages(_Reading([bench.potentiostat, bench.stage.z], "approach")()) == _messages(
        bps.trigger_and_read([bench.potentiostat, bench.stage.z], name="approach"))
    assert _messages(_move(bench.stage.z, 3.5)) == _messages(bps.mv(bench.stage.z, 3.5))
    assert [m.command for m in bps.checkpoint()] == ["checkpoint"]
