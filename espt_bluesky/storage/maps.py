"""Runs as maps in µm: :func:`read_map`, and derived products written next to their source: :func:`write_product`.

Map conventions read from the start document
--------------------------------------------
``map``
    ``{"x": <data key of x>, "y": <data key of y>, "order": "snake"|"raster"|"hopping"|"random"|"points"}``.
    Fly runs record positions grouped (``<det>_position``, the components named by its data key's ``axes``):
    their ``map`` names that key for both and adds ``"x_axis"``/``"y_axis"``, the component of each
    (:func:`fly_channels` splits them; the Dataset's ``x_key``/``y_key`` are the split names, ``<det>_x``).
``shape``, ``extents``, ``snaking``
    bluesky's grid keys, slow axis first: for a map with ``map`` but no ``motors`` they are taken in (y, x) order;
    with ``motors`` they follow the motors' order.
``motors``
    Stock ``bp.grid_scan`` runs have no ``map``: ``motors[0]`` is the slow axis (y), ``motors[1]`` the fast (x).

A run with a 2-D ``shape`` and ``extents`` whose recorded positions fall on distinct cells of that grid comes back
as an image with dims ``("y", "x")``, every value at the cell of its recorded position, whatever the visiting order
(snake, raster, hopping or random over grid points).  Snake/raster runs whose positions do not fall on the grid
(or without ``extents``) are placed by ``seq_num``, unsnaked.  Everything else (scattered hopping, random, explicit
points, adaptive) comes back as a point list with dims ``("spot",)`` and coordinates ``x(spot)``, ``y(spot)``.  Waveforms get a trailing
``"sample"`` dimension.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import xarray as xr

from ..errors import InvalidArgument, check_bool

GRID_ORDERS = ("snake", "raster")
POINT_ORDERS = ("hopping", "random", "points", "adaptive")
ORDERS = GRID_ORDERS + POINT_ORDERS
#: Start-document keys copied to the Dataset's attrs.
METADATA_KEYS = ("uid", "scan_id", "time", "technique", "mode", "probe", "sample", "electrolyte", "mediator",
                 "reference_electrode", "plan_name", "plan_args", "shape", "extents", "snaking", "motors")
_TO_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "mm": 1e3, "nm": 1e-3, "m": 1e6}
WAVEFORM_DIM = "sample"
PRODUCTS = "products"
#: Tiled spec of the products container (not a BlueskyRun).
PRODUCTS_SPEC = "espt_products"


# ---------------------------------------------------------------------------------------------------------- input
class RunData:
    """What :func:`read_map` needs from a run, from a Tiled node or from documents.

    Attributes
    ----------
    start : dict
        The start document.
    data_keys : dict
        Data keys of the stream (from its descriptor).
    arrays : dict of str -> ndarray
        One array per data key, events along axis 0, sorted by ``seq_num``.
    seq_num : ndarray
    stop : dict or None
    """

    def __init__(self, start: dict, data_keys: dict, arrays: dict[str, np.ndarray], seq_num: np.ndarray,
                 stop: dict | None = None):
        order = np.argsort(seq_num, kind="stable")
        self.start = start
        self.data_keys = data_keys
        self.seq_num = np.asarray(seq_num)[order]
        self.arrays = {k: np.asarray(v)[order] for k, v in arrays.items()}
        self.stop = stop

    @classmethod
    def from_tiled(cls, run: Any, stream: str = "primary", keys: Iterable[str] | None = None) -> "RunData":
        """Read a stream of a Tiled ``BlueskyRun`` node (only ``keys`` if given, plus ``seq_num``)."""
        md = run.metadata
        start = dict(md["start"])
        stop = md.get("stop")
        if stream not in run:
            return cls(start, {}, {}, np.zeros(0, int), stop)
        node = run[stream]
        data_keys = dict(node.metadata.get("data_keys", {}))
        present = set(node)  # a running stream may not have registered every described key yet
        wanted = [k for k in (keys if keys is not None else data_keys) if k in data_keys and k in present]
        ds = node.read(variables=list(dict.fromkeys(wanted + ["seq_num"])))
        arrays = {k: ds[k].values for k in wanted if k in ds}
        seq = ds["seq_num"].values if "seq_num" in ds else np.arange(1, len(ds[next(iter(ds.data_vars))]) + 1)
        # a stream still being written may have external arrays shorter or longer than the event table
        n = min([len(seq)] + [len(v) for v in arrays.values()])
        return cls(start, data_keys, {k: v[:n] for k, v in arrays.items()}, seq[:n], stop)

    @classmethod
    def from_documents(cls, docs: Iterable[Any], stream: str = "primary") -> "RunData":
        """Collect a run from ``(name, doc)`` pairs or ``{"name": ..., "doc": ...}`` records (offline use).

        External waveforms (StreamResource/StreamDatum with ``application/x-hdf5``) are read from their files.
        """
        from event_model import unpack_event_page

        start = stop = None
        desc_uids: set[str] = set()
        data_keys: dict[str, dict] = {}
        rows: dict[int, dict[str, Any]] = {}
        resources: dict[str, dict] = {}
        datums: list[dict] = []
        for item in docs:
            try:
                name, doc = (item["name"], item["doc"]) if isinstance(item, Mapping) else item
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument(f"run: {item!r} is not a (name, doc) pair or a {{'name': ..., 'doc': ...}} "
                                      f"record") from None
            if name == "start":
                start = doc
            elif name == "stop":
                stop = doc
            elif name == "descriptor" and doc.get("name", "primary") == stream:
                desc_uids.add(doc["uid"])
                data_keys.update(doc.get("data_keys", {}))
            elif name in ("event", "event_page") and doc["descriptor"] in desc_uids:
                for ev in (unpack_event_page(doc) if name == "event_page" else [doc]):
                    rows.setdefault(int(ev["seq_num"]), {}).update(ev["data"])
            elif name == "stream_resource":
                resources[doc["uid"]] = doc
            elif name == "stream_datum" and doc["descriptor"] in desc_uids:
                datums.append(doc)
        if start is None:
            raise InvalidArgument("run: the documents contain no 'start' document")
        for d in datums:  # external data: one row per seq_num
            res = resources.get(d["stream_resource"])
            if res is None:
                raise InvalidArgument(f"stream_datum {d['uid']!r} refers to an unknown stream_resource")
            block = _read_external(res, d["indices"]["start"], d["indices"]["stop"])
            for i, seq in enumerate(range(d["seq_nums"]["start"], d["seq_nums"]["stop"])):
                rows.setdefault(int(seq), {})[res["data_key"]] = block[i]
        seqs = np.array(sorted(rows), dtype=int)
        keys = [k for k in data_keys if all(k in rows[s] for s in seqs)] if len(seqs) else []
        arrays = {k: np.asarray([rows[s][k] for s in seqs]) for k in keys}
        return cls(start, data_keys, arrays, seqs, stop)


def _read_external(resource: dict, i0: int, i1: int) -> np.ndarray:
    if resource.get("mimetype") != "application/x-hdf5":
        raise InvalidArgument(f"external data of mimetype {resource.get('mimetype')!r} cannot be read offline; "
                              "read the run through Tiled")
    import h5py

    path = Path(unquote(urlsplit(resource["uri"]).path))
    with h5py.File(path, "r", swmr=True) as f:
        return np.asarray(f[resource["parameters"]["dataset"]][i0:i1])


def as_run_data(run: Any, stream: str = "primary", keys: Iterable[str] | None = None) -> RunData:
    """Accept a :class:`RunData`, a Tiled BlueskyRun node, or an iterable of documents."""
    if isinstance(run, RunData):
        return run
    if hasattr(run, "metadata") and hasattr(run, "context"):
        return RunData.from_tiled(run, stream, keys)
    if not isinstance(run, (str, bytes, Mapping)) and hasattr(run, "__iter__"):
        return RunData.from_documents(run, stream)
    raise InvalidArgument(f"run={type(run).__name__}: give a Tiled BlueskyRun node or a list of (name, doc) pairs")


# ---------------------------------------------------------------------------------------------------------- map keys
def map_keys(start: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(x key, y key, order)`` of a run from its start document.

    Raises
    ------
    InvalidArgument
        If the start document has neither a ``map`` entry nor a 2-D ``motors``/``shape`` grid, or the ``map``
        entry lacks ``x``/``y`` or names an unknown ``order``.
    """
    m = start.get("map")
    if m is not None:
        if not isinstance(m, Mapping):
            raise InvalidArgument(f"start['map']={m!r} must be a dict with keys 'x', 'y' and 'order'")
        missing = [k for k in ("x", "y") if not m.get(k)]
        if missing:
            raise InvalidArgument(f"start['map'] lacks {missing}: it must name the data keys of the x and y "
                                  f"positions, e.g. {{'x': 'stage_x', 'y': 'stage_y', 'order': 'hopping'}}")
        order = m.get("order") or ("snake" if any(start.get("snaking") or ()) else
                                   "raster" if _grid_shape(start) else "points")
        if order not in ORDERS:
            raise InvalidArgument(f"start['map']['order']={order!r} is not one of {list(ORDERS)}")
        return str(m["x"]), str(m["y"]), order
    motors = start.get("motors")
    if motors and len(motors) == 2:
        slow, fast = str(motors[0]), str(motors[1])
        # x is the motor named like an x axis (stage_x), else the fast axis
        x, y = (slow, fast) if _looks_like(slow, "x") and not _looks_like(fast, "x") else (fast, slow)
        if _grid_shape(start):
            return x, y, "snake" if any(start.get("snaking") or ()) else "raster"
        return x, y, "points"
    raise InvalidArgument(
        "the run has no map position keys: its start document has no 'map' entry "
        "({'x': <data key>, 'y': <data key>, 'order': ...}) and no two 'motors' of a grid scan "
        f"(start keys: {sorted(start)})")


