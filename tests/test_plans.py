"""The plans of espt_bluesky.plans on the simulated bench, checked against the bench's ground truth (bench.model).

Every document goes through the ``RE`` fixture, which validates it against the event-model schemas.
"""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument, Overload, TipCrash
from espt_bluesky.plans import (ExperimentContext, approach, build_start_md, combinatorial_sweep,
                                constant_height_image, hopping_scan, measure_tilt, operando_imaging, sgtc)


def _events(RE, stream="primary"):
    return RE.collector.events(stream)


def _col(events, key):
    return np.array([e["data"][key] for e in events])


def _start(RE):
    return RE.collector.of("start")[-1]


def _stop(RE):
    return RE.collector.of("stop")[-1]


# ------------------------------------------------------------------------------------------------ approach
@pytest.mark.parametrize("xy, feedback", [((50.0, 50.0), "positive"), ((35.0, 35.0), "negative")])
def test_secm_approach_stops_at_requested_distance(RE, xy, feedback):
    """Over the Au disc centre (conductor) and over SiO2 (insulator; the 10 µm footprint at L = 1 sees no Au):
    the tip ends within 0.1·a of 1·a above the true surface, without touching it."""
    bench = make_sim_bench("SECM", "patterned", seed=4, start=xy)
    model = bench.model
    a = model.probe.radius
    assert model.sample.at("label", *xy) == (1 if feedback == "positive" else 0)
    RE(bps.mv(bench.stage.z, 250.0))  # far: i_T,inf is read here
    res = RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback=feedback, working_distance=1.0,
                      context=bench.metadata()))
    assert res.exit_status == "success"
    assert not model.crashed
    assert abs(model.distance() - a) < 0.1 * a, model.distance()
    assert abs(res.plan_result - float(model.surface_z(*xy))) < 0.1 * a
    curve = _events(RE, "approach")
    assert len(curve) > 5
    # a good tip over a disc smaller than the footprint far away is not reported as a bad tip (the inlaid-disk
    # check reads only the stretch one κ explains where the sideways probes saw a non-uniform footprint)
    assert _events(RE, "approach_fit")[0]["data"]["tip_ok"] == 1
    z = _col(curve, "stage_z")
    assert z[0] - z[-1] > 200  # coarse far away ...
    steps = -np.diff(z)
    # ... and shrinking near the surface (the default strategy="fit" steers them by the feedback theory)
    assert steps.max() >= 2.0 * a - 1e-9 and steps[steps > 0][-1] <= 0.25 * a + 1e-9
    start = _start(RE)
    assert start["technique"] == "SECM" and start["plan_name"] == "approach"
    assert start["probe"]["type"] == "UME" and start["electrolyte"] and start["reference_electrode"]
    surf = _events(RE, "surface")[0]["data"]
    assert surf["surface_z"] == pytest.approx(res.plan_result)


def test_secm_approach_working_distance_in_um(RE):
    bench = make_sim_bench("SECM", "patterned", seed=5, start=(35.0, 35.0))
    RE(bps.mv(bench.stage.z, 200.0))
    RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="negative", working_distance=7.5,
                distance_units="um"))
    assert abs(bench.model.distance() - 7.5) < 0.5


