"""Raman maps and spectra: Renishaw WiRE ``.wdf``, Horiba/Jobin Yvon LabSpec ``.xml``, Princeton TriVista
``.tvf`` (all through RosettaSciIO) and two-column text exports (shift, intensity).

A Renishaw file with a white-light (optical) image gives two datasets: the map (or spectrum) and the image, each
in the file's own stage coordinates (µm), so the map sits on the image without any registration.
:func:`read` returns the spectral data; :func:`read_white_light` the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, grid_dataset, jsonable, source_info, spot_dataset

_FORMATS = {".wdf": ("renishaw", "Renishaw WiRE WDF"), ".xml": ("jobinyvon", "Horiba/Jobin Yvon LabSpec XML"),
            ".tvf": ("trivista", "Princeton Instruments TriVista TVF")}


def _signals(path: Path) -> list[dict]:
    import importlib

    plugin, fmt = _FORMATS[path.suffix.lower()]
    module = importlib.import_module(f"rsciio.{plugin}")
    logging.getLogger("rsciio").setLevel(logging.ERROR)  # "cannot find lumispy" is not the user's concern
    try:
        return module.file_reader(str(path))
    except UnreadableFile:
        raise
    except Exception as exc:
        raise damaged(path, f"a {fmt} file", exc) from exc


def _axis_values(ax: dict) -> np.ndarray:
    if "axis" in ax and ax["axis"] is not None:
        return np.asarray(ax["axis"], float)
    return float(ax.get("offset", 0.0)) + float(ax.get("scale", 1.0)) * np.arange(int(ax["size"]))


def _spectral_name(ax: dict) -> str:
    n = str(ax.get("name") or "spectral").strip().lower().replace(" ", "_")
    return {"raman_shift": "raman_shift", "wavelength": "wavelength", "wavenumber": "raman_shift"}.get(n, n)


def _spectral(sig: dict, path: Path, fmt: str, instrument: str) -> xr.Dataset:
    data = np.asarray(sig["data"])
    axes = sig["axes"]
    md = {"metadata": jsonable(sig.get("metadata", {})), "original_metadata": jsonable(sig.get("original_metadata", {}),
                                                                                      max_items=200)}
    if data.ndim < 1 or data.dtype.fields is not None:
        raise UnreadableFile(f"file={path.name!r}: expected spectra, found data of shape {data.shape}")
    sax = axes[-1]
    sname = _spectral_name(sax)
    svals = _axis_values(sax)
    units = str(sax.get("units") or "")
    src = source_info(path, fmt, f"rsciio.{_FORMATS[path.suffix.lower()][0]}", "rosettasciio")
    coords = {sname: (sname, svals, {"units": units})}
    intensity_attrs = {"units": "counts"}
    nav = axes[:-1]
    if len(nav) == 0:
        return spot_dataset({"spectrum": (("spot", sname), data[None], intensity_attrs)}, [np.nan], [np.nan],
                            technique="Raman", instrument=instrument, source=src, instrument_metadata=md,
                            coords=coords, position_known=False)
    names = [str(a.get("name", "")).lower() for a in nav]
    if len(nav) == 2 and names == ["y", "x"]:
        for a in nav:
            if str(a.get("units", "")).strip() not in ("µm", "um", "μm"):
                raise UnreadableFile(f"file={path.name!r}: map axis {a.get('name')} in {a.get('units')!r}, "
                                     "expected µm")
        y, x = _axis_values(nav[0]), _axis_values(nav[1])
        return grid_dataset({"spectrum": (("y", "x", sname), data, intensity_attrs)}, x, y, technique="Raman",
                            instrument=instrument, source=src, instrument_metadata=md, coords=coords)
    if len(nav) == 1:  # a line or point series without a grid: positions are along the named axis
        n = data.shape[0]
        along = _axis_values(nav[0])
        known = names[0] in ("x", "y")
        x = along if names[0] == "x" else np.full(n, np.nan)
        y = along if names[0] == "y" else np.full(n, np.nan)
        return spot_dataset({"spectrum": (("spot", sname), data, intensity_attrs)}, x, y, technique="Raman",
                            instrument=instrument, source=src, instrument_metadata=md, coords=coords,
                            position_known=known)
    raise UnreadableFile(f"file={path.name!r}: navigation axes {names} are not a (y, x) map")


def read(path: Path) -> xr.Dataset:
    """The spectra of a WDF/JY XML/TVF file: a (y, x, spectral) grid or a single spectrum."""
    sigs = _signals(path)
    fmt = _FORMATS[path.suffix.lower()][1]
    spectra = [s for s in sigs if np.asarray(s["data"]).dtype.fields is None]
    if not spectra:
        raise UnreadableFile(f"file={path.name!r}: the {fmt} file holds no spectra")
    ds = _spectral(spectra[0], path, fmt, {"renishaw": "renishaw", "jobinyvon": "horiba",
                                           "trivista": "trivista"}[_FORMATS[path.suffix.lower()][0]])
    images = [s for s in sigs if np.asarray(s["data"]).dtype.fields is not None]
    ds.attrs["has_white_light_image"] = bool(images)
    return ds


def read_white_light(path: Path) -> xr.Dataset:
    """The white-light (optical) image stored in a Renishaw WDF file, as a grid in the same stage frame."""
    if path.suffix.lower() != ".wdf":
        raise UnreadableFile(f"file={path.name!r}: only Renishaw .wdf files carry a white-light image")
    sigs = _signals(path)
    images = [s for s in sigs if np.asarray(s["data"]).dtype.fields is not None]
    if not images:
        raise UnreadableFile(f"file={path.name!r} holds no white-light image")
    s = images[0]
    rgb = np.stack([np.asarray(s["data"][c], np.uint8) for c in ("R", "G", "B")], axis=-1)
    ay, ax = s["axes"]
    y, x = _axis_values(ay), _axis_values(ax)
    md = jsonable(s.get("metadata", {}))
    src = source_info(path, "Renishaw WiRE WDF (WHTL white-light image)", "rsciio.renishaw", "rosettasciio")
    return grid_dataset({"rgb": (("y", "x", "color"), rgb, {"units": "8-bit RGB"}),
                         "brightness": (("y", "x"), rgb.astype(float).mean(-1), {"units": "8-bit"})}, x, y,
                        technique="optical", instrument="renishaw", source=src, instrument_metadata=md,
                        coords={"color": ("color", np.array(["R", "G", "B"]), {"units": ""})})


def sniff_text_spectrum(path: Path) -> bool:
    try:
        _text_spectrum(path)
        return True
    except (UnreadableFile, UnicodeDecodeError, ValueError, OSError):
        return False


def _text_spectrum(path: Path) -> tuple[np.ndarray, dict]:
    with open(path, "r", encoding="utf-8", errors="strict") as f:
        head = [line for _, line in zip(range(5), f)]
    header = [h.strip() for h in head if h.lstrip().startswith("#")]
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[1] != 2 or data.shape[0] < 10:
        raise UnreadableFile(f"file={path.name!r}: expected two columns (Raman shift, intensity), found "
                             f"{data.shape}")
    return data, {"header": header}


def read_text_spectrum(path: Path) -> xr.Dataset:
    """A spectrum exported as text: two columns, Raman shift (cm⁻¹) and intensity (counts)."""
    try:
        data, md = _text_spectrum(path)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"file={path.name!r} is not text") from exc
    except ValueError as exc:
        raise damaged(path, "a two-column spectrum export", exc) from exc
    order = np.argsort(data[:, 0])
    shift, counts = data[order, 0], data[order, 1]
    src = source_info(path, "two-column spectrum text (shift, intensity)", "numpy.loadtxt", "numpy")
    return spot_dataset({"spectrum": (("spot", "raman_shift"), counts[None], {"units": "counts"})}, [np.nan],
                        [np.nan], technique="Raman", instrument="raman_text", source=src, instrument_metadata=md,
                        coords={"raman_shift": ("raman_shift", shift, {"units": "1/cm"})}, position_known=False)
