"""EC-AFM maps: Young's modulus per force curve placed on a map, and the height change between potentials.

Plain numpy; the force-curve fits are :func:`espt_bluesky.analysis.mechanics.fit_force_curve`.
Units: positions and heights µm, piezo travel µm (converted to m for the fits), deflection m, spring constant
N/m, tip radius µm, modulus Pa.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgument, check_finite, check_positive
from .mechanics import fit_force_curve

__all__ = ["ForceMap", "grid_indices", "force_map", "HeightChange", "height_change"]


def grid_indices(x, y, *, decimals: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place scattered positions (µm) on the grid of their distinct values.

    Returns
    -------
    xs, ys : ndarray
        Sorted distinct x and y values (µm).
    ix, iy : ndarray of int
        Column and row of each point.
    """
    x = check_finite("x", x).ravel()
    y = check_finite("y", y).ravel()
    if x.size != y.size or x.size == 0:
        raise InvalidArgument(f"x ({x.size}) and y ({y.size}) must be non-empty and of equal length")
    xs, ix = np.unique(np.round(x, decimals), return_inverse=True)
    ys, iy = np.unique(np.round(y, decimals), return_inverse=True)
    return xs, ys, ix, iy


@dataclass
class ForceMap:
    """Modulus map from force curves: arrays (ny, nx) on pixel centres ``x``, ``y`` (µm); NaN where no curve was
    measured or the fit failed (``problems`` maps curve index to the reason)."""

    x: np.ndarray
    y: np.ndarray
    modulus: np.ndarray
    modulus_err: np.ndarray
    contact_point: np.ndarray
    adhesion: np.ndarray
    residual_rms: np.ndarray
    per_curve_modulus: np.ndarray
    problems: dict
    parameters: dict


def force_map(x, y, z_travel, deflection, *, spring_constant: float, tip_radius: float, poisson: float = 0.3,
              model: str = "hertz") -> ForceMap:
    """Young's modulus of every force curve, as a map over the curves' positions.

    Parameters
    ----------
    x, y : array_like
        Position of each curve, µm (n_curves,).
    z_travel : array_like
        Piezo travel toward the sample, µm: (n_points,) shared or (n_curves, n_points).
    deflection : array_like
        Cantilever deflection, m (n_curves, n_points).
    spring_constant : float
        N/m.
    tip_radius : float
        µm.
    poisson : float
        Sample Poisson ratio.
    model : {"hertz", "dmt"}

    Returns
    -------
    ForceMap
    """
    D = np.asarray(deflection, dtype=float)
    if D.ndim != 2:
        raise InvalidArgument(f"deflection must be (n_curves, n_points); got shape {D.shape}")
    Z = np.asarray(z_travel, dtype=float)
    Z = np.broadcast_to(Z, D.shape) if Z.shape != D.shape else Z
    k = float(check_positive("spring_constant", spring_constant, units="N/m"))
    R = float(check_positive("tip_radius", tip_radius, units="µm"))
    xs, ys, ix, iy = grid_indices(x, y)
    if ix.size != D.shape[0]:
        raise InvalidArgument(f"x/y give {ix.size} positions but deflection has {D.shape[0]} curves")
    shape = (ys.size, xs.size)
    out = {n: np.full(shape, np.nan) for n in ("modulus", "modulus_err", "contact_point", "adhesion",
                                                "residual_rms")}
    per = np.full(D.shape[0], np.nan)
    problems = {}
    for c in range(D.shape[0]):
        if not (np.all(np.isfinite(D[c])) and np.all(np.isfinite(Z[c]))):
            problems[c] = "curve contains NaN or infinite values"
            continue
        try:
            f = fit_force_curve(Z[c] * 1e-6, D[c], k, R * 1e-6, poisson=poisson, model=model)
        except InvalidArgument as exc:
            problems[c] = str(exc)
            continue
        per[c] = f.modulus
        for n in out:
            out[n][iy[c], ix[c]] = getattr(f, n) * (1e6 if n == "contact_point" else 1.0)
    return ForceMap(x=xs, y=ys, per_curve_modulus=per, problems=problems,
                    parameters=dict(spring_constant=k, tip_radius_um=R, poisson=poisson, model=model,
                                    modulus_units="Pa", contact_point_units="um (piezo travel)"), **out)


@dataclass
class HeightChange:
    """Height change Δh = after − before (µm) per pixel and its summary per region label."""

    delta: np.ndarray
    regions: dict[Any, dict[str, float]]
    offset: float


def height_change(before, after, *, labels=None, reference=None) -> HeightChange:
    """Height change between two images of the same region (e.g. before/after a potential step: SEI growth).

    Parameters
    ----------
    before, after : array_like
        Heights (µm), same shape; NaN pixels are ignored.
    labels : array_like, optional
        Region label per pixel (e.g. 1 = edge plane, 0 = basal plane) for per-region statistics.
    reference : array_like of bool, optional
        Pixels known not to change (e.g. an inert region): their median Δh is removed as a z offset (drift).

    Returns
    -------
    HeightChange
        ``delta`` (µm), ``regions`` {label: n, mean, std, median (µm)}, ``offset`` removed (µm).
    """
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise InvalidArgument(f"before {b.shape} and after {a.shape} must have the same shape")
    if np.isinf(a).any() or np.isinf(b).any():
        raise InvalidArgument("heights contain infinite values")
    d = a - b
    if not np.isfinite(d).any():
        raise InvalidArgument("before and after share no finite pixel")
    offset = 0.0
    if reference is not None:
        ref = np.asarray(reference, bool)
        if ref.shape != d.shape or not np.isfinite(d[ref]).any():
            raise InvalidArgument("reference must be a boolean mask of the image's shape with finite pixels")
        offset = float(np.nanmedian(d[ref]))
        d = d - offset
    regions = {}
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != d.shape:
            raise InvalidArgument(f"labels {lab.shape} must have the image's shape {d.shape}")
        for v in np.unique(lab):
            s = d[(lab == v) & np.isfinite(d)]
            if s.size:
                regions[v.item() if hasattr(v, "item") else v] = dict(
                    n=int(s.size), mean=float(s.mean()), std=float(s.std(ddof=1)) if s.size > 1 else 0.0,
                    median=float(np.median(s)))
    return HeightChange(delta=d, regions=regions, offset=offset)
