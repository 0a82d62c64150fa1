"""AFM images (AFMReader, NSFopen) and force curves / force maps (afmformats).

Images: JPK ``.jpk`` and QI ``.jpk-qi-image``, Bruker/Veeco Nanoscope ``.spm``/``.001``-style numbered files,
WSxM ``.top``, TopoStats ``.topostats`` (AFMReader) and Nanosurf ``.nid`` (NSFopen).  AFMReader gives the
height in nm and the pixel size; the grid starts at (0, 0) unless the file records an offset (Nanosurf).

Force spectroscopy: JPK ``.jpk-force`` / ``.jpk-force-map`` and Asylum ``.ibw`` force curves (afmformats): one
spot per curve with its recorded stage position (µm), the approach/retract samples as waveforms padded with NaN
to the longest curve.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, grid_dataset, jsonable, source_info, spot_dataset

#: numbered Nanoscope files (.001, .002 ...)
NANOSCOPE_NUMBERED = re.compile(r"^\.\d{3}$")


def _quiet_afmreader() -> None:
    import AFMReader.general_loader  # noqa: F401  (it enables its logger on import; disable afterwards)
    from AFMReader.logging import logger

    logger.disable("AFMReader")


def _afmreader_image(path: Path) -> tuple[np.ndarray, float, dict, str]:
    """(height nm, pixel nm, metadata, format) through AFMReader."""
    _quiet_afmreader()
    from AFMReader import jpk, spm, top, topostats

    suffix = path.suffix.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suffix in (".jpk", ".jpk-qi-image"):
                img, px = jpk.load_jpk(path, "height_trace")
                return img, px, {}, "JPK image (TIFF-based)"
            if suffix == ".spm" or NANOSCOPE_NUMBERED.match(suffix):
                img, px = spm.load_spm(path, "Height")
                return img, px, {}, "Bruker/Veeco Nanoscope"
            if suffix == ".top":
                img, px = top.load_top(path)
                return img, px, {}, "WSxM .top"
            if suffix == ".topostats":
                d = topostats.load_topostats(path)
                md = {k: v for k, v in d.items() if np.ndim(v) == 0 and not isinstance(v, dict)}
                return np.asarray(d["image"], float), float(d["pixel_to_nm_scaling"]), md, "TopoStats HDF5"
    except UnreadableFile:
        raise
    except Exception as exc:
        raise damaged(path, f"an AFM image ({suffix})", exc) from exc
    raise UnreadableFile(f"file={path.name!r}: no AFM image reader for {suffix!r}")


def read_image(path: Path) -> xr.Dataset:
    """An AFM topography image: ``height`` (nm) on x/y in µm."""
    if path.suffix.lower() == ".nid":
        return _read_nid(path)
    img, px_nm, md, fmt = _afmreader_image(path)
    img = np.asarray(img, float)
    if img.ndim != 2 or not px_nm or not np.isfinite(px_nm) or px_nm <= 0:
        raise UnreadableFile(f"file={path.name!r}: expected a 2-D image with a pixel size, got {img.shape} and "
                             f"{px_nm!r} nm/px")
    ny, nx = img.shape
    px = px_nm * 1e-3
    src = source_info(path, fmt, "AFMReader", "AFMReader")
    return grid_dataset({"height": (("y", "x"), img, {"units": "nm", "long_name": "topography"})},
                        np.arange(nx) * px, np.arange(ny) * px, technique="AFM", instrument="afm", source=src,
                        instrument_metadata=md, attrs={"pixel_size": px})


def _read_nid(path: Path) -> xr.Dataset:
    from NSFopen.read import read as nid_read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = nid_read(str(path))
        z = np.asarray(n.data["Image"]["Forward"]["Z-Axis"], float)
        scan = {k[1]: n.param[k] for k in n.param.index if k[0] == "Scan"}
    except Exception as exc:
        raise damaged(path, "a Nanosurf .nid file", exc) from exc
    rng = scan.get("range", {}).get("Value")
    off = scan.get("offset", {}).get("Value", [0.0, 0.0, 0.0])
    rot = float((scan.get("rotation", {}).get("Value") or [0.0])[0])
    if not rng or z.ndim != 2:
        raise UnreadableFile(f"file={path.name!r}: no scan range or Z-Axis image in the .nid file")
    ny, nx = z.shape
    # Nanosurf stores Z in m and the scan range/offset in m; the offset is the image centre
    x = (float(off[0]) - float(rng[0]) / 2) * 1e6 + (np.arange(nx) + 0.5) * float(rng[0]) * 1e6 / nx
    y = (float(off[1]) - float(rng[1]) / 2) * 1e6 + (np.arange(ny) + 0.5) * float(rng[1]) * 1e6 / ny
    md = {"scan": jsonable(scan), "tip": jsonable({k[1]: n.param[k] for k in n.param.index if k[0] == "Tip"})}
    channels = {}
    for direction in ("Forward", "Backward"):
        for ch, unit in (("Z-Axis", "nm"), ("Amplitude", "V"), ("Phase", "deg")):
            try:
                a = np.asarray(n.data["Image"][direction][ch], float)
            except (KeyError, TypeError):
                continue
            name = f"{ch.lower().replace('-axis', '')}_{direction.lower()}"
            channels[name] = (("y", "x"), a * (1e9 if ch == "Z-Axis" else 1.0), {"units": unit})
    channels["height"] = (("y", "x"), z * 1e9, {"units": "nm", "long_name": "topography (Z-Axis forward)"})
    src = source_info(path, "Nanosurf .nid", "NSFopen", "NSFopen")
    return grid_dataset(channels, x, y, technique="AFM", instrument="nanosurf", source=src, instrument_metadata=md,
                        attrs={"scan_rotation_deg": rot})


def read_force(path: Path) -> xr.Dataset:
    """Force curves (one spot each): force (N), piezo height (µm), time (s), segment (0 approach, 1 retract)."""
    import afmformats

    logging.getLogger("afmformats").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            curves = afmformats.load_data(path)
    except Exception as exc:
        raise damaged(path, "an AFM force-spectroscopy file", exc) from exc
    if not curves:
        raise UnreadableFile(f"file={path.name!r} holds no force curves")
    n = max(len(c["force"]) for c in curves)

    def pad(a):
        out = np.full(n, np.nan)
        out[: len(a)] = a
        return out

    cols = {"force": ("N", 1.0), "height (piezo)": ("µm", 1e6), "height (measured)": ("µm", 1e6),
            "time": ("s", 1.0), "segment": ("", 1.0)}
    vars_ = {}
    for col, (unit, f) in cols.items():
        if all(col in c.columns for c in curves):
            vars_[col.replace(" (", "_").replace(")", "")] = (("spot", "sample"),
                                                            np.stack([pad(np.asarray(c[col], float) * f)
                                                                      for c in curves]), {"units": unit})
    xs = np.array([c.metadata.get("position x", np.nan) or np.nan for c in curves], float) * 1e6
    ys = np.array([c.metadata.get("position y", np.nan) or np.nan for c in curves], float) * 1e6
    keys = ("spring constant", "sensitivity", "imaging mode", "instrument", "software", "software version",
            "date", "time", "setpoint", "grid index x", "grid index y", "grid shape")
    md = {"curves": [{k: jsonable(c.metadata.get(k)) for k in keys if k in c.metadata} for c in curves]}
    vars_["spring_constant"] = (("spot",), np.array([float(c.metadata.get("spring constant", np.nan))
                                                     for c in curves]), {"units": "N/m"})
    src = source_info(path, "AFM force spectroscopy", "afmformats", "afmformats")
    return spot_dataset(vars_, xs, ys, technique="AFM-force", instrument="afm", source=src, instrument_metadata=md,
                        position_known=bool(np.all(np.isfinite(xs))))
