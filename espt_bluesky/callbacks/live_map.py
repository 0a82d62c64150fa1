"""``LiveFeedbackMap``: the normalised tip current as an image that fills in while a map runs.

Pixels are placed by each event's x/y positions (the start document's ``map`` = {"x": key, "y": key, "order"},
else bluesky's ``motors``), on the grid given by ``shape``/``extents`` when the plan announces one; scans without
a grid (hopping, random, adaptive points) are drawn as a scatter of the visited points.  The value is
I_T = i_T/i_T,inf with i_T,inf given, taken from the start document (``i_inf``/``reference_current``), or the
theoretical 4·n·F·D·c*·a·β(RG) of the probe and mediator metadata
(:func:`espt_bluesky.analysis.kinetic_maps.theoretical_i_inf`).

Cheap per event: one array assignment; the figure is redrawn (and, with ``directory``, saved as a PNG) every
``redraw_every`` events and at the end of the run.  Headless: it draws on its own Agg canvas, never through
pyplot.  The figure shows the probe footprint (a circle of radius a + d at the last tip position, a from the
probe metadata, d from the start document's ``height`` or ``distance``) and a scale bar in µm.

A run the map cannot show (another technique, no x/y positions, no i_T,inf, a stream without the current) is
skipped with a log message: a live view never aborts a run it does not understand.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from bluesky.callbacks.core import CallbackBase

from ..analysis.kinetic_maps import theoretical_i_inf
from ..errors import InvalidArgument

__all__ = ["LiveFeedbackMap", "LiveFlyMap", "probe_radius_from_metadata", "map_layout"]

_IINF_KEYS = ("i_inf", "i_tip_inf", "i_T_inf", "reference_current")
logger = logging.getLogger(__name__)


def probe_radius_from_metadata(probe: Mapping[str, Any] | None) -> Optional[float]:
    """Electrode/aperture radius (µm) of a start document's ``probe`` entry, or None."""
    if not isinstance(probe, Mapping):
        return None
    for key in ("radius", "inner_radius", "tip_radius"):
        if probe.get(key) is not None:
            return float(probe[key])
    return None


def map_layout(start: Mapping[str, Any]) -> dict[str, Any]:
    """x key, y key, order and (for grids) shape (ny, nx) and extents ((y0, y1), (x0, x1)) of a map run."""
    from ..storage.maps import map_keys

    xk, yk, order = map_keys(start)
    out: dict[str, Any] = dict(x=xk, y=yk, order=order, shape=None, extents=None)
    shape = start.get("shape")
    ext = start.get("extents")
    if shape is not None and len(shape) == 2 and ext is not None and len(ext) == 2:
        out["shape"] = (int(shape[0]), int(shape[1]))
        out["extents"] = ((float(ext[0][0]), float(ext[0][1])), (float(ext[1][0]), float(ext[1][1])))
    return out