def _looks_like(name: str, axis: str) -> bool:
    n = name.lower()
    return n == axis or n.endswith("_" + axis) or n.endswith("." + axis)


def _grid_shape(start: Mapping[str, Any]) -> tuple[int, int] | None:
    shape = start.get("shape")
    if shape is not None and len(shape) == 2 and all(int(s) > 0 for s in shape):
        return int(shape[0]), int(shape[1])
    return None


def _to_um(values: np.ndarray, units: str | None, key: str) -> np.ndarray:
    if not units:
        return values.astype(float)
    factor = _TO_UM.get(str(units).strip())
    if factor is None:
        raise InvalidArgument(f"{key}: position units {units!r} are not a length (known: {sorted(_TO_UM)})")
    return values.astype(float) * factor


# ---------------------------------------------------------------------------------------------------------- read_map
def read_map(run: Any, *, stream: str = "primary", variables: Iterable[str] | None = None,
             waveforms: bool = True, valid_only: bool = True) -> xr.Dataset:
    """A map run as an xarray Dataset with ``x``/``y`` coordinates in µm.

    Parameters
    ----------
    run : Tiled BlueskyRun node, list of (name, doc) pairs, or RunData
        The run.  Documents may also be ``{"name": ..., "doc": ...}`` records (a backup file's lines).  A Tiled
        ``xarray_dataset`` node (an imported instrument file, ``espt import``) is read back as its Dataset.
    stream : str
        The event stream holding the map (``"primary"``).
    variables : iterable of str, optional
        Data keys to read (positions are always read).  Default: all.
    waveforms : bool
        Read array-valued keys (waveforms).  False reads only the scalars (fast for big runs).
    valid_only : bool
        Leave out the points the run marked invalid (a hop skipped after a fault: the start document's
        ``valid_key`` is 0 there); they stay in the raw run.  ``attrs["n_invalid"]`` counts them.  False returns
        every event, with the validity flag as a variable.

    Returns
    -------
    xarray.Dataset
        Grids (see the module docstring): dims ``("y", "x")`` with 1-D coordinates ``x``, ``y`` (µm, cell centres from ``extents``),
        plus ``x_measured``, ``y_measured`` and ``seq_num`` on the grid; unvisited cells are NaN (``seq_num`` 0).
        Points: dims ``("spot",)`` with coordinates ``x``, ``y`` (µm, recorded positions) and ``seq_num``.
        Waveforms carry a trailing ``"sample"`` dimension.  ``attrs`` hold ``uid``, ``technique``, ``probe``,
        ``sample``, ``electrolyte`` ..., ``map_order``, ``x_key``, ``y_key``, ``exit_status``.

    Raises
    ------
    InvalidArgument
        If the run has no map convention, or the position keys it names are not in the stream.
    """
    if not isinstance(stream, str):
        raise InvalidArgument(f"stream={stream!r} must be the name of an event stream, e.g. 'primary'")
    if variables is not None:
        if isinstance(variables, (str, bytes)) or not hasattr(variables, "__iter__"):
            raise InvalidArgument(f"variables={variables!r} must be a list of data keys (e.g. [{variables!r}])")
        variables = list(variables)
    waveforms = check_bool("waveforms", waveforms)
    valid_only = check_bool("valid_only", valid_only)
    from .datasets import is_dataset_node, read_dataset_node

    if is_dataset_node(run):  # an imported file or a stored dataset: already a map in µm
        ds = read_dataset_node(run)
        unknown = [v for v in variables or () if v not in ds.data_vars]
        if unknown:
            raise InvalidArgument(f"variables: {unknown} are not in this dataset; its variables: "
                                  f"{sorted(ds.data_vars)}")
        return ds if variables is None else ds[variables]
    if not isinstance(run, RunData) and hasattr(run, "metadata") and hasattr(run, "context"):
        start = dict(run.metadata["start"])
        x_key, y_key, order = map_keys(start)
        keys = None
        if variables is not None or not waveforms:
            dks = run[stream].metadata.get("data_keys", {}) if stream in run else {}
            keys = [k for k in (variables if variables is not None else dks)
                    if k in dks and (waveforms or not dks[k].get("shape"))]
            keys = _recorded_keys(dks, keys, variables, waveforms)
            keys = list(dict.fromkeys([x_key, y_key] + ([start["valid_key"]] if start.get("valid_key") else [])
                                      + keys))
            if isinstance(start.get("fly"), Mapping):  # a fly image also needs each pass's positions, direction
                keys += fly_source_keys(dks, start["fly"].get("detector", "fly"))
        rd = RunData.from_tiled(run, stream, keys)
    else:
        rd = as_run_data(run, stream)
    start = rd.start
    if isinstance(start.get("fly"), Mapping) and start.get("mode") == "fly":
        return _read_fly_map(rd, stream, variables)
    x_key, y_key, order = map_keys(start)
    if not rd.data_keys:
        raise InvalidArgument(f"stream={stream!r}: the run has no such stream (or it holds no data yet)")
    rd, x_key, y_key = _split_map_positions(rd, start, x_key, y_key)
    missing = [k for k in (x_key, y_key) if k not in rd.data_keys]
    if missing:
        raise InvalidArgument(f"position key(s) {missing} named by the start document are not in stream "
                              f"{stream!r} (its data keys: {sorted(rd.data_keys)})")
    unknown = [k for k in variables or () if k not in rd.data_keys]
    if unknown:
        raise InvalidArgument(f"variables: {unknown} are not data keys of stream {stream!r}; its keys: "
                              f"{sorted(rd.data_keys)}")
    valid_key = start.get("valid_key")
    n_invalid = 0
    if valid_key and valid_key in rd.arrays:
        keep = np.asarray(rd.arrays[valid_key], float) != 0
        n_invalid = int((~keep).sum())
        if valid_only and n_invalid:
            rd = RunData(start, rd.data_keys, {k: v[keep] for k, v in rd.arrays.items()}, rd.seq_num[keep],
                         rd.stop)
    n = len(rd.seq_num)
    xs = _to_um(rd.arrays.get(x_key, np.zeros(0)), rd.data_keys[x_key].get("units"), x_key)
    ys = _to_um(rd.arrays.get(y_key, np.zeros(0)), rd.data_keys[y_key].get("units"), y_key)
    names = [k for k in rd.arrays if k not in (x_key, y_key)]
    if valid_only and valid_key:
        names = [k for k in names if k != valid_key]
    if variables is not None:
        wanted = set(variables)
        names = [k for k in names if k in wanted]
    if not waveforms:
        names = [k for k in names if rd.arrays[k].ndim == 1]

    attrs = {k: start[k] for k in METADATA_KEYS if k in start}
    attrs.update(map_order=order, x_key=x_key, y_key=y_key, position_units="µm", stream=stream,
                 n_spots=n, n_invalid=n_invalid, exit_status=(rd.stop or {}).get("exit_status"))

    grid = _grid_cells(start, order, x_key, xs, ys, rd.seq_num)
    if grid is not None:
        (ny, nx), iy, ix, xc, yc = grid
        data_vars: dict[str, Any] = {}
        for k in names:
            a = rd.arrays[k]
            fill = np.nan if a.dtype.kind in "fc" else (0 if a.dtype.kind in "iub" else None)
            dt = a.dtype if a.dtype.kind in "fciub" else object
            img = np.full((ny, nx) + a.shape[1:], fill, dtype=dt if fill is not None or dt == object else float)
            img[iy, ix] = a
            data_vars[k] = (("y", "x") + _extra_dims(k, a, rd.data_keys), img, _var_attrs(k, rd.data_keys))
        xm = np.full((ny, nx), np.nan)
        ym = np.full((ny, nx), np.nan)
        sq = np.zeros((ny, nx), dtype=int)
        xm[iy, ix], ym[iy, ix], sq[iy, ix] = xs, ys, rd.seq_num
        coords = {"x": ("x", xc, {"units": "µm", "key": x_key}), "y": ("y", yc, {"units": "µm", "key": y_key}),
                  "x_measured": (("y", "x"), xm, {"units": "µm"}), "y_measured": (("y", "x"), ym, {"units": "µm"}),
                  "seq_num": (("y", "x"), sq)}
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    data_vars = {k: (("spot",) + _extra_dims(k, rd.arrays[k], rd.data_keys), rd.arrays[k],
                     _var_attrs(k, rd.data_keys)) for k in names}
    coords = {"x": ("spot", xs, {"units": "µm", "key": x_key}), "y": ("spot", ys, {"units": "µm", "key": y_key}),
              "seq_num": ("spot", rd.seq_num)}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


