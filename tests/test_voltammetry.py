"""Voltammetry forward models and CV analysis, checked against published results and independent calculations.

References used:
- Randles–Ševčík reversible peak 0.4463 nFAc√(nfDv); reversible ΔEp ≈ 57.8 mV for switching ~270 mV past E1/2
  (Bard & Faulkner, 2nd ed., §6.2 and Table 6.5.1).
- Totally irreversible peak 0.4958 nFAc√(αnfDv) and Ep = E0 − (1/αf)[0.780 + ln(√D/k0) + ln√(αfv)] (B&F eq. 6.3.4/6.3.8).
- Nicholson, Anal. Chem. 37 (1965) 1351: ψ → ΔEp working curve.
- Cottrell; sphere step response i = nFADc(1/√(πDt) + 1/r) (B&F eq. 5.2.18); Sand equation iτ^½ = nFAc√(πD)/2 and
  the reversible chronopotentiogram E(τ/4) = E1/2 (B&F §8.2–8.3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from espt_bluesky.analysis import (
    cycle_charges,
    onset_potential,
    passivation_ratio,
    peak_currents_and_potentials,
    split_cycles,
)
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import voltammetry as V
from espt_bluesky.physics.constants import FARADAY, f_nernst

F = FARADAY
f = f_nernst()
D = 1e-9  # m^2/s
C = 1.0  # mol/m^3 (1 mM)
A = 1e-6  # m^2 (1 mm^2)
v = 0.1  # V/s


def couple(**kw) -> V.CellParams:
    base = dict(E0=0.0, k0=1.0, alpha=0.5, n=1, D_O=D, D_R=D, c_bulk_O=C, c_bulk_R=0.0, area=A, c_dl=0.0)
    base.update(kw)
    return V.CellParams(**base)


def step_charge(res) -> float:
    """Charge of the faradaic current in the simulator's step convention (C)."""
    return float(np.sum(res.faradaic[1:] * np.diff(res.t)))


# ----------------------------------------------------------------------------------------- reversible CV
@pytest.mark.parametrize("method", ["convolution", "fd"])
def test_reversible_peak_randles_sevcik_and_separation(method):
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 3000)  # reverse 300 mV past E1/2 (≈ 270 mV past Ep)
    res = V.simulate(t, E, couple(k0=1.0), method=method)
    ip = V.randles_sevcik_peak(1, A, C, D, v)
    assert ip == pytest.approx(0.4463 * F * A * C * math.sqrt(f * D * v))
    pk = peak_currents_and_potentials(t, E, res.current)
    assert len(pk.cycles) == 1
    assert -pk.ip_cathodic[0] == pytest.approx(ip, rel=0.01)
    assert 0.057 <= pk.delta_Ep[0] <= 0.060
    # reversible cathodic peak at E1/2 - 1.109 RT/F = -28.5 mV (B&F eq. 6.2.19)
    assert pk.Ep_cathodic[0] == pytest.approx(-1.109 / f, abs=1e-3)


def test_peak_current_scales_with_n_and_sqrt_v():
    for n, rate in ((2, 0.05), (1, 1.0)):
        t, E = V.lsv_waveform(0.3, -0.3, rate, 3000)
        res = V.simulate(t, E, couple(n=n))
        assert -res.current.min() == pytest.approx(V.randles_sevcik_peak(n, A, C, D, rate), rel=0.01)


def test_irreversible_peak_current_and_potential():
    alpha, k0 = 0.5, 1e-7
    t, E = V.lsv_waveform(0.2, -0.8, v, 4000)
    res = V.simulate(t, E, couple(k0=k0, alpha=alpha))
    k = int(np.argmin(res.current))
    assert -res.current[k] == pytest.approx(V.randles_sevcik_peak(1, A, C, D, v, alpha=alpha), rel=0.015)
    ep = -(1 / (alpha * f)) * (0.780 + math.log(math.sqrt(D) / k0) + math.log(math.sqrt(alpha * f * v)))
    assert E[k] == pytest.approx(ep, abs=2e-3)


