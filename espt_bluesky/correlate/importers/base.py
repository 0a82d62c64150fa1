"""What every importer shares: the error it raises, file checks and checksums, and the Dataset it returns.

An importer is a function ``read(path) -> xarray.Dataset`` registered with :func:`register` for the file
extensions (and an optional content sniffer) it understands.  The Dataset it returns follows one convention so
that registration, resampling and Tiled storage treat every modality alike:

* grids: dims ``("y", "x")`` (plus trailing spectral dims) with 1-D coordinates ``x``, ``y`` in µm;
  point lists: dim ``"spot"`` with coordinates ``x(spot)``, ``y(spot)`` in µm (NaN when the file records no
  position, with ``attrs["position_known"] = False``);
* every variable has ``attrs["units"]``;
* ``attrs``: ``technique``, ``instrument``, ``frame`` (the frame of ``x``/``y``, ``"<instrument>:stage"``),
  ``transforms`` (at least ``<instrument>:pixel -> <instrument>:stage`` for grids), ``source`` (file name,
  sha256, size, format, reader and its version), ``instrument_metadata`` (what the file says about the
  instrument, JSON-friendly) and ``map_order``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from ...errors import InvalidArgument
from ...storage.datasets import jsonable
from ..frames import FRAME_KEY, TRANSFORMS_KEY, AffineTransform

POSITION_UNITS = "µm"
_TO_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "mm": 1e3, "nm": 1e-3, "m": 1e6,
          "cm": 1e4}


class UnreadableFile(InvalidArgument):
    """A file that no importer can read: unknown format, damaged, truncated, or an unknown vendor version.

    The message names the file, what was expected and what was found.  Nothing has been written when it is
    raised.
    """


@dataclass(frozen=True)
class Importer:
    """One registered reader: a name, the extensions it claims, and the function."""

    name: str
    extensions: tuple[str, ...]
    read: Callable[[Path], xr.Dataset]
    category: str
    sniff: Callable[[Path], bool] | None = None
    description: str = ""


def to_um(values: Any, units: str | None, what: str) -> np.ndarray:
    """Lengths in µm from values in ``units`` (µm, mm, nm, m ...)."""
    u = (units.decode() if isinstance(units, bytes) else str(units or "")).strip()
    factor = _TO_UM.get(u)
    if factor is None:
        raise UnreadableFile(f"{what}: position units {u!r} are not a length (known: {sorted(_TO_UM)})")
    return np.asarray(values, float) * factor


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_version(dist: str) -> str:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return "unknown"


def check_file(path: str | os.PathLike) -> Path:
    """The path as a resolved Path; a clear error if it is missing, a directory or empty."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UnreadableFile(f"file={str(p)!r} does not exist")
    if p.is_dir():
        raise UnreadableFile(f"file={str(p)!r} is a directory, not a data file")
    if p.stat().st_size == 0:
        raise UnreadableFile(f"file={str(p)!r} is empty (0 bytes)")
    return p.resolve()


def damaged(path: Path, fmt: str, exc: BaseException) -> UnreadableFile:
    """The error for a file of a known format that its reader could not read (truncated, corrupt, new version)."""
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > 300:
        detail = detail[:300] + " ..."
    return UnreadableFile(f"file={path.name!r} looks like {fmt} but could not be read; it may be truncated, "
                          f"damaged or from a vendor version this reader does not know ({detail})")


def source_info(path: Path, fmt: str, reader: str, reader_dist: str | None = None,
                extra_files: Sequence[Path] = ()) -> dict[str, Any]:
    """Provenance of an import: the file's name, size, sha256, format, and the reader with its version."""
    info = dict(file=path.name, sha256=sha256_of(path), size=path.stat().st_size, format=fmt, reader=reader)
    if reader_dist:
        info["reader_version"] = package_version(reader_dist)
    if extra_files:
        info["companions"] = [dict(file=p.name, sha256=sha256_of(p), size=p.stat().st_size) for p in extra_files]
    return info


