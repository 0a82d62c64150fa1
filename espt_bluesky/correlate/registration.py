"""Registration: results are :class:`~espt_bluesky.correlate.frames.AffineTransform` objects with residual and
provenance, never resampled data.

* :func:`fit_fiducials` -- point pairs -> similarity / affine / euclidean transform by least squares, with RANSAC
  outlier rejection (``skimage.measure.ransac``); RMS residual over the inliers.
* :func:`refine_phase_correlation` -- same modality: the translation left after an initial transform, by phase
  correlation (``skimage.registration.phase_cross_correlation``, sub-pixel).
* :func:`register_mutual_information` -- cross-modal intensity registration (SimpleITK, Mattes mutual
  information, similarity transform, multi-resolution, several starting angles).
* :func:`find_features` / :func:`match_features` -- blob-like features of a map (difference of Gaussians + local
  maxima) and a consensus match between two feature sets (allowing a mirror flip), the fiducials of a pair
  of images from different instruments.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import InvalidArgument
from .frames import AffineTransform, frame_of

MODELS = ("euclidean", "similarity", "affine")


def _sk_model(model: str):
    from skimage import transform as tf

    return {"euclidean": tf.EuclideanTransform, "similarity": tf.SimilarityTransform,
            "affine": tf.AffineTransform}[model]


def _min_points(model: str) -> int:
    return 3 if model == "affine" else 2


def fit_fiducials(src: Any, dst: Any, *, model: str = "similarity", source: str = "moving",
                  target: str = "reference", ransac: bool = True, residual_threshold: float | None = None,
                  reflect: bool | None = None, seed: int = 0, units: str = "µm") -> AffineTransform:
    """Transform mapping fiducial points ``src`` (in ``source``) onto ``dst`` (in ``target``).

    Parameters
    ----------
    src, dst : (N, 2) arrays
        Matching points, N >= 2 (similarity/euclidean) or 3 (affine).
    model : {"euclidean", "similarity", "affine"}
    ransac : bool
        Reject outliers by RANSAC when N exceeds the minimum (the final fit is least squares on the inliers).
    residual_threshold : float
        RANSAC inlier distance (``target`` units); default 3 x the median residual of a plain fit, at least
        1e-9.
    reflect : bool, optional
        Allow a mirror image (e.g. an image with y down onto a stage with y up).  Default: try both, keep the
        better fit.  Similarity and euclidean models cannot flip by themselves; a flip of ``src`` in y is
        composed in.

    Returns
    -------
    AffineTransform
        With ``residual_rms`` (over the inliers) and provenance: model, inlier mask, per-point residuals.
    """
    if model not in MODELS:
        raise InvalidArgument(f"model={model!r} is not one of {list(MODELS)}")
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise InvalidArgument(f"src/dst of shapes {src.shape} and {dst.shape} must both be (N, 2) point lists")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise InvalidArgument("src/dst contain NaN or infinite coordinates")
    n_min = _min_points(model)
    if len(src) < n_min:
        raise InvalidArgument(f"{len(src)} point pairs: a {model} transform needs at least {n_min}")
    options = [False, True] if reflect is None else [bool(reflect)]
    if model == "affine":
        options = [False]  # an affine fit includes reflections
    def plain_rms(flip):
        s = src * np.array([1.0, -1.0]) if flip else src
        m = _sk_model(model).from_estimate(s, dst)
        return float(np.sqrt(np.mean(np.sum((m(s) - dst) ** 2, axis=1)))) if m else np.inf

    # handedness from the plain least-squares fit (a wrong one cannot fit at all), then RANSAC within it
    flip = min(options, key=plain_rms)
    s = src * np.array([1.0, -1.0]) if flip else src
    m, inliers = _fit(s, dst, model, ransac, residual_threshold, seed)
    resid = np.hypot(*(m(s) - dst).T)
    rms = float(np.sqrt(np.mean(resid[inliers] ** 2)))
    mat = np.asarray(m.params, float)
    if flip:
        mat = mat @ np.diag([1.0, -1.0, 1.0])
    prov = dict(method="fiducials", model=model, ransac=bool(ransac), reflected=bool(flip), n_points=int(len(src)),
                n_inliers=int(inliers.sum()), inliers=inliers.tolist(), residuals=resid.tolist(),
                software="scikit-image " + _version("scikit-image"))
    return AffineTransform(mat, source, target, units, units, residual_rms=rms, provenance=prov)


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


def _fit(src, dst, model, use_ransac, threshold, seed):
    from skimage.measure import ransac as sk_ransac

    cls = _sk_model(model)
    plain = cls.from_estimate(src, dst)
    if not plain:
        raise InvalidArgument(f"the {model} fit failed: the points are degenerate (coincident or collinear)")
    if not use_ransac or len(src) <= _min_points(model) + 1:
        return plain, np.ones(len(src), bool)
    if threshold is None:
        r = np.hypot(*(plain(src) - dst).T)
        threshold = max(3.0 * float(np.median(r)), 1e-9)
    m, inliers = sk_ransac((src, dst), cls, min_samples=_min_points(model), residual_threshold=threshold,
                           max_trials=2000, rng=seed)
    if m is None or inliers is None or inliers.sum() < _min_points(model):
        return plain, np.ones(len(src), bool)
    refit = cls.from_estimate(src[inliers], dst[inliers])
    return (refit if refit else m), np.asarray(inliers, bool)


# ---------------------------------------------------------------------------------------------- image helpers
def grid_of(ds: xr.Dataset, variable: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (ny, nx), x µm, y µm) of a gridded variable; NaN filled with the median."""
    if ds[variable].dims[:2] != ("y", "x") or ds[variable].ndim != 2:
        raise InvalidArgument(f"variable={variable!r} must be a 2-D (y, x) map; it has dims {ds[variable].dims}")
    img = np.asarray(ds[variable].values, float)
    if np.isnan(img).any():
        img = np.where(np.isnan(img), np.nanmedian(img), img)
    return img, np.asarray(ds.x.values, float), np.asarray(ds.y.values, float)


