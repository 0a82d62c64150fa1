"""The moving-probe response model (physics/scan_dynamics) and the fly analysis, against values they must reproduce:
the stationary limit, the first moment of a cascade of lags, the published rise times of one and two poles, and the
time constants computed independently from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from espt_bluesky.analysis.fly import edge_width, fly_speed_check, lag_correct
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import scan_dynamics as sd


def test_stationary_limit_is_identity():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=500))
    assert np.array_equal(sd.apply_lag(x, 1e-3, (0.0, 0.0)), x)
    # τ ≪ dt: the recorded signal is the stationary one (to within α = exp(-dt/τ))
    np.testing.assert_allclose(sd.apply_lag(x, 1e-3, (1e-6,)), x, atol=1e-9 * np.ptp(x) + 2e-3 * np.ptp(np.diff(x)))
    # a constant signal stays constant whatever the lag (the probe starts at steady state)
    np.testing.assert_allclose(sd.apply_lag(np.full(100, 3.0), 1e-3, (0.05, 0.02)), 3.0)


def test_streamed_lag_equals_the_whole_signal_lagged():
    """A controller streaming its passes filters piece by piece: joined, the pieces are the whole signal's lag
    (the filter's state carries over), whatever the cut points."""
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=3000)) + 10.0
    whole = sd.apply_lag(x, 1e-3, (0.02, 0.0, 0.005))
    pieces, state = [], None
    for a, b in zip([0, 1, 700, 701, 2500], [1, 700, 701, 2500, 3000]):
        y, state = sd.apply_lag_stream(x[a:b], 1e-3, (0.02, 0.0, 0.005), state)
        pieces.append(y)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=1e-12)
    with pytest.raises(InvalidArgument, match="state has 1 stages"):
        sd.apply_lag_stream(x[:5], 1e-3, (0.02, 0.005), [np.zeros(1)])


@pytest.mark.parametrize("taus", [(0.02,), (0.02, 0.01), (0.015, 0.015, 0.004)])
def test_first_moment_is_the_sum_of_time_constants(taus):
    """The mean delay of the response (centroid of the recorded impulse) is Σ τ, whatever the sampling."""
    dt = 2e-4
    t = np.arange(0, 2.0, dt)
    pulse = np.exp(-0.5 * ((t - 0.3) / 0.01) ** 2)
    y = sd.apply_lag(pulse, dt, taus)
    shift = np.sum(t * y) / np.sum(y) - np.sum(t * pulse) / np.sum(pulse)
    assert shift == pytest.approx(sum(taus), rel=1e-6)
    assert np.sum(y) == pytest.approx(np.sum(pulse), rel=1e-9)  # the response conserves the area


def test_rise_times_match_the_published_ones():
    # one pole: 10–90 % in ln(9)·τ; two equal poles: 3.357·τ (1 - (1 + t)e^-t crosses 0.1 at 0.532, 0.9 at 3.890)
    assert sd.rise_distance(1.0, (1.0,)) == pytest.approx(math.log(9.0), rel=1e-9)
    assert sd.rise_distance(1.0, (1.0, 1.0)) == pytest.approx(3.8897 - 0.5318, abs=2e-4)
    # at speed v the rise is a distance: v · (rise time)
    assert sd.rise_distance(250.0, (0.004,)) == pytest.approx(250.0 * 0.004 * math.log(9.0), rel=1e-9)
    # the step response of the discretised filter follows the analytic one (sampled finely)
    dt = 1e-5
    t = np.arange(0, 0.2, dt)
    y = sd.apply_lag(np.ones_like(t), dt, (0.01, 0.02), initial=0.0)
    np.testing.assert_allclose(y, sd.step_response(t + dt, (0.01, 0.02)), atol=2e-3)


