"""EC-AFM contact mechanics: Hertz / DMT contact of a spherical tip and a simulated approach force curve.

All quantities are SI: indentation δ, tip radius R, piezo position and deflection in m; Young's modulus E in Pa;
forces in N; spring constant in N/m.  (An SEI of E ≈ 1 GPa under a 20 nm tip at δ = 2 nm carries ≈ 23 nN.)

Hertz (rigid spherical tip on a flat elastic half-space):  F = (4/3) E* √R δ^(3/2),  E* = E / (1 − ν²).
DMT: the same elastic law shifted by a constant adhesion force F_ad (= 2πRw for a work of adhesion w) while in
contact, F = (4/3) E* √R δ^(3/2) − F_ad.  Out of contact (δ < 0) both return 0 (no long-range forces).
Positive force = repulsive (pushes the tip away from the sample).

Force-curve sign convention (see :func:`force_curve`): z_piezo increases TOWARD the sample; the undeflected tip
apex touches the surface at z_piezo = surface_z; the deflection is positive when the cantilever bends away from
the sample (repulsive load), F = k·deflection; indentation δ = (z_piezo − surface_z) − deflection.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from ..errors import check_finite, check_positive, check_range

__all__ = ["effective_modulus", "hertz_force", "dmt_force", "force_curve", "solve_indentation"]


def _poisson(poisson):
    return check_range("poisson", poisson, -1.0, 0.5, low_inclusive=False)


def effective_modulus(modulus: ArrayLike, poisson: ArrayLike = 0.5) -> np.ndarray:
    """Reduced modulus against a rigid tip, E* = E / (1 − ν²) (Pa)."""
    E = check_positive("modulus", modulus, units="Pa")
    nu = _poisson(poisson)
    return E / (1.0 - nu**2)


def _hertz_coeff(modulus, tip_radius, poisson):
    """C (N/m^1.5) in F = C δ^1.5."""
    R = check_positive("tip_radius", tip_radius, units="m")
    return (4.0 / 3.0) * effective_modulus(modulus, poisson) * np.sqrt(R)


def hertz_force(indentation: ArrayLike, modulus: ArrayLike, tip_radius: ArrayLike,
                poisson: ArrayLike = 0.5) -> np.ndarray:
    """Hertz force of a rigid sphere indenting a flat elastic sample, F = (4/3)·E/(1−ν²)·√R·δ^1.5 (N).

    Parameters
    ----------
    indentation : array_like
        Indentation δ (m).  δ ≤ 0 (no contact) gives 0.
    modulus : array_like
        Young's modulus of the sample E (Pa, > 0).  SEI: ~0.1–2 GPa.
    tip_radius : array_like
        Tip radius R (m, > 0), e.g. 10–30 nm.
    poisson : array_like
        Poisson ratio of the sample ν (−1 < ν ≤ 0.5), default 0.5 (incompressible).

    Returns
    -------
    numpy.ndarray
        Force in N (≥ 0).
    """
    d = check_finite("indentation", indentation)
    C = _hertz_coeff(modulus, tip_radius, poisson)
    return C * np.clip(d, 0.0, None) ** 1.5


def dmt_force(indentation: ArrayLike, modulus: ArrayLike, tip_radius: ArrayLike, adhesion: ArrayLike,
              poisson: ArrayLike = 0.5) -> np.ndarray:
    """DMT force: Hertz minus a constant adhesion force while in contact (N).

    F = (4/3)·E*·√R·δ^1.5 − F_ad for δ ≥ 0, and 0 for δ < 0 (out of contact).

    Parameters
    ----------
    indentation : array_like
        Indentation δ (m).
    modulus, tip_radius, poisson
        As in :func:`hertz_force` (Pa, m, dimensionless).
    adhesion : array_like
        Adhesion (pull-off) force F_ad = 2πRw (N, ≥ 0).
    """
    d = check_finite("indentation", indentation)
    Fad = check_range("adhesion", adhesion, 0.0, np.inf, units="N")
    C = _hertz_coeff(modulus, tip_radius, poisson)
    return np.where(d >= 0.0, C * np.clip(d, 0.0, None) ** 1.5 - Fad, 0.0)


def solve_indentation(travel: ArrayLike, spring_constant: ArrayLike, hertz_coefficient: ArrayLike,
                      adhesion: ArrayLike = 0.0, iterations: int = 200) -> np.ndarray:
    """Indentation δ ≥ 0 solving k·(travel − δ) = C·δ^1.5 − F_ad for travel ≥ 0 (vectorised).

    ``travel`` = z_piezo − surface_z (m).  The left side minus the right side is strictly decreasing in δ, with a
    sign change on [0, travel + F_ad/k], so bracketing bisection on arrays always converges; a final Newton
    polish brings it to machine precision.
    """
    s, k, C, Fad = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in
                                         (travel, spring_constant, hertz_coefficient, adhesion)))
    lo = np.zeros(s.shape)
    hi = np.clip(s + Fad / k, 0.0, None)

    def h(x):
        return x + (C * x**1.5 - Fad) / k - s

    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        pos = h(mid) > 0.0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
        if np.all(hi - lo <= 1e-15 * np.maximum(hi, 1e-300)):
            break
    x = 0.5 * (lo + hi)
    for _ in range(2):
        dh = 1.0 + 1.5 * C * np.sqrt(np.clip(x, 0.0, None)) / k
        xn = x - h(x) / dh
        x = np.where((xn >= lo) & (xn <= hi), xn, x)
    return x


def force_curve(z_piezo: ArrayLike, surface_z: float, spring_constant: float, modulus: float, tip_radius: float,
                poisson: float = 0.5, adhesion: float = 0.0, noise: float = 0.0,
                rng: Union[None, int, np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated approach force curve of a cantilever pressing a spherical tip into a Hertz/DMT sample.

    Convention: z_piezo increases toward the sample; the undeflected tip apex reaches the surface at
    z_piezo = surface_z.  With travel s = z_piezo − surface_z:

    * s < 0: no contact, deflection = 0, force = 0, indentation = 0;
    * s ≥ 0: contact; deflection and indentation solve k·defl = F(δ) and δ = s − defl self-consistently,
      with F the Hertz (adhesion = 0) or DMT law.  With adhesion the tip jumps into contact at s = 0 (the
      deflection there is negative: the tip is pulled toward the sample).  Retraction hysteresis is not modelled.

    Parameters
    ----------
    z_piezo : array_like
        Piezo positions (m), any shape.
    surface_z : float
        Piezo position of first contact (m).
    spring_constant : float
        Cantilever spring constant k (N/m, > 0).
    modulus : float
        Sample Young's modulus E (Pa, > 0).
    tip_radius : float
        Tip radius R (m, > 0).
    poisson : float
        Sample Poisson ratio (default 0.5).
    adhesion : float
        DMT adhesion force F_ad (N, ≥ 0); 0 gives pure Hertz.
    noise : float
        Standard deviation of additive Gaussian deflection noise, as a FRACTION of the largest |deflection| of the
        noiseless curve (e.g. 0.01 = 1 %).  Default 0.
    rng : None, int or numpy.random.Generator
        Random source for the noise (seed or generator).

    Returns
    -------
    deflection : numpy.ndarray
        Cantilever deflection (m), including noise (what the detector reports).
    force : numpy.ndarray
        k·deflection (N), including noise.
    indentation : numpy.ndarray
        True (noiseless) indentation δ (m), 0 out of contact.
    """
    z = check_finite("z_piezo", z_piezo)
    z0 = float(check_finite("surface_z", surface_z))
    k = check_positive("spring_constant", spring_constant, units="N/m")
    C = _hertz_coeff(modulus, tip_radius, poisson)
    Fad = check_range("adhesion", adhesion, 0.0, np.inf, units="N")
    noise = float(check_range("noise", noise, 0.0, np.inf))
    s = z - z0
    contact = s >= 0.0
    delta = np.where(contact, solve_indentation(np.clip(s, 0.0, None), k, C, Fad), 0.0)
    defl = np.where(contact, s - delta, 0.0)
    if noise > 0.0 and defl.size:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        scale = noise * float(np.max(np.abs(defl)))
        defl = defl + gen.normal(0.0, scale, size=defl.shape)
    return defl, k * defl, delta
