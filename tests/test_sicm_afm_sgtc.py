"""Fast tests of the SICM, AFM (Hertz/DMT) and SG/TC forward models and the force-curve analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from espt_bluesky.analysis import fit_force_curve, fit_hertz, modulus_map
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import afm, sgtc, sicm

# ---------------------------------------------------------------- SICM

RI, RO, THETA, KAPPA, BIAS = 0.05, 0.08, 3.0, 1.9, 0.2  # µm, µm, deg, S/m, V


def test_pipette_resistance_hand_value():
    # R_p = 1/(π κ r_i tanθ) = 1/(π·1.9·50e-9·tan 3°)
    hand = 1.0 / (math.pi * 1.9 * 50e-9 * math.tan(math.radians(3.0)))
    assert sicm.pipette_resistance(RI, THETA, KAPPA) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(63.93e6, rel=1e-3)
    # truncated cone tends to the infinite cone, and is smaller
    long = sicm.pipette_resistance(RI, THETA, KAPPA, length=1e7)
    short = sicm.pipette_resistance(RI, THETA, KAPPA, length=10.0)
    assert long == pytest.approx(hand, rel=1e-5)
    assert short < hand


def test_access_resistance_hand_value():
    d = 0.1  # µm
    hand = 1.5 * math.log(0.08 / 0.05) / (math.pi * 1.9 * 0.1e-6)
    assert sicm.access_resistance(d, RI, RO, KAPPA) == pytest.approx(hand, rel=1e-12)
    # the current is bias / (R_p + R_ac)
    i = sicm.ion_current(d, RI, RO, THETA, KAPPA, BIAS)
    assert i == pytest.approx(BIAS / (sicm.pipette_resistance(RI, THETA, KAPPA) + hand), rel=1e-12)


def test_ion_current_far_away_is_saturation():
    i_sat = BIAS / sicm.pipette_resistance(RI, THETA, KAPPA)
    far = sicm.ion_current(1000 * RI, RI, RO, THETA, KAPPA, BIAS)
    assert abs(far / i_sat - 1) < 1e-3
    assert sicm.ion_current_normalized(1000 * RI, RI, RO, THETA) == pytest.approx(far / i_sat, rel=1e-12)


def test_ion_current_monotone_and_contact_clipped():
    d = np.linspace(-0.1, 5.0, 2001)
    i = sicm.ion_current(d, RI, RO, THETA, KAPPA, BIAS)
    assert np.all(np.diff(i) >= 0)
    assert np.all(np.diff(i[d > 0]) > 0)
    assert np.all(i[d <= 0] == 0)
    assert np.all(np.isfinite(i))


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.02, 0.3])
def test_current_drop_inverse_round_trip(fraction):
    d = sicm.distance_for_current_drop(fraction, RI, RO, THETA)
    i_sat = BIAS / sicm.pipette_resistance(RI, THETA, KAPPA)
    # independent solve on the forward model
    d_ref = brentq(lambda x: sicm.ion_current(x, RI, RO, THETA, KAPPA, BIAS) / i_sat - (1 - fraction),
                   1e-6, 1e4, xtol=1e-14, rtol=1e-14)
    assert d == pytest.approx(d_ref, rel=1e-9)
    assert sicm.ion_current_normalized(d, RI, RO, THETA) == pytest.approx(1 - fraction, rel=1e-12)


def test_current_drop_1pct_hand_value():
    A = 1.5 * math.log(RO / RI) * RI * math.tan(math.radians(THETA))
    assert sicm.distance_for_current_drop(0.01, RI, RO, THETA) == pytest.approx(99 * A, rel=1e-12)


def test_sicm_bad_input():
    with pytest.raises(InvalidArgument, match="inner_radius"):
        sicm.pipette_resistance(-1, THETA, KAPPA)
    with pytest.raises(InvalidArgument, match="half_angle"):
        sicm.pipette_resistance(RI, 90, KAPPA)
    with pytest.raises(InvalidArgument, match="conductivity"):
        sicm.ion_current(1, RI, RO, THETA, 0, BIAS)
    with pytest.raises(InvalidArgument, match="outer_radius"):
        sicm.ion_current(1, RI, RI / 2, THETA, KAPPA, BIAS)
    with pytest.raises(InvalidArgument, match="fraction"):
        sicm.distance_for_current_drop(1.0, RI, RO, THETA)
    with pytest.raises(InvalidArgument, match="distance"):
        sicm.access_resistance(0.0, RI, RO, KAPPA)
    with pytest.raises(InvalidArgument, match="bias"):
        sicm.ion_current(1, RI, RO, THETA, KAPPA, np.nan)


# ---------------------------------------------------------------- Hertz / DMT


def test_hertz_hand_value():
    # E = 1 GPa, ν = 0.5 -> E* = 4/3 GPa; R = 20 nm; δ = 2 nm
    hand = 4.0 / 3.0 * (1e9 / 0.75) * math.sqrt(20e-9) * (2e-9) ** 1.5
    assert afm.hertz_force(2e-9, 1e9, 20e-9) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(22.487e-9, rel=1e-4)
    assert afm.hertz_force(-1e-9, 1e9, 20e-9) == 0.0


def test_hertz_power_law():
    d = np.logspace(-10, -8, 30)
    F = afm.hertz_force(d, 0.9e9, 20e-9, 0.3)
    slope = np.polyfit(np.log(d), np.log(F), 1)[0]
    assert slope == pytest.approx(1.5, abs=1e-12)


def test_dmt_is_hertz_minus_adhesion():
    d = np.array([-1e-9, 0.0, 1e-9, 3e-9])
    F = afm.dmt_force(d, 1e9, 20e-9, 5e-9)
    H = afm.hertz_force(d, 1e9, 20e-9)
    assert F[0] == 0.0
    assert np.allclose(F[1:], H[1:] - 5e-9, rtol=1e-14, atol=0)


def test_force_curve_self_consistent():
    z = np.linspace(-10e-9, 20e-9, 301)
    k, E, R = 10.0, 0.9e9, 20e-9
    defl, F, delta = afm.force_curve(z, 1e-9, k, E, R)
    assert np.all(defl[z < 1e-9] == 0) and np.all(delta[z < 1e-9] == 0)
    c = z >= 1e-9
    assert np.allclose(delta[c] + defl[c], z[c] - 1e-9, rtol=0, atol=1e-22)
    assert np.allclose(k * defl, afm.hertz_force(delta, E, R), rtol=1e-12, atol=1e-22)
    assert np.all(np.diff(defl) >= 0) and np.all(np.diff(delta) >= 0)


SEI_CASES = [(0.1e9, 10e-9, 1.0), (0.5e9, 15e-9, 5.0), (0.9e9, 20e-9, 10.0), (2e9, 30e-9, 40.0)]


@pytest.mark.parametrize("E,R,k", SEI_CASES)
def test_fit_recovers_modulus_noiseless(E, R, k):
    z = np.linspace(-10e-9, 20e-9, 301)
    defl, _, _ = afm.force_curve(z, 1.234e-9, k, E, R, poisson=0.3)
    r = fit_force_curve(z, defl, k, R, poisson=0.3)
    assert abs(r.modulus / E - 1) < 0.01
    assert r.contact_point == pytest.approx(1.234e-9, abs=1e-12)


@pytest.mark.parametrize("E,R,k", SEI_CASES)
def test_fit_recovers_modulus_with_1pct_noise(E, R, k):
    z = np.linspace(-10e-9, 20e-9, 301)
    defl, _, _ = afm.force_curve(z, 1.234e-9, k, E, R, noise=0.01, rng=7)
    r = fit_force_curve(z, defl, k, R)
    assert abs(r.modulus / E - 1) < 0.10
    assert 0 < r.modulus_err < 0.05 * E
    assert abs(r.contact_point - 1.234e-9) < 0.5e-9


def test_fit_hertz_from_indentation():
    d = np.linspace(0, 5e-9, 50)
    F = afm.hertz_force(d, 1.5e9, 25e-9)
    assert fit_hertz(d, F, 25e-9, contact_point=0.0).modulus == pytest.approx(1.5e9, rel=1e-9)
    r = fit_hertz(d + 0.7e-9, F, 25e-9)  # contact point fitted
    assert r.modulus == pytest.approx(1.5e9, rel=1e-3)
    assert r.contact_point == pytest.approx(0.7e-9, abs=1e-12)


def test_dmt_adhesion_recovered():
    z = np.linspace(-10e-9, 20e-9, 301)
    k, E, R, Fad = 10.0, 1e9, 20e-9, 8e-9
    defl, _, _ = afm.force_curve(z, 1.234e-9, k, E, R, adhesion=Fad)
    assert defl[np.searchsorted(z, 1.234e-9)] < 0  # jump to contact, pulled toward the sample
    r = fit_force_curve(z, defl, k, R, model="dmt")
    assert r.adhesion == pytest.approx(Fad, rel=1e-3)
    assert r.modulus == pytest.approx(E, rel=1e-3)
    defl, _, _ = afm.force_curve(z, 1.234e-9, k, E, R, adhesion=Fad, noise=0.01, rng=3)
    r = fit_force_curve(z, defl, k, R, model="dmt")
    assert r.adhesion == pytest.approx(Fad, rel=0.25)
    assert r.modulus == pytest.approx(E, rel=0.10)
    # a Hertz fit of a pure Hertz curve with the DMT model gives ~zero adhesion
    defl, _, _ = afm.force_curve(z, 1.234e-9, k, E, R)
    assert abs(fit_force_curve(z, defl, k, R, model="dmt").adhesion) < 1e-12


def test_modulus_map():
    z = np.linspace(-10e-9, 20e-9, 201)
    E = np.array([[0.2e9, 0.9e9], [1.5e9, 2e9]])
    D = np.stack([np.stack([afm.force_curve(z, 0.5e-9, 20.0, e, 20e-9, noise=0.005, rng=i)[0]
                            for i, e in enumerate(row)]) for row in E])
    D[1, 1] = 0.0  # no contact: cannot be fitted
    m = modulus_map(z, D, 20.0, 20e-9)
    assert m.modulus.shape == (2, 2)
    assert np.isnan(m.modulus[1, 1])
    ok = ~np.isnan(m.modulus)
    assert np.all(np.abs(m.modulus[ok] / E[ok] - 1) < 0.1)


def test_afm_bad_input():
    with pytest.raises(InvalidArgument, match="modulus"):
        afm.hertz_force(1e-9, -1.0, 20e-9)
    with pytest.raises(InvalidArgument, match="tip_radius"):
        afm.hertz_force(1e-9, 1e9, 0.0)
    with pytest.raises(InvalidArgument, match="poisson"):
        afm.hertz_force(1e-9, 1e9, 20e-9, poisson=0.6)
    with pytest.raises(InvalidArgument, match="adhesion"):
        afm.dmt_force(1e-9, 1e9, 20e-9, -1e-9)
    with pytest.raises(InvalidArgument, match="spring_constant"):
        afm.force_curve([0, 1e-9], 0, 0, 1e9, 20e-9)
    with pytest.raises(InvalidArgument, match="model"):
        fit_hertz([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 20e-9, model="jkr")
    with pytest.raises(InvalidArgument, match="force"):
        fit_hertz([0, 1, 2], [0, 1], 20e-9)


# ---------------------------------------------------------------- SG/TC


def test_saito_on_generator_and_far():
    r = np.linspace(0, 0.999, 50)
    assert np.allclose(sgtc.disk_generator_concentration(r, 0.0, 1.0, 2.5), 2.5, rtol=1e-12)
    far = sgtc.disk_generator_concentration(0.0, 1e6, 1.0, 1.0)
    assert 0 < far < 1e-6
    assert sgtc.disk_generator_concentration(1e6, 1e6, 1.0, 1.0) < 1e-6
    # on the insulator: (2/π) arcsin(a/r)
    assert sgtc.disk_generator_concentration(2.0, 0.0, 1.0, 1.0) == pytest.approx(2 / math.pi * math.asin(0.5))


def test_saito_symmetric_in_z():
    r = np.linspace(0, 5, 21)[:, None]
    z = np.linspace(0.01, 5, 17)[None, :]
    assert np.array_equal(sgtc.disk_generator_concentration(r, z, 1.3, 1.0),
                          sgtc.disk_generator_concentration(r, -z, 1.3, 1.0))


def test_saito_on_axis_closed_form():
    # on the axis both square roots equal √(a² + z²): c(0,z) = (2c/π)·arcsin(a/√(a²+z²)) = (2c/π)·arctan(a/z)
    a, c = 2.0, 3.0
    z = np.logspace(-3, 3, 40)
    got = sgtc.disk_generator_concentration(0.0, z, a, c)
    assert np.allclose(got, 2 * c / np.pi * np.arcsin(1 / np.sqrt(1 + (z / a) ** 2)), rtol=1e-12)
    assert np.allclose(got, 2 * c / np.pi * np.arctan(a / z), rtol=1e-12)


def test_collection_efficiency_limits():
    L = np.array([0.0, 1e-4, 0.01, 0.1, 0.5, 1, 2, 5, 10, 100])
    ce = sgtc.collection_efficiency(L)
    assert ce[0] == pytest.approx(1.0, abs=1e-12)
    assert ce[1] > 0.999
    assert np.all(np.diff(ce) < 0)
    assert ce[-1] * L[-1] == pytest.approx(2 / np.pi, rel=1e-3)  # far field (2/π)/L
    # lateral offset lowers the efficiency; off-axis quadrature agrees with the axisymmetric one at offset → 0
    assert np.all(sgtc.collection_efficiency(L, lateral_offset=1.0) < ce)
    assert np.allclose(sgtc.collection_efficiency(L, lateral_offset=1e-9), ce, rtol=1e-6)
    # a smaller tip over a bigger generator cannot collect everything
    assert sgtc.collection_efficiency(0.0, generator_ratio=2.0) == pytest.approx(0.5, rel=1e-9)


def test_tip_collection_current_and_efficiency():
    a, D, c, n = 5e-6, 1e-9, 1.0, 1
    i_s = sgtc.generator_current(a, c, D, n)
    assert i_s == pytest.approx(4 * 96485.33212 * D * c * a, rel=1e-12)
    d = np.array([0.5e-6, 5e-6, 20e-6])
    i_t = sgtc.tip_collection_current(d, a, a, c, D, n)
    assert np.allclose(i_t / i_s, sgtc.collection_efficiency(d / a), rtol=1e-12)
    # point value at the tip centre is the on-axis closed form
    i_pt = sgtc.tip_collection_current(d, a, a, c, D, n, average=False)
    assert np.allclose(i_pt, 4 * 96485.33212 * D * a * (2 * c / np.pi) * np.arctan(a / d), rtol=1e-12)


def test_sgtc_bad_input():
    with pytest.raises(InvalidArgument, match="generator_radius"):
        sgtc.disk_generator_concentration(0, 1, 0, 1)
    with pytest.raises(InvalidArgument, match="c_surface"):
        sgtc.disk_generator_concentration(0, 1, 1, -1)
    with pytest.raises(InvalidArgument, match="L"):
        sgtc.collection_efficiency(-0.1)
    with pytest.raises(InvalidArgument, match="diffusion"):
        sgtc.tip_collection_current(1e-6, 5e-6, 5e-6, 1, 0)
    with pytest.raises(InvalidArgument, match="distance"):
        sgtc.tip_collection_current(-1e-6, 5e-6, 5e-6, 1, 1e-9)
