"""Footprint-aware resampling: bring maps onto a common grid or onto spots, honouring each probe's footprint.

A finer map is first blurred to the coarser probe's footprint (X-ray beam, SECCM droplet, SECM tip), then sampled
at the target points through the registration transform; the source is never modified.  Footprints are
Gaussian FWHMs (µm); the blur applied is the quadrature difference.  Per SECCM spot the signal is averaged over
the droplet's wetted disc.  Uncertainty: with per-pixel variances (Poisson counts by default), the variance of a
Gaussian-weighted mean is the weights² sum, ≈ variance / (4π σx σy) in pixels for a blur of σ pixels; a disc
average of n independent pixels divides the variance by n.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from scipy import ndimage

from ..errors import InvalidArgument, check_positive
from .frames import AffineTransform
from .registration import grid_of


def blur_sigma(source_fwhm: float, target_fwhm: float) -> float:
    """Gaussian σ (µm) that turns a ``source_fwhm`` footprint into a ``target_fwhm`` one (0 if already wider)."""
    return math.sqrt(max(target_fwhm**2 - source_fwhm**2, 0.0)) / 2.3548


def resample(source: xr.Dataset, variable: str, transform: AffineTransform, points: Any, *,
             source_fwhm: float, target_fwhm: float, variance: str | np.ndarray | None = "poisson",
             order: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Values (and 1σ) of ``source[variable]`` at ``points`` (N, 2) in ``transform.target``.

    ``variance``: ``"poisson"`` (counts), an array like the map, or None (no uncertainty).
    """
    check_positive("target_fwhm", target_fwhm, units="µm")
    img, x, y = grid_of(source, variable)
    px, py = abs(x[1] - x[0]), abs(y[1] - y[0])
    s = blur_sigma(source_fwhm, target_fwhm)
    sx, sy = s / px, s / py
    blurred = ndimage.gaussian_filter(img, (sy, sx), mode="nearest") if s > 0 else img
    pts = np.asarray(points, float).reshape(-1, 2)
    back = transform.inverse().apply(pts)
    cols = (back[:, 0] - x[0]) / (x[1] - x[0])
    rows = (back[:, 1] - y[0]) / (y[1] - y[0])
    inside = (cols >= -0.5) & (cols <= img.shape[1] - 0.5) & (rows >= -0.5) & (rows <= img.shape[0] - 0.5)
    vals = ndimage.map_coordinates(blurred, [rows, cols], order=order, mode="nearest")
    vals = np.where(inside, vals, np.nan)
    if variance is None:
        return vals, None
    var = np.clip(img, 0, None) if isinstance(variance, str) and variance == "poisson" else np.asarray(variance)
    if var.shape != img.shape:
        raise InvalidArgument(f"variance of shape {var.shape} must match the map {img.shape}")
    if s > 0:
        var = ndimage.gaussian_filter(var, (sy, sx), mode="nearest") / (4 * math.pi * max(sx, 0.5) * max(sy, 0.5))
    err = np.sqrt(ndimage.map_coordinates(var, [rows, cols], order=1, mode="nearest"))
    return vals, np.where(inside, err, np.nan)


def spot_average(source: xr.Dataset, variable: str, transform: AffineTransform, spots: Any, radius: float, *,
                 variance: str | np.ndarray | None = "poisson", n_samples: int = 64
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and its 1σ) of ``source[variable]`` over a disc of ``radius`` µm around each spot.

    ``spots`` (N, 2) are in ``transform.target`` (e.g. SECCM landing positions); the disc is the droplet's wetted
    area.  Sampled on a sunflower set of ``n_samples`` points per disc (bilinear interpolation).
    """
    check_positive("radius", radius, units="µm")
    img, x, y = grid_of(source, variable)
    k = np.arange(n_samples) + 0.5
    rho = radius * np.sqrt(k / n_samples)
    th = k * math.pi * (3 - math.sqrt(5))
    disc = np.stack([rho * np.cos(th), rho * np.sin(th)], 1)
    spots = np.asarray(spots, float).reshape(-1, 2)
    pts = (spots[:, None, :] + disc[None]).reshape(-1, 2)
    back = transform.inverse().apply(pts)
    cols = (back[:, 0] - x[0]) / (x[1] - x[0])
    rows = (back[:, 1] - y[0]) / (y[1] - y[0])
    inside = ((cols >= -0.5) & (cols <= img.shape[1] - 0.5) & (rows >= -0.5) & (rows <= img.shape[0] - 0.5))
    vals = ndimage.map_coordinates(img, [rows, cols], order=1, mode="nearest").reshape(len(spots), n_samples)
    ok = inside.reshape(len(spots), n_samples).all(axis=1)
    mean = np.where(ok, vals.mean(axis=1), np.nan)
    if variance is None:
        return mean, None
    var = np.clip(img, 0, None) if isinstance(variance, str) and variance == "poisson" else np.asarray(variance)
    v = ndimage.map_coordinates(var, [rows, cols], order=1, mode="nearest").reshape(len(spots), n_samples)
    # independent source pixels inside the disc (not the number of sample points)
    n_pix = max(math.pi * radius**2 / abs((x[1] - x[0]) * (y[1] - y[0])), 1.0)
    return mean, np.where(ok, np.sqrt(v.mean(axis=1) / min(n_pix, n_samples)), np.nan)