FLY_POSITION_CHANNELS = ("x", "y", "time", "direction", "row")
#: Grouped fly data keys (``<det>_<name>``: devices/fly) -> the data-key field naming their stacked channels
FLY_GROUPS = {"position": "axes", "pass": "fields", "currents": "fields"}


def _group_of(key: str) -> tuple[str, str] | None:
    """``(det, group)`` of a grouped fly data key ``<det>_<group>``, else None."""
    for g in FLY_GROUPS:
        if key.endswith("_" + g) and len(key) > len(g) + 1:
            return key[:-len(g) - 1], g
    return None


def _recorded_keys(data_keys: Mapping[str, Any], keys: list[str], variables: list[str] | None,
                   waveforms: bool) -> list[str]:
    """``keys`` (chosen among the recorded ``data_keys``) plus the grouped keys that hold a wanted channel: a
    variable named after a channel (``fly_current``) is read from its group (``fly_currents``), and a group of
    scalars per event (shape (k,)) counts as scalars."""
    out = list(keys)
    for key, dk in data_keys.items():
        dg = _group_of(key)
        names = dk.get(FLY_GROUPS[dg[1]]) if dg else None
        if not names or key in out:
            continue
        channels = [f"{dg[0]}_{n}" for n in names]
        if variables is not None and not set(channels) & set(variables):
            continue
        if variables is None and not waveforms and len(dk.get("shape") or []) > 1:
            continue
        out.append(key)
    return out


