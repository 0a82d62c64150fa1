"""Topography maps (SICM, EC-AFM heights): robust background levelling and deformation rates between images.

numpy/scipy (phase correlation: scikit-image).  Heights and positions in µm, time in s, rates in µm/s.

Levelling fits a polynomial background b(x, y) of total degree ``order`` (1: plane) by iteratively reweighted
least squares with Tukey's biweight on residuals scaled by their MAD, so that features (particles, pads, steps)
that cover less than about half of the image do not tilt the background; the result is z − b.

Deformation: two images of the same region taken at times t1 < t2; the second may be registered to the first by
phase correlation (``skimage.registration.phase_cross_correlation``, 1/20-pixel upsampled, for lateral
drift) and a z offset may be removed over
pixels known not to move; rate = (z2 − z1)/(t2 − t1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InvalidArgument, check_finite

__all__ = ["LevelResult", "level", "register_shift", "DeformationResult", "deformation_rate"]


@dataclass
class LevelResult:
    """Levelled map and the background removed.

    Attributes
    ----------
    levelled : ndarray
        z − background (µm); NaN where z was NaN.
    background : ndarray
        The fitted polynomial (µm).
    coefficients : ndarray
        Polynomial coefficients of the terms x^i·y^j (i + j ≤ order, x and y centred and scaled to [−1, 1]).
    weights : ndarray
        Final robust weights (0: treated as a feature, 1: background).
    order : int
    """

    levelled: np.ndarray
    background: np.ndarray
    coefficients: np.ndarray
    weights: np.ndarray
    order: int


def _design(x, y, order):
    cols = [x**i * y**j for i in range(order + 1) for j in range(order + 1 - i)]
    return np.stack(cols, axis=-1)


def level(z, x=None, y=None, *, order: int = 1, robust: bool = True, mask=None, n_iter: int = 20,
          tune: float = 4.685) -> LevelResult:
    """Remove a polynomial background from a height map.

    Parameters
    ----------
    z : array_like
        (ny, nx) heights, µm (NaN pixels are ignored and stay NaN).
    x, y : array_like, optional
        Pixel-centre coordinates (µm) of the columns and rows (default: indices).
    order : int
        Total polynomial degree (0: offset, 1: plane, 2: quadratic ...), 0–5.
    robust : bool
        Tukey-biweight IRLS (default) or plain least squares.
    mask : array_like of bool, optional
        Pixels to fit the background on (default: all finite pixels).
    n_iter : int
        IRLS iterations.
    tune : float
        Biweight tuning constant in units of the robust σ (1.4826·MAD).

    Returns
    -------
    LevelResult
    """
    Z = np.asarray(z, dtype=float)
    if Z.ndim != 2:
        raise InvalidArgument(f"z must be a 2-D height map (ny, nx); got shape {Z.shape}")
    if np.isinf(Z).any():
        raise InvalidArgument("z contains infinite values")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= 5:
        raise InvalidArgument(f"order={order!r} must be an integer from 0 to 5")
    ny, nx = Z.shape
    xv = np.arange(nx, dtype=float) if x is None else check_finite("x", x).ravel()
    yv = np.arange(ny, dtype=float) if y is None else check_finite("y", y).ravel()
    if xv.size != nx or yv.size != ny:
        raise InvalidArgument(f"x ({xv.size}) and y ({yv.size}) must match z's shape {Z.shape} (ny, nx)")
    X, Y = np.meshgrid(xv, yv)

    def scale(v):
        lo, hi = float(v.min()), float(v.max())
        return (v - 0.5 * (lo + hi)) / (0.5 * (hi - lo) if hi > lo else 1.0)

    A = _design(scale(X), scale(Y), int(order))
    use = np.isfinite(Z)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != Z.shape:
            raise InvalidArgument(f"mask {m.shape} must have z's shape {Z.shape}")
        use &= m
    nterm = A.shape[-1]
    if use.sum() < nterm + 1:
        raise InvalidArgument(f"only {int(use.sum())} finite pixels to fit {nterm} background terms")
    Au, zu = A[use], Z[use]
    w = np.ones(zu.size)
    coef = np.zeros(nterm)
    for _ in range(max(1, int(n_iter)) if robust else 1):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(Au * sw[:, None], zu * sw, rcond=None)
        if not robust:
            break
        r = zu - Au @ coef
        r = r - np.median(r)  # the weighted fit's offset is not the background's yet: centre robustly
        s = 1.4826 * np.median(np.abs(r))
        if s <= 0:
            break
        u = r / (tune * s)
        w_new = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if np.allclose(w_new, w, atol=1e-6):
            break
        w = w_new
    bg = A @ coef
    W = np.zeros(Z.shape)
    W[use] = w
    return LevelResult(levelled=Z - bg, background=bg, coefficients=coef, weights=W, order=int(order))


def register_shift(reference, moving, *, upsample: bool = True) -> tuple[float, float]:
    """Shift (dy, dx) in pixels that best aligns ``moving`` onto ``reference`` (phase correlation).

    ``ndimage.shift(moving, (dy, dx))`` then overlays ``reference``.  NaNs are replaced by the image mean.
    """
    a = np.asarray(reference, float)
    b = np.asarray(moving, float)
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidArgument(f"reference {a.shape} and moving {b.shape} must be 2-D images of the same shape")
    from skimage.registration import phase_cross_correlation

    a = np.where(np.isfinite(a), a, np.nanmean(a)) - np.nanmean(a)
    b = np.where(np.isfinite(b), b, np.nanmean(b)) - np.nanmean(b)
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))  # no wrap-around edge in the spectrum
    shift, _, _ = phase_cross_correlation(a * win, b * win, upsample_factor=20 if upsample else 1,
                                          normalization="phase")
    return float(shift[0]), float(shift[1])


@dataclass
class DeformationResult:
    """Rate map (µm/s) = (z2 − z1)/(t2 − t1) in the frame of the first image.

    ``shift`` is the (dy, dx) pixel shift applied to the second image, ``offset`` the z offset (µm) removed.
    """

    rate: np.ndarray
    delta: np.ndarray
    dt: float
    shift: tuple[float, float]
    offset: float


def deformation_rate(z1, z2, t1: float, t2: float, *, register: bool = False, reference=None,
                     ) -> DeformationResult:
    """Deformation rate between two height maps of the same region.

    Parameters
    ----------
    z1, z2 : array_like
        Height maps (µm), same shape (levelled or raw, but treated alike).
    t1, t2 : float
        Acquisition times (s), t2 > t1 (e.g. the mid-times of the two images).
    register : bool
        Align z2 onto z1 by phase correlation first (lateral drift).
    reference : array_like of bool, optional
        Pixels that do not deform: their median change is removed as a z offset (vertical drift).

    Returns
    -------
    DeformationResult
    """
    a = np.asarray(z1, float)
    b = np.asarray(z2, float)
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidArgument(f"z1 {a.shape} and z2 {b.shape} must be 2-D maps of the same shape")
    t1 = float(check_finite("t1", t1))
    t2 = float(check_finite("t2", t2))
    if not t2 > t1:
        raise InvalidArgument(f"t2={t2!r} s must be later than t1={t1!r} s")
    shift = (0.0, 0.0)
    if register:
        shift = register_shift(a, b)
        nanm = ~np.isfinite(b)
        b = ndimage.shift(np.where(nanm, np.nanmean(b), b), shift, order=1, mode="nearest")
    d = b - a
    offset = 0.0
    if reference is not None:
        ref = np.asarray(reference, bool)
        if ref.shape != d.shape or not np.isfinite(d[ref]).any():
            raise InvalidArgument("reference must be a boolean mask of the maps' shape with finite pixels")
        offset = float(np.nanmedian(d[ref]))
        d = d - offset
    return DeformationResult(rate=d / (t2 - t1), delta=d, dt=t2 - t1, shift=shift, offset=offset)
