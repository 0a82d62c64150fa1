"""SECM substrate-generation / tip-collection (SG/TC) over a disk generator.

Concentration field (Saito 1968): a disk of radius a_s in an insulating plane held at surface concentration c_s
(diffusion-limited generation of a species absent in the bulk) gives, at steady state in the half-space,

    c(r, z) = (2 c_s / π) · arcsin( 2 a_s / [√((r − a_s)² + z²) + √((r + a_s)² + z²)] ).

It equals c_s on the disk, (2c_s/π)·arcsin(a_s/r) on the insulator (z = 0, r > a_s), falls as 2 c_s a_s/(π ρ) far
away (ρ = distance from the disk centre), and on the axis c(0, z) = (2 c_s/π)·arcsin(1/√(1 + (z/a_s)²))
= (2 c_s/π)·arctan(a_s/z).  The total generator current is the disk's i_s = 4 n F D c_s a_s.

Tip collection (approximation used here): the tip is NON-PERTURBING — it does not change the generator field
(no shielding, no feedback), and its diffusion-limited current is i_t ≈ 4 n F D ⟨c⟩ a_t, with ⟨c⟩ the Saito
concentration averaged over the tip disk in the plane z = d (a point value at the tip centre if requested).
The collection efficiency is then

    CE = i_t / i_s = (a_t / a_s) · ⟨c⟩(d) / c_s,

which is exactly 1 at d = 0 for a tip of the same size as the generator and aligned with it (⟨c⟩ = c_s over
the disk), decreases monotonically with d (c decreases with z at every r), and tends to (2/π)/L for L ≫ 1.
Known limitation: a real collecting tip at small L depletes the gap and draws extra flux from the generator
(feedback), and a tip larger than the generator cannot collect more than the generator makes; the average
model would exceed 1 for a_t > a_s at small L, so CE is clipped to 1.

Units: :func:`disk_generator_concentration` takes lengths in any one unit and returns concentration in the unit
of ``c_surface``.  :func:`tip_collection_current` is SI: lengths in m, concentration in mol/m³ (= mM),
D in m²/s, current in A.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import check_finite, check_positive, check_range
from .constants import FARADAY

__all__ = [
    "disk_generator_concentration",
    "mean_tip_concentration",
    "tip_collection_current",
    "generator_current",
    "collection_efficiency",
]

_NR = 96  # Gauss–Legendre nodes per radial segment
_NPHI = 64  # azimuthal nodes (periodic trapezoid) for off-axis tips


def _saito(r, z, a, c):
    r = np.abs(r)
    z = np.abs(z)
    den = np.sqrt((r - a) ** 2 + z**2) + np.sqrt((r + a) ** 2 + z**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        arg = np.where(den > 0.0, 2.0 * a / den, 1.0)
    return (2.0 * c / np.pi) * np.arcsin(np.clip(arg, 0.0, 1.0))


def disk_generator_concentration(r: ArrayLike, z: ArrayLike, generator_radius: ArrayLike,
                                 c_surface: ArrayLike) -> np.ndarray:
    """Saito steady-state concentration above a disk generator.

    Parameters
    ----------
    r : array_like
        Radial distance from the generator axis (any length unit; the field depends on |r|).
    z : array_like
        Height above the generator plane (same unit; symmetric in the sign of z).
    generator_radius : array_like
        Generator disk radius a_s (same unit, > 0).
    c_surface : array_like
        Concentration held on the generator surface c_s (any concentration unit, ≥ 0).

    Returns
    -------
    numpy.ndarray
        c(r, z) in the unit of ``c_surface``; c = c_s on the disk (z = 0, r ≤ a_s), → 0 far away.
    """
    r = check_finite("r", r)
    z = check_finite("z", z)
    a = check_positive("generator_radius", generator_radius)
    c = check_range("c_surface", c_surface, 0.0, np.inf)
    return _saito(r, z, a, c)


def _gauss_segment(lo, hi, n=_NR):
    """Nodes/weights of ∫_lo^hi f(ρ) ρ dρ (lo, hi broadcastable arrays; nodes on the last axis)."""
    x, w = np.polynomial.legendre.leggauss(n)
    lo = np.asarray(lo, dtype=float)[..., None]
    hi = np.asarray(hi, dtype=float)[..., None]
    half = 0.5 * (hi - lo)
    rho = lo + half * (x + 1.0)
    return rho, half * w * rho


def _mean_dimensionless(L, ratio, offset):
    """⟨c⟩/c_s over a tip disk of unit radius at height L, generator radius ``ratio``, lateral ``offset``."""
    L, ratio, offset = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (L, ratio, offset)))
    out = np.empty(L.shape)
    on = offset == 0.0
    if np.any(on):
        # axisymmetric: split the radial integral at the generator edge, where the field has a kink at L → 0
        Lo, ro = L[on], ratio[on]
        edge = np.minimum(ro, 1.0)
        p1, w1 = _gauss_segment(0.0, edge)
        p2, w2 = _gauss_segment(edge, 1.0)
        s = (w1 * _saito(p1, Lo[..., None], ro[..., None], 1.0)).sum(-1)
        s += (w2 * _saito(p2, Lo[..., None], ro[..., None], 1.0)).sum(-1)
        out[on] = 2.0 * s  # ∫ c 2πρ dρ / π
    off = ~on
    if np.any(off):
        Lf, rf, xf = L[off], ratio[off], offset[off]
        rho, w = _gauss_segment(0.0, 1.0)  # (m, n)
        phi = 2.0 * np.pi * np.arange(_NPHI) / _NPHI
        X = xf[:, None, None] + rho[..., None] * np.cos(phi)
        Y = rho[..., None] * np.sin(phi)
        rr = np.hypot(X, Y)
        c = _saito(rr, Lf[:, None, None], rf[:, None, None], 1.0).mean(-1)  # azimuthal mean
        out[off] = 2.0 * (w * c).sum(-1)
    return out


def mean_tip_concentration(L: ArrayLike, generator_ratio: ArrayLike = 1.0,
                           lateral_offset: ArrayLike = 0.0) -> np.ndarray:
    """⟨c⟩/c_s: Saito concentration averaged over the tip disk (dimensionless).

    Parameters
    ----------
    L : array_like
        Tip–generator distance over tip radius, d/a_t (≥ 0).
    generator_ratio : array_like
        a_s / a_t (> 0).
    lateral_offset : array_like
        Lateral distance between tip and generator axes over a_t (≥ 0).
    """
    L = check_range("L", L, 0.0, np.inf)
    ratio = check_positive("generator_ratio", generator_ratio)
    off = check_range("lateral_offset", lateral_offset, 0.0, np.inf)
    return _mean_dimensionless(L, ratio, off)


def generator_current(generator_radius: ArrayLike, c_surface: ArrayLike, diffusion: ArrayLike,
                      n: ArrayLike = 1) -> np.ndarray:
    """Diffusion-limited current of the disk generator, i_s = 4 n F D c_s a_s (A; SI inputs: m, mol/m³, m²/s)."""
    a = check_positive("generator_radius", generator_radius, units="m")
    c = check_range("c_surface", c_surface, 0.0, np.inf, units="mol/m^3")
    D = check_positive("diffusion", diffusion, units="m^2/s")
    nn = check_positive("n", n)
    return 4.0 * nn * FARADAY * D * c * a


def tip_collection_current(distance: ArrayLike, tip_radius: ArrayLike, generator_radius: ArrayLike,
                           c_surface: ArrayLike, diffusion: ArrayLike, n: ArrayLike = 1,
                           lateral_offset: ArrayLike = 0.0, average: bool = True) -> np.ndarray:
    """Collection current of a non-perturbing disk tip above a disk generator, i ≈ 4 n F D ⟨c⟩ a_t (A).

    Parameters
    ----------
    distance : array_like
        Tip–generator distance d (m, ≥ 0).
    tip_radius : array_like
        Tip radius a_t (m, > 0).
    generator_radius : array_like
        Generator radius a_s (m, > 0).
    c_surface : array_like
        Concentration on the generator surface (mol/m³ = mM, ≥ 0).
    diffusion : array_like
        Diffusion coefficient D of the collected species (m²/s, > 0; 1e-9 m²/s = 1e-5 cm²/s).
    n : array_like
        Electrons per collected molecule (> 0), default 1.
    lateral_offset : array_like
        Lateral distance of the tip axis from the generator axis (m, ≥ 0).
    average : bool
        True (default): ⟨c⟩ averaged over the tip disk; False: the concentration at the tip centre.

    Returns
    -------
    numpy.ndarray
        Tip current magnitude in A.
    """
    d = check_range("distance", distance, 0.0, np.inf, units="m")
    at = check_positive("tip_radius", tip_radius, units="m")
    a_s = check_positive("generator_radius", generator_radius, units="m")
    c = check_range("c_surface", c_surface, 0.0, np.inf, units="mol/m^3")
    D = check_positive("diffusion", diffusion, units="m^2/s")
    nn = check_positive("n", n)
    x = check_range("lateral_offset", lateral_offset, 0.0, np.inf, units="m")
    if average:
        cm = c * _mean_dimensionless(d / at, a_s / at, x / at)
    else:
        cm = _saito(x, d, a_s, c)
    return 4.0 * nn * FARADAY * D * cm * at


def collection_efficiency(L: ArrayLike, generator_ratio: ArrayLike = 1.0,
                          lateral_offset: ArrayLike = 0.0) -> np.ndarray:
    """SG/TC collection efficiency |i_tip / i_generator| in the non-perturbing-tip approximation.

    CE = (a_t/a_s)·⟨c⟩/c_s with ⟨c⟩ the Saito concentration averaged over the tip disk at height d (see the
    module docstring for the approximation and its limits), clipped to ≤ 1.

    Parameters
    ----------
    L : array_like
        d / a_t (≥ 0).
    generator_ratio : array_like
        a_s / a_t (> 0); 1 for tip and generator of equal size (then CE → 1 as L → 0).
    lateral_offset : array_like
        Lateral offset of the axes over a_t (≥ 0).

    Returns
    -------
    numpy.ndarray
        CE in [0, 1], decreasing with L; ≈ (2/π)/L for L ≫ 1.
    """
    L = check_range("L", L, 0.0, np.inf)
    ratio = check_positive("generator_ratio", generator_ratio)
    off = check_range("lateral_offset", lateral_offset, 0.0, np.inf)
    return np.minimum(_mean_dimensionless(L, ratio, off) / ratio, 1.0)
