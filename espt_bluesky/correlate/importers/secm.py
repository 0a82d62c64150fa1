"""SECM images exported as text: ``x, y, current`` rows under a ``#`` header naming the units.

The format of the SECM-SEM-Align tool (exported from HEKA ``.mat`` files)::

    #Original file: Al-AR.mat
    #Units of current: nA
    #Units of distance: µm
    ...
    0.000,0.000,2.4850e-02

Read with :func:`numpy.loadtxt`; the points must fill a rectangular grid (any order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, grid_dataset, source_info, to_um

_CURRENT = {"a": 1.0, "ma": 1e-3, "ua": 1e-6, "µa": 1e-6, "μa": 1e-6, "na": 1e-9, "pa": 1e-12}


def _header(path: Path) -> dict[str, str]:
    head: dict[str, str] = {}
    with open(path, "r", encoding="utf-8", errors="strict") as f:
        for line in f:
            if not line.startswith("#"):
                break
            body = line[1:].strip()
            if ":" in body:
                k, v = body.split(":", 1)
                head[k.strip().lower()] = v.strip()
    return head


def sniff(path: Path) -> bool:
    try:
        return "units of current" in _header(path)
    except (UnicodeDecodeError, OSError):
        return False


def read(path: Path) -> xr.Dataset:
    """An SECM text export as a grid: ``current`` (A) on x/y in µm."""
    try:
        head = _header(path)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"file={path.name!r} is not text; an SECM export is 'x,y,current' text") from exc
    if "units of current" not in head or "units of distance" not in head:
        raise UnreadableFile(f"file={path.name!r}: no '#Units of current' / '#Units of distance' header; not an "
                             "SECM text export")
    cu = head["units of current"].lower()
    if cu not in _CURRENT:
        raise UnreadableFile(f"file={path.name!r}: current units {head['units of current']!r} unknown "
                             f"(known: {sorted(_CURRENT)})")
    try:
        data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
    except ValueError as exc:
        raise damaged(path, "an SECM text export", exc) from exc
    if data.shape[1] != 3 or data.shape[0] < 4:
        raise UnreadableFile(f"file={path.name!r}: expected rows of 3 columns (x, y, current), found "
                             f"{data.shape[0]} rows of {data.shape[1]}")
    x = to_um(data[:, 0], head["units of distance"], path.name)
    y = to_um(data[:, 1], head["units of distance"], path.name)
    xs, ys = np.unique(x), np.unique(y)
    if xs.size * ys.size != data.shape[0]:
        raise UnreadableFile(f"file={path.name!r}: {data.shape[0]} points do not fill the {ys.size} x {xs.size} "
                             "grid their coordinates span (truncated file?)")
    img = np.full((ys.size, xs.size), np.nan)
    img[np.searchsorted(ys, y), np.searchsorted(xs, x)] = data[:, 2] * _CURRENT[cu]
    if np.isnan(img).any():
        raise UnreadableFile(f"file={path.name!r}: duplicate positions leave grid cells empty")
    md = {k: v for k, v in head.items()}
    src = source_info(path, "SECM text export (x, y, current)", "numpy.loadtxt", "numpy")
    return grid_dataset({"current": (("y", "x"), img, {"units": "A", "long_name": "tip current"})}, xs, ys,
                        technique="SECM", instrument="secm", source=src, instrument_metadata=md,
                        attrs={"step_x": float(np.median(np.diff(xs))) if xs.size > 1 else None,
                               "step_y": float(np.median(np.diff(ys))) if ys.size > 1 else None})