def _pixel(x: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(x)))) if x.size > 1 else 1.0


def resample_to_grid(ds: xr.Dataset, variable: str, transform: AffineTransform, x: np.ndarray, y: np.ndarray,
                     *, order: int = 1, cval: float = np.nan) -> np.ndarray:
    """Values of ``ds[variable]`` at the points of a target grid (``x``, ``y`` in ``transform.target``).

    ``transform`` maps the dataset's frame to the target frame; the target points are mapped back and the
    source interpolated there (``scipy.ndimage.map_coordinates``).  The source is not modified.
    """
    from scipy import ndimage

    img, xs, ys = grid_of(ds, variable)
    xx, yy = np.meshgrid(np.asarray(x, float), np.asarray(y, float))
    src = transform.inverse().apply(np.stack([xx.ravel(), yy.ravel()], 1))
    cols = (src[:, 0] - xs[0]) / (xs[1] - xs[0] if xs.size > 1 else 1.0)
    rows = (src[:, 1] - ys[0]) / (ys[1] - ys[0] if ys.size > 1 else 1.0)
    out = ndimage.map_coordinates(img, [rows, cols], order=order, mode="constant", cval=cval)
    return out.reshape(xx.shape)


# ---------------------------------------------------------------------------------------------- phase correlation
def refine_phase_correlation(reference: xr.Dataset, moving: xr.Dataset, *, variable: str,
                             reference_variable: str | None = None, initial: AffineTransform | None = None,
                             upsample: int = 20) -> AffineTransform:
    """Same-modality refinement: the translation left after ``initial`` (moving frame -> reference frame).

    The moving map is sampled on the reference grid through ``initial`` and the shift between the two images is
    found by phase correlation with sub-pixel precision; the result is ``shift @ initial``.
    """
    from skimage.registration import phase_cross_correlation

    ref_var = reference_variable or variable
    ref_img, rx, ry = grid_of(reference, ref_var)
    source, target = frame_of(moving), frame_of(reference)
    initial = initial or AffineTransform.identity(source, target)
    mov_img = resample_to_grid(moving, variable, initial, rx, ry, cval=np.nan)
    valid = np.isfinite(mov_img)
    if valid.mean() < 0.25:
        raise InvalidArgument("the moving map overlaps less than a quarter of the reference grid after the initial "
                              "transform: register coarsely first (fiducials)")
    mov_img = np.where(valid, mov_img, np.nanmean(mov_img))
    shift, error, _ = phase_cross_correlation(_norm(ref_img), _norm(mov_img), upsample_factor=upsample,
                                              normalization=None)
    dy, dx = float(shift[0]) * (ry[1] - ry[0]), float(shift[1]) * (rx[1] - rx[0])
    # the moving image must move by +shift to match the reference
    step = AffineTransform.from_params(translation=(dx, dy), source=target, target=target)
    out = step @ initial
    return AffineTransform(out.matrix, source, target, residual_rms=None,
                           provenance=dict(method="phase_correlation", shift_um=[dx, dy], error=float(error),
                                           upsample=upsample, variable=variable, initial=initial.to_dict(),
                                           software="scikit-image " + _version("scikit-image")))