def _split_map_positions(rd: "RunData", start: Mapping[str, Any], x_key: str,
                         y_key: str) -> tuple["RunData", str, str]:
    """A run whose ``map`` names a grouped position key with ``x_axis``/``y_axis``: its grouped keys split
    (:func:`fly_channels`), and the x/y keys of the split channels."""
    m = start.get("map")
    if not isinstance(m, Mapping) or not (m.get("x_axis") or m.get("y_axis")):
        return rd, x_key, y_key
    dg = _group_of(x_key)
    if dg is None or _group_of(y_key) != dg or not m.get("x_axis") or not m.get("y_axis"):
        raise InvalidArgument(f"start['map']={dict(m)!r}: x_axis/y_axis need x and y to name the same grouped "
                              f"position key (<det>_position)")
    det = dg[0]
    return fly_channels(rd, det), f"{det}_{m['x_axis']}", f"{det}_{m['y_axis']}"


def fly_source_keys(data_keys: Mapping[str, Any], det: str = "fly") -> list[str]:
    """The data keys of a fly stream that hold its positions and pass directions: ``<det>_position`` and
    ``<det>_pass`` (grouped layout), or ``<det>_x``, ``<det>_y``, ``<det>_direction`` (one key per channel, runs
    recorded before the grouping)."""
    grouped = [f"{det}_position", f"{det}_pass"]  # a raster's groups
    if all(k in data_keys for k in grouped):
        return grouped
    return [f"{det}_x", f"{det}_y", f"{det}_direction"]