def test_time_constants_from_their_definitions():
    D = 7.8e-10
    ta, td = sd.secm_time_constants(5.0, 2.5, D)
    assert ta == pytest.approx((5e-6) ** 2 / (2 * D))
    assert td == pytest.approx((2.5e-6) ** 2 / (2 * D))
    # Pe = v a / D; the lag v Σ τ equals Pe · a (1 + L²)/2
    v, a, L = 400.0, 5.0, 0.5
    assert sd.lag_distance(v, sd.secm_time_constants(a, L * a, D)) == pytest.approx(
        float(sd.peclet(v, a, D)) * a * (1 + L ** 2) / 2)
    # SICM: R_p = 1/(π κ r_i tanθ) (infinite cone) times C_p, and the filter 1/(2π f_c)
    rc, tf = sd.sicm_time_constants(0.05, 5.0, 1.3, capacitance=3e-12, filter_bandwidth=2e3)
    rp = 1.0 / (math.pi * 1.3 * 0.05e-6 * math.tan(math.radians(5.0)))
    assert rc == pytest.approx(rp * 3e-12)
    assert tf == pytest.approx(1 / (2 * math.pi * 2e3))
    assert sd.afm_time_constants(500.0)[0] == pytest.approx(1 / (2 * math.pi * 500.0))
    with pytest.raises(InvalidArgument, match="radius"):
        sd.secm_time_constants(0.0, 1.0, D)
    with pytest.raises(InvalidArgument, match="feedback_bandwidth"):
        sd.afm_time_constants(-1.0)


def test_lag_correct_inverts_the_lag():
    dt = 1e-4
    t = np.arange(0, 0.3, dt)
    stationary = 0.5 * (1 + np.tanh((t - 0.12) / 0.004)) - 0.5 * (1 + np.tanh((t - 0.2) / 0.004))
    taus = (0.006, 0.003)
    rec = sd.apply_lag(stationary, dt, taus)
    back = lag_correct(rec, dt, taus, smooth=5)
    assert np.max(np.abs(rec - stationary)) > 0.5
    assert np.max(np.abs(back - stationary)) < 0.02


def test_speed_check_on_shifted_lines():
    """Forward/backward images built from a known stationary profile and lag: the check recovers τ."""
    x = np.linspace(0, 100, 401)
    prof = np.exp(-0.5 * ((x - 50) / 6.0) ** 2)
    v, tau = 200.0, 0.02  # lag 4 µm each way
    dt = 0.25 / v
    fwd = sd.apply_lag(prof, dt, (tau,))
    bwd = sd.apply_lag(prof[::-1], dt, (tau,))[::-1]
    out = fly_speed_check(fwd[None, :], bwd[None, :], pixel=0.25, speed=v)
    assert out["too_fast"] and out["shift"] < 0
    assert out["tau"] == pytest.approx(tau, rel=0.15)  # the documented accuracy of the estimate
    ok = fly_speed_check(prof[None, :], prof[None, :], pixel=0.25, speed=v)
    assert not ok["too_fast"] and abs(ok["shift"]) < 0.01
    # a 10–90 % edge width of a tanh edge of width w is w·atanh(0.8)·2
    edge = np.tanh((x - 40) / 3.0)
    assert edge_width(x, edge) == pytest.approx(2 * 3.0 * math.atanh(0.8), rel=0.01)


def test_raster_trajectory_kinematics():
    from espt_bluesky.devices.fly import FlyRaster

    r = FlyRaster(10.0, 50.0, (20.0, 30.0), speed=100.0, sample_rate=1000.0, acceleration=1e5,
                  plane=(5.0, 0.01, -0.02, 50.0, 50.0))
    assert r.samples_per_line == 400 and r.n_passes == 4 and r.ramp == pytest.approx(100.0 ** 2 / 2e5)
    tl = r.timeline()
    lo, hi = r.x_travel
    assert tl["x"].min() >= lo - 1e-9 and tl["x"].max() <= hi + 1e-9  # run-ups and turnarounds inside the travel
    for p, (row, direction, y) in enumerate(r.passes()):
        g = tl["gate"] == p
        assert g.sum() == 400
        x = tl["x"][g]
        np.testing.assert_allclose(np.diff(x), direction * 0.1)  # constant speed: v / rate apart
        assert x.min() == pytest.approx(10.05) and x.max() == pytest.approx(49.95)  # sample centres
        np.testing.assert_allclose(tl["y"][g], y)
        np.testing.assert_allclose(tl["z"][g], 5.0 + 0.01 * (x - 50.0) - 0.02 * (y - 50.0))
    assert [d for _, d, _ in r.passes()] == [1, -1, 1, -1]
