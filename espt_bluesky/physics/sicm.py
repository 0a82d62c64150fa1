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
"""

from __future__ import annotations

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
