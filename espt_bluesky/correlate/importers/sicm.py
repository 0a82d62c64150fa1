"""pySICM ``.sicm`` files: a gzip-compressed tar holding ``settings.json``, ``.mode``, the raw data and its ``.info``.

Layout (pySICM / pySICM_Analysis, which is not on PyPI, so this small reader uses :mod:`tarfile`):

* ``.mode``: the scan mode (``backstepScan``, ``floatingBackstep``, ``approach``);
* ``settings.json``: ``x-px``, ``y-px``, ``x-Size``, ``y-Size`` (µm), ``Backstep`` (µm), ``Threshold`` ...;
* the data file: legacy files little-endian ``uint16`` (scans: heights in nm); files with an ``extended`` member
  are pySICM2 (scans ``float32`` µm, approach curves ``float32``);
* ``<data>.info``: client start/end time.

Backstep scans become a height grid (µm); an approach curve a single spot with its samples.  When only one of
``x-Size``/``y-Size`` is recorded the pixels are taken as square (stated in ``attrs['size_note']``).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, grid_dataset, source_info, spot_dataset

SCAN_MODES = ("backstepScan", "floatingBackstep")
KNOWN_MODES = SCAN_MODES + ("approach",)


def sniff(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:gz") as tar:
            return "settings.json" in tar.getnames()
    except (tarfile.TarError, OSError, EOFError):
        return False


def _members(path: Path) -> tuple[str, dict, dict, bytes, bool]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
            if "settings.json" not in names or ".mode" not in names:
                raise UnreadableFile(f"file={path.name!r}: a .sicm archive needs settings.json and .mode; found "
                                     f"{sorted(names)}")
            mode = tar.extractfile(".mode").read().decode("utf-8", "replace").strip()
            settings = json.loads(tar.extractfile("settings.json").read().decode("utf-8"))
            data_names = [n for n in names if not n.startswith(".") and not n.endswith(".info")
                          and n not in ("settings.json", "extended")]
            if len(data_names) != 1:
                raise UnreadableFile(f"file={path.name!r}: expected one data member, found {data_names}")
            raw = tar.extractfile(data_names[0]).read()
            info_name = data_names[0] + ".info"
            info = json.loads(tar.extractfile(info_name).read().decode("utf-8")) if info_name in names else {}
            extended = "extended" in names
    except UnreadableFile:
        raise
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, "a pySICM .sicm archive (gzip tar)", exc) from exc
    return mode, settings, info if isinstance(info, dict) else {}, raw, extended


def _number(settings: dict, key: str) -> float | None:
    v = settings.get(key, "")
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read(path: Path) -> xr.Dataset:
    """A pySICM scan (height grid, µm) or approach curve (one spot)."""
    mode, settings, info, raw, extended = _members(path)
    if mode not in KNOWN_MODES:
        raise UnreadableFile(f"file={path.name!r}: scan mode {mode!r} is unknown (known: {list(KNOWN_MODES)})")
    dtype = np.dtype("<f4") if extended else np.dtype("<u2")
    if len(raw) % dtype.itemsize:
        raise UnreadableFile(f"file={path.name!r}: data member of {len(raw)} bytes is not a whole number of "
                             f"{dtype} values (truncated?)")
    values = np.frombuffer(raw, dtype=dtype).astype(float)
    md = dict(mode=mode, settings=settings, info=info, format="pySICM2 (extended)" if extended else "pySICM legacy")
    src = source_info(path, f"pySICM .sicm ({md['format']}, {mode})", "espt_bluesky (tarfile + numpy)")
    if mode == "approach":
        return spot_dataset({"approach_signal": (("spot", "sample"), values[None],
                                                 {"units": "ADC counts" if not extended else "a.u.",
                                                  "long_name": "approach curve, one value per z step"})},
                            [np.nan], [np.nan], technique="SICM", instrument="pysicm", source=src,
                            instrument_metadata=md, position_known=False)
    nx, ny = int(_number(settings, "x-px") or 0), int(_number(settings, "y-px") or 0)
    if nx < 1 or ny < 1:
        raise UnreadableFile(f"file={path.name!r}: settings x-px={settings.get('x-px')!r}, "
                             f"y-px={settings.get('y-px')!r} do not give a grid")
    if values.size != nx * ny:
        raise UnreadableFile(f"file={path.name!r}: {values.size} values for a {ny} x {nx} scan (truncated?)")
    height = values.reshape(ny, nx) * (1.0 if extended else 1e-3)  # legacy: nm
    sx, sy = _number(settings, "x-Size"), _number(settings, "y-Size")
    note = None
    if sx is None and sy is None:
        raise UnreadableFile(f"file={path.name!r}: settings record neither x-Size nor y-Size: the scan cannot be "
                             "placed in µm")
    if sx is None:
        sx, note = sy * nx / ny, "x-Size not recorded: square pixels assumed (pitch of y)"
    if sy is None:
        sy, note = sx * ny / nx, "y-Size not recorded: square pixels assumed (pitch of x)"
    x = (_number(settings, "XOffset") or 0.0) + np.arange(nx) * sx / nx
    y = (_number(settings, "YOffset") or 0.0) + np.arange(ny) * sy / ny
    attrs = {"size_note": note} if note else {}
    return grid_dataset({"height": (("y", "x"), height, {"units": "µm", "long_name": "surface height"})}, x, y,
                        technique="SICM", instrument="pysicm", source=src, instrument_metadata=md, attrs=attrs)