# ----------------------------------------------------------------------------------------- Nicholson
@pytest.mark.parametrize("psi, delta_ep_mV", [(20, 61), (7, 63), (1, 84), (0.5, 105), (0.1, 212)])
def test_nicholson_working_curve(psi, delta_ep_mV):
    k0 = psi * math.sqrt(math.pi * D * f * v)
    assert V.nicholson_psi(k0, D, 1, v) == pytest.approx(psi)
    # switching ~150 mV past E0 (Nicholson's curves are for switching potentials just past the wave)
    t, E = V.cv_waveform(0.5, -0.15, 0.5, v, 1, 6000)  # 0.22 mV steps
    res = V.simulate(t, E, couple(k0=k0))
    pk = peak_currents_and_potentials(t, E, res.current)
    assert pk.delta_Ep[0] * 1e3 == pytest.approx(delta_ep_mV, abs=2.0)


def test_time_step_convergence():
    """Halving the step changes the reversible peak by < 0.1 %: the discretisation has converged."""
    p = couple()
    peaks = []
    for n in (2000, 4000):
        t, E = V.lsv_waveform(0.3, -0.3, v, n)
        peaks.append(V.simulate(t, E, p).current.min())
    assert peaks[1] == pytest.approx(peaks[0], rel=1e-3)


# ----------------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("method", ["convolution", "fd"])
def test_cottrell(method):
    t, E = V.step_waveform(-0.5, 1.0, 2001)
    res = V.simulate(t, E, couple(), method=method)
    cot = -F * A * C * np.sqrt(D / (np.pi * t[1:]))
    sel = (t[1:] >= 0.1) & (t[1:] <= 1.0)
    np.testing.assert_allclose(res.current[1:][sel], cot[sel], rtol=0.01)


@pytest.mark.parametrize("method", ["convolution", "fd"])
def test_hemisphere_step_matches_spherical_cottrell(method):
    r = 5e-6
    p = couple(area=2 * np.pi * r**2)
    t, E = V.step_waveform(-0.5, 0.5, 2001)
    res = V.simulate(t, E, p, geometry="hemisphere", radius=r, method=method)
    exact = -F * p.area * D * C * (1 / np.sqrt(np.pi * D * t[1:]) + 1 / r)
    sel = t[1:] >= 0.02
    np.testing.assert_allclose(res.current[1:][sel], exact[sel], rtol=0.015)


def test_hemisphere_slow_scan_reaches_steady_state_limit():
    r = 5e-6
    p = couple(area=2 * np.pi * r**2)
    t, E = V.lsv_waveform(0.3, -0.4, 0.005, 2000)
    res = V.simulate(t, E, p, geometry="hemisphere", radius=r)
    i_lim = 2 * np.pi * F * D * C * r
    assert -res.current[-1] == pytest.approx(i_lim, rel=0.02)
    # sigmoidal, not peaked: no maximum beyond the plateau
    assert -res.current.min() <= 1.02 * i_lim
    # half-wave potential of a reversible steady-state wave is E0 (equal D)
    assert onset_potential(E, res.current, 0.5 * i_lim) == pytest.approx(0.0, abs=3e-3)


# ----------------------------------------------------------------------------------------- conservation
@pytest.mark.parametrize("geometry, radius", [("planar", None), ("hemisphere", 20e-6)])
def test_charge_equals_moles_in_diffusion_layer(geometry, radius):
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 2, 2000)
    p = couple(k0=1e-5)
    res = V.simulate(t, E, p, geometry=geometry, radius=radius, method="fd")
    w = np.ones_like(res.x) if radius is None else (1 + res.x / radius) ** 2
    d_moles_O = np.trapezoid((res.c_O - C) * w, res.x)  # mol per m^2 of electrode
    d_moles_R = np.trapezoid(res.c_R * w, res.x)
    q = step_charge(res)
    assert q == pytest.approx(p.n * F * A * d_moles_O, rel=0.01)
    assert q == pytest.approx(-p.n * F * A * d_moles_R, rel=0.01)


def test_convolution_and_finite_difference_agree():
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 2000)
    p = couple(k0=3e-5, alpha=0.4, D_R=2e-9)
    a = V.simulate(t, E, p)
    b = V.simulate(t, E, p, method="fd")
    scale = np.abs(a.current).max()
    assert np.max(np.abs(a.current - b.current)) < 0.01 * scale
    np.testing.assert_allclose(a.c_O_surface, b.c_O_surface, atol=0.01 * C)


