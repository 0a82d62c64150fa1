"""Figures of correlated maps: overlays with transparency, scale bars, matched colour limits (matplotlib, headless).

A map registered onto another is drawn through its transform (matplotlib's ``Affine2D`` on the image), so the
figure shows the measured pixels where the registration puts them; nothing is resampled.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..analysis.figures import new_figure
from ..errors import InvalidArgument
from .frames import AffineTransform


def _extent(ds: xr.Dataset) -> tuple[float, float, float, float]:
    x, y = ds.x.values, ds.y.values
    dx = (x[1] - x[0]) / 2 if x.size > 1 else 0.5
    dy = (y[1] - y[0]) / 2 if y.size > 1 else 0.5
    return float(x[0] - dx), float(x[-1] + dx), float(y[0] - dy), float(y[-1] + dy)


def add_scale_bar(ax: Any, length: float | None = None, units: str = "µm", color: str = "white") -> None:
    """A scale bar in the lower right corner (length in data units, default a round ~1/5 of the width)."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    if length is None:
        raw = abs(x1 - x0) / 5
        mag = 10 ** np.floor(np.log10(raw))
        length = float(min((1, 2, 5, 10), key=lambda m: abs(m * mag - raw)) * mag)
    bar = AnchoredSizeBar(ax.transData, length, f"{length:g} {units}", "lower right", pad=0.4, color=color,
                          frameon=False, size_vertical=abs(ax.get_ylim()[1] - ax.get_ylim()[0]) / 150)
    ax.add_artist(bar)


def matched_limits(arrays: Sequence[np.ndarray], percentiles=(1.0, 99.0)) -> tuple[float, float]:
    """One (vmin, vmax) for several maps of the same quantity (robust percentiles over all of them)."""
    vals = np.concatenate([np.asarray(a, float).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise InvalidArgument("no finite values to set colour limits from")
    lo, hi = np.percentile(vals, percentiles)
    return float(lo), float(hi if hi > lo else lo + 1e-30)


def overlay_figure(base: xr.Dataset, base_variable: str, overlay: xr.Dataset, overlay_variable: str,
                   transform: AffineTransform, *, alpha: float = 0.55, base_cmap: str = "gray",
                   overlay_cmap: str = "inferno", title: str | None = None, points: Sequence[tuple] = (),
                   figsize=(7.0, 6.0), overlay_label: str | None = None):
    """The overlay map drawn through ``transform`` (overlay frame -> base frame) on the base image.

    ``points`` are optional ``(xy (N, 2) in the base frame, style dict, label)`` triples (e.g. fiducials).
    """
    import matplotlib.transforms as mtransforms

    fig = new_figure(figsize)
    ax = fig.subplots()
    b = np.asarray(base[base_variable].values, float)
    ax.imshow(b, origin="lower", extent=_extent(base), cmap=base_cmap, vmin=np.nanpercentile(b, 1),
              vmax=np.nanpercentile(b, 99.5), interpolation="nearest")
    o = np.asarray(overlay[overlay_variable].values, float)
    im = ax.imshow(o, origin="lower", extent=_extent(overlay), cmap=overlay_cmap, alpha=alpha,
                   vmin=np.nanpercentile(o, 1), vmax=np.nanpercentile(o, 99.5), interpolation="nearest")
    im.set_transform(mtransforms.Affine2D(transform.matrix) + ax.transData)
    # the overlay's outline, to see where it sits
    x0, x1, y0, y1 = _extent(overlay)
    outline = transform.apply(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
    ax.plot(outline[:, 0], outline[:, 1], "-", color="cyan", lw=1.0)
    for xy, style, label in points:
        xy = np.asarray(xy, float)
        ax.plot(xy[:, 0], xy[:, 1], linestyle="none", label=label, **style)
    bx0, bx1, by0, by1 = _extent(base)
    ax.set_xlim(min(bx0, outline[:, 0].min()), max(bx1, outline[:, 0].max()))
    ax.set_ylim(min(by0, outline[:, 1].min()), max(by1, outline[:, 1].max()))
    ax.set_aspect("equal")
    ax.set_xlabel(f"x (µm, {base.attrs.get('frame', '')})")
    ax.set_ylabel("y (µm)")
    units = overlay[overlay_variable].attrs.get("units", "")
    fig.colorbar(im, ax=ax, shrink=0.8, label=overlay_label or f"{overlay_variable} ({units})")
    add_scale_bar(ax)
    if points:
        ax.legend(fontsize=7, loc="upper right")
    res = f", RMS {transform.residual_rms:.2g} µm" if transform.residual_rms is not None else ""
    ax.set_title(title or f"{overlay.attrs.get('technique', '')} on {base.attrs.get('technique', '')}{res}",
                 fontsize=9)
    return fig


def maps_figure(maps: Sequence[tuple[np.ndarray, tuple, str]], *, shared_limits: bool = False, cmap="viridis",
                figsize=None, units: str = ""):
    """Side-by-side maps ``(image, extent, title)`` with scale bars; ``shared_limits`` matches colour limits."""
    n = len(maps)
    fig = new_figure(figsize or (3.6 * n, 3.4))
    axes = np.atleast_1d(fig.subplots(1, n))
    lims = matched_limits([m[0] for m in maps]) if shared_limits else None
    for ax, (img, extent, title) in zip(axes, maps):
        img = np.asarray(img, float)
        vmin, vmax = lims or (np.nanpercentile(img, 1), np.nanpercentile(img, 99))
        im = ax.imshow(img, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlabel("x (µm)")
        add_scale_bar(ax)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
    return fig


def joint_histogram_figure(hist: xr.DataArray, *, r: float | None = None, ci: tuple | None = None):
    """A 2-D histogram of two co-registered channels (log counts), with r and its CI in the title."""
    fig = new_figure((4.6, 4.0))
    ax = fig.subplots()
    xe, ye = hist.attrs["x_edges"], hist.attrs["y_edges"]
    h = np.asarray(hist.values, float)
    im = ax.pcolormesh(xe, ye, np.where(h > 0, h, np.nan).T, cmap="magma", shading="flat")
    fig.colorbar(im, ax=ax, label="points")
    ax.set_xlabel(hist.attrs.get("x_label", "x"))
    ax.set_ylabel(hist.attrs.get("y_label", "y"))
    if r is not None:
        ax.set_title(f"r = {r:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""), fontsize=9)
    return fig
