"""SICM ion current through a conical nanopipette near a surface (ohmic model).

Model (Nitz et al. 1998, J. Microsc. 191, 137; Rheinlaender & Schäffer 2009, J. Appl. Phys. 105, 094905):
the pipette tip is a cone of half-angle θ ending in an aperture of inner radius r_i and outer (glass) radius r_o,
filled with and immersed in an electrolyte of conductivity κ.  The current at bias U is

    I(d) = U / (R_p + R_ac(d)),
    R_p      = 1 / (π κ r_i tanθ)                       (infinitely long cone, the usual approximation)
    R_ac(d)  = (3/2) ln(r_o/r_i) / (π κ d)               (access resistance of the gap of height d)

so that I(d) = I_sat / [1 + (3/2) ln(r_o/r_i) r_i tanθ / d] with I_sat = U / R_p.  With
A = (3/2) ln(r_o/r_i) r_i tanθ (a length, µm) this is I/I_sat = d / (d + A), whose analytic inverse gives the
working distance for a relative current drop f: d = A (1 − f) / f.

Validity: ohmic regime (≳ 100 mM electrolyte, no surface-charge rectification), d not ≪ r_i (the access
resistance form is an approximation from a ring-shaped gap; it is good to a few % for d ≳ r_i/2).

Units: lengths in µm, half-angle in degrees, conductivity in S/m, bias in V, resistance in Ω, current in A.

Contact: distances d ≤ 0 mean the pipette touches (or would be below) the surface.  The forward model clips
d to 0, i.e. returns zero current (the aperture is sealed); detecting and handling a crash is done elsewhere
(devices/plans raise :class:`~espt_bluesky.errors.TipCrash`).

Beyond a flat sample (:func:`annulus_points`, :func:`effective_gap`, :func:`ion_current_normalized_face`): the
access resistance comes from the gap under the pipette's whole end face, the annulus r_i ≤ r ≤ r_o, whatever the
sample does under it (slope, a particle rim, a step).  The ion current leaves the aperture and flows outwards
under the glass: along a radius the gap elements are in series (dR = dr / (κ r dφ d(r, φ))), the azimuthal
sectors in parallel, so that

    R_ac = 3 / (κ ∫₀^{2π} dφ / ∫_{r_i}^{r_o} dr / (r d(r, φ)))

which for a uniform gap d is exactly (3/2) ln(r_o/r_i)/(π κ d), the published form (the factor 3 over the bare
thin-gap value is Nitz's empirical prefactor, kept).  Written as an effective gap,
d_eff = ln(r_o/r_i) · ⟨1 / ∫ dr/(r d)⟩_φ and I/I_sat = d_eff / (d_eff + A).  A sector whose gap closes anywhere
(d ≤ 0) is sealed and conducts nothing.  This is a thin-gap model: it keeps the published calibration on flat
samples and adds what the end face sees; it does not model the 3-D spreading beyond r_o nor the pipette's side
wall (which rises at the cone angle and is not checked for contact).  A consequence worth knowing: on a tilted
plane the sectors average the gap almost linearly, so d_eff stays close to the gap under the axis, and the lowest
point of the face (gap d_axis − s·r_o on slope s) touches before the current reaches a setpoint whose distance is
below s·r_o: a hopping controller must keep that margin (see :func:`slope_safe_distance`).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgument, check_finite, check_positive, check_range

__all__ = [
    "pipette_resistance",
    "access_resistance",
    "ion_current",
    "ion_current_normalized",
    "distance_for_current_drop",
    "access_length",
    "annulus_points",
    "effective_gap",
    "ion_current_normalized_face",
    "slope_safe_distance",
]

_UM = 1e-6  # m per µm


def _geometry(inner_radius, outer_radius=None, half_angle=None):
    ri = check_positive("inner_radius", inner_radius, units="µm")
    out = [ri]
    if outer_radius is not None:
        ro = check_positive("outer_radius", outer_radius, units="µm")
        if np.any(np.asarray(ro) <= np.asarray(ri)):
            raise InvalidArgument(
                f"outer_radius={outer_radius!r} µm must be larger than inner_radius={inner_radius!r} µm"
            )
        out.append(ro)
    if half_angle is not None:
        th = check_range("half_angle", half_angle, 0.0, 90.0, low_inclusive=False, high_inclusive=False,
                         units="deg")
        out.append(th)
    return out


def _cone_factor(inner_radius, half_angle, length):
    """Return R_p·π·κ in 1/m: 1/(r_i tanθ) for an infinite cone, else the truncated-cone value."""
    ri_m = inner_radius * _UM
    tan = np.tan(np.deg2rad(half_angle))
    if length is None:
        return 1.0 / (ri_m * tan)
    L = check_positive("length", length, units="µm") * _UM
    # truncated cone from r_i to r_i + L tanθ: R = L / (π κ r_i (r_i + L tanθ))
    return L / (ri_m * (ri_m + L * tan))


def pipette_resistance(inner_radius: ArrayLike, half_angle: ArrayLike, conductivity: ArrayLike,
                       length: Optional[ArrayLike] = None) -> np.ndarray:
    """Resistance of the conical pipette tip, R_p (Ω).

    Parameters
    ----------
    inner_radius : array_like
        Inner aperture radius r_i (µm, > 0).
    half_angle : array_like
        Half-cone angle θ (degrees, 0 < θ < 90).
    conductivity : array_like
        Electrolyte conductivity κ (S/m, > 0).  E.g. 150 mM KCl ≈ 1.9 S/m (at 25 °C).
    length : array_like, optional
        Length of the conical part (µm).  ``None`` (default): infinitely long cone,
        R_p = 1/(π κ r_i tanθ).  Otherwise a truncated cone, R_p = L / (π κ r_i (r_i + L tanθ)),
        which tends to the infinite-cone value as L → ∞.

    Returns
    -------
    numpy.ndarray
        R_p in Ω.
    """
    ri, th = _geometry(inner_radius, half_angle=half_angle)
    kap = check_positive("conductivity", conductivity, units="S/m")
    return _cone_factor(ri, th, length) / (np.pi * kap)


def access_resistance(distance: ArrayLike, inner_radius: ArrayLike, outer_radius: ArrayLike,
                      conductivity: ArrayLike) -> np.ndarray:
    """Access resistance of the tip–sample gap, R_ac(d) = (3/2) ln(r_o/r_i) / (π κ d) (Ω).

    Parameters
    ----------
    distance : array_like
        Tip–sample distance d (µm, > 0; the resistance diverges at contact).
    inner_radius, outer_radius : array_like
        Inner and outer aperture radii (µm, r_o > r_i > 0).
    conductivity : array_like
        Electrolyte conductivity κ (S/m, > 0).
    """
    d = check_positive("distance", distance, units="µm")
    ri, ro = _geometry(inner_radius, outer_radius)
    kap = check_positive("conductivity", conductivity, units="S/m")
    return 1.5 * np.log(ro / ri) / (np.pi * kap * d * _UM)


def access_length(inner_radius: ArrayLike, outer_radius: ArrayLike, half_angle: ArrayLike,
                  length: Optional[ArrayLike] = None) -> np.ndarray:
    """Characteristic length A (µm) of the current–distance curve, I/I_sat = d / (d + A).

    A = R_ac(d)·d / R_p = (3/2) ln(r_o/r_i) r_i tanθ for an infinite cone (independent of κ).
    """
    ri, ro, th = _geometry(inner_radius, outer_radius, half_angle)
    cone = _cone_factor(ri, th, length)  # 1/m
    return 1.5 * np.log(ro / ri) / (cone * _UM)


def ion_current_normalized(distance: ArrayLike, inner_radius: ArrayLike, outer_radius: ArrayLike,
                           half_angle: ArrayLike, *, length: Optional[ArrayLike] = None) -> np.ndarray:
    """Normalised ion current I(d)/I_sat = 1 / [1 + (3/2) ln(r_o/r_i) r_i tanθ / d] (dimensionless).

    Parameters
    ----------
    distance : array_like
        Tip–sample distance d (µm).  d ≤ 0 (contact) is clipped to 0 and gives 0.
    inner_radius, outer_radius : array_like
        Aperture radii (µm, r_o > r_i > 0).
    half_angle : array_like
        Half-cone angle (degrees, 0 < θ < 90).
    length : array_like, optional
        Cone length (µm) for a truncated cone; default infinite cone (see :func:`pipette_resistance`).

    Returns
    -------
    numpy.ndarray
        I/I_sat in [0, 1), monotonically increasing in d, → 1 for d ≫ A.
    """
    d = np.clip(check_finite("distance", distance), 0.0, None)
    A = access_length(inner_radius, outer_radius, half_angle, length)
    return d / (d + A)


def ion_current(distance: ArrayLike, inner_radius: ArrayLike, outer_radius: ArrayLike, half_angle: ArrayLike,
                conductivity: ArrayLike, bias: ArrayLike, *, length: Optional[ArrayLike] = None) -> np.ndarray:
    """Ion current through the pipette, I(d) = I_sat / [1 + (3/2) ln(r_o/r_i) r_i tanθ / d] (A).

    Parameters
    ----------
    distance : array_like
        Tip–sample distance d (µm).  d ≤ 0 is clipped to contact and gives zero current.
    inner_radius, outer_radius : array_like
        Aperture radii (µm, r_o > r_i > 0).
    half_angle : array_like
        Half-cone angle (degrees, 0 < θ < 90).
    conductivity : array_like
        Electrolyte conductivity κ (S/m, > 0).
    bias : array_like
        Pipette bias U (V, any finite sign; the current has the sign of U).
    length : array_like, optional
        Cone length (µm); default infinite cone.

    Returns
    -------
    numpy.ndarray
        Current in A.  I_sat = U / R_p is the value far from the surface.
    """
    U = check_finite("bias", bias)
    i_sat = U / pipette_resistance(inner_radius, half_angle, conductivity, length)
    return i_sat * ion_current_normalized(distance, inner_radius, outer_radius, half_angle, length=length)


def distance_for_current_drop(fraction: ArrayLike, inner_radius: ArrayLike, outer_radius: ArrayLike,
                              half_angle: ArrayLike, *, length: Optional[ArrayLike] = None) -> np.ndarray:
    """Working distance at which the current has dropped by ``fraction`` of I_sat (µm).

    Analytic inverse of :func:`ion_current_normalized`: I/I_sat = 1 − f  ⇔  d = A (1 − f) / f with
    A = (3/2) ln(r_o/r_i) r_i tanθ.  Independent of conductivity and bias.

    Parameters
    ----------
    fraction : array_like
        Relative current drop f (0 < f < 1), e.g. 0.01 for a 1 % hopping setpoint.
    inner_radius, outer_radius : array_like
        Aperture radii (µm, r_o > r_i > 0).
    half_angle : array_like
        Half-cone angle (degrees, 0 < θ < 90).
    length : array_like, optional
        Cone length (µm); default infinite cone.

    Returns
    -------
    numpy.ndarray
        Distance d in µm.
    """
    f = check_range("fraction", fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    A = access_length(inner_radius, outer_radius, half_angle, length)
    return A * (1.0 - f) / f


def annulus_points(inner_radius: float, outer_radius: float, n_radial: int = 4,
                   n_azimuth: int = 16) -> dict[str, np.ndarray]:
    """Quadrature points of the pipette's end face (the glass annulus r_i ≤ r ≤ r_o), relative to the axis.

    Gauss–Legendre in ln r (exact for the flat-gap integral ∫ dr/(r d) = ln(r_o/r_i)/d) times a uniform
    azimuthal grid.

    Parameters
    ----------
    inner_radius, outer_radius : float
        Aperture radii (µm, r_o > r_i > 0).
    n_radial, n_azimuth : int
        Points along a radius and around the axis.

    Returns
    -------
    dict
        ``dx``, ``dy`` (µm, shape ``(n_azimuth, n_radial)``: offsets of the points from the axis), ``r`` (µm,
        ``(n_radial,)``), ``phi`` (rad, ``(n_azimuth,)``) and ``w`` (``(n_radial,)``: weights in ln r, summing to
        ln(r_o/r_i)).
    """
    ri, ro = _geometry(inner_radius, outer_radius)
    ri, ro = float(ri), float(ro)
    xg, wg = np.polynomial.legendre.leggauss(int(n_radial))
    half = 0.5 * math.log(ro / ri)
    r = np.exp(half * xg + 0.5 * math.log(ro * ri))
    phi = (np.arange(int(n_azimuth)) + 0.5) * (2.0 * math.pi / int(n_azimuth))
    return dict(dx=r[None, :] * np.cos(phi)[:, None], dy=r[None, :] * np.sin(phi)[:, None], r=r, phi=phi,
                w=half * wg)


def effective_gap(gaps: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Effective gap d_eff (µm) of the access resistance over the end face, sectors in parallel.

    Parameters
    ----------
    gaps : array_like
        Gap d(r, φ) between the face and the sample (µm) at the points of :func:`annulus_points`, shape
        ``(..., n_azimuth, n_radial)``.  A sector with any gap ≤ 0 is sealed.
    weights : array_like
        The ``w`` of :func:`annulus_points` (weights in ln r, ``(n_radial,)``).

    Returns
    -------
    numpy.ndarray
        d_eff = ln(r_o/r_i) · mean over φ of 1 / Σ_k w_k / d_k (µm), shape ``gaps.shape[:-2]``; equal to d for a
        uniform gap, 0 when every sector is sealed.
    """
    g = np.asarray(check_finite("gaps", gaps), float)
    w = np.asarray(weights, float)
    open_ = np.all(g > 0.0, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        resist = np.sum(w / np.where(g > 0.0, g, np.inf), axis=-1)  # ∫ dr/(r d) per sector
        conduct = np.where(open_, 1.0 / resist, 0.0)
    return w.sum() * conduct.mean(axis=-1)


def ion_current_normalized_face(gaps: ArrayLike, inner_radius: ArrayLike, outer_radius: ArrayLike,
                                half_angle: ArrayLike, weights: ArrayLike, *,
                                length: Optional[ArrayLike] = None) -> np.ndarray:
    """Normalised ion current I/I_sat = d_eff / (d_eff + A) from the gap under the whole end face.

    Parameters
    ----------
    gaps : array_like
        Gap (µm) at the points of :func:`annulus_points` built for the same radii, shape
        ``(..., n_azimuth, n_radial)``.
    inner_radius, outer_radius : array_like
        Aperture radii (µm, r_o > r_i > 0).
    half_angle : array_like
        Half-cone angle (degrees, 0 < θ < 90).
    weights : array_like
        The ``w`` of :func:`annulus_points`.
    length : array_like, optional
        Cone length (µm); default infinite cone.

    Returns
    -------
    numpy.ndarray
        I/I_sat in [0, 1), shape ``gaps.shape[:-2]``.  For a uniform gap d it equals
        :func:`ion_current_normalized` (d).
    """
    d = effective_gap(gaps, weights)
    A = access_length(inner_radius, outer_radius, half_angle, length)
    return d / (d + A)


def slope_safe_distance(slope: ArrayLike, outer_radius: ArrayLike, margin: ArrayLike = 0.0) -> np.ndarray:
    """Axis gap (µm) at which the lowest point of the end face still clears a plane of ``slope`` by ``margin``.

    d_safe = s · r_o + margin: a setpoint distance below this lets the glass rim touch first (the current under
    the face averages the gap nearly linearly and gives no warning).

    Parameters
    ----------
    slope : array_like
        |∇h| of the sample under the pipette (dimensionless, ≥ 0).
    outer_radius : array_like
        Outer radius of the end face r_o (µm).
    margin : array_like
        Extra clearance (µm).
    """
    s = check_range("slope", slope, 0.0, np.inf)
    return s * check_positive("outer_radius", outer_radius, units="µm") + np.asarray(margin, float)