def test_surface_mass_balance_equal_diffusion_coefficients():
    """With D_O = D_R, c_O(0) + c_R(0) = c_O* + c_R* at all times (a property of the diffusion problem)."""
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 1500)
    res = V.simulate(t, E, couple(k0=1e-4, c_bulk_R=0.5))
    np.testing.assert_allclose(res.c_O_surface + res.c_R_surface, C + 0.5, atol=1e-9)


def test_capacitive_current():
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 500)
    res = V.simulate(t, E, couple(c_bulk_O=0.0, c_dl=0.2))
    # ±A·Cdl·v on the two sweeps
    assert res.capacitive[10] == pytest.approx(-A * 0.2 * v, rel=1e-9)
    assert res.capacitive[-10] == pytest.approx(A * 0.2 * v, rel=1e-9)
    np.testing.assert_allclose(res.current, res.faradaic + res.sei + res.capacitive)


# ----------------------------------------------------------------------------------------- SEI
def sei_params(cap: float) -> V.CellParams:
    return couple(c_bulk_O=0.0, E0=3.0, area=1e-12, sei_onset=0.8, sei_rate=1e-2, sei_tafel=0.25, sei_capacity=cap)


def test_sei_passivates_and_smaller_capacity_passivates_faster():
    t, E = V.cv_waveform(3.0, 0.01, 3.0, 0.1, 2, 4000)
    ratios = []
    for cap in (5.0, 1.0, 0.2):
        res = V.simulate(t, E, sei_params(cap))
        assert np.all(res.sei <= 0)
        q = cycle_charges(t, E, res.current)
        assert q.cathodic.size == 2
        assert q.cathodic[1] < q.cathodic[0]
        ratios.append(passivation_ratio(t, E, res.current))
        # coverage and charge are consistent, and the charge equals the integrated SEI current
        assert res.state.theta == pytest.approx(1 - math.exp(-res.state.sei_charge / cap), rel=1e-9)
        q_int = -np.sum(res.sei[1:] * np.diff(t)) / 1e-12
        assert res.state.sei_charge == pytest.approx(q_int, rel=1e-9)
    assert ratios[0] > ratios[1] > ratios[2]
    assert all(r < 1 for r in ratios)


def test_sei_state_continues_between_calls():
    t, E = V.cv_waveform(3.0, 0.01, 3.0, 0.1, 1, 2000)
    p = sei_params(1.0)
    first = V.simulate(t, E, p)
    second = V.simulate(t, E, p, state=first.state)
    both = V.simulate(*V.cv_waveform(3.0, 0.01, 3.0, 0.1, 2, 3999), p)
    assert second.state.sei_charge > first.state.sei_charge
    assert second.state.sei_charge == pytest.approx(both.state.sei_charge, rel=1e-3)
    q1, q2 = -np.sum(first.sei[1:]) , -np.sum(second.sei[1:])
    assert q2 < q1


def test_sei_constant_potential_matches_analytic_passivation_law():
    """At constant E: d(1-θ)/dt = -(1-θ)² k g / Q  ⇒  q(t) = Q ln(1 + k g t / Q)."""
    p = sei_params(0.3)
    t, E = V.step_waveform(0.4, 20.0, 201)
    res = V.simulate(t, E, p)
    g = 1.0 / (1.0 + 10 ** ((0.4 - 0.8) / 0.25))  # the drive of physics.sei, written out independently
    q_exact = 0.3 * np.log1p(1e-2 * g * t / 0.3)
    q_sim = np.concatenate([[0.0], np.cumsum(-res.sei[1:] * np.diff(t))]) / p.area
    np.testing.assert_allclose(q_sim, q_exact, rtol=1e-9, atol=1e-15)


def test_sei_blocks_redox_couple():
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 2000)
    p = couple(k0=1e-4, sei_rate=0.0, sei_blocking=0.9)
    clean = peak_currents_and_potentials(t, E, V.simulate(t, E, p).current)
    covered = peak_currents_and_potentials(t, E, V.simulate(t, E, p, state=V.SurfaceState(theta=1.0)).current)
    # k0 -> 0.1 k0 : psi drops 10x, the peaks separate further
    assert covered.delta_Ep[0] > clean.delta_Ep[0] + 0.02


