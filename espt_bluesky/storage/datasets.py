"""xarray Datasets as Tiled containers (spec ``xarray_dataset``): write one, read one back.

Used for derived products and for imported instrument files (see ``espt_bluesky.correlate.store``): every data
variable and coordinate becomes an array node with its dims and attrs; the Dataset's attrs go to the container's
metadata (JSON-friendly).  :func:`is_dataset_node` lets :func:`espt_bluesky.storage.maps.read_map` read such a
node like a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

DATASET_SPEC = "xarray_dataset"


def jsonable(obj: Any, max_items: int = 1000) -> Any:
    """JSON-friendly copy for Tiled metadata: numpy made plain, bytes decoded, non-finite floats None, arrays and
    lists longer than ``max_items`` summarised."""
    if isinstance(obj, Mapping):
        return {(k.decode(errors="replace") if isinstance(k, bytes) else str(k)): jsonable(v, max_items)
                for k, v in obj.items()}
    if isinstance(obj, bytes):
        return obj.decode(errors="replace").rstrip("\x00")
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, max_items) for v in obj] if len(obj) <= max_items else f"<list of {len(obj)}>"
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), max_items) if obj.size <= max_items else f"<array shape={list(obj.shape)}>"
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), max_items)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_dataset_node(parent: Any, key: str, ds: xr.Dataset, metadata: Mapping[str, Any] | None = None,
                       extra_specs: Sequence[str] = ()):
    """Write ``ds`` as container ``key`` of ``parent``; ``metadata`` goes next to ``attrs`` (the Dataset's).

    If any array fails to write, the partial container is deleted and the error re-raised: a reader never
    sees half a dataset.
    """
    from tiled.structures.core import Spec

    md = dict(jsonable(dict(metadata or {})))
    md["attrs"] = jsonable(dict(ds.attrs))
    specs = [Spec(DATASET_SPEC), *(Spec(s) for s in extra_specs)]
    out = parent.create_container(key=key, metadata=md, specs=specs)
    try:
        for kind, names in (("xarray_data_var", list(ds.data_vars)), ("xarray_coord", list(ds.coords))):
            for v in names:
                da = ds[v]
                arr = np.asarray(da.values)
                if arr.dtype == object or arr.dtype.kind == "U":
                    arr = arr.astype(str).astype("S")
                out.write_array(arr, key=str(v), dims=[str(d) for d in da.dims],
                                metadata={"attrs": jsonable(dict(da.attrs))}, specs=[Spec(kind)])
    except BaseException:
        try:
            parent[key].delete(recursive=True, external_only=False)
        finally:
            raise
    return out


def is_dataset_node(node: Any) -> bool:
    """True for a Tiled container written by :func:`write_dataset_node`."""
    specs = getattr(node, "specs", None) or []
    return any(getattr(s, "name", s) == DATASET_SPEC for s in specs)


def read_dataset_node(node: Any) -> xr.Dataset:
    """The Dataset stored by :func:`write_dataset_node` (attrs from the container's metadata)."""
    coords, data_vars = {}, {}
    for k in node:
        a = node[k]
        dims = a.structure().dims or tuple(f"dim_{i}" for i in range(len(a.shape)))
        values = a.read()
        if getattr(values, "dtype", None) is not None and values.dtype.kind == "S":
            values = values.astype(str)
        entry = (tuple(dims), values, a.metadata.get("attrs", {}))
        (coords if "xarray_coord" in [s.name for s in a.specs] else data_vars)[k] = entry
    return xr.Dataset(data_vars, coords=coords, attrs=dict(node.metadata.get("attrs", {})))
