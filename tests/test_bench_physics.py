"""The bench reproduces published limits: i_T,inf with β(RG), SICM bulk current, Hertz modulus."""

import math

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.devices import UME, make_sim_bench
from espt_bluesky.physics.constants import FARADAY

# Lefrou & Cornut 2010, ChemPhysChem 11, 547: β(RG) of the isolated-tip current 4nFDc*a·β(RG)
def beta_published(rg):
    u = (2 / math.pi) * math.acos(1 / rg)
    return 1 + 0.639 * (1 - u) - 0.186 * (1 - u**2)


@pytest.mark.parametrize("rg", [1.5, 3.0, 10.0])
def test_isolated_tip_current_matches_published_beta(RE, rg):
    probe = UME(radius=12.5, rg=rg)
    bench = make_sim_bench("SECM", "patterned", probe=probe, noise=0.0)
    RE(bps.mv(bench.stage.z, 1500.0))  # > 100 a away from everything
    bench.potentiostat.trigger().wait()
    i = bench.potentiostat.tip.current.get()
    m = bench.model.environment["mediator"]
    expected = 4 * m["n"] * FARADAY * m["D"] * m["c"] * 12.5e-6 * beta_published(rg)
    # β(RG) of Lefrou is itself accurate to better than ~1 % over this range
    assert i == pytest.approx(expected, rel=0.01)


def test_tip_current_requires_limiting_potential(RE):
    """Below the mediator's E0 the tip current falls along a reversible wave (half at E0)."""
    bench = make_sim_bench("SECM", "patterned", noise=0.0)
    RE(bps.mv(bench.stage.z, 1500.0))
    e0 = bench.model.environment["mediator"]["E0"]
    currents = []
    for e in (e0 - 0.3, e0, e0 + 0.3):
        bench.potentiostat.tip.potential.put(e)
        bench.potentiostat.trigger().wait()
        currents.append(bench.potentiostat.tip.current.get())
    lim = bench.model.i_tip_inf()
    assert currents[0] < 0.01 * lim
    assert currents[1] == pytest.approx(0.5 * lim, rel=1e-6)
    assert currents[2] == pytest.approx(lim, rel=1e-4)


def test_sicm_current_tends_to_bulk_value_far_away(RE):
    bench = make_sim_bench("SICM", "hopg", noise=0.0)
    g = bench.probe.geometry()
    kappa_el = bench.model.options.conductivity
    bias = bench.model.options.ion_bias
    r_pipette = 1.0 / (math.pi * kappa_el * g.radius * 1e-6 * math.tan(math.radians(g.half_angle)))
    RE(bps.mv(bench.stage.z, 500.0))
    bench.potentiostat.trigger().wait()
    assert bench.potentiostat.tip.current.get() == pytest.approx(bias / r_pipette, rel=1e-3)
    # and it drops as the pipette nears the surface
    RE(bps.mv(bench.stage.z, bench.model.surface_z(50, 50) + 0.2 * g.radius))
    bench.potentiostat.trigger().wait()
    assert bench.potentiostat.tip.current.get() < 0.9 * bias / r_pipette


def test_hertz_fit_of_bench_force_curve_recovers_modulus():
    from espt_bluesky.analysis.mechanics import fit_force_curve

    bench = make_sim_bench("EC-AFM", "hopg", seed=2)
    afm = bench.afm
    afm.configure_force_curve(travel=0.01, n_points=400)
    for x, y in ((30.0, 50.0), (50.0, 50.0), (70.0, 30.0)):
        bench.stage.x.set(x).wait()
        bench.stage.y.set(y).wait()
        afm.trigger().wait()
        z = afm.fc_z.get() * 1e-6
        defl = afm.fc_deflection.get()
        fit = fit_force_curve(z, defl, bench.probe.spring_constant.get(), bench.probe.tip_radius.get() * 1e-6,
                              poisson=0.3)
        truth = bench.model.sample.at("modulus", x, y)
        assert fit.modulus == pytest.approx(float(truth), rel=0.10)


def _scan_readings(bench, n=20):
    out = []
    for k in range(n):
        bench.stage.x.set(20 + 3 * k).wait()
        bench.potentiostat.trigger().wait()
        out.append(bench.potentiostat.tip.current.get())
    return np.array(out)


def test_noise_is_seeded_and_switchable():
    a = _scan_readings(make_sim_bench("SECM", "patterned", seed=7))
    b = _scan_readings(make_sim_bench("SECM", "patterned", seed=7))
    c = _scan_readings(make_sim_bench("SECM", "patterned", seed=8))
    quiet = _scan_readings(make_sim_bench("SECM", "patterned", seed=7, noise=0.0))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    rel = (a - quiet) / quiet
    assert 0.002 < rel.std() < 0.01  # 0.5 % relative noise by default


def test_drift_and_tilt_move_the_surface():
    flat = make_sim_bench("SECM", "patterned", noise=0.0)
    tilted = make_sim_bench("SECM", "patterned", noise=0.0, tilt=(1.0, 0.0))
    # 1° about y: the surface rises tan(1°) µm per µm of x
    dz = tilted.model.surface_z(80.0, 35.0) - tilted.model.surface_z(20.0, 35.0)
    assert dz == pytest.approx(60.0 * math.tan(math.radians(1.0)), rel=1e-6)
    assert flat.model.surface_z(80.0, 35.0) == pytest.approx(flat.model.surface_z(20.0, 35.0))
    drifting = make_sim_bench("SECM", "patterned", noise=0.0, drift=(0.0, 0.0, 0.01))
    z0 = drifting.model.surface_z(35.0, 35.0)
    drifting.potentiostat.params.integration_time.put(1.0)
    for _ in range(10):
        drifting.potentiostat.trigger().wait()  # 10 s of instrument time
    assert drifting.model.surface_z(35.0, 35.0) - z0 == pytest.approx(0.1, rel=1e-6)