def test_sicm_seccm_afm_approaches(RE):
    # SICM: 2 % drop; the surface from the ohmic setpoint distance
    b = make_sim_bench("SICM", "patterned", seed=3)
    RE(bps.mv(b.stage.z, 6.0))
    zs = RE(approach(b.stage, b.potentiostat, technique="SICM", drop=0.02, working_distance=1.0,
                     distance_units="um")).plan_result
    assert abs(zs - float(b.model.surface_z(50, 50))) < 0.05
    assert abs(b.model.distance() - 1.0) < 0.05
    # SECCM: the meniscus lands; the landing height lies within the meniscus reach above the surface
    b = make_sim_bench("SECCM", "hopg", seed=3, start=(20.0, 20.0))
    RE(bps.mv(b.stage.z, b.stage.z.position + 3.0))
    z_land = RE(approach(b.stage, b.potentiostat, technique="SECCM", working_distance=2.0)).plan_result
    gap = z_land - float(b.model.surface_z(20, 20))
    assert b.model.meniscus_height() - 0.2 - 1e-6 <= gap <= b.model.meniscus_height() + 1e-6
    assert not b.model.crashed
    # EC-AFM: deflection setpoint reached in a force curve
    b = make_sim_bench("EC-AFM", "si_film", seed=3, start=(27.5, 27.5))
    RE(bps.mv(b.stage.z, 10.0))
    zs = RE(approach(b.stage, b.potentiostat, technique="EC-AFM", afm=b.afm, working_distance=0.1,
                     distance_units="um")).plan_result
    assert abs(zs - float(b.model.surface_z(27.5, 27.5))) < 0.02


# ------------------------------------------------------------------------------------------------ hopping
def _rim_clearance(model, xs, ys):
    """Smallest lateral distance (µm) from any point to a particle rim (the caps of the sim have steep rims)."""
    return min(np.abs(np.hypot(xs - fx, ys - fy) - r).min() for fx, fy, r in model.sample.features)


def test_sicm_hopping_device_mode_recovers_topography(RE):
    bench = make_sim_bench("SICM", "composite_cathode", seed=2, start=(55.5, 50.5))
    model = bench.model
    xr, yr = (55.5, 75.5, 6), (50.5, 70.5, 6)
    gx, gy = np.meshgrid(np.linspace(*xr), np.linspace(*yr))
    assert _rim_clearance(model, gx, gy) > 0.7  # setup: no hop lands on a near-vertical particle rim
    RE(bps.mv(bench.stage.z, float(model.surface_z(55.5, 50.5)) + 7.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=xr, y_range=yr,
                          hop_height=7.0, drop=0.02, mode="device", hopper=bench.hopper, context=bench.metadata()))
    assert res.exit_status == "success"
    ev = _events(RE)
    start = _start(RE)
    assert start["map"] == {"x": "hopper_x", "y": "hopper_y", "order": "snake"}
    assert start["shape"] == [6, 6] and start["snaking"] == [False, True]
    assert start["topography_key"] == "hopper_surface_z"
    x, y, topo = _col(ev, "hopper_x"), _col(ev, "hopper_y"), _col(ev, "hopper_surface_z")
    truth = model.surface_z(x, y)
    assert np.ptp(truth) > 4.0  # a rough sample: particles of several µm
    err = topo - truth
    # noise: 0.25 % current noise per averaged reading at a 2 % setpoint ≈ 0.02 µm, plus the 0.033 µm step
    assert np.sqrt(np.mean(err**2)) < 0.04, err
    assert np.abs(err).max() < 0.1
    assert np.allclose(res.plan_result, topo)
    assert model.clearance() > 0


def test_sicm_hopping_plan_mode_random_order(RE):
    bench = make_sim_bench("SICM", "composite_cathode", seed=2, start=(59.5, 54.5))
    model = bench.model
    xr, yr = (59.5, 67.5, 3), (54.5, 62.5, 3)
    gx, gy = np.meshgrid(np.linspace(*xr), np.linspace(*yr))
    assert _rim_clearance(model, gx, gy) > 0.7
    RE(bps.mv(bench.stage.z, float(model.surface_z(59.5, 54.5)) + 6.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=xr, y_range=yr,
                          order="random", seed=11, hop_height=6.0, drop=0.02, mode="plan"))
    ev = _events(RE)
    assert _start(RE)["map"] == {"x": "stage_x", "y": "stage_y", "order": "random"}
    x, y, topo = _col(ev, "stage_x"), _col(ev, "stage_y"), _col(ev, "surface_z")
    perm = np.random.default_rng(11).permutation(9)
    assert np.allclose(x, gx.ravel()[perm]) and np.allclose(y, gy.ravel()[perm])
    err = topo - model.surface_z(x, y)
    assert np.abs(err).max() < 0.1, err
    assert len(_events(RE, "approach")) > 9  # every approach curve is kept
    assert res.exit_status == "success"


