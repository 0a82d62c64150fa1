"""Exact SECM feedback: solver limits, tables against direct solves, published approximations, bad input.

Solves here use moderate meshes (level 1, ~0.1 % accurate; a few Richardson pairs where a tight limit is checked)
so the file runs in well under a minute.  The full table generation is never run here.
"""

from __future__ import annotations

import numpy as np
import pytest

from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import secm, secm_analytical, secm_solver


def _rich(f, l1=1.0, l2=2.0):
    f1, f2 = f(l1), f(l2)
    return f2 + (f2 - f1) * l1**2 / (l2**2 - l1**2)


# ---------------------------------------------------------------------------------------------------------------
# solver limits (independent of the tables)
# ---------------------------------------------------------------------------------------------------------------


def test_isolated_disk_in_infinite_plane_is_4():
    # Saito: i = 4 n F D c* a for an inlaid disk in an infinite insulating plane
    i1 = secm_solver.isolated_tip_current(np.inf, 1.0)
    assert abs(i1 / 4.0 - 1.0) < 3e-3
    i = _rich(lambda lv: secm_solver.isolated_tip_current(np.inf, lv))
    assert abs(i / 4.0 - 1.0) < 3e-4


def test_mesh_convergence_second_order():
    # error shrinks ~4x when the grading factor is halved (second order), so Richardson is justified
    e1 = secm_solver.isolated_tip_current(np.inf, 1.0) - 4.0
    e2 = secm_solver.isolated_tip_current(np.inf, 2.0) - 4.0
    assert 3.0 < e1 / e2 < 5.0


@pytest.mark.parametrize("rg", [1.5, 10.0])
def test_beta_rg_against_lefrou(rg):
    # Lefrou's β(RG) fit is quoted to better than ~0.5 %; β(10) ≈ 1.018, β(1.5) ≈ 1.16
    i = _rich(lambda lv: secm_solver.isolated_tip_current(rg, lv))
    assert i / 4.0 == pytest.approx(float(secm_analytical.beta(rg)), rel=5e-3)
    # back diffusion makes a thin sheath draw more current than a thick one
    assert i > 4.0


def test_beta_monotonic_and_tables():
    rgs = np.array([1.1, 1.5, 3.0, 10.0, 20.0, 1e6])
    b = secm.tip_current_inf(rgs) / 4.0
    assert np.all(np.diff(b) < 0)
    assert b[-1] == pytest.approx(1.0, abs=1e-3)
    assert float(secm.tip_current_inf(np.inf)) == pytest.approx(4.0, rel=3e-4)
    np.testing.assert_allclose(b[:-1], secm_analytical.beta(rgs[:-1]), rtol=5e-3)


def test_large_distance_tends_to_one():
    kap = np.array([0.0, 1.0, np.inf])
    I30 = secm_solver.tip_current(30.0, 10.0, kap, 1.0) / secm_solver.isolated_tip_current(10.0, 1.0)
    np.testing.assert_allclose(I30, 1.0, atol=0.02)
    I3 = secm_solver.tip_current(3.0, 10.0, kap, 1.0) / secm_solver.isolated_tip_current(10.0, 1.0)
    # farther is closer to 1 for both signs of feedback
    assert np.all(np.abs(I30 - 1.0) < np.abs(I3 - 1.0))


def test_feedback_sign_and_monotonic_in_kappa():
    kap = np.array([0.0, 0.01, 0.1, 1.0, 10.0, 100.0, np.inf])
    I = secm_solver.tip_current(0.5, 5.0, kap, 1.0) / secm_solver.isolated_tip_current(5.0, 1.0)
    assert I[0] < 1.0 < I[-1]
    assert np.all(np.diff(I) > 0)


def test_conductor_thin_layer_limit():
    # leading order for L -> 0: all flux crosses the thin layer under the disk, i = n F D c* pi a^2 / d,
    # so I - pi / (4 beta L) stays bounded (it tends to a constant of order 1) while I itself diverges.
    rg = 10.0
    iinf = secm_solver.isolated_tip_current(rg, 1.0)
    d = []
    for L in (0.05, 0.1):
        itip = secm_solver.tip_current(L, rg, [np.inf], 1.0)[0]
        d.append(itip / iinf - np.pi / (4.0 * (iinf / 4.0) * L))
    assert 0.3 < d[0] < 1.0 and 0.3 < d[1] < 1.0
    assert abs(d[0] - d[1]) < 0.1


def test_slow_kinetics_thin_gap_linear_response():
    # independent check of the kinetic boundary: for a thin gap (L << 1 << RG) and κ -> 0, the insulator field
    # is radial, c0(r) = ln r / ln RG under the sheath (c0 ~ 0 under the disk), and a molecule regenerated at r
    # reaches the disk with probability 1 - c0(r).  Linear response: dI/dκ = ∫ (1 - c0)² dA / i_inf.
    from scipy.integrate import quad

    rg, L = 20.0, 0.05
    integral = np.pi + quad(lambda r: (1 - np.log(r) / np.log(rg)) ** 2 * 2 * np.pi * r, 1.0, rg)[0]
    iinf = secm_solver.isolated_tip_current(rg, 1.0)
    i0, i1 = secm_solver.tip_current(L, rg, [0.0, 1e-6], 1.0)
    slope = (i1 - i0) / 1e-6 / iinf
    assert slope == pytest.approx(integral / iinf, rel=0.03)
    # and the insulator current itself is the thin-layer radial flux 2πL/ln(RG) (to O(L))
    assert i0 == pytest.approx(2 * np.pi * L / np.log(rg), rel=0.05)


# ---------------------------------------------------------------------------------------------------------------
# tables against direct solves at random off-grid points
# ---------------------------------------------------------------------------------------------------------------