def fly_channels(rd: "RunData", det: str | None = None) -> "RunData":
    """A fly run's data with grouped keys split into one array per channel.

    The fly detector stores a raster's encoder positions as one ``<det>_position`` array (passes, 3, samples)
    and each pass's row and direction as one ``<det>_pass`` array (passes, 2) (fewer data keys: fewer Tiled
    nodes and requests per run).  This returns ``<det>_x``, ``<det>_y``, ``<det>_z`` (passes, samples) and
    ``<det>_row``, ``<det>_direction`` (passes,) in their place, named by the ``axes`` / ``fields`` of the data
    keys, with those keys' units; other keys, and runs recorded with one key per channel, are returned as they are.
    Hops the same way: ``<det>_position`` (hops, 2) gives ``<det>_x``, ``<det>_y``; ``<det>_currents`` (hops, 2)
    gives ``<det>_current_ref``, ``<det>_current``.

    Parameters
    ----------
    rd : RunData
    det : str, optional
        The fly detector's name (default: the start document's ``fly.detector``, else ``"fly"``).
    """
    if det is None:
        fly = rd.start.get("fly")
        det = fly.get("detector", "fly") if isinstance(fly, Mapping) else "fly"
    if not any(f"{det}_{g}" in rd.arrays for g in FLY_GROUPS):
        return rd
    arrays: dict[str, np.ndarray] = {}
    data_keys = {k: v for k, v in rd.data_keys.items() if k not in {f"{det}_{g}" for g in FLY_GROUPS}}
    for key, a in rd.arrays.items():
        group = key[len(det) + 1:] if key.startswith(f"{det}_") else None
        if group not in FLY_GROUPS:
            arrays[key] = a
            continue
        dk = dict(rd.data_keys.get(key, {}))
        names = dk.get(FLY_GROUPS[group])
        a = np.asarray(a)
        if not names or a.ndim < 2 or a.shape[1] != len(names):
            raise InvalidArgument(f"{key}: shape {a.shape} and {FLY_GROUPS[group]}={names!r} in its data key do "
                                  "not match (one row per named channel expected on axis 1)")
        dims = list(dk.get("dims") or [])[1:]
        for i, name in enumerate(names):
            arrays[f"{det}_{name}"] = a[:, i]
            sub = {k: v for k, v in dk.items() if k not in ("axes", "fields", "shape", "dims")}
            sub.update(shape=list(a.shape[2:]), **({"dims": dims} if dims else {}))
            if a.ndim == 2:  # one scalar per event
                sub["dtype"] = "integer" if a.dtype.kind in "iub" else "number"
            data_keys[f"{det}_{name}"] = sub
    out = RunData.__new__(RunData)  # rd is sorted by seq_num already: no second sort (it would copy every array)
    out.start, out.data_keys, out.arrays, out.seq_num, out.stop = rd.start, data_keys, arrays, rd.seq_num, rd.stop
    return out