# ----------------------------------------------------------------------------------------- galvanostatic
def test_galvanostatic_reproduces_applied_current():
    p = couple(k0=1e-5, c_bulk_R=0.5, c_dl=0.1, sei_onset=-0.2, sei_rate=1e-3, sei_tafel=0.2, sei_capacity=0.05)
    t = np.linspace(0, 2.0, 801)
    i_app = np.where(t < 1.0, -2e-6, 1e-6)
    g = V.simulate_galvanostatic(t, i_app, p)
    np.testing.assert_allclose(g.current[1:], i_app[1:], rtol=1e-6, atol=1e-14)
    back = V.simulate(t, g.E, p)
    np.testing.assert_allclose(back.current[1:], i_app[1:], rtol=1e-5, atol=1e-13)
    assert back.state.sei_charge == pytest.approx(g.state.sei_charge, rel=1e-6)


def test_sand_transition_time_and_reversible_chronopotentiogram():
    i = -5e-6
    tau = (F * A * C * math.sqrt(math.pi * D) / (2 * abs(i))) ** 2
    t = np.linspace(0, 1.5 * tau, 3001)
    g = V.simulate_galvanostatic(t, i, couple(k0=1.0), e_initial=0.3)
    # reversible: E = E1/2 + (1/f) ln((τ^½ - t^½)/t^½), so E(τ/4) = E1/2 = E0
    assert np.interp(tau / 4, t, g.E) == pytest.approx(0.0, abs=1e-3)
    t_fall = t[np.argmax(g.E < -0.3)]
    assert t_fall == pytest.approx(tau, rel=0.02)


def test_ocp_is_nernst_potential():
    p = couple(c_bulk_O=2.0, c_bulk_R=1.0)
    t = np.linspace(0, 1, 50)
    g = V.simulate_galvanostatic(t, 0.0, p, e_initial=0.05)
    np.testing.assert_allclose(g.E[1:], math.log(2.0) / f, atol=1e-6)
    assert V.equilibrium_potential(p, 2.0, 1.0) == pytest.approx(math.log(2.0) / f)


# ----------------------------------------------------------------------------------------- waveforms
def test_waveforms():
    t, E = V.cv_waveform(0.2, -0.4, 0.6, 0.5, 2, 4001)
    period = (0.6 + 1.0 + 0.4) / 0.5
    assert t[-1] == pytest.approx(2 * period)
    assert E[0] == pytest.approx(0.2) and E[-1] == pytest.approx(0.2)
    assert E.min() == pytest.approx(-0.4, abs=1e-3) and E.max() == pytest.approx(0.6, abs=1e-3)
    assert np.allclose(np.abs(np.diff(E) / np.diff(t))[np.abs(np.diff(E)) > 0][:100], 0.5)
    t, E = V.lsv_waveform(0.0, -1.0, 0.1, 11)
    assert t[-1] == pytest.approx(10.0) and E[-1] == -1.0
    t, E = V.step_waveform(-0.3, 2.0, 5)
    assert np.all(E == -0.3) and t[-1] == 2.0


# ----------------------------------------------------------------------------------------- analysis
@pytest.mark.parametrize("start, v1, v2", [(3.0, 0.01, 3.0), (2.0, 0.01, 3.0), (0.01, 0.01, 3.0), (1.0, 3.0, 0.0)])
def test_split_cycles(start, v1, v2):
    t, E = V.cv_waveform(start, v1, v2, 0.1, 3, 3001)
    cyc = split_cycles(t, E)
    assert len(cyc) == 3
    period = t[-1] / 3
    for k, sl in enumerate(cyc):
        assert t[sl][0] == pytest.approx(k * period, abs=2 * t[1])
        assert t[sl][-1] == pytest.approx((k + 1) * period, abs=2 * t[1])


def test_cycle_charges_of_sine():
    t, E = V.cv_waveform(3.0, 0.0, 3.0, 0.1, 3, 3001)
    period = t[-1] / 3
    i0 = 2e-9
    i = i0 * np.sin(2 * np.pi * t / period)
    q = cycle_charges(t, E, i)
    np.testing.assert_allclose(q.anodic, i0 * period / np.pi, rtol=1e-5)
    np.testing.assert_allclose(q.cathodic, i0 * period / np.pi, rtol=1e-5)
    np.testing.assert_allclose(q.net, 0.0, atol=1e-6 * i0 * period)


