"""Close the loop: a region drawn (polygon) or thresholded on a registered map -> stage points for hopping_scan.

:func:`region_points` returns the points inside the region, spaced by the probe's footprint, in the stage frame
of the instrument that will measure them, together with the transform used; pass ``points`` to
``hopping_scan(order="points", points=...)`` and ``metadata`` as its ``md`` so the run records where its points
came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidArgument, check_positive
from .frames import AffineTransform, frame_of


@dataclass
class RegionPoints:
    """Stage points inside a region and how they were obtained."""

    points: np.ndarray  # (N, 2) µm in the stage frame
    polygon: np.ndarray  # (M, 2) µm in the map frame
    transform: AffineTransform  # map frame -> stage frame
    spacing: float
    metadata: dict = field(default_factory=dict)


def threshold_polygon(ds: xr.Dataset, variable: str, level: float, *, above: bool = True) -> np.ndarray:
    """The largest closed contour of ``ds[variable]`` at ``level`` (µm, map frame), enclosing values above it
    (or below, ``above=False``)."""
    from skimage import measure

    img = np.asarray(ds[variable].values, float)
    if img.ndim != 2:
        raise InvalidArgument(f"variable={variable!r} must be a 2-D map")
    img = img if above else -img
    lev = level if above else -level
    padded = np.pad(np.nan_to_num(img, nan=np.nanmin(img)), 1, constant_values=min(np.nanmin(img), lev) - 1)
    contours = measure.find_contours(padded, lev)
    if not contours:
        raise InvalidArgument(f"level={level!r}: no region of {variable} crosses it "
                              f"(range {np.nanmin(img):.4g}..{np.nanmax(img):.4g})")
    c = max(contours, key=lambda k: _area(k))
    rows, cols = c[:, 0] - 1, c[:, 1] - 1
    x = np.interp(cols, np.arange(ds.sizes["x"]), ds.x.values)
    y = np.interp(rows, np.arange(ds.sizes["y"]), ds.y.values)
    return np.stack([x, y], axis=1)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 1], poly[:, 0]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def region_points(polygon: Any, *, spacing: float, transform: AffineTransform, lattice: str = "hex",
                  margin: float = 0.0, source: Any = None) -> RegionPoints:
    """Points inside ``polygon`` (map frame) on a lattice of pitch ``spacing`` µm, mapped to the stage frame.

    The lattice is laid in the stage frame (so the pitch is the probe's), then kept where its point, mapped back
    to the map frame, lies inside the polygon shrunk by ``margin`` µm (keep the footprint inside the region).

    Parameters
    ----------
    transform : AffineTransform
        Map frame -> stage frame of the instrument that will measure (e.g. the inverse of a registration).
    lattice : {"hex", "square"}
    source : xarray.Dataset, optional
        The map the region was drawn on (its uid or file checksum goes into ``metadata``).
    """
    from matplotlib.path import Path

    spacing = float(check_positive("spacing", spacing, units="µm"))
    poly = np.asarray(polygon, float)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise InvalidArgument(f"polygon of shape {poly.shape} must be at least three (x, y) vertices in µm")
    corners = transform.apply(poly)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    if lattice == "hex":
        dy = spacing * np.sqrt(3) / 2
        rows = np.arange(lo[1], hi[1] + dy, dy)
        pts = [(x + (spacing / 2 if i % 2 else 0.0), y) for i, y in enumerate(rows)
               for x in np.arange(lo[0], hi[0] + spacing, spacing)]
    elif lattice == "square":
        pts = [(x, y) for y in np.arange(lo[1], hi[1] + spacing, spacing) for x in np.arange(lo[0], hi[0] + spacing,
                                                                                             spacing)]
    else:
        raise InvalidArgument(f"lattice={lattice!r} is not one of ['hex', 'square']")
    pts = np.asarray(pts, float).reshape(-1, 2)
    back = transform.inverse().apply(pts)
    inside = Path(poly).contains_points(back, radius=-2 * margin if margin else 0.0)
    if margin:
        # contains_points' radius sign depends on the polygon's orientation: check the distance explicitly
        inside &= _distance_to_edges(back, poly) >= margin
        inside &= Path(poly).contains_points(back)
    pts = pts[inside]
    if len(pts) == 0:
        raise InvalidArgument(f"spacing={spacing} µm: no lattice point falls inside the region; use a smaller "
                              "spacing or a larger region")
    md = {"region": {"polygon": poly.tolist(), "frame": transform.source, "spacing": spacing, "lattice": lattice,
                     "margin": margin, "n_points": int(len(pts)), "transform": transform.to_dict()}}
    if source is not None:
        attrs = source.attrs
        md["region"]["source"] = {k: attrs.get(k) for k in ("uid", "technique") if attrs.get(k)}
        if isinstance(attrs.get("source"), dict):
            md["region"]["source"].update(file=attrs["source"].get("file"), sha256=attrs["source"].get("sha256"))
        md["region"]["source"]["frame"] = frame_of(source) if attrs.get("frame") else None
    return RegionPoints(pts, poly, transform, spacing, md)


def _distance_to_edges(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("pij,ij->pi", points[:, None, :] - a[None], ab) / np.maximum((ab**2).sum(1), 1e-30),
                0, 1)
    proj = a[None] + t[..., None] * ab[None]
    return np.min(np.hypot(*(points[:, None, :] - proj).transpose(2, 0, 1)), axis=1)