def _read_fly_map(rd: RunData, stream: str, variables: list[str] | None) -> xr.Dataset:
    """A fly image (``fly_image``: one event per pass, arrays of samples) on the µm grid of its start document.

    Every sample is binned to the nearest pixel by its *recorded* encoder x, every pass to the nearest row by its
    recorded y; the samples of a pixel give its value by a local linear fit evaluated at the pixel centre (their mean,
    corrected for the slope across the pixel).  Forward passes (x increasing) and backward passes go to
    ``<key>_forward`` and ``<key>_backward``; ``<key>_n_forward``/``_n_backward`` count the samples averaged.
    """
    start = rd.start
    fly = start["fly"]
    det = fly.get("detector", "fly")
    rd = fly_channels(rd, det)
    x_key, y_key = f"{det}_x", f"{det}_y"
    dir_key = f"{det}_direction"
    if not rd.data_keys:
        raise InvalidArgument(f"stream={stream!r}: the run has no such stream (or it holds no data yet)")
    missing = [k for k in (x_key, y_key, dir_key) if k not in rd.arrays]
    if missing:
        raise InvalidArgument(f"fly run: position key(s) {missing} are not in stream {stream!r} "
                              f"(its data keys: {sorted(rd.data_keys)})")
    (ny, nx) = _grid_shape(start) or (1, 2)
    (ey, ex) = start["extents"]
    xc = np.linspace(float(ex[0]), float(ex[1]), nx)
    yc = np.linspace(float(ey[0]), float(ey[1]), ny)
    xs = _to_um(np.asarray(rd.arrays[x_key]), rd.data_keys[x_key].get("units"), x_key)
    ys = _to_um(np.asarray(rd.arrays[y_key]), rd.data_keys[y_key].get("units"), y_key)
    direction = np.asarray(rd.arrays[dir_key]).reshape(-1)
    n_pass = xs.shape[0]
    step_x = (xc[-1] - xc[0]) / (nx - 1) if nx > 1 else 1.0
    ix = np.rint((xs - xc[0]) / step_x).astype(int)
    in_x = (ix >= 0) & (ix < nx)
    y_pass = ys.mean(axis=1) if ys.ndim == 2 else ys
    iy = (np.rint((y_pass - yc[0]) / ((yc[-1] - yc[0]) / (ny - 1))).astype(int) if ny > 1
          else np.zeros(n_pass, int))
    iy = np.clip(iy, 0, ny - 1)
    prefix = f"{det}_"
    names = [k for k, a in rd.arrays.items() if k.startswith(prefix) and np.ndim(a) == 2
             and k[len(prefix):] not in FLY_POSITION_CHANNELS]
    if variables is not None:
        names = [k for k in names if k in set(variables)]
    data_vars: dict[str, Any] = {}
    for label, sel_dir in (("forward", 1), ("backward", -1)):
        passes = np.flatnonzero(direction == sel_dir)
        if passes.size == 0:
            continue
        m = in_x[passes]
        cell = (iy[passes][:, None] * nx + ix[passes])[m]
        count = np.bincount(cell, minlength=ny * nx).reshape(ny, nx)
        data_vars[f"n_{label}"] = (("y", "x"), count, {"description": f"samples averaged per pixel ({label})"})
        # a pixel's value is the local linear fit of its samples evaluated at the pixel centre: the mean of the
        # samples, corrected for the signal's slope across the pixel (unbiased where the pixel is only partly
        # covered, e.g. the first and last pixels of a pass)
        dx = (xs[passes] - xc[np.clip(ix[passes], 0, nx - 1)])[m]

        def bsum(w):
            return np.bincount(cell, weights=w, minlength=ny * nx).reshape(ny, nx)

        s1, sxx = bsum(dx), bsum(dx * dx)
        den = count * sxx - s1 * s1
        for k in names:
            a = np.asarray(rd.arrays[k], float)[passes][m]
            sy, sxy = bsum(a), bsum(a * dx)
            with np.errstate(invalid="ignore", divide="ignore"):
                slope = np.where((count >= 3) & (den > 1e-12 * np.maximum(count * sxx, 1e-300)),
                                 (count * sxy - s1 * sy) / den, 0.0)
                img = np.where(count > 0, (sy - slope * s1) / np.maximum(count, 1), np.nan)
            data_vars[f"{k}_{label}"] = (("y", "x"), img, _var_attrs(k, rd.data_keys))
    attrs = {k: start[k] for k in METADATA_KEYS if k in start}
    attrs.update(map_order="fly", x_key=x_key, y_key=y_key, position_units="µm", stream=stream,
                 n_passes=int(n_pass), fly=dict(fly), exit_status=(rd.stop or {}).get("exit_status"))
    coords = {"x": ("x", xc, {"units": "µm", "key": x_key}), "y": ("y", yc, {"units": "µm", "key": y_key})}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _extra_dims(key: str, a: np.ndarray, data_keys: dict) -> tuple[str, ...]:
    if a.ndim == 1:
        return ()
    if a.ndim == 2:
        described = data_keys.get(key, {}).get("dims") or []
        if len(described) == 1 and described[0] not in ("waveform_index", WAVEFORM_DIM):
            return (str(described[0]),)  # e.g. an MCA spectrum's "channel": not a time waveform
        return (WAVEFORM_DIM,) if a.shape[1] > 0 else (f"{key}_dim_0",)
    dims = data_keys.get(key, {}).get("dims")
    if dims and len(dims) == a.ndim - 1:
        return tuple(f"{key}_{d}" for d in dims)
    return tuple(f"{key}_dim_{i}" for i in range(a.ndim - 1))


def _var_attrs(key: str, data_keys: dict) -> dict:
    dk = data_keys.get(key, {})
    return {k: dk[k] for k in ("units", "source") if k in dk}


