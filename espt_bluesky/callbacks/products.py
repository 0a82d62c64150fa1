"""Derived products of a run, computed by ``analysis/`` and written back to Tiled next to the source run.

Offline: ``kinetic_map_dataset(run)``, ``screening_dataset(run)``, ``modulus_map_dataset(run)`` read a run (a Tiled
BlueskyRun node, or the run's ``(name, doc)`` list) through :func:`espt_bluesky.storage.read_map` and return an
xarray Dataset with ``x``/``y`` in µm and the parameters in ``attrs``; ``write_*`` do the same and store the result
with :func:`espt_bluesky.storage.write_product` (``products/<source uid>/<name>``, metadata: the parameters, the
analysis function, the source uid).

Live: :class:`ProductCallback` runs one of these at the end of every matching run, once the run is readable from
the given Tiled client (subscribe it after the TiledWriter).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
import xarray as xr
from bluesky.callbacks.core import CallbackBase

from ..errors import InvalidArgument

__all__ = ["kinetic_map_dataset", "screening_dataset", "modulus_map_dataset", "topography_dataset",
           "deconvolved_image_dataset", "write_kinetic_map", "write_screening", "write_modulus_map",
           "write_topography", "write_deconvolved_image", "ProductCallback"]

logger = logging.getLogger(__name__)


def _read(run, stream="primary", variables=None, waveforms=True) -> xr.Dataset:
    from ..storage import read_map

    return read_map(run, stream=stream, variables=variables, waveforms=waveforms)


def _start_doc(run) -> dict:
    """The start document of a Tiled run node or of a list of (name, doc) pairs / {"name", "doc"} records."""
    md = getattr(run, "metadata", None)
    if isinstance(md, Mapping) and isinstance(md.get("start"), Mapping):
        return dict(md["start"])
    start = getattr(run, "start", None)
    if isinstance(start, Mapping):
        return dict(start)
    if isinstance(run, (list, tuple)):
        for item in run:
            name, doc = (item["name"], item["doc"]) if isinstance(item, Mapping) else item
            if name == "start":
                return dict(doc)
    return {}


def _require_technique(ds: xr.Dataset, technique: str) -> None:
    tech = ds.attrs.get("technique")
    if tech is None:
        raise InvalidArgument(f"run {str(ds.attrs.get('uid', '?'))[:8]} has no 'technique' in its start document; "
                              f"a {technique} product needs a {technique} run")
    if str(tech).upper() != technique.upper():
        raise InvalidArgument(f"run {str(ds.attrs.get('uid', '?'))[:8]} has technique={tech!r}; this product needs "
                              f"a {technique} run")


def _var(ds: xr.Dataset, key: str, what: str) -> xr.DataArray:
    if key not in ds:
        raise InvalidArgument(f"the run has no data key {key!r} ({what}); it has {sorted(ds.data_vars)}")
    return ds[key]


# ------------------------------------------------------------------------------------------------ SECM κ map
def kinetic_map_dataset(run, *, field: str = "pstat_tip_current", z_key: str = "stage_z",
                        i_inf: Optional[float] = None, a: Optional[float] = None, D: Optional[float] = None,
                        rg: Optional[float] = None, plane: Any = None, start: Optional[Mapping] = None
                        ) -> xr.Dataset:
    """κ and k map of an SECM constant-height image.

    The normalised current is i/i_T,inf (``i_inf`` given, else the start document's ``i_inf``, else the
    theoretical value from probe + mediator metadata); the distance per pixel is ``z_key`` minus the sample plane
    (``plane`` given, else the start document's ``plane``), or the start document's ``height`` without z data.
    a, RG from the probe metadata, D from the mediator metadata, unless given.
    """
    from ..analysis.kinetic_maps import kinetic_map, theoretical_i_inf, tilt_corrected_distance
    from .live_map import probe_radius_from_metadata

    ds = _read(run, waveforms=False)
    _require_technique(ds, "SECM")
    if "x" not in ds.dims or "y" not in ds.dims:
        raise InvalidArgument("the run is not a grid image (no x/y grid dimensions); a κ map needs a raster/snake "
                              "image with shape/extents in its start document")
    md = _start_doc(run)
    md.update({k: v for k, v in ds.attrs.items() if v is not None})
    if start:
        md.update(start)
    probe, med = md.get("probe") or {}, md.get("mediator") or {}
    if i_inf is None:
        i_inf = md.get("i_inf")
    if i_inf is None:
        i_inf = theoretical_i_inf(probe, med)
    a = a if a is not None else probe_radius_from_metadata(probe)
    D = D if D is not None else (med.get("D") if isinstance(med, Mapping) else None)
    rg = rg if rg is not None else (probe.get("rg", 10.0) if isinstance(probe, Mapping) else 10.0)
    if a is None or D is None:
        raise InvalidArgument(f"a κ map needs the probe radius and the mediator's D: probe={probe!r}, "
                              f"mediator={med!r} (or pass a=..., D=...)")
    cur = _var(ds, field, "tip current").values / float(i_inf)
    X, Y = np.meshgrid(ds["x"].values, ds["y"].values)
    plane = plane if plane is not None else md.get("plane")
    if z_key in ds and plane is not None:
        dist = tilt_corrected_distance(X, Y, np.nan_to_num(ds[z_key].values, nan=np.inf), plane)
        dist = np.where(np.isfinite(cur), dist, 1.0)
    elif md.get("height") is not None:
        dist = np.full(cur.shape, float(md["height"]))
    else:
        raise InvalidArgument("no tip–sample distance: the run has neither z data with a plane nor a 'height' in "
                              "its start document (pass plane=...)")
    km = kinetic_map(cur, dist, a=a, D=D, rg=rg)
    out = xr.Dataset(
        {"kappa": (("y", "x"), km.kappa, {"units": "1", "long_name": "kappa = k a / D"}),
         "k": (("y", "x"), km.k, {"units": "m/s"}),
         "feedback": (("y", "x"), cur, {"units": "1", "long_name": "i_T / i_T,inf"}),
         "distance": (("y", "x"), np.where(np.isfinite(cur), dist, np.nan), {"units": "um"}),
         "at_conductor_limit": (("y", "x"), km.at_conductor_limit),
         "at_insulator_limit": (("y", "x"), km.at_insulator_limit)},
        coords={"x": ("x", ds["x"].values, {"units": "um"}), "y": ("y", ds["y"].values, {"units": "um"})},
        attrs=dict(source_uid=ds.attrs.get("uid"), analysis="espt_bluesky.analysis.kinetic_maps.kinetic_map",
                   i_inf=float(i_inf), i_inf_units="A", **km.parameters),
    )
    return out


# ------------------------------------------------------------------------------------------------ SECCM screen
def screening_dataset(run, *, stream: str = "primary", time_key: str = "pstat_wf_time",
                      potential_key: str = "pstat_wf_potential", current_key: str = "pstat_wf_current",
                      groups_key: Optional[str] = None, e_window=None, k_max: int = 5, method: str = "gmm",
                      ) -> xr.Dataset:
    """Per-spot features and clusters of an SECCM screen (dimension ``spot``, coordinates x, y in µm).

    When the spots lie on a grid, every numeric feature is also given as a map ``<feature>_map`` (dims
    ``grid_y``, ``grid_x`` in µm; NaN where no spot landed).

    ``groups_key`` names a per-spot data key with the parameter of a combinatorial sweep; the per-group
    statistics of Q_p2/Q_p1 are then in ``attrs["group_statistics"]``.
    """
    from ..analysis.screening import cluster_spots, group_statistics, screen_spots

    ds = _read(run, stream=stream)
    _require_technique(ds, "SECCM")
    t, E, i = (_var(ds, k, w) for k, w in ((time_key, "waveform time"), (potential_key, "waveform potential"),
                                           (current_key, "waveform current")))
    if "spot" not in ds.dims:
        t, E, i = (v.stack(spot=("y", "x")) .transpose("spot", ...) for v in (t, E, i))
        x = t["x"].values
        y = t["y"].values
        keep = np.isfinite(i.values).any(axis=1)
        t, E, i, x, y = t.values[keep], E.values[keep], i.values[keep], x[keep], y[keep]
    else:
        x, y = ds["x"].values, ds["y"].values
        t, E, i = t.values, E.values, i.values
    res = screen_spots(t, E, i, x=x, y=y, e_window=e_window)
    cl = cluster_spots(res, k_max=k_max, method=method)
    cols = res.as_dict()
    data = {k: (("spot",), np.asarray(v)) for k, v in cols.items() if k not in ("x", "y")}
    data["cluster"] = (("spot",), cl.labels)
    attrs = dict(source_uid=ds.attrs.get("uid"), analysis="espt_bluesky.analysis.screening",
                 clustering=cl.parameters(), screening=res.parameters, problems={str(k): v for k, v in
                                                                                 res.problems.items()},
                 charge_units="C", current_units="A", potential_units="V")
    if groups_key is not None:
        g = _var(ds, groups_key, "parameter group").values.ravel()
        if g.size == res.n_spots:
            data[groups_key] = (("spot",), g)
            attrs["group_statistics"] = group_statistics(res.passivation_ratio, g).as_dict()
    out = xr.Dataset(data, coords={"x": ("spot", res.x, {"units": "um"}), "y": ("spot", res.y, {"units": "um"})},
                     attrs=attrs)
    return _with_grid_maps(out)


def _with_grid_maps(ds: xr.Dataset) -> xr.Dataset:
    """Add ``<var>_map`` images (dims ``grid_y``, ``grid_x``, coordinates in µm, NaN where no spot) of every
    numeric per-spot variable when the spots lie on a rectangular grid, so the screen can be looked at as maps."""
    from ..storage.maps import grid_of_points

    cells = grid_of_points(ds["x"].values, ds["y"].values)
    if cells is None:
        return ds
    xc, yc, iy, ix = cells
    maps = {}
    for k, v in ds.data_vars.items():
        if v.dims != ("spot",) or v.dtype.kind not in "fiub":
            continue
        img = np.full((yc.size, xc.size), np.nan)
        img[iy, ix] = v.values.astype(float)
        maps[f"{k}_map"] = (("grid_y", "grid_x"), img, dict(v.attrs))
    return ds.assign(maps).assign_coords(grid_x=("grid_x", xc, {"units": "um"}),
                                         grid_y=("grid_y", yc, {"units": "um"}))


# ------------------------------------------------------------------------------------------------ EC-AFM moduli
def modulus_map_dataset(run, *, stream: str = "primary", z_key: str = "afm_fc_z",
                        deflection_key: str = "afm_fc_deflection", spring_constant: Optional[float] = None,
                        tip_radius: Optional[float] = None, poisson: float = 0.3, model: str = "hertz"
                        ) -> xr.Dataset:
    """Young's modulus per force curve of an EC-AFM force-volume run, on the map of the curves' positions."""
    from ..analysis.ec_afm import force_map

    ds = _read(run, stream=stream)
    _require_technique(ds, "EC-AFM")
    probe = ds.attrs.get("probe") or {}
    k = spring_constant if spring_constant is not None else probe.get("spring_constant")
    R = tip_radius if tip_radius is not None else probe.get("tip_radius")
    if k is None or R is None:
        raise InvalidArgument(f"probe={probe!r} lacks spring_constant/tip_radius; pass them")
    z = _var(ds, z_key, "force-curve piezo travel")
    dfl = _var(ds, deflection_key, "force-curve deflection")
    if "spot" not in ds.dims:
        z, dfl = (v.stack(spot=("y", "x")).transpose("spot", ...) for v in (z, dfl))
    x, y = z["x"].values, z["y"].values
    zv, dv = z.values, dfl.values
    keep = np.isfinite(dv).any(axis=1)
    fm = force_map(x[keep], y[keep], zv[keep], dv[keep], spring_constant=k, tip_radius=R, poisson=poisson,
                   model=model)
    return xr.Dataset(
        {"modulus": (("y", "x"), fm.modulus, {"units": "Pa"}), "modulus_err": (("y", "x"), fm.modulus_err,
                                                                                {"units": "Pa"}),
         "adhesion": (("y", "x"), fm.adhesion, {"units": "N"}),
         "residual_rms": (("y", "x"), fm.residual_rms, {"units": "N"})},
        coords={"x": ("x", fm.x, {"units": "um"}), "y": ("y", fm.y, {"units": "um"})},
        attrs=dict(source_uid=ds.attrs.get("uid"), analysis="espt_bluesky.analysis.ec_afm.force_map",
                   problems={str(k_): v for k_, v in fm.problems.items()}, **fm.parameters))


# ------------------------------------------------------------------------------------------------ SICM topography
def topography_dataset(run, *, order: int = 1, key: Optional[str] = None) -> xr.Dataset:
    """Levelled topography of a hopping SICM/SECCM grid: the recorded surface height of every hop, with a robust
    polynomial background (``order``) removed by :func:`espt_bluesky.analysis.topography.level`."""
    from ..analysis.topography import level

    md = _start_doc(run)
    key = key or md.get("topography_key") or "surface_z"
    ds = _read(run, variables=[key], waveforms=False)
    if "x" not in ds.dims or "y" not in ds.dims:
        raise InvalidArgument("the run is not a grid (no x/y grid dimensions); levelling needs a hopping grid")
    z = _var(ds, key, "surface height").values
    lv = level(z, ds["x"].values, ds["y"].values, order=order)
    return xr.Dataset(
        {"height": (("y", "x"), z, {"units": "um", "long_name": "recorded surface height"}),
         "levelled": (("y", "x"), lv.levelled, {"units": "um"}),
         "background": (("y", "x"), lv.background, {"units": "um"})},
        coords={"x": ("x", ds["x"].values, {"units": "um"}), "y": ("y", ds["y"].values, {"units": "um"})},
        attrs=dict(source_uid=ds.attrs.get("uid"), analysis="espt_bluesky.analysis.topography.level",
                   order=int(order), height_key=key))


# ------------------------------------------------------------------------------------------------ SECM resolution
def deconvolved_image_dataset(run, *, field: str = "pstat_tip_current", distance: Optional[float] = None,
                              n_iter: int = 100, a: Optional[float] = None) -> xr.Dataset:
    """Richardson–Lucy deconvolution of an SECM image with the probe's footprint PSF (radius a, distance d).

    ``distance`` (µm) defaults to the start document's ``height``; ``a`` to the probe radius in the metadata.
    """
    from ..analysis.resolution import deconvolve_image
    from .live_map import probe_radius_from_metadata

    ds = _read(run, variables=[field], waveforms=False)
    _require_technique(ds, "SECM")
    if "x" not in ds.dims or "y" not in ds.dims:
        raise InvalidArgument("the run is not a grid image (no x/y grid dimensions); deconvolution needs one")
    md = _start_doc(run)
    a = a if a is not None else probe_radius_from_metadata(md.get("probe") or ds.attrs.get("probe"))
    distance = distance if distance is not None else md.get("height")
    if a is None or distance is None:
        raise InvalidArgument(f"deconvolution needs the probe radius and the tip-sample distance: a={a!r}, "
                              f"distance={distance!r} (pass a=..., distance=...)")
    img = _var(ds, field, "tip current").values
    out, psf = deconvolve_image(img, ds["x"].values, ds["y"].values, radius=float(a), distance=float(distance),
                                n_iter=n_iter)
    return xr.Dataset(
        {"image": (("y", "x"), img, {"units": "A"}), "deconvolved": (("y", "x"), out, {"units": "A"}),
         "psf": (("psf_y", "psf_x"), psf)},
        coords={"x": ("x", ds["x"].values, {"units": "um"}), "y": ("y", ds["y"].values, {"units": "um"})},
        attrs=dict(source_uid=ds.attrs.get("uid"), analysis="espt_bluesky.analysis.resolution.deconvolve_image",
                   radius_um=float(a), distance_um=float(distance), n_iter=int(n_iter)))


# ------------------------------------------------------------------------------------------------ writing
def _write(run, name: str, ds: xr.Dataset, overwrite: bool):
    from ..storage import write_product

    params = {k: v for k, v in ds.attrs.items()}
    return write_product(run, name, ds, metadata={"parameters": params, "analysis": ds.attrs.get("analysis")},
                         overwrite=overwrite)


def write_kinetic_map(run, *, name: str = "kappa_map", overwrite: bool = False, **kwargs):
    """Compute :func:`kinetic_map_dataset` and store it next to ``run`` (Tiled); returns the product node."""
    return _write(run, name, kinetic_map_dataset(run, **kwargs), overwrite)


def write_screening(run, *, name: str = "screening", overwrite: bool = False, **kwargs):
    """Compute :func:`screening_dataset` and store it next to ``run``."""
    return _write(run, name, screening_dataset(run, **kwargs), overwrite)


def write_modulus_map(run, *, name: str = "modulus_map", overwrite: bool = False, **kwargs):
    """Compute :func:`modulus_map_dataset` and store it next to ``run``."""
    return _write(run, name, modulus_map_dataset(run, **kwargs), overwrite)


def write_topography(run, *, name: str = "topography", overwrite: bool = False, **kwargs):
    """Compute :func:`topography_dataset` and store it next to ``run``."""
    return _write(run, name, topography_dataset(run, **kwargs), overwrite)


def write_deconvolved_image(run, *, name: str = "deconvolved", overwrite: bool = False, **kwargs):
    """Compute :func:`deconvolved_image_dataset` and store it next to ``run``."""
    return _write(run, name, deconvolved_image_dataset(run, **kwargs), overwrite)


_PRODUCERS: dict[str, Callable[..., Any]] = {"SECM": write_kinetic_map, "SECCM": write_screening,
                                             "EC-AFM": write_modulus_map}


#: the longest a look at Tiled may hold the RunEngine when the wait's time is already spent (s)
LAST_LOOK = 1.0


def wait_for_run(client: Any, uid: str, timeout: float, *, since: float | None = None) -> Any:
    """The run ``uid`` from ``client`` once its stop document is there (the writer may lag the RunEngine).

    Waits at most ``timeout`` s -- counted from ``since`` (a ``time.time()``, e.g. the stop document's ``time``: the
    in-process writer's own wait at the stop then counts too) or from now -- and in any case at most ``LAST_LOOK`` s
    once that time is spent, however a request to Tiled behaves (refused, retried by the client, hung): the requests
    are made from a daemon thread, abandoned when the time is up.  Returns the run as it is if its stop has not
    arrived by then, None if the run never appeared or the server did not answer.
    """
    import threading

    now = time.time()
    left = timeout if since is None else timeout - (now - float(since))
    left = max(left, min(LAST_LOOK, timeout))
    done = threading.Event()
    box: dict[str, Any] = {}

    def poll() -> None:
        t_end = time.monotonic() + left
        while not done.is_set():
            try:
                run = client[uid]
                box["run"] = run
                if (run.metadata or {}).get("stop"):
                    break
            except KeyError:
                pass
            except Exception as exc:  # noqa: BLE001 - the server does not answer: no run
                box["error"] = f"{type(exc).__name__}: {exc}"
                break
            if time.monotonic() >= t_end:
                break
            done.wait(0.1)
        done.set()

    threading.Thread(target=poll, name=f"espt-wait-run-{uid[:8]}", daemon=True).start()
    done.wait(left)
    done.set()
    if "error" in box:
        logger.warning("run %s: Tiled did not answer (%s)", uid[:8], box["error"])
    return box.get("run")


class ProductCallback(CallbackBase):
    """At the end of each run of a technique, compute its product and write it next to the run in Tiled.

    Parameters
    ----------
    client : tiled client (container holding the runs)
        Where the TiledWriter writes; subscribe this callback after the writer.
    technique : {"SECM", "SECCM", "EC-AFM"}
        Runs of this technique get a product: SECM → κ map, SECCM → screening, EC-AFM → modulus map.
    plan_names : sequence of str, optional
        Only runs of these plans (default: any map run of the technique).
    timeout : float, s
        The longest the RunEngine's thread waits for the run to be complete in Tiled, counted from the stop
        document (the in-process writer's own wait at the stop included: give it ``[storage] max_wait``, the
        default: :data:`espt_bluesky.storage.writer.MAX_WAIT`); at most ``LAST_LOOK`` s more when the writer already
        spent it.  A run not in Tiled by then gets no product (``errors``); write it later with the ``write_*``
        functions or ``espt worker analysis``.
    from_stop : bool
        Count ``timeout`` from the stop document (default) or from the moment the callback sees it (a service
        reading old stop documents).
    **kwargs
        Passed to the ``write_*`` function (e.g. ``name``, ``i_inf``, ``k_max``).

    Attributes
    ----------
    written : list of (uid, product name)
    errors : list of (uid, message)
        Runs whose product could not be computed (bad or missing metadata); the run itself is unaffected.
    """

    def __init__(self, client, technique: str, *, plan_names=None, timeout: float | None = None,
                 from_stop: bool = True, **kwargs):
        super().__init__()
        if technique not in _PRODUCERS:
            raise InvalidArgument(f"technique={technique!r} has no product; one of {sorted(_PRODUCERS)}")
        self.client, self.technique = client, technique
        self.plan_names = None if plan_names is None else set(plan_names)
        if timeout is None:
            from ..storage.writer import MAX_WAIT

            timeout = MAX_WAIT
        self.timeout = float(timeout)
        self.from_stop = bool(from_stop)
        self.kwargs = kwargs
        self.written: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []
        self._start: Optional[dict] = None

    def start(self, doc):
        ok = str(doc.get("technique", "")).upper() == self.technique.upper() and (
            self.plan_names is None or doc.get("plan_name") in self.plan_names)
        self._start = doc if ok else None
        return super().start(doc)

    def stop(self, doc):
        if self._start is None:
            return super().stop(doc)
        uid = self._start["uid"]
        run = wait_for_run(self.client, uid, self.timeout, since=doc.get("time") if self.from_stop else None)
        if run is None:
            self.errors.append((uid, f"run not found in Tiled within {self.timeout} s of its stop"))
            return super().stop(doc)
        try:
            node = _PRODUCERS[self.technique](run, **self.kwargs)
            self.written.append((uid, node.item["id"] if hasattr(node, "item") else str(node)))
        except InvalidArgument as exc:
            self.errors.append((uid, str(exc)))
            logger.warning("no product for run %s: %s", uid[:8], exc)
        return super().stop(doc)
