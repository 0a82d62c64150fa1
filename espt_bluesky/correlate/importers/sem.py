"""SEM images (TIFF with the microscope's calibration tags), read with :mod:`tifffile`.

FEI/Thermo Fisher (``FEI_HELIOS``/``FEI_SFEG`` tags: pixel size, databar height, stage position, scan rotation)
and Zeiss (``CZ_SEM``: pixel size) are understood.  The image is returned with ``y`` increasing upwards (the
TIFF's first row is the top of the image), the databar cropped, in the frame ``sem:image`` (µm from the
bottom-left pixel centre).  For FEI files the transform ``sem:image -> sem:stage`` from the recorded stage
position and scan rotation is also recorded; its sign conventions are the microscope's and are stated in its
provenance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from ..frames import AffineTransform
from .base import UnreadableFile, damaged, grid_dataset, source_info

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def _calibration(tif) -> tuple[float, int, dict, str]:
    """(pixel size µm, databar rows, metadata, vendor) from the TIFF's SEM tags."""
    fei = getattr(tif, "fei_metadata", None)
    if fei:
        scan = fei.get("Scan") or fei.get("EScan") or {}
        px = float(scan.get("PixelWidth", 0.0)) * 1e6
        image = fei.get("Image", {})
        rows = int(image.get("ResolutionY", 0) or 0)
        return px, rows, fei, "FEI"
    cz = getattr(tif, "sem_metadata", None)
    if cz:
        ps = cz.get("ap_pixel_size") or cz.get("ap_image_pixel_size")
        if isinstance(ps, (tuple, list)) and len(ps) >= 2:
            value, unit = float(ps[1]), str(ps[2] if len(ps) > 2 else "nm")
            px = value * {"nm": 1e-3, "µm": 1.0, "um": 1.0, "pm": 1e-6}.get(unit, 1e-3)
            return px, 0, cz, "Zeiss"
    return 0.0, 0, {}, ""


def read(path: Path) -> xr.Dataset:
    """An SEM image as a grid ``intensity`` (detector counts) on x/y in µm (frame ``sem:image``)."""
    import tifffile

    if not sniff(path):
        raise UnreadableFile(f"file={path.name!r} is not a TIFF (no TIFF signature)")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            img = page.asarray()
            px, rows, md, vendor = _calibration(tif)
    except Exception as exc:  # tifffile raises many kinds on damaged files
        raise damaged(path, "a TIFF image", exc) from exc
    if px <= 0:
        raise UnreadableFile(f"file={path.name!r} is a TIFF without SEM calibration (no FEI or Zeiss pixel size): "
                             "its pixels cannot be placed in µm")
    if img.ndim == 3:  # RGB rendering of a grey image
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2:
        raise UnreadableFile(f"file={path.name!r}: expected a 2-D image, found shape {img.shape}")
    databar = 0
    if 0 < rows < img.shape[0]:
        databar = img.shape[0] - rows
        img = img[:rows]
    ny, nx = img.shape
    # flip so that y increases upwards (row 0 of the file is the top of the image)
    data = np.ascontiguousarray(img[::-1])
    x = np.arange(nx) * px
    y = np.arange(ny) * px
    transforms = []
    if vendor == "FEI":
        beam = md.get("Beam", {})
        stage = md.get("Stage", {})
        rot = float(beam.get("ScanRotation", 0.0) or 0.0)
        sx = float(stage.get("StageX", 0.0)) * 1e6
        sy = float(stage.get("StageY", 0.0)) * 1e6
        # image centre at the stage position; the scan rotated by ScanRotation (radians, counter-clockwise)
        c = np.array([(nx - 1) * px / 2, (ny - 1) * px / 2])
        t = AffineTransform.from_params(rotation_deg=math.degrees(rot), source="sem:image", target="sem:stage",
                                        provenance={"from": "FEI metadata (Stage.StageX/Y, Beam.ScanRotation)",
                                                    "assumes": "image centre at the stage position, scan "
                                                               "rotation counter-clockwise, stage axes as image "
                                                               "axes"})
        t = AffineTransform(t.matrix @ np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1.0]])
                            + np.array([[0, 0, sx], [0, 0, sy], [0, 0, 0]]), "sem:image", "sem:stage",
                            provenance=t.provenance)
        transforms.append(t)
    pixel = AffineTransform(np.array([[px, 0, 0], [0, -px, (ny - 1) * px], [0, 0, 1.0]]), "sem:pixel",
                            "sem:image", "px", "µm",
                            provenance={"from": f"{vendor} pixel size", "note": "TIFF rows run downwards"})
    src = source_info(path, f"{vendor} SEM TIFF", "tifffile", "tifffile")
    detector = md.get("Detectors", {}).get("Name") if vendor == "FEI" else None
    return grid_dataset({"intensity": (("y", "x"), data, {"units": "counts",
                                                           "long_name": f"SEM {detector or ''} signal".strip()})},
                        x, y, technique="SEM", instrument="sem", source=src, instrument_metadata=md,
                        pixel_transform=pixel, frame="sem:image", transforms=transforms,
                        attrs={"pixel_size": px, "databar_rows": databar, "vendor": vendor})