def _grid_cells(start: Mapping[str, Any], order: str, x_key: str, xs: np.ndarray, ys: np.ndarray, seq: np.ndarray):
    """Grid shape, the (iy, ix) cell of each event, and the x/y cell centres (µm); None if not a grid."""
    shape = _grid_shape(start)
    if shape is None:
        return None
    motors = list(start.get("motors") or [])
    # shape/extents/snaking are (y, x) in the espt plans' convention ("map" present); a stock grid_scan gives
    # them in its motors' order, slow axis first
    y_first = not (not start.get("map") and len(motors) == 2 and motors[0] == x_key)
    (ny, nx) = shape if y_first else shape[::-1]
    snaking = list(start.get("snaking") or [False, order == "snake"])
    extents = start.get("extents")
    xc = yc = None
    if extents is not None and len(extents) == 2:
        (ey, ex) = extents if y_first else extents[::-1]
        yc = np.linspace(float(ey[0]), float(ey[1]), ny)
        xc = np.linspace(float(ex[0]), float(ex[1]), nx)
    n = len(seq)
    # 1) by recorded position
    if xc is not None and n:
        ix = _nearest_index(xs, xc)
        iy = _nearest_index(ys, yc)
        ok = ix is not None and iy is not None
        if ok and len(set(zip(iy.tolist(), ix.tolist()))) == n:
            return (ny, nx), iy, ix, xc, yc
    if order not in GRID_ORDERS:
        return None  # scattered (or off-grid) points stay a point list
    # 2) by seq_num, unsnaked
    k = np.asarray(seq, int) - 1
    if n and (k.min() < 0 or k.max() >= ny * nx):
        k = np.arange(n)
    k = k[: ny * nx]
    iy = k // nx
    ix = k % nx
    fast_snakes = bool(snaking[1]) if len(snaking) > 1 else order == "snake"
    if fast_snakes:
        odd = iy % 2 == 1
        ix = np.where(odd, nx - 1 - ix, ix)
    if xc is None:
        xc = _axis_centres(xs[: len(ix)], ix, nx)
        yc = _axis_centres(ys[: len(iy)], iy, ny)
    return (ny, nx), iy, ix, xc, yc


def _nearest_index(values: np.ndarray, centres: np.ndarray) -> np.ndarray | None:
    """Index of the nearest centre; None if any value lies more than half a step outside the grid."""
    if len(centres) == 1:
        return np.zeros(len(values), dtype=int)
    step = (centres[-1] - centres[0]) / (len(centres) - 1)
    if step == 0:
        return None
    idx = np.rint((values - centres[0]) / step)
    if np.any(~np.isfinite(idx)) or idx.min() < 0 or idx.max() > len(centres) - 1:
        return None
    resid = np.abs(values - (centres[0] + idx * step))
    if np.any(resid > 0.25 * abs(step)):
        return None
    return idx.astype(int)


