"""Imported files and correlation products in Tiled.

:func:`import_file` reads a file completely (every check done) and only then writes it as a dataset node under
``imports/<key>`` in the catalog; a file that cannot be read raises and writes nothing.  The node reads back with
:func:`espt_bluesky.storage.read_map` like a run.  :func:`write_correlation_product` stores a joint analysis under
``correlations/<key>`` with links to every source (run uids, file checksums) and the transforms used.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import uuid
from typing import Any, Iterable, Mapping

import xarray as xr

from ..errors import InvalidArgument
from ..storage.datasets import read_dataset_node, write_dataset_node
from .frames import transforms_of
from .importers import read_file, read_white_light

IMPORTS = "imports"
CORRELATIONS = "correlations"
IMPORT_SPEC = "espt_import"
CORRELATION_SPEC = "espt_correlation"


def _container(client: Any, name: str, description: str):
    if name not in client:
        client.create_container(key=name, metadata={"description": description})
    return client[name]


def _key_for(ds: xr.Dataset, suffix: str = "") -> str:
    src = ds.attrs.get("source", {})
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(src.get("file", "import"))[0])[:60]
    return f"{stem}{suffix}-{str(src.get('sha256', uuid.uuid4().hex))[:12]}"


def write_import(client: Any, ds: xr.Dataset, *, key: str | None = None, overwrite: bool = False):
    """Write an imported Dataset under ``imports/<key>`` (default: file stem + checksum prefix)."""
    key = key or _key_for(ds)
    node = _container(client, IMPORTS, "instrument files imported by espt_bluesky.correlate")
    if key in node:
        if not overwrite:
            existing = node[key]
            same = existing.metadata.get("attrs", {}).get("source", {}).get("sha256") == \
                ds.attrs.get("source", {}).get("sha256")
            if same:
                return existing  # the same file imported twice: one node
            raise InvalidArgument(f"key={key!r}: an import of another file already has that key")
        node[key].delete(recursive=True, external_only=False)
    md = {"imported": _dt.datetime.now(_dt.timezone.utc).isoformat(), "technique": ds.attrs.get("technique"),
          "source": ds.attrs.get("source"), "frame": ds.attrs.get("frame")}
    return write_dataset_node(node, key, ds, md, extra_specs=[IMPORT_SPEC])


def import_file(path: str | os.PathLike, client: Any, *, fmt: str | None = None, key: str | None = None,
                white_light: bool = True) -> list:
    """Read ``path`` and write it to Tiled; returns the written nodes (a WDF map and its white-light image).

    Raises :class:`~espt_bluesky.correlate.importers.UnreadableFile` before anything is written if the file
    cannot be read.
    """
    ds = read_file(path, fmt)
    datasets = [(key, ds)]
    if white_light and ds.attrs.get("has_white_light_image"):
        wl = read_white_light(path)
        datasets.append(((key + "-white_light") if key else _key_for(ds, "-white_light"), wl))
    written = []
    try:
        for k, d in datasets:
            written.append(write_import(client, d, key=k))
    except BaseException:
        for node in written:  # all or nothing
            try:
                client[IMPORTS][node.item["id"]].delete(recursive=True, external_only=False)
            except Exception:
                pass
        raise
    return written


def read_import(node: Any) -> xr.Dataset:
    """The Dataset of an ``imports/<key>`` node (same as ``read_map(node)``)."""
    return read_dataset_node(node)


def source_record(ds: xr.Dataset) -> dict[str, Any]:
    """What identifies a source of a joint analysis: run uid or file name + sha256, technique and frame."""
    rec = {"technique": ds.attrs.get("technique"), "frame": ds.attrs.get("frame")}
    if ds.attrs.get("uid"):
        rec["uid"] = ds.attrs["uid"]
    src = ds.attrs.get("source")
    if isinstance(src, Mapping):
        rec.update(file=src.get("file"), sha256=src.get("sha256"))
    return rec


def write_correlation_product(client: Any, name: str, data: xr.Dataset, *, sources: Iterable[xr.Dataset],
                              transforms: Iterable[Any] = (), metadata: Mapping[str, Any] | None = None,
                              overwrite: bool = False):
    """Store a joint-analysis Dataset under ``correlations/<name>`` linking its sources and transforms."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise InvalidArgument(f"name={name!r}: a product name needs letters, digits, '_', '-' or '.'")
    node = _container(client, CORRELATIONS, "joint analyses of co-registered maps")
    if name in node:
        if not overwrite:
            raise InvalidArgument(f"name={name!r}: a correlation product of that name exists (overwrite=True "
                                  "replaces it)")
        node[name].delete(recursive=True, external_only=False)
    sources = list(sources)
    tlist = [t.to_dict() if hasattr(t, "to_dict") else dict(t) for t in transforms]
    for s in sources:
        tlist.extend(t.to_dict() for t in transforms_of(s))
    md = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "product": name,
          "sources": [source_record(s) for s in sources], "transforms": tlist, **dict(metadata or {})}
    return write_dataset_node(node, name, data, md, extra_specs=[CORRELATION_SPEC])