class LiveFeedbackMap(CallbackBase):
    """Live image of the normalised tip current I_T = i_T/i_T,inf.

    Parameters
    ----------
    field : str
        Data key of the tip current (A).
    i_inf : float, optional
        i_T,inf in A (default: from the start document, see the module docstring).
    directory : path, optional
        Save ``<uid>_<field>.png`` there on every redraw and at the end (headless use).
    redraw_every : int, optional
        Events between redraws (default: one grid row, or 50 without a grid).
    technique : str or None
        Technique a run must have (start document ``technique``); None accepts any.
    distance : float, optional
        Tip–sample distance d (µm) for the footprint (default: the start document's ``height``/``distance``).
    stream : str
        Event stream drawn.
    cmap, clim
        Colour map and limits of the image (default limits: the data's range).
    fig : matplotlib Figure, optional
        Draw into this figure (e.g. an interactive one, redrawn with ``draw_idle``); default: a new Agg figure,
        which is only rendered when a PNG is saved.
    png_interval : float
        Least time (s) between two PNG saves during the run (the last one is always saved at the stop).

    Attributes
    ----------
    image : ndarray
        (ny, nx) normalised current of the present run (NaN where not measured yet).
    x, y : ndarray
        Pixel-centre coordinates (µm) of the grid.
    saved : list of Path
        PNG files written.
    skipped : str or None
        Why the present run is not drawn (None while it is).
    """

    def __init__(self, field: str = "pstat_tip_current", *, i_inf: Optional[float] = None,
                 directory: str | os.PathLike | None = None, redraw_every: Optional[int] = None,
                 technique: Optional[str] = "SECM", distance: Optional[float] = None, stream: str = "primary",
                 cmap: str = "viridis", clim: Optional[tuple[float, float]] = None, fig: Any = None,
                 png_interval: float = 2.0):
        super().__init__()
        if not isinstance(field, str) or not field:
            raise InvalidArgument(f"field={field!r} must name the data key of the tip current")
        if i_inf is not None and not (np.isfinite(i_inf) and i_inf != 0):
            raise InvalidArgument(f"i_inf={i_inf!r} A must be a finite, nonzero current")
        if redraw_every is not None and (not isinstance(redraw_every, (int, np.integer)) or redraw_every < 1):
            raise InvalidArgument(f"redraw_every={redraw_every!r} must be an integer >= 1")
        self.field = field
        self._i_inf_arg = i_inf
        self.directory = Path(directory) if directory is not None else None
        self._redraw_arg = redraw_every
        self.technique = technique
        self._distance_arg = distance
        self.stream = stream
        self.cmap = cmap
        self.clim = clim
        self._fig = fig
        self._user_fig = fig is not None
        self.png_interval = float(png_interval)
        self._last_png = -math.inf
        self.saved: list[Path] = []
        self.image = np.zeros((0, 0))
        self.x = self.y = np.zeros(0)
        self._descriptors: set[str] = set()
        self._artists: dict[str, Any] = {}
        self.skipped: str | None = None
        self.n = 0

    # ------------------------------------------------------------------ documents
    def _skip(self, reason: str, level: int = logging.INFO) -> None:
        self.skipped = reason
        logger.log(level, "LiveFeedbackMap: %s", reason)

    def start(self, doc):
        self._descriptors.clear()
        self.n = 0
        self.skipped = None
        try:
            self._start(doc)
        except InvalidArgument as exc:
            self._skip(f"run {doc['uid'][:8]} not drawn: {exc}")
        return super().start(doc)

    def _start(self, doc):
        tech = doc.get("technique")
        if self.technique is not None and tech is not None and str(tech).upper() != self.technique.upper():
            raise InvalidArgument(f"run technique={tech!r}; this map shows {self.technique} feedback (pass "
                                  f"technique=None to accept any run)")
        self.layout = map_layout(doc)  # raises InvalidArgument when the run has no positions
        self.uid = doc["uid"]
        self.i_inf = self._resolve_i_inf(doc)
        self.a = probe_radius_from_metadata(doc.get("probe"))
        d = self._distance_arg if self._distance_arg is not None else doc.get("height", doc.get("distance"))
        self.d = float(d) if d is not None else None
        self.n = 0
        self._pending = 0
        self._last = (math.nan, math.nan)
        shape = self.layout["shape"]
        if shape is not None:
            (y0, y1), (x0, x1) = self.layout["extents"]
            ny, nx = shape
            self.y, self.x = np.linspace(y0, y1, ny), np.linspace(x0, x1, nx)
            self._x0, self._y0 = x0, y0
            self._dx = (x1 - x0) / (nx - 1) if nx > 1 else 1.0
            self._dy = (y1 - y0) / (ny - 1) if ny > 1 else 1.0
            self.image = np.full((ny, nx), np.nan)
            self.redraw_every = self._redraw_arg or nx
        else:
            self.image = np.zeros((0, 0))
            self._pts: list[tuple[float, float, float]] = []
            self.redraw_every = self._redraw_arg or 50
        self._setup_figure()

    def _resolve_i_inf(self, doc) -> float:
        if self._i_inf_arg is not None:
            return float(self._i_inf_arg)
        for key in _IINF_KEYS:
            v = doc.get(key)
            if isinstance(v, (int, float)) and np.isfinite(v) and v != 0:
                return float(v)
        try:
            return theoretical_i_inf(doc.get("probe"), doc.get("mediator"))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"no i_T,inf for run {doc['uid'][:8]}: pass i_inf=..., or put one of "
                f"{list(_IINF_KEYS)} in the start document, or give probe and mediator metadata ({exc})") from None

    def descriptor(self, doc):
        if self.skipped is not None or doc.get("name", "primary") != self.stream:
            return super().descriptor(doc)
        keys = doc.get("data_keys", {})
        missing = [k for k in (self.field, self.layout["x"], self.layout["y"]) if k not in keys]
        if missing:
            self._skip(f"the {self.stream!r} stream lacks {missing}; it has {sorted(keys)} (field={self.field!r}, "
                       f"positions from the start document)", logging.WARNING)
            return super().descriptor(doc)
        self._descriptors.add(doc["uid"])
        return super().descriptor(doc)

    def event(self, doc):
        if doc["descriptor"] not in self._descriptors:
            return super().event(doc)
        data = doc["data"]
        try:
            x = float(data[self.layout["x"]])
            y = float(data[self.layout["y"]])
            v = float(data[self.field]) / self.i_inf
        except (KeyError, TypeError, ValueError) as exc:  # a reading that is not a number: leave the pixel empty
            logger.warning("LiveFeedbackMap: event %s not drawn: %r", doc.get("seq_num"), exc)
            return super().event(doc)
        self._last = (x, y)
        if self.image.size:
            ix = int(round((x - self._x0) / self._dx))
            iy = int(round((y - self._y0) / self._dy))
            if 0 <= iy < self.image.shape[0] and 0 <= ix < self.image.shape[1]:
                self.image[iy, ix] = v
        else:
            self._pts.append((x, y, v))
        self.n += 1
        self._pending += 1
        if self._pending >= self.redraw_every:
            self.redraw()
        return super().event(doc)

    def stop(self, doc):
        if self.n and self.skipped is None:
            self.redraw(final=True)
        return super().stop(doc)

    # ------------------------------------------------------------------ drawing
    def _setup_figure(self):
        from matplotlib.patches import Circle

        if self._fig is None:
            from ..analysis.figures import new_figure

            self._fig = new_figure((5.2, 4.4), layout=None)  # constrained layout costs ~0.3 s per draw
            self._fig.subplots_adjust(left=0.12, right=0.9, bottom=0.11, top=0.92)
        fig = self._fig
        fig.clear()
        ax = fig.add_subplot()
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        ax.set_title(f"I$_T$ = i$_T$/i$_{{T,\\infty}}$  ({self.uid[:8]})", fontsize=9)
        if self.image.size:
            dx, dy = self._dx, self._dy
            ext = (self.x[0] - dx / 2, self.x[-1] + dx / 2, self.y[0] - dy / 2, self.y[-1] + dy / 2)
            im = ax.imshow(np.ma.masked_invalid(self.image), origin="lower", extent=ext, cmap=self.cmap,
                           interpolation="nearest", aspect="equal")
            span = ext[1] - ext[0]
        else:
            im = ax.scatter([], [], c=[], cmap=self.cmap, s=12)
            ax.set_aspect("equal")
            span = None
        fig.colorbar(im, ax=ax, label="I$_T$")
        self._artists = dict(ax=ax, im=im)
        if self.a is not None:
            rf = self.a + (self.d or 0.0)
            circ = Circle((np.nan, np.nan), rf, fill=False, ec="w", lw=1.2, ls="--")
            ax.add_patch(circ)
            self._artists["footprint"] = circ
        if span:
            self._add_scale_bar(ax, span)

    @staticmethod
    def _add_scale_bar(ax, span):
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        target = span / 5.0
        nice = 10 ** math.floor(math.log10(target))
        for m in (5, 2, 1):
            if m * nice <= target:
                length = m * nice
                break
        label = f"{length:g} µm"
        ax.add_artist(AnchoredSizeBar(ax.transData, length, label, "lower right", pad=0.4, color="white",
                                      frameon=False, size_vertical=span / 150.0))

    def redraw(self, final: bool = False) -> None:
        """Update the figure from the data so far (and save the PNG when a directory is set)."""
        import time

        now = time.monotonic()
        png = self.directory is not None and (final or now - self._last_png >= self.png_interval)
        if not (png or self._user_fig):
            self._pending = 0
            return  # nothing would show the update: keep the per-event cost at one array assignment
        self._pending = 0
        art = self._artists
        if not art:
            return
        if self.image.size:
            art["im"].set_data(np.ma.masked_invalid(self.image))
            vals = self.image[np.isfinite(self.image)]
        else:
            p = np.asarray(self._pts) if self._pts else np.zeros((0, 3))
            art["im"].set_offsets(p[:, :2])
            art["im"].set_array(p[:, 2])
            vals = p[:, 2]
            if p.size:
                art["ax"].update_datalim(p[:, :2])
                art["ax"].autoscale_view()
        if vals.size:
            lo, hi = self.clim or (float(vals.min()), float(vals.max()))
            art["im"].set_clim(lo, hi if hi > lo else lo + 1e-9)
        if "footprint" in art:
            art["footprint"].center = self._last
        if png:
            self._last_png = now
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.uid[:8]}_{self.field}.png"
            self._fig.savefig(path, dpi=80)
            if not self.saved or self.saved[-1] != path:
                self.saved.append(path)
        if self._user_fig:
            self._fig.canvas.draw_idle()

    @property
    def figure(self):
        """The matplotlib Figure drawn into."""
        return self._fig


