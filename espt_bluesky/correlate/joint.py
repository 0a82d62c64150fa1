"""Joint analysis of co-registered channels: a stacked Dataset, correlation with confidence intervals, 2-D
histograms, clustering (scikit-learn) and Raman band-ratio channels."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import xarray as xr

from ..errors import InvalidArgument


def stack(channels: Mapping[str, tuple[np.ndarray, np.ndarray | None, str]], coords: Mapping[str, tuple]
          ) -> xr.Dataset:
    """A Dataset of co-registered channels ``name -> (values, 1σ or None, units)`` on shared ``coords``."""
    dims = tuple(next(iter(coords.values()))[0]) if coords else ("spot",)
    dims = tuple(coords["x"][0]) if "x" in coords and isinstance(coords["x"][0], tuple) else dims
    data = {}
    for name, (v, err, units) in channels.items():
        v = np.asarray(v, float)
        d = dims if v.ndim == len(dims) else ("spot",) if v.ndim == 1 else tuple(f"d{i}" for i in range(v.ndim))
        data[name] = (d, v, {"units": units})
        if err is not None:
            data[f"{name}_sigma"] = (d, np.asarray(err, float), {"units": units})
    return xr.Dataset(data, coords=dict(coords))


def correlation(a, b, *, method: str = "pearson", confidence: float = 0.95) -> dict[str, float]:
    """Correlation of two channels (finite pairs) with a Fisher-z confidence interval and p-value."""
    from scipy import stats

    a = np.asarray(a, float).ravel()
    b = np.asarray(b, float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 4:
        raise InvalidArgument(f"{n} finite pairs: a correlation needs at least 4")
    if method == "pearson":
        r, p = stats.pearsonr(a[ok], b[ok])
    elif method == "spearman":
        r, p = stats.spearmanr(a[ok], b[ok])
    else:
        raise InvalidArgument(f"method={method!r} is not one of ['pearson', 'spearman']")
    z = math.atanh(max(min(float(r), 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
    return dict(r=float(r), ci_low=math.tanh(z - half), ci_high=math.tanh(z + half), p=float(p), n=n,
                method=method, confidence=confidence)


def histogram2d(a, b, *, bins: int = 40, a_label: str = "a", b_label: str = "b") -> xr.DataArray:
    """2-D histogram of two channels (finite pairs); edges in attrs."""
    a = np.asarray(a, float).ravel()
    b = np.asarray(b, float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    h, xe, ye = np.histogram2d(a[ok], b[ok], bins=bins)
    return xr.DataArray(h, dims=("a_bin", "b_bin"),
                        coords={"a_bin": 0.5 * (xe[1:] + xe[:-1]), "b_bin": 0.5 * (ye[1:] + ye[:-1])},
                        attrs={"x_edges": xe.tolist(), "y_edges": ye.tolist(), "x_label": a_label,
                               "y_label": b_label, "units": "points"})


def cluster(ds: xr.Dataset, channels, *, n_clusters: int = 2, seed: int = 0) -> np.ndarray:
    """k-means labels (scikit-learn) of the standardised channels; -1 where any channel is not finite."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    X = np.stack([np.asarray(ds[c].values, float).ravel() for c in channels], axis=1)
    ok = np.all(np.isfinite(X), axis=1)
    if ok.sum() < n_clusters:
        raise InvalidArgument(f"{int(ok.sum())} complete points cannot make {n_clusters} clusters")
    labels = np.full(X.shape[0], -1)
    labels[ok] = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(
        StandardScaler().fit_transform(X[ok]))
    return labels.reshape(np.asarray(ds[channels[0]].values).shape)


def band_ratio_map(ds: xr.Dataset, numerator: str, denominator: str, *, shift=None,
                   spectrum: str = "raman_spectrum", windows: Mapping | None = None) -> xr.DataArray:
    """Raman band ratio (e.g. D/G, carbonate/G) of every spot or pixel of a map, as a channel to stack, correlate
    or cluster with the others (``ds[name] = band_ratio_map(...)``).

    ``ds[spectrum]`` holds one spectrum per point along its last dimension; ``shift`` is its Raman shift axis
    (cm⁻¹): by default the coordinate of that dimension (an imported map has one); for a bench run, from the run's
    configuration with :func:`espt_bluesky.analysis.raman.shift_from_configuration`.
    The background is removed and the band windows summed by :func:`espt_bluesky.analysis.raman.band_ratio`.
    """
    from ..analysis.raman import DEFAULT_WINDOWS, band_ratio

    if spectrum not in ds:
        raise InvalidArgument(f"spectrum={spectrum!r} is not in the map; it has {sorted(ds.data_vars)}")
    da = ds[spectrum]
    if shift is None:
        if da.dims[-1] not in da.coords:
            raise InvalidArgument(f"{spectrum!r} has no coordinate along {da.dims[-1]!r}: pass shift= (cm⁻¹), e.g. "
                                  "analysis.raman.shift_from_configuration(run configuration)")
        shift = da.coords[da.dims[-1]].values
    windows = dict(DEFAULT_WINDOWS if windows is None else windows)
    r = band_ratio(shift, np.asarray(da.values, float), numerator, denominator, windows=windows)
    dims = da.dims[:-1]
    return xr.DataArray(r, dims=dims, coords={k: v for k, v in da.coords.items() if set(v.dims) <= set(dims)},
                        name=f"{numerator}_{denominator}",
                        attrs={"units": "", "long_name": f"Raman {numerator}/{denominator} band ratio",
                               "windows_cm-1": {k: list(map(float, windows[k])) for k in (numerator, denominator)},
                               "source": spectrum})