def test_seccm_hopping_device_mode_records_a_cv_per_hop(RE):
    bench = make_sim_bench("SECCM", "hopg", seed=3, start=(20.0, 20.0))
    RE(bps.mv(bench.stage.z, bench.stage.z.position + 1.5))
    RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", points=[(20, 20), (50, 30), (70, 80)],
                    order="points", hop_height=1.5, hopper=bench.hopper,
                    measure=dict(technique="CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, scan_rate=1.0,
                                 n_samples=120)))
    ev = _events(RE)
    assert len(ev) == 3
    desc = [d for d in RE.collector.of("descriptor") if d["name"] == "primary"][0]
    assert desc["data_keys"]["pstat_wf_current"]["shape"] == [120]
    for e in ev:
        i = np.asarray(e["data"]["pstat_wf_current"])
        assert i.shape == (120,) and i.min() < -1e-13  # cathodic SEI current: the droplet was on the surface
        gap = e["data"]["hopper_contact_z"] - float(bench.model.surface_z(e["data"]["hopper_x"],
                                                                           e["data"]["hopper_y"]))
        assert 0 < gap <= bench.model.meniscus_height() + 1e-9


# ------------------------------------------------------------------------------------------------ tilt + imaging
def test_measure_tilt_and_tilt_corrected_constant_height_image(RE):
    bench = make_sim_bench("SECM", "patterned", seed=1, tilt=(0.5, -0.3), start=(35.0, 35.0))
    model = bench.model
    a = model.probe.radius
    RE(bps.mv(bench.stage.z, 250.0))
    plane = RE(measure_tilt(bench.stage, bench.potentiostat, [(35, 35), (65, 35), (35, 65), (65, 65), (5, 95)],
                            technique="SECM", feedback="negative", context=bench.metadata())).plan_result
    assert abs(plane.tilt_x_deg - 0.5) < 0.1 and abs(plane.tilt_y_deg - (-0.3)) < 0.1
    assert len(_events(RE)) == 5 and len(_events(RE, "tilt")) == 1
    assert model.clearance() > 0

    def background(plane_arg):
        RE.collector.docs.clear()
        RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(5, 95, 10), y_range=(5, 95, 10),
                                 height=3.0, plane=plane_arg, context=bench.metadata()))
        ev = _events(RE)
        start = _start(RE)
        assert start["map"]["order"] == "snake" and start["shape"] == [10, 10]
        assert start["extents"] == [[5.0, 95.0], [5.0, 95.0]]
        x, y = _col(ev, "stage_x"), _col(ev, "stage_y")
        n = _col(ev, "pstat_tip_current") / model.i_tip_inf()
        d_disc = np.min([np.hypot(x - fx, y - fy) for fx, fy, _ in model.sample.features], axis=0)
        bg = d_disc > 8 + a + 6  # SiO2 farther than the footprint from any Au disc
        assert bg.sum() >= 12 and np.all(model.sample.at("label", x[bg], y[bg]) == 0)
        A = np.column_stack([np.ones(bg.sum()), x[bg] - 50, y[bg] - 50])
        coef = np.linalg.lstsq(A, n[bg], rcond=None)[0]
        return np.hypot(*coef[1:]) * 90.0, n[bg].std()  # change of I_T across the image, spread

    tilt_corrected = background(plane)
    uncorrected = background(float(plane.z_at(50, 50)))  # a level plane through the same centre
    assert tilt_corrected[0] < 0.02 and tilt_corrected[1] < 0.01
    assert uncorrected[0] > 0.05 and uncorrected[1] > 3 * tilt_corrected[1]


