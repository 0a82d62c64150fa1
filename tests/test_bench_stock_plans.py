"""Stock bluesky plans run on the simulated bench and give physically right images."""

import numpy as np
import bluesky.plans as bp
import bluesky.plan_stubs as bps

from espt_bluesky.devices import make_sim_bench


def _i_inf(RE, bench):
    """Measure i_T,inf with the tip 50 tip radii above the surface, as an experimenter would."""
    z0 = bench.stage.z.position
    RE(bps.mv(bench.stage.z, z0 + 50 * bench.model.probe.radius))
    bench.potentiostat.trigger().wait()
    i_inf = bench.potentiostat.tip.current.get()
    RE(bps.mv(bench.stage.z, z0))
    return i_inf


def test_grid_scan_patterned_discs_stand_out(RE):
    bench = make_sim_bench("SECM", "patterned", seed=3)
    model = bench.model
    a = model.probe.radius
    i_inf = _i_inf(RE, bench)
    assert abs(i_inf / model.i_tip_inf() - 1) < 0.03  # the far reading is i_T,inf (noise 0.5 %)
    # constant height: one tip radius above the substrate plane (flat sample, no tilt)
    RE(bps.mv(bench.stage.z, 0.0 + a * 1.0 + 0.1))  # 0.1 µm Au film on top of SiO2 at z = 0
    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 5, 95, 19, bench.stage.x, 5, 95, 19, snake_axes=True))
    ev = RE.collector.events()
    assert len(ev) == 19 * 19
    x = np.array([e["data"]["stage_x"] for e in ev])
    y = np.array([e["data"]["stage_y"] for e in ev])
    N = np.array([e["data"]["pstat_tip_current"] for e in ev]) / i_inf
    truth = model.sample.at("label", x, y)
    # centre of every disc: positive feedback; far from discs: negative feedback
    d_disc = np.min([np.hypot(x - fx, y - fy) for fx, fy, _ in model.sample.features], axis=0)
    over_au = d_disc < 3.0
    over_sio2 = d_disc > 8.0 + a + 3.0
    assert over_au.sum() >= 9 and over_sio2.sum() >= 9
    assert np.all(N[over_au] > 1.0), N[over_au]
    assert np.all(N[over_sio2] < 1.0), N[over_sio2]
    assert np.all(truth[over_au] == 1)
    # image contrast: mean over Au well above mean over SiO2
    assert N[over_au].mean() > 1.2 and N[over_sio2].mean() < 0.8


def test_far_from_surface_tends_to_one(RE):
    bench = make_sim_bench("SECM", "patterned", seed=1, noise=0.0)
    i_inf = bench.model.i_tip_inf()
    readings = []
    for L in (0.5, 5, 20, 100):
        RE(bps.mv(bench.stage.z, 0.1 + L * bench.model.probe.radius))
        bench.potentiostat.trigger().wait()
        readings.append(bench.potentiostat.tip.current.get() / i_inf)
    # over the Au disc centre: positive feedback close by; far away the reading tends to i_T,inf
    assert readings[0] > 1.5
    dev = np.abs(np.array(readings[1:]) - 1)
    assert np.all(np.diff(dev) < 0)
    assert dev[-1] < 0.01