def test_cycle_charges_window_and_passivation_ratio():
    t, E = V.cv_waveform(3.0, 0.0, 3.0, 0.1, 2, 6001)
    period = t[-1] / 2
    amp = np.where(t < period, 1e-9, 0.4e-9)
    i = np.where(E < 0.8, -amp, 0.0)  # constant cathodic current below 0.8 V
    # time below 0.8 V per cycle: 2·0.8 V / 0.1 V/s = 16 s
    q = cycle_charges(t, E, i)
    np.testing.assert_allclose(q.cathodic, [16e-9, 6.4e-9], rtol=2e-3)
    assert passivation_ratio(t, E, i) == pytest.approx(0.4, rel=2e-3)
    qw = cycle_charges(t, E, i, e_window=(0.0, 0.4))  # 8 s per cycle inside the window
    # the windowed signal is discontinuous: each of the 2 edges per cycle is resolved to half a sample (0.01 s)
    np.testing.assert_allclose(qw.cathodic, [8e-9, 3.2e-9], rtol=2.6e-3)


def test_peaks_of_synthetic_gaussians():
    t, E = V.cv_waveform(0.5, -0.5, 0.5, 0.1, 1, 2001)
    down = np.arange(t.size) <= 1000
    w = 0.05
    i = np.where(down, -3e-6 * np.exp(-((E + 0.031) / w) ** 2), 2e-6 * np.exp(-((E - 0.027) / w) ** 2))
    pk = peak_currents_and_potentials(t, E, i)
    assert pk.Ep_cathodic[0] == pytest.approx(-0.031, abs=2e-5)
    assert pk.Ep_anodic[0] == pytest.approx(0.027, abs=2e-5)
    assert pk.delta_Ep[0] == pytest.approx(0.058, abs=4e-5)
    assert pk.ip_cathodic[0] == pytest.approx(-3e-6, rel=1e-4)
    assert pk.ip_anodic[0] == pytest.approx(2e-6, rel=1e-4)


def test_onset_potential():
    E = np.linspace(1.0, 0.0, 101)
    i = np.where(E < 0.6, -2e-6 * (0.6 - E), 0.0)  # linear below 0.6 V, 2 µA/V
    assert onset_potential(E, i, 0.2e-6) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(onset_potential(E, i, 1e-3))
    Eu = np.linspace(0.0, 1.0, 101)
    iu = np.where(Eu > 0.4, 2e-6 * (Eu - 0.4), 0.0)
    assert onset_potential(Eu, iu, 0.2e-6, direction="anodic") == pytest.approx(0.5, abs=1e-12)


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: V.cv_waveform(0, -1, 1, 0.0, 1, 100), "scan_rate"),
        (lambda: V.cv_waveform(0, -1, 1, -0.1, 1, 100), "scan_rate"),
        (lambda: V.cv_waveform(0, 1, 1, 0.1, 1, 100), "vertex"),
        (lambda: V.cv_waveform(0, -1, 1, 0.1, 1, 1), "n_samples"),
        (lambda: V.cv_waveform(2, -1, 1, 0.1, 1, 100), "e_start"),
        (lambda: V.cv_waveform(0, -1, 1, 0.1, 0, 100), "n_cycles"),
        (lambda: V.cv_waveform(float("nan"), -1, 1, 0.1, 1, 100), "e_start"),
        (lambda: V.lsv_waveform(0, 0, 0.1, 100), "e_end"),
        (lambda: V.step_waveform(0, -1, 100), "duration"),
        (lambda: couple(alpha=1.5), "alpha"),
        (lambda: couple(k0=-1.0), "k0"),
        (lambda: couple(n=0), "n"),
        (lambda: couple(sei_blocking=2.0), "sei_blocking"),
        (lambda: V.SurfaceState(theta=1.2), "theta"),
        (lambda: V.simulate([0, 1, 2], [0, 0], couple()), "lengths"),
        (lambda: V.simulate([0, 1, 2], [0, np.nan, 0], couple()), "E="),
        (lambda: V.simulate([0, 2, 1], [0, 0, 0], couple()), "increasing"),
        (lambda: V.simulate([0, 1, 2], [0, 0, 0], couple(), geometry="disk"), "geometry"),
        (lambda: V.simulate([0, 1, 2], [0, 0, 0], couple(), geometry="hemisphere"), "radius"),
        (lambda: V.simulate([0, 1, 2], [0, 0, 0], couple(), method="magic"), "method"),
        (lambda: V.simulate_galvanostatic([0, 1, 2], [0, 0], couple()), "lengths"),
        (lambda: V.randles_sevcik_peak(1, A, C, D, 0.0), "scan_rate"),
        (lambda: V.nicholson_psi(0.0, D, 1, v), "k0"),
        (lambda: split_cycles([], []), "empty"),
        (lambda: cycle_charges([0, 1, 2], [0, 1, 0], [0, 1]), "lengths"),
        (lambda: cycle_charges([0, 1, 2], [0, 1, 0], [0, np.nan, 1]), "i="),
        (lambda: peak_currents_and_potentials([0, 1, 2], [0, 1, np.inf], [0, 1, 2]), "E="),
        (lambda: onset_potential([0, 1], [0, 1], 0.0), "threshold"),
        (lambda: onset_potential([0, 1], [0, 1], 1.0, direction="up"), "direction"),
        (lambda: split_cycles([0, 1, 2], [1, 1, 1]), "constant"),
    ],
)
def test_bad_input(call, name):
    with pytest.raises(InvalidArgument, match=name):
        call()