def test_operando_imaging_hopg_edges_passivate(RE):
    bench = make_sim_bench("SECM", "hopg", seed=1)
    model = bench.model
    RE(operando_imaging(bench.stage, bench.potentiostat, x_range=(30, 70, 9), y_range=(30, 70, 9), height=2.5,
                        plane=0.0, n_images=3,
                        cycle=dict(technique="CV", e_start=3.0, e_vertex1=0.6, e_vertex2=3.0, scan_rate=0.2),
                        context=bench.metadata()))
    ev = _events(RE)
    assert len(ev) == 3 * 81 and len(_events(RE, "cycle")) == 2
    x, y, k = _col(ev, "stage_x"), _col(ev, "stage_y"), _col(ev, "image_index")
    n = _col(ev, "pstat_tip_current") / model.i_tip_inf()
    charge = _col(ev, "charge_passed")
    edge = model.sample.at("label", x, y) == 1
    assert edge.sum() >= 3 * 8
    e_mean = [n[(k == i) & edge].mean() for i in range(3)]
    b_mean = [n[(k == i) & ~edge].mean() for i in range(3)]
    assert e_mean[0] > e_mean[1] > e_mean[2]  # feedback falls on the edges as the SEI grows
    assert e_mean[0] - e_mean[2] > b_mean[0] - b_mean[2] > 0  # ... faster than on the basal plane
    assert e_mean[2] - b_mean[2] < e_mean[0] - b_mean[0]
    # each image is tied to its state: cumulative cathodic charge grows (more negative) between images
    q = [charge[k == i][0] for i in range(3)]
    assert q[0] == 0 and q[0] > q[1] > q[2]
    assert _start(RE)["stack"] == {"index": "image_index", "n_images": 3}
    # ground truth: the edge SEI passivated more than the basal plane
    act = model.sample.activity_factor()
    assert act[model.sample.label == 1].mean() < act[model.sample.label == 0].mean()


# ------------------------------------------------------------------------------------------------ combinatorial
def _sweep(RE, seed):
    bench = make_sim_bench("SECCM", "hopg", seed=3, start=(20.0, 20.0))
    RE(bps.mv(bench.stage.z, bench.stage.z.position + 1.5))
    RE.collector.docs.clear()
    res = RE(combinatorial_sweep(bench.stage, bench.potentiostat, seed=seed, x_range=(20, 80, 3),
                                 y_range=(20, 80, 3),
                                 parameters={"scan_rate": [0.1, 1.0], "window": [(0.5, 3.0), (1.5, 3.0)]},
                                 repeats=2, fixed={"e_start": 3.0, "n_samples": 100}, context=bench.metadata()))
    return res.plan_result, _start(RE), _events(RE)


def test_combinatorial_sweep_reproducible_and_recorded(RE):
    t1, start, ev = _sweep(RE, 7)
    t2, _, _ = _sweep(RE, 7)
    t3, _, _ = _sweep(RE, 8)
    assert t1 == t2 and t1 != t3
    assert len(t1) == 8 and len(ev) == 8
    combos = [(r["scan_rate"], tuple(r["window"])) for r in t1]
    assert all(combos.count(c) == 2 for c in set(combos)) and len(set(combos)) == 4
    table = start["parameter_table"]
    assert table["scan_rate"] == [r["scan_rate"] for r in t1]
    for e, row in zip(ev, t1):
        d = e["data"]
        assert d["spot_index"] == row["spot_index"] and d["param_scan_rate"] == row["scan_rate"]
        assert (d["param_window_low"], d["param_window_high"]) == tuple(row["window"])
        assert (d["stage_x"], d["stage_y"]) == pytest.approx((row["x"], row["y"]), abs=1e-9)
        wf_e = np.asarray(d["pstat_wf_potential"])
        assert wf_e.shape == (100,) and abs(wf_e.min() - row["window"][0]) < 0.05
        # SEI forms only in windows that reach below ~0.8 V vs Li+/Li (the bench's onset)
        i_min = np.min(d["pstat_wf_current"])
        assert (i_min < -1e-12) == (row["window"][0] < 0.8)