def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, float)
    s = a.std()
    return (a - a.mean()) / (s if s > 0 else 1.0)


# ---------------------------------------------------------------------------------------------- mutual information
def _sitk_image(img: np.ndarray, x: np.ndarray, y: np.ndarray):
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(np.asarray(img, np.float32))
    im.SetSpacing((float(x[1] - x[0]), float(y[1] - y[0])))
    im.SetOrigin((float(x[0]), float(y[0])))
    return im


def register_mutual_information(fixed: xr.Dataset, moving: xr.Dataset, *, fixed_variable: str,
                                moving_variable: str, initial: AffineTransform | None = None,
                                angles_deg: Sequence[float] | None = None, reflect: bool = False,
                                fixed_sigma: float = 0.0, bins: int = 32, iterations: int = 300,
                                seed: int = 1) -> AffineTransform:
    """Cross-modal registration (moving frame -> fixed frame) maximising Mattes mutual information (SimpleITK).

    Parameters
    ----------
    initial : AffineTransform, optional
        Starting guess (e.g. from fiducials); its rotation, scale and translation seed the optimiser.
    angles_deg : sequence, optional
        Extra starting rotations when no good guess exists (each tried; the best metric wins).
    reflect : bool
        The moving map is mirrored (y -> -y) before registration (composed into the result).
    fixed_sigma : float, µm
        Gaussian blur of the fixed image first (bring a sharp image to the moving probe's resolution).

    Returns
    -------
    AffineTransform
        Similarity transform with provenance: metric value, iterations, start that won.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    if initial is not None and initial.is_reflection:
        reflect = True  # the guess says the moving map is a mirror image
    f_img, fx, fy = grid_of(fixed, fixed_variable)
    m_img, mx, my = grid_of(moving, moving_variable)
    if fixed_sigma > 0:
        f_img = ndimage.gaussian_filter(f_img, fixed_sigma / _pixel(fx))
    flip = np.diag([1.0, -1.0, 1.0]) if reflect else np.eye(3)
    if reflect:  # mirrored moving image: y -> -y, so the grid runs from -y[-1]
        m_img, my = m_img[::-1], -my[::-1]
    fimg, mimg = _sitk_image(_norm(f_img), fx, fy), _sitk_image(_norm(m_img), mx, my)
    source, target = frame_of(moving), frame_of(fixed)
    centre = np.array([float(mx.mean()), float(my.mean())])
    starts = []
    if initial is not None:
        m0 = initial.matrix @ np.linalg.inv(flip)
        p = AffineTransform(m0, "a", "b").params()
        starts.append((p["rotation_deg"], 0.5 * (p["scale_x"] + p["scale_y"]), m0[:2, :2] @ centre + m0[:2, 2]))
    for ang in (angles_deg or ([] if initial is not None else [0.0])):
        starts.append((float(ang), 1.0, np.array([float(fx.mean()), float(fy.mean())])))
    best = None
    for ang, scale, centre_in_fixed in starts:
        # SimpleITK transforms map fixed points to moving points: start from the inverse of the guess
        t = sitk.Similarity2DTransform()
        t.SetCenter(tuple(float(v) for v in centre_in_fixed))
        t.SetScale(1.0 / scale)
        t.SetAngle(-math.radians(ang))
        t.SetTranslation(tuple(float(v) for v in centre - centre_in_fixed))
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(bins)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.5, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                     numberOfIterations=iterations, relaxationFactor=0.7)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SetInitialTransform(t, inPlace=False)
        out = reg.Execute(fimg, mimg)
        value = reg.GetMetricValue()
        if best is None or value < best[0]:
            best = (value, out, ang, reg.GetOptimizerIteration())
    value, out, ang, its = best
    sim = sitk.Similarity2DTransform(out.GetNthTransform(0) if hasattr(out, "GetNthTransform") else out)
    a = np.asarray(sim.GetMatrix(), float).reshape(2, 2)
    c = np.asarray(sim.GetCenter(), float)
    tr = np.asarray(sim.GetTranslation(), float)
    f2m = np.eye(3)
    f2m[:2, :2] = a
    f2m[:2, 2] = c + tr - a @ c
    m2f = np.linalg.inv(f2m) @ flip
    return AffineTransform(m2f, source, target, provenance=dict(
        method="mutual_information", metric="Mattes", bins=bins, metric_value=float(value), iterations=int(its),
        start_angle_deg=float(ang), reflected=bool(reflect), fixed_sigma_um=float(fixed_sigma),
        software="SimpleITK " + _version("SimpleITK")))


# ---------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    """Blob-like features of a map: positions (µm, the map's frame) and strengths (band-passed signal)."""

    xy: np.ndarray
    strength: np.ndarray
    frame: str


def find_features(ds: xr.Dataset, variable: str, *, sigma: float, background: float | None = None,
                  min_distance: float | None = None, threshold: float = 0.1, max_features: int = 30,
                  exclude_border: float = 0.0) -> Features:
    """Local maxima of a difference-of-Gaussians band pass: blobs of about ``sigma`` µm.

    ``background`` (µm, default 5 sigma) is the scale removed; ``threshold`` is relative to the strongest
    feature.  Positions are refined to the intensity-weighted centroid of the 3x3 neighbourhood.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    img, x, y = grid_of(ds, variable)
    px, py = _pixel(x), _pixel(y)
    band = ndimage.gaussian_filter(img, (sigma / py, sigma / px)) - \
        ndimage.gaussian_filter(img, ((background or 5 * sigma) / py, (background or 5 * sigma) / px))
    md = max(1, int(round((min_distance or 2 * sigma) / max(px, py))))
    border = max(1, int(round(exclude_border / max(px, py)))) if exclude_border else False
    pk = peak_local_max(band, min_distance=md, threshold_rel=threshold, num_peaks=max_features,
                        exclude_border=border)
    xy, strength = [], []
    for r, c in pk:
        r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, img.shape[0]), max(c - 1, 0), min(c + 2, img.shape[1])
        w = np.clip(band[r0:r1, c0:c1], 0, None)
        rr, cc = np.mgrid[r0:r1, c0:c1]
        tot = w.sum() or 1.0
        rc, ccen = float((rr * w).sum() / tot), float((cc * w).sum() / tot)
        xy.append([np.interp(ccen, np.arange(x.size), x), np.interp(rc, np.arange(y.size), y)])
        strength.append(float(band[r, c]))
    return Features(np.asarray(xy, float).reshape(-1, 2), np.asarray(strength, float), frame_of(ds))


def match_features(moving: Features, reference: Features, *, tolerance: float, scale_range=(0.8, 1.25),
                   allow_reflection: bool = True, n_strongest: int = 6) -> tuple[np.ndarray, np.ndarray, float]:
    """Consensus correspondence between two feature sets (moving -> reference).

    Every similarity transform defined by two of the ``n_strongest`` moving features and two reference features
    (scale within ``scale_range``; mirrored or not) is scored by the strength-weighted number of moving features
    that land within ``tolerance`` µm of a reference feature; the best hypothesis gives the pairs.

    Returns (moving indices, reference indices, score).
    """
    A, B = moving.xy, reference.xy
    if len(A) < 2 or len(B) < 2:
        raise InvalidArgument(f"{len(A)} moving and {len(B)} reference features: at least two of each are needed")
    wa = np.clip(moving.strength, 0, None) / max(np.clip(moving.strength, 0, None).max(), 1e-30)
    wb = np.clip(reference.strength, 0, None) / max(np.clip(reference.strength, 0, None).max(), 1e-30)
    order_a = np.argsort(-wa)[:n_strongest]
    order_b = np.argsort(-wb)[: max(3 * n_strongest, 12)]
    best = (-1.0, None, None)
    for flip in ([1.0, -1.0] if allow_reflection else [1.0]):
        Af = A * np.array([1.0, flip])
        for i, j in itertools.permutations(order_a, 2):
            dp = Af[j] - Af[i]
            lp = math.hypot(*dp)
            if lp == 0:
                continue
            for k, l in itertools.permutations(order_b, 2):
                dq = B[l] - B[k]
                s = math.hypot(*dq) / lp
                if not (scale_range[0] <= s <= scale_range[1]):
                    continue
                th = math.atan2(dq[1], dq[0]) - math.atan2(dp[1], dp[0])
                R = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
                t = B[k] - R @ Af[i]
                mapped = Af @ R.T + t
                d = np.hypot(*(mapped[:, None, :] - B[None, :, :]).transpose(2, 0, 1))
                nearest = d.argmin(axis=1)
                ok = d[np.arange(len(A)), nearest] < tolerance
                score = float(np.sum(np.sqrt(wa[ok] * wb[nearest[ok]])))
                if score > best[0]:
                    best = (score, np.flatnonzero(ok), nearest[ok])
    score, ia, ib = best
    if ia is None or len(ia) < 2:
        raise InvalidArgument("no consistent correspondence between the two feature sets")
    # one reference feature per moving feature: keep the closest pair when two moving features claim one
    keep = {}
    for a, b in zip(ia, ib):
        if b not in keep or wa[a] > wa[keep[b]]:
            keep[b] = a
    pairs = sorted((a, b) for b, a in keep.items())
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), score


def refine_centroids(ds: xr.Dataset, variable: str, guesses: Any, *, radius: float, iterations: int = 3
                     ) -> np.ndarray:
    """Intensity-weighted centroids (µm) of the features near ``guesses`` (N, 2), within ``radius`` µm.

    The local background (the 20th percentile inside the window) is subtracted; the window re-centres on the
    centroid ``iterations`` times.  Sub-pixel fiducial positions from maps of compact features (particles,
    discs, markers).
    """
    img, x, y = grid_of(ds, variable)
    xx, yy = np.meshgrid(x, y)
    out = []
    for g in np.asarray(guesses, float).reshape(-1, 2):
        c = g.copy()
        for _ in range(iterations):
            sel = np.hypot(xx - c[0], yy - c[1]) <= radius
            if sel.sum() < 4:
                raise InvalidArgument(f"the window of radius {radius} µm at {c.tolist()} holds fewer than 4 pixels")
            w = np.clip(img[sel] - np.percentile(img[sel], 20), 0, None)
            if w.sum() <= 0:
                break
            c = np.array([np.sum(w * xx[sel]) / w.sum(), np.sum(w * yy[sel]) / w.sum()])
        out.append(c)
    return np.asarray(out)