def _var(item: Any) -> tuple:
    dims, data, attrs = item
    return dims, np.asarray(data), dict(attrs)


def grid_dataset(data_vars: Mapping[str, tuple], x: np.ndarray, y: np.ndarray, *, technique: str,
                 instrument: str, source: Mapping[str, Any], instrument_metadata: Mapping[str, Any] | None = None,
                 coords: Mapping[str, tuple] | None = None, pixel_transform: AffineTransform | None = None,
                 attrs: Mapping[str, Any] | None = None, frame: str | None = None,
                 transforms: Sequence[AffineTransform] = ()) -> xr.Dataset:
    """A gridded map: ``data_vars`` values are ``(dims, array, attrs)`` with dims starting ``("y", "x")``.

    ``x``/``y`` are the pixel-centre coordinates in µm on the instrument's stage.  The pixel -> stage transform
    is derived from them unless given (e.g. a rotated scan).  ``frame`` names the frame of x/y (default
    ``"<instrument>:stage"``); ``transforms`` are further recorded maps (e.g. image -> stage).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.ndim != 1 or y.ndim != 1 or x.size < 1 or y.size < 1 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise UnreadableFile(f"{source.get('file')}: grid coordinates must be finite 1-D arrays (got x "
                             f"{x.shape}, y {y.shape})")
    frame = frame or f"{instrument}:stage"
    if pixel_transform is None:
        dx = float(x[1] - x[0]) if x.size > 1 else 1.0
        dy = float(y[1] - y[0]) if y.size > 1 else 1.0
        pixel_transform = AffineTransform.from_grid(float(x[0]), dx, float(y[0]), dy, source=f"{instrument}:pixel",
                                                    target=frame, provenance={"from": "grid coordinates"})
    c = {"x": ("x", x, {"units": POSITION_UNITS}), "y": ("y", y, {"units": POSITION_UNITS})}
    c.update(coords or {})
    ds = xr.Dataset({k: _var(v) for k, v in data_vars.items()}, coords=c)
    return _finish(ds, technique, instrument, frame, source, instrument_metadata,
                   [pixel_transform, *transforms], "raster", attrs)


def spot_dataset(data_vars: Mapping[str, tuple], x: Any, y: Any, *, technique: str, instrument: str,
                 source: Mapping[str, Any], instrument_metadata: Mapping[str, Any] | None = None,
                 coords: Mapping[str, tuple] | None = None, attrs: Mapping[str, Any] | None = None,
                 position_known: bool = True) -> xr.Dataset:
    """A point list (or one spectrum / one time series): dims start with ``"spot"``; x, y in µm (NaN if unknown)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if x.shape != y.shape or x.ndim != 1:
        raise UnreadableFile(f"{source.get('file')}: x and y positions must be 1-D of equal length")
    frame = f"{instrument}:stage"
    c = {"x": ("spot", x, {"units": POSITION_UNITS}), "y": ("spot", y, {"units": POSITION_UNITS})}
    c.update(coords or {})
    ds = xr.Dataset({k: _var(v) for k, v in data_vars.items()}, coords=c)
    extra = dict(attrs or {})
    extra["position_known"] = bool(position_known)
    return _finish(ds, technique, instrument, frame, source, instrument_metadata, [],
                   "points" if x.size > 1 else "single", extra)


def _finish(ds, technique, instrument, frame, source, instrument_metadata, transforms, order, attrs):
    for k, v in ds.data_vars.items():
        if "units" not in v.attrs:
            raise AssertionError(f"importer bug: variable {k!r} has no units")
    ds.attrs.update(technique=technique, instrument=instrument, position_units=POSITION_UNITS,
                    map_order=order, source=jsonable(dict(source)),
                    instrument_metadata=jsonable(dict(instrument_metadata or {})))
    ds.attrs[FRAME_KEY] = frame
    ds.attrs[TRANSFORMS_KEY] = [t.to_dict() for t in transforms]
    ds.attrs.update(jsonable(dict(attrs or {})))
    return ds