# ------------------------------------------------------------------------------------------------ SG/TC
def test_sgtc_collects_o2_over_particles(RE):
    bench = make_sim_bench("SECM", "composite_cathode", seed=2)
    model = bench.model
    px, py, pr = max(model.sample.features, key=lambda f: f[2])  # the largest particle
    far = (35.0, 35.0)
    assert min(np.hypot(far[0] - fx, far[1] - fy) - r for fx, fy, r in model.sample.features) > 10
    RE(sgtc(bench.stage, bench.potentiostat, tip_potential=2.5, locations=[(px, py), far], height=7.0, plane=0.0,
            sweep=dict(technique="LSV", e_start=3.7, e_end=4.8, scan_rate=0.01), context=bench.metadata()))
    ev = _events(RE)
    assert _start(RE)["map"]["order"] == "points"
    curves = [(np.asarray(e["data"]["pstat_wf_potential"]), np.asarray(e["data"]["pstat_wf_collector_current"]))
              for e in ev]
    onset_min = np.nanmin(model.sample.o2_onset[np.isfinite(model.sample.o2_onset)])
    for e, i in curves:
        assert i[-1] < -1e-9  # oxygen reduction at the tip
        assert np.all(np.abs(i[e < onset_min - 0.1]) < 0.01 * abs(i[-1]))  # ~nothing before the first onset
    assert curves[0][1][-1] < 1.2 * curves[1][1][-1]  # more O2 collected over the particle: heterogeneity
    # potential steps; with the tip above the ORR region (3.1 V; FcMeOH not yet oxidised) nothing is collected
    collected = {}
    for e_tip in (2.5, 3.1):
        RE.collector.docs.clear()
        RE(sgtc(bench.stage, bench.potentiostat, tip_potential=e_tip, steps=[4.0, 4.75], hold_time=2.0,
                locations=[(px, py)], height=7.0, plane=0.0))
        steps = _events(RE)
        assert [e["data"]["step_potential"] for e in steps] == [4.0, 4.75]
        collected[e_tip] = steps[-1]["data"]["pstat_tip_current"]
    assert collected[2.5] < -1e-9 and abs(collected[3.1]) < 0.01 * abs(collected[2.5])


# ------------------------------------------------------------------------------------------------ safety
def test_crash_leaves_tip_retracted_cell_open_and_events_kept(RE):
    """Approaching an insulator with a fixed positive-feedback criterion (the classical programme) can never
    trigger: the sheath hits SiO2.  (The default strategy="fit" reads the insulator and stops in time.)"""
    bench = make_sim_bench("SECM", "patterned", seed=2, start=(35.0, 35.0))
    RE(bps.mv(bench.stage.z, 60.0))
    with pytest.raises(TipCrash):
        RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="positive", threshold=1.5,
                    strategy="threshold"))
    assert bench.model.crashed
    assert bench.model.clearance() > 0
    assert bench.potentiostat.cell_on.get() == 0
    stop = _stop(RE)
    assert stop["exit_status"] == "fail" and "crash" in stop["reason"]
    assert len(_events(RE, "approach")) > 5 and stop["num_events"]["approach"] == len(_events(RE, "approach"))


def test_overload_ends_in_known_state(RE):
    bench = make_sim_bench("SECM", "patterned", seed=2, start=(35.0, 35.0))
    RE(bps.mv(bench.stage.z, 60.0))
    bench.potentiostat.tip.current_range.put(1e-12)  # far below i_T,inf ≈ 2 nA
    with pytest.raises(Overload):
        RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="negative"))
    assert bench.potentiostat.cell_on.get() == 0
    assert bench.stage.z.position > 60.0  # retracted
    assert _stop(RE)["exit_status"] == "fail"