def test_tables_match_direct_solves_off_grid():
    rng = np.random.default_rng(2024)
    n = 4
    Ls = np.exp(rng.uniform(np.log(0.05), np.log(10.0), n))
    rgs = np.exp(rng.uniform(np.log(1.1 - 0.9), np.log(100.0 - 0.9), n)) + 0.9
    kaps = 10.0 ** rng.uniform(-2.5, 2.5, n)
    for L, rg, k in zip(Ls, rgs, kaps):
        kk = np.array([0.0, k, np.inf])
        exact = secm_solver.tip_current(L, rg, kk, 1.0) / secm_solver.isolated_tip_current(rg, 1.0)
        tab = secm.feedback_current(L, rg, kk)
        np.testing.assert_allclose(tab, exact, rtol=0.01, err_msg=f"L={L}, RG={rg}, kappa={k}")
        # level 1 itself is ~0.1 % accurate; the table should be well inside 0.5 %
        np.testing.assert_allclose(tab, exact, rtol=0.005)


def test_table_limits_and_shapes():
    assert secm.feedback_current(2.0, 10.0, 0.0).shape == ()
    out = secm.feedback_current(np.ones((3, 4)), 10.0, np.array([0.0, 0.1, 10.0, np.inf]))
    assert out.shape == (3, 4)
    # continuity across the κ blends at the table ends
    L, rg = 0.3, 4.0
    assert float(secm.feedback_current(L, rg, 1e-9)) == pytest.approx(float(secm.feedback_current(L, rg, 0.0)), rel=1e-6)
    assert float(secm.feedback_current(L, rg, 1e9)) == pytest.approx(float(secm.feedback_current(L, rg, np.inf)), rel=1e-6)
    # continuity at the edges of the tabulated box (fallback takes over smoothly)
    for L_edge in (0.05, 10.0):
        a = secm.feedback_current(L_edge * (1 - 1e-9), 5.0, 0.3)
        b = secm.feedback_current(L_edge * (1 + 1e-9), 5.0, 0.3)
        assert float(a) == pytest.approx(float(b), rel=1e-6)
    rg_max = secm._tables().rg_max
    assert rg_max > 100.0
    for kap in (0.0, 0.3, np.inf):
        a = secm.feedback_current(1.0, rg_max * (1 + 1e-9), kap)
        b = secm.feedback_current(1.0, rg_max * (1 - 1e-9), kap)
        assert float(a) == pytest.approx(float(b), rel=1e-6)
    # outside: sensible limits
    assert float(secm.feedback_current(200.0, 10.0, 0.0)) == pytest.approx(1.0, abs=0.01)
    assert float(secm.feedback_current(1.0, 1000.0, np.inf)) > 1.0
    assert float(secm.feedback_current(0.01, 10.0, np.inf)) > float(secm.feedback_current(0.05, 10.0, np.inf))


# ---------------------------------------------------------------------------------------------------------------
# published approximations
# ---------------------------------------------------------------------------------------------------------------


def _plus_sign_variant(L, rg, kappa):
    """The widely copied variant with +0.0236·RG in the κ exponent (wrong)."""
    ins = secm_analytical.insulator(L, rg)
    cond = secm_analytical.conductor(L + 1.0 / kappa, rg)
    den = (1.0 + 2.47 * rg**0.31 * L * kappa) * (1.0 + L ** (0.006 * rg + 0.113) * kappa ** (0.0236 * rg + 0.91))
    return cond + (ins - 1.0) / den


def test_cornut_lefrou_good_at_L1():
    kap = np.array([0.0, 0.01, 0.1, 0.3, 1.0, 10.0, np.inf])
    for rg in (1.5, 10.0):
        exact = secm.feedback_current(1.0, rg, kap)
        approx = secm_analytical.kinetic(1.0, rg, kap)
        np.testing.assert_allclose(approx, exact, rtol=0.02)


def test_cornut_lefrou_off_by_several_percent_at_small_L_slow_kinetics():
    L = np.geomspace(0.05, 0.3, 8)[:, None]
    kap = np.geomspace(0.01, 0.3, 8)[None, :]
    dev = secm_analytical.kinetic(L, 10.0, kap) / secm.feedback_current(L, 10.0, kap) - 1.0
    assert np.max(np.abs(dev)) > 0.03
    assert np.max(np.abs(dev)) < 0.2


def test_plus_sign_variant_is_off_by_tens_of_percent():
    L = np.geomspace(0.05, 0.3, 8)[:, None]
    kap = np.geomspace(0.01, 0.3, 8)[None, :]
    dev = _plus_sign_variant(L, 10.0, kap) / secm.feedback_current(L, 10.0, kap) - 1.0
    assert np.max(np.abs(dev)) > 0.2


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,name",
    [
        ((0.0, 10.0, 1.0), "L"),
        ((-1.0, 10.0, 1.0), "L"),
        ((np.nan, 10.0, 1.0), "L"),
        ((1.0, 1.0, 1.0), "rg"),
        ((1.0, 0.5, 1.0), "rg"),
        ((1.0, np.nan, 1.0), "rg"),
        ((1.0, 10.0, -0.1), "kappa"),
        ((1.0, 10.0, np.nan), "kappa"),
        (([1.0, -2.0], 10.0, 1.0), "L"),
    ],
)
def test_bad_input(args, name):
    with pytest.raises(InvalidArgument, match=name):
        secm.feedback_current(*args)


@pytest.mark.parametrize("rg", [1.0, 0.3, np.nan, -2.0])
def test_bad_rg_tip_current_inf(rg):
    with pytest.raises(InvalidArgument, match="rg"):
        secm.tip_current_inf(rg)