def test_nonuniform_time_grid_and_reference_loop_agree_with_fast_path():
    t, E = V.cv_waveform(0.3, -0.3, 0.3, v, 1, 2000)
    p = couple(k0=1e-4, c_bulk_R=1e-6)  # start near equilibrium (no start-up transient)
    fast = V.simulate(t, E, p)
    jitter = t + 0.2 * (t[1] - t[0]) * np.sin(np.arange(t.size) * 1.7)
    jitter[0], jitter[-1] = t[0], t[-1]
    E_j = np.interp(jitter, t, E)
    slow = V.simulate(jitter, E_j, p)  # non-uniform steps use the generic loop
    i_fast_on_j = np.interp(jitter, t, fast.current)
    assert np.max(np.abs(slow.current - i_fast_on_j)) < 0.01 * np.abs(fast.current).max()
    # the SEI update does not depend on the diffusion solver: both loops give the same film
    ps = sei_params(0.5)
    t2, E2 = V.cv_waveform(3.0, 0.01, 3.0, 0.1, 1, 1000)
    a = V.simulate(t2, E2, ps)
    b = V.simulate(t2, E2, ps, method="fd")
    assert a.state.sei_charge == pytest.approx(b.state.sei_charge, rel=1e-12)
    np.testing.assert_allclose(a.sei, b.sei, rtol=1e-12, atol=0)


def test_charge_passed_of_a_sine_and_a_ramp():
    from espt_bluesky.analysis.voltammetry import charge_passed

    t = np.linspace(0.0, 2 * np.pi, 20001)
    assert abs(charge_passed(t, np.sin(t))) < 1e-9  # a full period nets zero
    assert charge_passed(t, 1e-6 * np.ones_like(t)) == pytest.approx(2e-6 * np.pi, rel=1e-12)
    assert charge_passed(t, -t) == pytest.approx(-0.5 * (2 * np.pi) ** 2, rel=1e-12)  # exact for linear i


def test_peak_refinement_is_the_parabola_vertex_and_survives_near_equal_potentials():
    """The parabolic peak refinement equals numpy's quadratic fit through the three samples, and a pair of
    potentials equal to the last bits (seen at the end of a bench CV: a singular 3x3 solve) keeps the sample."""
    from espt_bluesky.analysis.voltammetry import _refine

    rng = np.random.default_rng(3)
    for _ in range(20):
        x = np.sort(rng.uniform(-1.0, 1.0, 3))
        y = rng.normal(size=3)
        c = np.polyfit(x, y, 2)
        xv = -c[1] / (2 * c[0])
        got = _refine(x, y, 1)
        if x[0] <= xv <= x[2]:
            assert got == pytest.approx((xv, np.polyval(c, xv)), rel=1e-9, abs=1e-12)
        else:
            assert got == (x[1], y[1])
    e = np.array([2.95488722, 2.98496241, 2.98496241 + 4e-16])
    assert _refine(e, np.array([6.48e-13, 6.72e-13, 3.0e-15]), 1) == (e[1], 6.72e-13)