def test_hopping_crash_keeps_hops_so_far(RE):
    """Hop height below the topography: the lateral move runs into a particle (``on_fault="stop"``: the crash ends
    the run; the default, "skip", is tested in test_hop_faults.py)."""
    bench = make_sim_bench("SICM", "composite_cathode", seed=2, start=(45.0, 56.7))
    model = bench.model
    RE(bps.mv(bench.stage.z, float(model.surface_z(45.0, 56.7)) + 0.5))
    with pytest.raises(TipCrash):
        RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(45.0, 60.0, 6),
                        y_range=(56.7, 56.7, 1), hop_height=0.3, drop=0.02, hopper=bench.hopper,
                        on_fault="stop"))
    assert model.clearance() > 0 and bench.potentiostat.cell_on.get() == 0
    stop = _stop(RE)
    assert stop["exit_status"] == "fail" and stop["num_events"].get("primary", 0) == len(_events(RE)) >= 1


def _bad_calls(bench):
    """A few on an SECM bench (hopping and combinatorial plans need a pipette); the full table:
    test_bad_input_table.py."""
    s, p = bench.stage, bench.potentiostat
    return [
        ("fine_step", lambda: approach(s, p, technique="SECM", fine_step=0.0)),
        ("technique", lambda: approach(s, p, technique="STM")),
        ("threshold", lambda: approach(s, p, technique="SECM", feedback="negative", threshold=1.2)),
        ("tip_potential", lambda: sgtc(s, p, tip_potential=12.0, steps=[4.0])),
        ("e_vertex1", lambda: operando_imaging(s, p, x_range=(10, 20, 2), y_range=(10, 20, 2), height=5.0,
                                               plane=0.0, n_images=2,
                                               cycle=dict(technique="CV", e_start=3.0, e_vertex1=-3.0,
                                                          e_vertex2=3.0))),
        ("height", lambda: constant_height_image(s, p, x_range=(10, 20, 2), y_range=(10, 20, 2), height=0.0,
                                                 plane=0.0)),
        ("x_range", lambda: constant_height_image(s, p, x_range=(10, 10, 5), y_range=(10, 20, 2), height=5.0,
                                                  plane=0.0)),
        ("collinear", lambda: measure_tilt(s, p, [(10, 10), (20, 20), (30, 30)], technique="SECM")),
    ]


def test_bad_arguments_raise_before_any_motion(RE):
    bench = make_sim_bench("SECM", "hopg", seed=1)  # Li+/Li reference: compliance (-0.5, 5.0) V
    pos = bench.model.position.copy()
    for name, call in _bad_calls(bench):
        with pytest.raises(InvalidArgument, match=name):
            RE(call())
        assert np.array_equal(bench.model.position, pos), name
        assert RE.collector.docs == [], name


# ------------------------------------------------------------------------------------------------ metadata
def test_metadata_builder_and_context():
    bench = make_sim_bench("SECM", "patterned", seed=0)
    ctx = ExperimentContext.from_dict(bench.metadata())
    md = build_start_md("demo", {"stage": bench.stage, "n": np.int64(3), "arr": np.arange(3.0)},
                        technique="SECM", mode="demo", probe=bench.probe, context=ctx,
                        sample_md={"batch": "A1"}, md={"operator": "me"},
                        map_keys=("stage_x", "stage_y"), order="raster", shape=(2, 3),
                        extents=[[0, 1], [0, 2]], snaking=(False, False))
    assert md["plan_args"] == {"stage": "stage", "n": 3, "arr": [0.0, 1.0, 2.0]}
    assert md["sample"]["name"] == "patterned" and md["sample"]["batch"] == "A1"
    assert md["mediator"]["name"] == "FcMeOH" and md["operator"] == "me"
    assert md["map"] == {"x": "stage_x", "y": "stage_y", "order": "raster"} and md["shape"] == [2, 3]
    with pytest.raises(InvalidArgument, match="order"):
        build_start_md("demo", {}, technique="SECM", mode="demo", map_keys=("a", "b"), order="spiral")