def _axis_centres(values: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    for i in range(n):
        sel = idx == i
        if np.any(sel):
            out[i] = float(np.mean(values[sel]))
    return out


# ---------------------------------------------------------------------------------------------------------- products
def _jsonable(obj: Any) -> Any:
    from .datasets import jsonable

    return jsonable(obj)


def _check_node(run: Any, what: str) -> None:
    if not (hasattr(run, "metadata") and hasattr(run, "context")):
        raise InvalidArgument(f"run={type(run).__name__}: {what} needs a Tiled BlueskyRun node")


def products_node(run: Any, *, create: bool = True):
    """The container ``products/<source uid>`` beside a run (created if missing)."""
    from tiled.client import from_context

    uid = run.metadata["start"]["uid"]
    ancestors = run.item["attributes"]["ancestors"]
    parent = from_context(run.context, node_path_parts=list(ancestors))
    if PRODUCTS not in parent:
        if not create:
            return None
        from tiled.structures.core import Spec

        # one container for every run's products, marked so run lists (our browse page) leave it out
        parent.create_container(key=PRODUCTS, specs=[Spec(PRODUCTS_SPEC)],
                                metadata={"description": "derived products of espt_bluesky runs (maps, tables), "
                                                         "one container per source run uid; not a run"})
    prod = parent[PRODUCTS]
    if uid not in prod:
        if not create:
            return None
        prod.create_container(key=uid, metadata={"source_uid": uid})
    return prod[uid]


def _array_metadata(da: xr.DataArray, data: xr.Dataset) -> dict[str, Any]:
    """What a person (or a viewer) needs to show an array: units, name, dims and, for a 2-D array whose two dims
    have 1-D coordinates, its physical ``extent`` (first and last coordinate per dim, in the coordinates' units)."""
    md: dict[str, Any] = {"attrs": _jsonable(dict(da.attrs)), "dims": [str(d) for d in da.dims]}
    for k in ("units", "long_name"):
        if k in da.attrs:
            md[k] = _jsonable(da.attrs[k])
    if da.ndim == 2 and all(d in data.coords and data[d].ndim == 1 and data[d].size == n
                            and data[d].dtype.kind in "fiu" for d, n in zip(da.dims, da.shape)):
        md["extent"] = {str(d): [float(data[d].values[0]), float(data[d].values[-1])] for d in da.dims}
        md["extent_units"] = {str(d): str(data[d].attrs.get("units", "")) for d in da.dims}
        md["image"] = True
    return md


def grid_of_points(x: np.ndarray, y: np.ndarray, *, decimals: int = 6):
    """Cells of a rectangular grid holding scattered points, if the points lie on one.

    Returns ``(xc, yc, iy, ix)``: the sorted distinct x and y (µm) and each point's cell, or None when two points
    share a cell or the grid would be mostly empty (more than twice as many cells as points).
    """
    x = np.round(np.asarray(x, float), decimals)
    y = np.round(np.asarray(y, float), decimals)
    if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    xc, ix = np.unique(x, return_inverse=True)
    yc, iy = np.unique(y, return_inverse=True)
    if xc.size * yc.size > 2 * x.size or len(set(zip(iy.tolist(), ix.tolist()))) != x.size:
        return None
    return xc, yc, iy, ix


def write_product(run: Any, name: str, data: Any, metadata: Mapping[str, Any] | None = None, *,
                  overwrite: bool = False):
    """Store a derived map or table next to its source run, with the source uid recorded.

    The product goes to ``products/<source uid>/<name>`` in the container holding the run, with metadata
    ``source_uid``, ``product``, ``created`` and ``metadata``.  A Dataset becomes one array per variable and
    coordinate, with its ``dims``, ``units`` and, for 2-D maps with 1-D coordinates (x/y in µm), the ``extent``
    that lets a viewer draw it as an image on physical axes.

    Parameters
    ----------
    run : Tiled BlueskyRun node
        The source run (writable client).
    name : str
        Product name (letters, digits, ``_-.``), e.g. ``"kappa_map"``.
    data : xarray.Dataset, xarray.DataArray, numpy.ndarray or pandas.DataFrame
    metadata : dict, optional
        Anything to keep with the product (method, parameters, units ...).
    overwrite : bool
        Replace a product of the same name; otherwise that is an error.

    Returns
    -------
    tiled client node of the product.
    """
    import pandas as pd
    from tiled.structures.core import Spec

    if not isinstance(name, str) or not name or any(not (c.isalnum() or c in "_-.") for c in name):
        raise InvalidArgument(f"name={name!r}: a product name needs letters, digits, '_', '-' or '.'")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata={metadata!r} must be a dict or None")
    overwrite = check_bool("overwrite", overwrite)
    _check_node(run, "write_product")
    uid = run.metadata["start"]["uid"]
    node = products_node(run)
    if name in node:
        if not overwrite:
            raise InvalidArgument(f"name={name!r}: run {uid} already has a product of that name "
                                  "(pass overwrite=True to replace it)")
        node[name].delete(recursive=True, external_only=False)
    md = {"source_uid": uid, "product": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
          **_jsonable(dict(metadata or {}))}
    if isinstance(data, xr.DataArray):
        data = data.to_dataset(name=data.name or name)
    if isinstance(data, xr.Dataset):
        md["attrs"] = _jsonable(dict(data.attrs))
        out = node.create_container(key=name, metadata=md, specs=[Spec("xarray_dataset")])
        for kind, names in (("xarray_data_var", list(data.data_vars)), ("xarray_coord", list(data.coords))):
            for v in names:
                da = data[v]
                arr = np.asarray(da.values)
                if arr.dtype == object:
                    arr = arr.astype(str)
                out.write_array(arr, key=str(v), dims=[str(d) for d in da.dims],
                                metadata=_array_metadata(da, data), specs=[Spec(kind)])
        return out
    if isinstance(data, pd.DataFrame):
        return node.write_table(data, key=name, metadata=md)
    if isinstance(data, np.ndarray) or np.isscalar(data) or isinstance(data, (list, tuple)):
        return node.write_array(np.asarray(data), key=name, metadata=md)
    raise InvalidArgument(f"data={type(data).__name__}: give an xarray Dataset/DataArray, a numpy array or a "
                          "pandas DataFrame")


def read_product(run: Any, name: str):
    """Read a product written by :func:`write_product` (xarray Dataset, numpy array or DataFrame)."""
    if not isinstance(name, str):
        raise InvalidArgument(f"name={name!r} must be a product name (a string)")
    _check_node(run, "read_product")
    node = products_node(run, create=False)
    if node is None or name not in node:
        raise InvalidArgument(f"name={name!r}: run {run.metadata['start']['uid']} has no such product")
    item = node[name]
    if "xarray_dataset" in [s.name for s in item.specs]:
        coords, data_vars = {}, {}
        for k in item:
            a = item[k]
            dims = a.structure().dims or tuple(f"dim_{i}" for i in range(len(a.shape)))
            entry = (tuple(dims), a.read(), a.metadata.get("attrs", {}))
            (coords if "xarray_coord" in [s.name for s in a.specs] else data_vars)[k] = entry
        return xr.Dataset(data_vars, coords=coords, attrs=item.metadata.get("attrs", {}))
    return item.read()
