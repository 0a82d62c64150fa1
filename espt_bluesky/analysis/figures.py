"""Figures of analysis products (matplotlib, object API only: works headless, no pyplot state).

Each function returns a :class:`matplotlib.figure.Figure`; save it with ``fig.savefig(path)``.
Positions in µm.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidArgument

__all__ = ["new_figure", "screening_figure", "edge_profile_figure", "map_figure", "waveform_figure"]


def new_figure(figsize=(8.0, 4.0), layout: str | None = "constrained"):
    """A Figure attached to an Agg canvas (independent of the pyplot backend); ``layout=None`` draws faster."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def screening_figure(result, clusters=None, groups: Optional[Sequence[Any]] = None,
                     value: str = "passivation_ratio", value_label: str = "Q$_{p2}$/Q$_{p1}$"):
    """The figure of a screening paper: map of spot clusters and a box + strip plot of a feature per group.

    Parameters
    ----------
    result : ScreeningResult
        From :func:`espt_bluesky.analysis.screening.screen_spots` (needs spot positions for the map).
    clusters : ClusterResult, optional
        Colours the map; without ``groups`` the box plot is per cluster.
    groups : sequence, optional
        Parameter group of every spot (a combinatorial sweep's parameter); default: the clusters.
    value : str
        Feature plotted per group (an attribute of the result, e.g. "passivation_ratio", "onset_potential").
    """
    v = np.asarray(getattr(result, value, None) if hasattr(result, value) else None, dtype=float)
    if v.ndim != 1:
        raise InvalidArgument(f"value={value!r} is not a per-spot feature of the screening result")
    if groups is None:
        if clusters is None:
            raise InvalidArgument("give clusters or groups: the box plot needs a grouping of the spots")
        groups = [f"cluster {c}" if c >= 0 else "invalid" for c in clusters.labels]
    g = np.asarray(groups, dtype=object)
    if g.size != v.size:
        raise InvalidArgument(f"groups has {g.size} entries but the screen has {v.size} spots")
    fig = new_figure((10.0, 4.2))
    ax_map, ax_box = fig.subplots(1, 2, width_ratios=[1.0, 1.2])
    lab = clusters.labels if clusters is not None else np.zeros(v.size, int)
    finite_xy = np.isfinite(result.x) & np.isfinite(result.y)
    if finite_xy.any():
        import matplotlib

        cmap = matplotlib.colormaps["tab10"]
        for c in np.unique(lab):
            m = (lab == c) & finite_xy
            ax_map.scatter(result.x[m], result.y[m], s=28, color=cmap(int(c) % 10) if c >= 0 else "0.6",
                           edgecolor="k", linewidth=0.3, label=f"cluster {c}" if c >= 0 else "invalid")
        ax_map.set_aspect("equal")
        ax_map.set_xlabel("x (µm)")
        ax_map.set_ylabel("y (µm)")
        ax_map.set_title("spot clusters" if clusters is not None else "spots")
        ax_map.legend(fontsize=7, loc="best")
    keys = list(dict.fromkeys(g.tolist()))
    data = [v[(g == k) & np.isfinite(v)] for k in keys]
    ax_box.boxplot(data, tick_labels=[str(k) for k in keys], showfliers=False)
    rng = np.random.default_rng(0)
    for j, d in enumerate(data, start=1):
        ax_box.plot(j + rng.uniform(-0.15, 0.15, d.size), d, "o", ms=3, alpha=0.6, color="k")
    ax_box.set_ylabel(value_label if value == "passivation_ratio" else value)
    ax_box.set_title(f"{value} per group")
    return fig


def edge_profile_figure(distance, profiles: dict, fits: Optional[dict] = None, xlabel: str = "distance (µm)"):
    """Line profiles across an edge (e.g. measured vs deconvolved) with their sigmoid fits."""
    fig = new_figure((5.0, 3.5))
    ax = fig.subplots()
    d = np.asarray(distance, float)
    for name, p in profiles.items():
        ax.plot(d, p, ".", ms=3, label=name)
        if fits and name in fits:
            ax.plot(d, fits[name].model(d), "-", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("signal")
    ax.legend(fontsize=7)
    return fig


def _cell_edges(c: np.ndarray) -> tuple[float, float]:
    """Outer edges of a row of cell centres (half a step beyond the first and last; ±0.5 for one cell)."""
    c = np.asarray(c, float)
    half = 0.5 * abs(c[-1] - c[0]) / (c.size - 1) if c.size > 1 else 0.5
    lo, hi = (c[0], c[-1]) if c[-1] >= c[0] else (c[-1], c[0])
    return lo - half, hi + half


def map_figure(x, y, values, *, label: str = "", units: str = "", title: str = "", mark=None,
               figsize=(5.6, 4.4)):
    """A map on physical axes (µm) with a colour bar: an image for a grid, coloured dots for scattered points.

    Parameters
    ----------
    x, y : array
        µm.  1-D cell centres of a grid (``values`` of shape ``(y.size, x.size)``) or the positions of scattered
        points (same shape as ``values``).
    values : array
        The mapped quantity (NaN cells are left blank).
    label, units : str
        Colour-bar label.
    mark : (x, y), optional
        A position to mark (µm), e.g. the spot whose waveform is shown next to the map.
    """
    x, y, v = (np.asarray(a, float) for a in (x, y, values))
    fig = new_figure(figsize)
    ax = fig.subplots()
    grid = v.ndim == 2 and x.ndim == 1 and y.ndim == 1 and v.shape == (y.size, x.size)
    if grid:
        (x0, x1), (y0, y1) = _cell_edges(x), _cell_edges(y)
        img = v[::-1] if y[-1] < y[0] else v
        img = img[:, ::-1] if x[-1] < x[0] else img
        art = ax.imshow(img, origin="lower", extent=(x0, x1, y0, y1), aspect="equal", interpolation="nearest",
                        cmap="viridis")
    elif v.shape == x.shape == y.shape:
        span = max(np.ptp(x[np.isfinite(x)]) if np.isfinite(x).any() else 1.0, 1e-9)
        art = ax.scatter(x, y, c=v, s=max(12.0, 4000.0 / max(v.size, 1)), cmap="viridis", marker="s")
        ax.set_aspect("equal")
        ax.set_xlim(np.nanmin(x) - 0.05 * span, np.nanmax(x) + 0.05 * span)
    else:
        raise InvalidArgument(f"values of shape {v.shape} fit neither a grid of x {x.shape} × y {y.shape} nor "
                              "points at x, y")
    cb = fig.colorbar(art, ax=ax)
    cb.set_label(f"{label} ({units})" if units else label)
    if mark is not None:
        ax.plot([mark[0]], [mark[1]], "o", mfc="none", mec="red", ms=10, mew=1.5)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def waveform_figure(x, y, *, xlabel: str = "E (V)", ylabel: str = "i (A)", title: str = "",
                    figsize=(5.6, 4.0)):
    """One waveform (a CV: current against potential; or current against time), labelled with units."""
    fig = new_figure(figsize)
    ax = fig.subplots()
    ax.plot(np.asarray(x, float), np.asarray(y, float), "-", lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if title:
        ax.set_title(title, fontsize=9)
    return fig