class LiveFlyMap(CallbackBase):
    """Live forward and backward images of a fly scan (``fly_image``), drawn from its HDF5 assets as they land.

    A fly run carries no values in its documents: each ``stream_datum`` says which passes of the detector's file
    are complete.  The callback reads those rows from the file (SWMR, while the detector still writes it), and
    rebuilds the images with :func:`espt_bluesky.storage.read_map` (samples binned by their recorded encoder x).
    Runs that are not fly images are skipped with a log message.

    Parameters
    ----------
    directory : path, optional
        Save ``<uid>_fly.png`` (forward | backward) there at every update and at the end.
    stream : str
        Event stream drawn.

    Attributes
    ----------
    forward, backward : ndarray
        (ny, nx) images of the present run (NaN where not scanned yet); ``signal`` is the data key drawn.
    updates : list of int
        Number of passes available at each update (grows while the scan runs).
    """

    def __init__(self, *, directory: str | os.PathLike | None = None, stream: str = "primary"):
        super().__init__()
        self.directory = Path(directory) if directory is not None else None
        self.stream = stream
        self.forward = self.backward = np.zeros((0, 0))
        self.signal: str | None = None
        self.updates: list[int] = []
        self.saved: list[Path] = []
        self.skipped: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._start_doc: dict | None = None
        self._desc: set[str] = set()
        self._data_keys: dict[str, dict] = {}
        self._resources: dict[str, dict] = {}
        self._rows: dict[str, list[np.ndarray]] = {}

    def start(self, doc):
        self._reset()
        self.updates = []
        self.skipped = None
        if doc.get("mode") != "fly" or not isinstance(doc.get("fly"), Mapping):
            self.skipped = "not a fly image"
            logger.info("LiveFlyMap: run %s skipped (%s)", doc.get("uid"), self.skipped)
            return
        self._start_doc = doc
        self.signal = doc["fly"].get("signal")
        (ny, nx) = doc.get("shape", (0, 0))
        self.forward = np.full((ny, nx), np.nan)
        self.backward = np.full((ny, nx), np.nan)

    def descriptor(self, doc):
        if self._start_doc is not None and doc.get("name", "primary") == self.stream:
            self._desc.add(doc["uid"])
            self._data_keys.update(doc.get("data_keys", {}))

    def stream_resource(self, doc):
        if self._start_doc is not None:
            self._resources[doc["uid"]] = doc

    def stream_datum(self, doc):
        if self._start_doc is None or doc["descriptor"] not in self._desc:
            return
        from ..storage.maps import _read_external

        res = self._resources.get(doc["stream_resource"])
        if res is None:
            return
        try:
            block = _read_external(res, doc["indices"]["start"], doc["indices"]["stop"])
        except Exception as exc:  # a live view never aborts a run
            logger.warning("LiveFlyMap: could not read %s: %s", res.get("uri"), exc)
            return
        self._rows.setdefault(res["data_key"], []).append(block)
        self._update()

    def _update(self) -> None:
        from ..storage.maps import RunData, fly_source_keys, read_map

        det = self._start_doc["fly"].get("detector", "fly")
        need = [*fly_source_keys(self._data_keys, det), self.signal]
        if any(k not in self._rows for k in need):
            return
        arrays = {k: np.concatenate(self._rows[k]) for k in need}
        n = min(len(a) for a in arrays.values())
        if n == 0:
            return
        arrays = {k: a[:n] for k, a in arrays.items()}
        rd = RunData(self._start_doc, self._data_keys, arrays, np.arange(1, n + 1))
        ds = read_map(rd)
        for label in ("forward", "backward"):
            var = f"{self.signal}_{label}"
            if var in ds:
                setattr(self, label, ds[var].values)
        self.updates.append(n)
        self._save()

    def _save(self) -> None:
        if self.directory is None:
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 3.5))
        FigureCanvasAgg(fig)
        ext = self._start_doc.get("extents")
        extent = [ext[1][0], ext[1][1], ext[0][0], ext[0][1]] if ext else None
        for ax, img, title in zip(fig.subplots(1, 2), (self.forward, self.backward), ("forward", "backward")):
            ax.imshow(img, origin="lower", extent=extent, aspect="auto")
            ax.set_title(f"{self.signal} ({title})")
            ax.set_xlabel("x (µm)")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self._start_doc['uid']}_fly.png"
        fig.savefig(path, dpi=70)
        if path not in self.saved:
            self.saved.append(path)

    def stop(self, doc):
        self._start_doc = None
