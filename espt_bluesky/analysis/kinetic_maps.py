"""SECM kinetic maps: the dimensionless rate constant κ and the rate constant k per pixel of a feedback image.

Plain numpy.  Inputs: the normalised tip current I_T = i_T/i_T,inf of each pixel and the tip–substrate distance
d of each pixel (µm) — the tilt-corrected distance from the tip height and the sample plane
(:func:`tilt_corrected_distance`).  Each pixel is inverted on the first-order feedback curve I_T(L, RG, κ),
L = d/a, by :func:`espt_bluesky.analysis.approach_fit.kappa_from_current` (exact SECM physics of
``physics.secm``); k = κ·D/a in m/s.

A pixel whose current lies at or beyond the diffusion-limited conductor curve gets κ = inf, one at or below the
inert-insulator curve κ = 0; both are flagged (``at_conductor_limit``, ``at_insulator_limit``): the image only
bounds κ there.  With a footprint of radius ≈ a + d the map is the κ of the *averaged* current; deconvolve first
(:mod:`espt_bluesky.analysis.resolution`) for sharper maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidArgument, check_finite, check_positive, check_range

__all__ = ["KineticMap", "tilt_corrected_distance", "invert_kappa", "kinetic_map", "classify_kappa",
           "theoretical_i_inf"]


def theoretical_i_inf(probe: Mapping[str, Any] | None, mediator: Mapping[str, Any] | None) -> float:
    """i_T,inf = 4·n·F·D·c*·a·β(RG) in A from probe and mediator metadata (start-document entries).

    Parameters
    ----------
    probe : dict
        ``radius`` (µm) and ``rg`` (default 10) of a UME.
    mediator : dict
        ``D`` (m²/s), ``c`` (mol/m³ = mM), ``n`` (default 1).

    Raises
    ------
    InvalidArgument
        Naming the missing or invalid entry.
    """
    from ..physics import secm
    from ..physics.constants import FARADAY

    if not isinstance(probe, Mapping) or probe.get("radius") is None:
        raise InvalidArgument(f"probe={probe!r} lacks 'radius' (µm)")
    if not isinstance(mediator, Mapping) or mediator.get("D") is None or mediator.get("c") is None:
        raise InvalidArgument(f"mediator={mediator!r} lacks 'D' (m²/s) or 'c' (mol/m³)")
    a = float(check_positive("probe radius", probe["radius"], units="µm"))
    rg = float(check_range("probe rg", probe.get("rg", 10.0), 1.0, np.inf, low_inclusive=False))
    D = float(check_positive("mediator D", mediator["D"], units="m^2/s"))
    c = float(check_positive("mediator c", mediator["c"], units="mol/m^3"))
    n = float(check_positive("mediator n", mediator.get("n", 1)))
    return float(n * FARADAY * D * c * a * 1e-6 * secm.tip_current_inf(rg))


def tilt_corrected_distance(x, y, z_tip, plane: Any) -> np.ndarray:
    """Tip–substrate distance d = z_tip − z_plane(x, y) in µm.

    Parameters
    ----------
    x, y : array_like
        Tip positions, µm.
    z_tip : array_like or float
        Tip heights (stage z of the tip end), µm.
    plane : PlaneFit, dict or float
        The sample plane (:class:`espt_bluesky.analysis.plane.PlaneFit`, its ``as_dict()`` as found in a start
        document, or a constant height in µm).

    Returns
    -------
    ndarray
        d in µm (broadcast shape).
    """
    x = check_finite("x", x)
    y = check_finite("y", y)
    z = check_finite("z_tip", z_tip)
    if hasattr(plane, "z_at"):
        zp = plane.z_at(x, y)
    elif isinstance(plane, Mapping):
        try:
            zp = (float(plane["z0"]) + float(plane.get("slope_x", 0.0)) * (x - float(plane.get("x0", 0.0)))
                  + float(plane.get("slope_y", 0.0)) * (y - float(plane.get("y0", 0.0))))
        except KeyError:
            raise InvalidArgument(f"plane={dict(plane)!r} lacks 'z0' (µm); give a PlaneFit or its as_dict()") from None
    elif np.ndim(plane) == 0 and plane is not None:
        zp = float(check_finite("plane", plane))
    else:
        raise InvalidArgument(f"plane={plane!r} must be a PlaneFit, a dict with z0/slope_x/slope_y/x0/y0, "
                              "or a height in µm")
    return z - zp


def invert_kappa(current, L, rg: float) -> np.ndarray:
    """κ at which the first-order feedback curve gives ``current`` at distance ``L`` (vectorised).

    Uses :func:`espt_bluesky.analysis.approach_fit.kappa_from_current` when it is available; otherwise a
    vectorised bisection in log κ on :func:`espt_bluesky.physics.secm.feedback_current` (the same physics).

    Parameters
    ----------
    current : array_like
        I_T = i_T/i_T,inf (finite).
    L : array_like
        d/a (> 0), broadcast with ``current``.
    rg : float
        RG of the tip (> 1).

    Returns
    -------
    ndarray
        κ (0 at or below the insulator curve, inf at or above the conductor curve).
    """
    from ..physics import secm

    I = check_finite("current", current)
    L = check_range("L", L, 0.0, np.inf, low_inclusive=False)
    check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    I, L = np.broadcast_arrays(I, L)
    i_ins = secm.feedback_current(L, rg, 0.0)
    i_cond = secm.feedback_current(L, rg, np.inf)
    try:  # the approach-curve module of the analysis layer, when present
        from .approach_fit import kappa_from_current  # type: ignore
    except ImportError:
        kappa_from_current = None
    if kappa_from_current is not None:
        kappa = np.asarray(kappa_from_current(I, L, rg), dtype=float).reshape(I.shape)
    else:
        lo = np.full(I.shape, -6.0)
        hi = np.full(I.shape, 6.0)
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            up = secm.feedback_current(L, rg, 10.0**mid) < I
            lo = np.where(up, mid, lo)
            hi = np.where(up, hi, mid)
        kappa = 10.0 ** (0.5 * (lo + hi))
    kappa = np.where(I <= i_ins, 0.0, kappa)
    return np.where(I >= i_cond, np.inf, kappa)


@dataclass
class KineticMap:
    """κ and k per pixel (arrays of the image's shape).

    Attributes
    ----------
    kappa : ndarray
        κ = k·a/D (dimensionless; 0 and inf at the insulator and conductor limits).
    k : ndarray
        Rate constant, m/s.
    L : ndarray
        d/a used per pixel.
    at_conductor_limit, at_insulator_limit : ndarray of bool
        Pixels whose current is at or beyond the conductor / insulator curve (κ only bounded).
    parameters : dict
        a (µm), D (m²/s), rg, for product metadata.
    """

    kappa: np.ndarray
    k: np.ndarray
    L: np.ndarray
    at_conductor_limit: np.ndarray
    at_insulator_limit: np.ndarray
    parameters: dict


def kinetic_map(feedback, distance, *, a: float, D: float, rg: float = 10.0) -> KineticMap:
    """κ and k per pixel from a normalised feedback image and the per-pixel distance.

    Parameters
    ----------
    feedback : array_like
        I_T = i_T/i_T,inf per pixel (any shape; NaN pixels stay NaN).
    distance : array_like
        Tip–substrate distance d per pixel, µm (> 0), broadcast with ``feedback``
        (see :func:`tilt_corrected_distance`).
    a : float
        Tip radius, µm.
    D : float
        Diffusion coefficient of the mediator, m²/s.
    rg : float
        RG of the tip.

    Returns
    -------
    KineticMap
    """
    from ..physics import secm

    a = float(check_positive("a", a, units="µm"))
    D = float(check_positive("D", D, units="m^2/s"))
    rg = float(check_range("rg", rg, 1.0, np.inf, low_inclusive=False))
    I = np.asarray(feedback, dtype=float)
    if np.isinf(I).any():
        raise InvalidArgument("feedback contains infinite values; finite normalised currents are required")
    d = check_finite("distance", distance)
    if np.any(d <= 0):
        raise InvalidArgument(f"distance has values <= 0 (min {d.min():.3g} µm): the tip would be in the sample; "
                              "check the plane and the tip heights")
    I, d = np.broadcast_arrays(I, d)
    ok = np.isfinite(I)
    if not ok.any():
        raise InvalidArgument("feedback is all NaN; nothing to invert")
    L = d / a
    kappa = np.full(I.shape, np.nan)
    kappa[ok] = invert_kappa(I[ok], L[ok], rg)
    i_ins = np.where(ok, secm.feedback_current(L, rg, 0.0), np.nan)
    i_cond = np.where(ok, secm.feedback_current(L, rg, np.inf), np.nan)
    with np.errstate(invalid="ignore"):
        at_c = ok & (I >= i_cond)
        at_i = ok & (I <= i_ins)
    return KineticMap(kappa=kappa, k=kappa * D / (a * 1e-6), L=L, at_conductor_limit=at_c,
                      at_insulator_limit=at_i, parameters=dict(a=a, D=D, rg=rg, a_units="um", D_units="m^2/s",
                                                               k_units="m/s"))


def classify_kappa(kappa, threshold: float = 1.0) -> np.ndarray:
    """Conductor (1) / insulator (0) regions of a κ map: κ ≥ ``threshold`` is conductor; NaN → −1.

    κ = 1 means the substrate regenerates the mediator as fast as it diffuses to the tip (k = D/a), the usual
    boundary between mostly positive and mostly negative feedback.
    """
    kap = np.asarray(kappa, dtype=float)
    check_positive("threshold", threshold)
    out = np.where(kap >= threshold, 1, 0)
    return np.where(np.isnan(kap), -1, out)
