"""Adaptive hopping runs: the final GP map as a product, and a live view of hops, prediction, uncertainty and the
next proposal.

:func:`adaptive_map_dataset` rebuilds the map model of an :func:`~espt_bluesky.plans.adaptive.
adaptive_hopping_scan` run from its ``decisions`` stream (valid hops and their objective; the settings in the start
document's ``adaptive`` entry) with :mod:`espt_bluesky.analysis.gp_sampling`, and predicts it on a regular grid
over the mapped region (NaN outside the region polygon): ``mean`` and ``std`` with x/y in µm.
:func:`write_adaptive_map` stores it next to the run (``products/<uid>/adaptive_map``);
:class:`AdaptiveProductCallback` does that at the end of every adaptive run.

:class:`LiveAdaptiveMap` draws, while the run goes, the predicted map and its uncertainty with the measured hops
(valid: dots, invalid: crosses) and the last proposal (a star), refitting the model every ``redraw_every``
decisions.  Headless (its own Agg canvas) unless given a figure.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import xarray as xr
from bluesky.callbacks.core import CallbackBase

from ..analysis import gp_sampling as gps
from ..errors import InvalidArgument
from .products import wait_for_run

__all__ = ["adaptive_map_dataset", "write_adaptive_map", "AdaptiveProductCallback", "LiveAdaptiveMap"]
logger = logging.getLogger(__name__)


def _grid(settings: Mapping[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    x0, x1, y0, y1 = settings["bounds"]
    return np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)


def predicted_maps(settings: Mapping[str, Any], x, y, objective, resolution: int = 101
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """(xs, ys, mean (ny, nx), std (ny, nx), gp) of the map model fitted to the valid hops (x, y, objective).

    The mean and std follow the run's ``reconstruction`` setting (GP mean, or one GP per class of a two-phase
    sample: :func:`espt_bluesky.analysis.gp_sampling.reconstruct`, with the run's ``boundary`` rule); ``gp`` is the
    single GP of all the hops (its hyperparameters are reported).
    """
    x, y, v = (np.asarray(a, float) for a in (x, y, objective))
    ok = np.isfinite(v)
    if ok.sum() < 2:
        raise InvalidArgument(f"{int(ok.sum())} valid hop(s) with an objective: a map needs at least 2")
    aniso = bool(settings.get("anisotropic", False))
    P = np.column_stack([x[ok], y[ok]])
    gp = gps.fit_gp(P, v[ok], span=settings["span"], min_length=settings["min_length"], nu=settings["nu"],
                    anisotropic=aniso)
    xs, ys = _grid(settings, resolution)
    X, Y = np.meshgrid(xs, ys)
    grid = np.column_stack([X.ravel(), Y.ravel()])
    how = settings.get("reconstruction", "gp")
    if how == "gp":
        mu, sd = gps.predict(gp, grid)
    else:
        mu, sd = gps.reconstruct(P, v[ok], grid, how=how, span=settings["span"], min_length=settings["min_length"],
                                 nu=settings["nu"], anisotropic=aniso, threshold=settings.get("threshold"),
                                 # runs recorded before the censored boundary existed keep the map they had
                                 boundary=settings.get("boundary", "midway"))
    mu, sd = mu.reshape(X.shape), sd.reshape(X.shape)
    if settings.get("region") is not None:
        out = ~gps.points_in_polygon(X, Y, settings["region"])
        mu[out] = np.nan
        sd[out] = np.nan
    return xs, ys, mu, sd, gp


def adaptive_map_dataset(run: Any, *, resolution: int = 101) -> xr.Dataset:
    """The final GP map (``mean``, ``std``; dims ``y``, ``x`` in µm) of an adaptive hopping run (Tiled node or
    ``(name, doc)`` list), with the hops it was fitted to (``hop_x``, ``hop_y``, ``hop_objective``)."""
    from ..storage.maps import as_run_data

    if not isinstance(resolution, (int, np.integer)) or not 2 <= resolution <= 2001:
        raise InvalidArgument(f"resolution={resolution!r} must be an integer in [2, 2001]")
    rd = as_run_data(run, "decisions")
    settings = rd.start.get("adaptive")
    if rd.start.get("plan_name") != "adaptive_hopping_scan" or not settings:
        raise InvalidArgument(f"run {str(rd.start.get('uid', '?'))[:8]} is not an adaptive_hopping_scan run")
    a = rd.arrays
    if "decision_x" not in a:
        raise InvalidArgument(f"run {rd.start['uid'][:8]} has no decisions yet")
    valid = np.asarray(a["decision_valid"]).astype(bool)
    x, y = np.asarray(a["decision_x"], float)[valid], np.asarray(a["decision_y"], float)[valid]
    v = np.asarray(a["decision_objective"], float)[valid]
    xs, ys, mu, sd, gp = predicted_maps(settings, x, y, v, resolution)
    p = gps.gp_parameters(gp)
    units = settings.get("objective_units") or ""
    return xr.Dataset(
        {"mean": (("y", "x"), mu, {"units": units, "long_name": f"predicted {settings['objective']}"}),
         "std": (("y", "x"), sd, {"units": units, "long_name": f"standard deviation of {settings['objective']}"}),
         "hop_x": (("hop",), x, {"units": "um"}), "hop_y": (("hop",), y, {"units": "um"}),
         "hop_objective": (("hop",), v, {"units": units})},
        coords={"x": ("x", xs, {"units": "um"}), "y": ("y", ys, {"units": "um"})},
        attrs=dict(source_uid=rd.start.get("uid"), analysis="espt_bluesky.analysis.gp_sampling.fit_gp",
                   objective=settings["objective"], strategy=settings["strategy"], n_hops=int(v.size),
                   n_invalid=int((~valid).sum()), length_scale_um=p["length_scale"], noise=p["noise"],
                   amplitude=p["amplitude"], nu=settings["nu"], length_scale_y_um=p["length_scale_y"],
                   reconstruction=settings.get("reconstruction", "gp")))


def write_adaptive_map(run: Any, *, name: str = "adaptive_map", overwrite: bool = False, **kwargs):
    """Compute :func:`adaptive_map_dataset` and store it next to ``run`` (Tiled); returns the product node."""
    from ..storage import write_product

    ds = adaptive_map_dataset(run, **kwargs)
    return write_product(run, name, ds, metadata={"parameters": dict(ds.attrs), "analysis": ds.attrs["analysis"]},
                         overwrite=overwrite)


class AdaptiveProductCallback(CallbackBase):
    """At the end of each adaptive hopping run, write its final GP map next to it in Tiled (subscribe it after the
    TiledWriter).  ``written`` lists (uid, product id); ``errors`` (uid, message) for runs without a map."""

    def __init__(self, client, *, timeout: float = 10.0, **kwargs):
        super().__init__()
        self.client, self.timeout, self.kwargs = client, float(timeout), kwargs
        self.written: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []
        self._uid: Optional[str] = None

    def start(self, doc):
        self._uid = doc["uid"] if doc.get("plan_name") == "adaptive_hopping_scan" else None
        return super().start(doc)

    def stop(self, doc):
        if self._uid is None:
            return super().stop(doc)
        uid = self._uid
        run = wait_for_run(self.client, uid, self.timeout)
        if run is None:
            self.errors.append((uid, f"run not found in Tiled within {self.timeout} s"))
            return super().stop(doc)
        try:
            node = write_adaptive_map(run, **self.kwargs)
            self.written.append((uid, node.item["id"]))
        except InvalidArgument as exc:
            self.errors.append((uid, str(exc)))
            logger.warning("no adaptive map for run %s: %s", uid[:8], exc)
        return super().stop(doc)


class LiveAdaptiveMap(CallbackBase):
    """Live figure of an adaptive hopping run: predicted map, uncertainty, hops and the last proposal.

    Parameters
    ----------
    directory : path, optional
        Save ``<uid>_adaptive.png`` there on each redraw and at the end.
    redraw_every : int
        Decisions between refits/redraws.
    resolution : int
        Pixels per side of the predicted maps.
    fig : matplotlib Figure, optional
        Draw into this figure; default: a new Agg figure.

    Attributes
    ----------
    hops : list of (x, y, valid, objective)
    proposal : (x, y) or None
        The last landing decided.
    mean, std : ndarray or None
        The last predicted maps.
    saved : list of Path
    """

    def __init__(self, *, directory: str | os.PathLike | None = None, redraw_every: int = 5,
                 resolution: int = 61, fig: Any = None):
        super().__init__()
        if not isinstance(redraw_every, (int, np.integer)) or redraw_every < 1:
            raise InvalidArgument(f"redraw_every={redraw_every!r} must be an integer >= 1")
        self.directory = Path(directory) if directory is not None else None
        self.redraw_every, self.resolution, self._fig = int(redraw_every), int(resolution), fig
        self.saved: list[Path] = []
        self._reset()

    def _reset(self):
        self.hops: list[tuple[float, float, bool, float]] = []
        self.proposal: tuple[float, float] | None = None
        self.mean = self.std = None
        self._settings: dict | None = None
        self._uid = ""
        self._desc: set[str] = set()

    def start(self, doc):
        self._reset()
        if doc.get("plan_name") == "adaptive_hopping_scan" and doc.get("adaptive"):
            self._settings, self._uid = dict(doc["adaptive"]), doc["uid"]
        return super().start(doc)

    def descriptor(self, doc):
        if self._settings is not None and doc.get("name") == "decisions":
            self._desc.add(doc["uid"])
        return super().descriptor(doc)

    def event(self, doc):
        if doc["descriptor"] in self._desc:
            d = doc["data"]
            self.hops.append((float(d["decision_x"]), float(d["decision_y"]), bool(d["decision_valid"]),
                              float(d["decision_objective"])))
            self.proposal = (float(d["decision_x"]), float(d["decision_y"]))
            if len(self.hops) % self.redraw_every == 0:
                self.redraw()
        return super().event(doc)

    def stop(self, doc):
        if self._settings is not None and self.hops:
            self.redraw()
        return super().stop(doc)

    def redraw(self) -> None:
        """Refit the map to the valid hops so far and draw it (a view never stops the run: errors are logged)."""
        try:
            h = np.array([(x, y, o) for x, y, v, o in self.hops if v and math.isfinite(o)]).reshape(-1, 3)
            if len(h) >= 2:
                xs, ys, self.mean, self.std, _ = predicted_maps(self._settings, h[:, 0], h[:, 1], h[:, 2],
                                                                self.resolution)
            self._draw()
        except Exception as exc:  # noqa: BLE001
            logger.warning("LiveAdaptiveMap: could not redraw: %s", exc)

    def _draw(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if self._fig is None:
            self._fig = Figure(figsize=(9, 4))
            FigureCanvasAgg(self._fig)
        fig = self._fig
        fig.clf()
        x0, x1, y0, y1 = self._settings["bounds"]
        h = np.array([(x, y, v) for x, y, v, _ in self.hops]).reshape(-1, 3)
        for k, (img, title) in enumerate(((self.mean, f"predicted {self._settings['objective']}"),
                                          (self.std, "uncertainty (σ)"))):
            ax = fig.add_subplot(1, 2, k + 1)
            if img is not None:
                im = ax.imshow(img, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis" if k == 0 else "magma")
                fig.colorbar(im, ax=ax, shrink=0.8, label=self._settings.get("objective_units") or "")
            ok = h[:, 2] == 1
            ax.plot(h[ok, 0], h[ok, 1], "w.", ms=4, mec="k", mew=0.3, label="hops")
            ax.plot(h[~ok, 0], h[~ok, 1], "rx", ms=5, label="invalid")
            if self.proposal is not None:
                ax.plot(*self.proposal, "*", color="orange", ms=11, mec="k", label="last proposal")
            ax.set(xlabel="x (µm)", ylabel="y (µm)", title=title, xlim=(x0, x1), ylim=(y0, y1))
        fig.axes[0].legend(fontsize=6, loc="upper right")
        fig.suptitle(f"adaptive hopping ({self._settings['strategy']}): {int(h[:, 2].sum())} hops")
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self._uid}_adaptive.png"
            fig.savefig(path, dpi=90)
            if path not in self.saved:
                self.saved.append(path)
        elif hasattr(fig.canvas, "draw_idle"):
            fig.canvas.draw_idle()

    @property
    def figure(self):
        return self._fig
