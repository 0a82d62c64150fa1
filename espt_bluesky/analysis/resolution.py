"""Lateral resolution of scanning-probe images: edge widths from sigmoid fits of line profiles, and
Richardson–Lucy deconvolution with a point-spread function derived from the probe footprint.

numpy/scipy; the deconvolution itself is scikit-image's. Positions and lengths in µm; image values in any positive
unit (e.g. the normalised SECM current I_T = i_T/i_T,inf).

Edges.  A profile across an edge is fitted with a logistic step
``f(s) = low + (high − low)/(1 + exp(−(s − s0)/w))``: ``s0`` is the inflection point (the edge position) and the
10–90 % width is ``2·ln(9)·w ≈ 4.39·w``.

Point-spread function.  An SECM tip senses a region of radius roughly a + d around its axis (PHYSICS.md,
"Lateral resolution"), with more weight under the electrode than at the rim.  :func:`footprint_psf` builds that
kernel on the image's pixel grid: ``"tapered"`` (default) weights the disk of radius a + d by exp(−2ρ²),
ρ = r/(a + d); ``"disk"`` is uniform; ``"gaussian"`` has σ = (a + d)/2.  The kernel is a model of the
instrument, an approximation: the deconvolved image is an estimate of the local signal, not the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage, optimize

from ..errors import InvalidArgument, check_choice, check_finite, check_positive, check_range

__all__ = ["EdgeFit", "fit_edge", "line_profile", "radial_profile", "disc_edge", "footprint_psf",
           "richardson_lucy", "deconvolve_image", "WIDTH_FACTOR"]

#: 10–90 % width of a logistic step in units of its scale w: 2·ln 9.
WIDTH_FACTOR = 2.0 * math.log(9.0)


@dataclass(frozen=True)
class EdgeFit:
    """Logistic step fitted to an edge profile.

    Attributes
    ----------
    position, position_err : float
        Inflection point s0 and its 1σ (µm along the profile).
    width, width_err : float
        10–90 % width (µm) = 4.39·|w| and its 1σ.
    low, high : float
        Plateaus on the side of smaller and larger s (signal units).
    residual_rms : float
    """

    position: float
    position_err: float
    width: float
    width_err: float
    low: float
    high: float
    scale: float
    residual_rms: float

    def model(self, s) -> np.ndarray:
        """The fitted step at positions ``s`` (µm)."""
        return _logistic(np.asarray(s, float), self.position, self.scale, self.low, self.high)


def _logistic(s, s0, w, lo, hi):
    z = np.clip((s - s0) / w, -500, 500)
    return lo + (hi - lo) / (1.0 + np.exp(-z))


def fit_edge(s, profile, *, position: Optional[float] = None) -> EdgeFit:
    """Fit a logistic step to a profile across one edge.

    Parameters
    ----------
    s : array_like
        Position along the profile, µm (1-D, at least 5 finite points).
    profile : array_like
        Signal at ``s`` (NaNs are dropped with their position).
    position : float, optional
        Starting guess for the edge position (µm); default: where the profile crosses its mid-level.

    Returns
    -------
    EdgeFit
        ``width`` is the 10–90 % width, ``position`` the inflection point.
    """
    s = np.asarray(s, dtype=float).ravel()
    p = np.asarray(profile, dtype=float).ravel()
    if s.size != p.size:
        raise InvalidArgument(f"s has {s.size} points but profile has {p.size}; they must match")
    check_finite("s", s)
    ok = np.isfinite(p)
    s, p = s[ok], p[ok]
    if s.size < 5:
        raise InvalidArgument(f"profile has {s.size} finite points; an edge fit needs at least 5")
    order = np.argsort(s)
    s, p = s[order], p[order]
    n = max(2, s.size // 6)
    lo0, hi0 = float(np.median(p[:n])), float(np.median(p[-n:]))
    if hi0 == lo0:
        raise InvalidArgument("profile is flat: there is no edge to fit")
    if position is None:
        mid = 0.5 * (lo0 + hi0)
        k = int(np.argmin(np.abs(p - mid)))
        position = float(s[k])
    span = float(s[-1] - s[0])
    w0 = span / 20.0
    try:
        popt, pcov = optimize.curve_fit(_logistic, s, p, p0=[position, w0, lo0, hi0], maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning) as exc:
        raise InvalidArgument(f"the edge fit did not converge ({exc}); is there one edge in the profile?") from None
    s0, w, lo, hi = (float(v) for v in popt)
    if w < 0:  # same step, written the other way round
        w, lo, hi = -w, hi, lo
    err = np.sqrt(np.clip(np.diag(pcov), 0.0, None)) if np.all(np.isfinite(pcov)) else np.full(4, np.nan)
    resid = p - _logistic(s, *popt)
    return EdgeFit(position=s0, position_err=float(err[0]), width=WIDTH_FACTOR * w,
                   width_err=WIDTH_FACTOR * float(err[1]), low=lo, high=hi, scale=w,
                   residual_rms=float(np.sqrt(np.mean(resid**2))))


def _grid_axes(image, x, y):
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise InvalidArgument(f"image must be 2-D (ny, nx); got shape {img.shape}")
    x = check_finite("x", x).ravel()
    y = check_finite("y", y).ravel()
    if x.size != img.shape[1] or y.size != img.shape[0]:
        raise InvalidArgument(f"x ({x.size}) and y ({y.size}) must match the image shape {img.shape} (ny, nx)")
    for name, v in (("x", x), ("y", y)):
        if v.size < 2 or not (np.all(np.diff(v) > 0)):
            raise InvalidArgument(f"{name} must be increasing pixel-centre coordinates (µm) with >= 2 values")
    return img, x, y


def _sample(img, x, y, px, py):
    ix = np.interp(px, x, np.arange(x.size), left=np.nan, right=np.nan)
    iy = np.interp(py, y, np.arange(y.size), left=np.nan, right=np.nan)
    out = np.full(np.shape(px), np.nan)
    ok = np.isfinite(ix) & np.isfinite(iy)
    if ok.any():
        filled = np.where(np.isfinite(img), img, np.nanmean(img))
        out[ok] = ndimage.map_coordinates(filled, [iy[ok], ix[ok]], order=1, mode="nearest")
    return out


def line_profile(image, x, y, start: Sequence[float], end: Sequence[float], n: int = 200):
    """Bilinear profile of an image along a segment.

    Parameters
    ----------
    image : array_like
        (ny, nx).
    x, y : array_like
        Pixel-centre coordinates (µm), increasing.
    start, end : (x, y)
        Segment ends, µm.
    n : int
        Samples along the segment.

    Returns
    -------
    s, values : ndarray
        Distance from ``start`` (µm) and the interpolated image (NaN outside the image).
    """
    img, x, y = _grid_axes(image, x, y)
    (x0, y0), (x1, y1) = (check_finite("start", start), check_finite("end", end))
    f = np.linspace(0.0, 1.0, int(n))
    px, py = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
    return f * math.hypot(x1 - x0, y1 - y0), _sample(img, x, y, px, py)


def radial_profile(image, x, y, centre: Sequence[float], r_max: float, n: int = 120, n_angles: int = 64):
    """Azimuthally averaged profile around ``centre`` (µm) out to ``r_max`` (µm), by bilinear sampling.

    Returns
    -------
    r, values : ndarray
        Radius (µm) and the mean over ``n_angles`` directions (NaN where no direction is inside the image).
    """
    img, x, y = _grid_axes(image, x, y)
    cx, cy = (float(v) for v in check_finite("centre", centre))
    check_positive("r_max", r_max, units="µm")
    r = np.linspace(0.0, float(r_max), int(n))
    th = np.linspace(0.0, 2 * np.pi, int(n_angles), endpoint=False)
    vals = _sample(img, x, y, cx + r[:, None] * np.cos(th), cy + r[:, None] * np.sin(th))
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(vals).sum(1)
        mean = np.where(cnt > 0, np.nansum(vals, 1) / np.maximum(cnt, 1), np.nan)
    return r, mean


def disc_edge(image, x, y, centre: Sequence[float], r_max: float, *, n: int = 120) -> EdgeFit:
    """Edge of a disc-shaped feature: logistic fit of the radial profile around its centre.

    ``position`` is then the radius of the inflection (the apparent disc radius, µm) and ``width`` the 10–90 %
    edge width (µm).
    """
    r, prof = radial_profile(image, x, y, centre, r_max, n=n)
    return fit_edge(r, prof)


# ------------------------------------------------------------------------------------------------ PSF
def footprint_psf(radius: float, distance: float, pixel: float | Sequence[float], *, shape: str = "tapered",
                  ) -> np.ndarray:
    """Point-spread function of a probe that senses a region of radius a + d, on a pixel grid.

    Parameters
    ----------
    radius : float
        Probe (electrode) radius a, µm (> 0).
    distance : float
        Probe–sample distance d, µm (≥ 0).
    pixel : float or (float, float)
        Pixel size (dx, dy), µm.
    shape : {"tapered", "disk", "gaussian"}
        Weight over the footprint (see the module docstring).

    Returns
    -------
    ndarray
        Odd-sized 2-D kernel (ny, nx), sums to 1.
    """
    a = float(check_positive("radius", radius, units="µm"))
    d = float(check_range("distance", distance, 0.0, units="µm"))
    shape = check_choice("shape", shape, ["tapered", "disk", "gaussian"])
    dx, dy = (float(pixel), float(pixel)) if np.ndim(pixel) == 0 else (float(pixel[0]), float(pixel[1]))
    check_positive("pixel", [dx, dy], units="µm")
    rf = a + d
    reach = rf * (1.5 if shape == "gaussian" else 1.0)
    nx, ny = int(math.ceil(reach / dx)), int(math.ceil(reach / dy))
    if nx > 2000 or ny > 2000:
        raise InvalidArgument(f"pixel={pixel!r} µm is too small for a footprint of {rf} µm (kernel > 4000 px)")
    # supersample every pixel 5x5 so that kernels of a few pixels are still round
    sub = (np.arange(5) - 2) / 5.0
    X = (np.arange(-nx, nx + 1)[None, :, None, None] + sub[None, None, None, :]) * dx
    Y = (np.arange(-ny, ny + 1)[:, None, None, None] + sub[None, None, :, None]) * dy
    rho = np.hypot(X, Y) / rf
    if shape == "tapered":
        w = np.where(rho <= 1.0, np.exp(-2.0 * rho**2), 0.0)
    elif shape == "disk":
        w = (rho <= 1.0).astype(float)
    else:
        w = np.exp(-0.5 * (2.0 * rho) ** 2) * (rho <= 1.5)
    k = w.mean(axis=(2, 3))
    if k.sum() <= 0:
        k = np.zeros((2 * ny + 1, 2 * nx + 1))
        k[ny, nx] = 1.0
    return k / k.sum()


def richardson_lucy(image, psf, n_iter: int = 30, *, pad: Optional[int] = None) -> np.ndarray:
    """Richardson–Lucy deconvolution (``skimage.restoration.richardson_lucy``) with borders and gaps handled.

    u_{k+1} = u_k · [ (image / (u_k ⊗ P)) ⊗ P* ],  P* the flipped kernel.  The image is padded by reflection
    (``pad`` pixels, default twice the kernel size) so that the borders do not ring; NaN pixels are filled with the
    kernel-weighted mean of their valid neighbours (normalised convolution) before deconvolution and are NaN again
    in the result.

    Parameters
    ----------
    image : array_like
        2-D, non-negative signal (subtract nothing: RL needs a positive image; a normalised SECM current is).
    psf : array_like
        2-D kernel (normalised here to sum 1).
    n_iter : int
        Iterations (≥ 1).  More iterations sharpen further and amplify noise.

    Returns
    -------
    ndarray
        The deconvolved image, same shape; NaN where the input was NaN.
    """
    from skimage.restoration import richardson_lucy as _rl

    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise InvalidArgument(f"image must be 2-D; got shape {img.shape}")
    P = check_finite("psf", psf)
    if P.ndim != 2 or P.sum() <= 0 or np.any(P < 0):
        raise InvalidArgument("psf must be a 2-D non-negative kernel with a positive sum")
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise InvalidArgument(f"n_iter={n_iter!r} must be an integer >= 1")
    if np.isinf(img).any():
        raise InvalidArgument("image contains infinite values")
    bad = np.isnan(img)
    if bad.all():
        raise InvalidArgument("image is all NaN")
    if np.nanmin(img) < 0:
        raise InvalidArgument(f"image has negative values (min {np.nanmin(img):.3g}); Richardson–Lucy needs a "
                              "non-negative image (use the normalised current, or add an offset)")
    P = P / P.sum()
    if pad is None:
        # skimage convolves with zero padding and does not renormalise at the border: two kernel widths of
        # reflected image keep that loss out of the result even after hundreds of iterations
        pad = 2 * max(P.shape)
    fill = img
    if bad.any():
        wgt = (~bad).astype(float)
        num = ndimage.convolve(np.where(bad, 0.0, img), P, mode="reflect")
        den = ndimage.convolve(wgt, P, mode="reflect")
        fill = np.where(bad, np.where(den > 1e-6, num / np.maximum(den, 1e-6), np.nanmean(img)), img)
    big = np.pad(fill, pad, mode="reflect") if pad else fill
    u = _rl(big, P, num_iter=int(n_iter), clip=False)
    out = (u[pad:-pad, pad:-pad] if pad else u).copy()
    out[bad] = np.nan
    return out


def deconvolve_image(image, x, y, *, radius: float, distance: float, n_iter: int = 30,
                     shape: str = "tapered") -> tuple[np.ndarray, np.ndarray]:
    """Deconvolve an image on a regular grid with the footprint PSF of a probe (radius a, distance d, µm).

    Returns
    -------
    deconvolved, psf : ndarray
    """
    img, x, y = _grid_axes(image, x, y)
    dx, dy = float(np.mean(np.diff(x))), float(np.mean(np.diff(y)))
    for name, v, dv in (("x", x, dx), ("y", y, dy)):
        if np.max(np.abs(np.diff(v) - dv)) > 1e-3 * abs(dv):
            raise InvalidArgument(f"{name} is not evenly spaced; deconvolution needs a regular grid")
    psf = footprint_psf(radius, distance, (dx, dy), shape=shape)
    return richardson_lucy(img, psf, n_iter=n_iter), psf
