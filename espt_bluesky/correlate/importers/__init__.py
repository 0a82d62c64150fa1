"""Importers: instrument files -> xarray Datasets in µm with units, provenance and their frame transform.

:func:`read_file` picks the importer by extension (and, where extensions are shared, by content), reads the
whole file and validates it; an unknown or damaged file raises :class:`UnreadableFile` and nothing else happens.
:func:`espt_bluesky.correlate.store.import_file` then writes the Dataset to Tiled.

=========  =====================================================================  =====================
category   formats                                                                reader
=========  =====================================================================  =====================
secm       SECM text export (x, y, current)                                       numpy
sem        FEI / Zeiss SEM TIFF                                                   tifffile
xrf        EPICS MDA, MAPS raw HDF5, GSE MCA, XDI                                 mdaviz (synApps mda),
                                                                                  h5py, numpy
raman      Renishaw WDF (+ white-light image), Horiba JY XML, TriVista TVF,       rosettasciio, numpy
           two-column text exports
sicm       pySICM .sicm                                                           tarfile + numpy
afm        JPK, Nanoscope, WSxM, TopoStats, Nanosurf images; JPK/Asylum force     AFMReader, NSFopen,
           curves and maps                                                        afmformats
echem      BioLogic EC-Lab .mpr / .mpt                                            yadg
=========  =====================================================================  =====================
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from . import afm, echem, raman, secm, sem, sicm, xrf
from .base import Importer, UnreadableFile, check_file

__all__ = ["IMPORTERS", "Importer", "UnreadableFile", "find_importer", "read_file", "read_white_light"]


def _refuse_l6s(path: Path) -> xr.Dataset:
    raise UnreadableFile(f"file={path.name!r} is a Horiba LabSpec 6 binary (.l6s), a closed format with no open "
                         "reader: export it from LabSpec as .xml (maps) or .txt (spectra) and import that")


def _refuse_mdt(path: Path) -> xr.Dataset:
    raise UnreadableFile(f"file={path.name!r} is an NT-MDT .mdt file: no reader is installed for it; export the "
                         "image from Nova as .gwy/.spm/.txt, or install SciFiReaders")


IMPORTERS: list[Importer] = [
    Importer("secm_text", (".txt", ".csv"), secm.read, "secm", secm.sniff, "SECM x,y,current text export"),
    Importer("sem_tiff", (".tif", ".tiff"), sem.read, "sem", sem.sniff, "SEM TIFF (FEI, Zeiss)"),
    Importer("mda", (".mda",), xrf.read_mda, "xrf", None, "EPICS synApps MDA scan"),
    Importer("maps_h5", (".h5", ".hdf5"), xrf.read_maps_h5, "xrf", xrf.sniff_maps_h5, "MAPS raw HDF5 spectra"),
    Importer("gse_mca", (".mca",), xrf.read_gse_mca, "xrf", xrf.sniff_gse_mca, "GSE/CARS MCA spectrum"),
    Importer("xdi", (".xdi",), xrf.read_xdi, "xrf", xrf.sniff_xdi, "XAS Data Interchange"),
    Importer("maps_sidecar", (".txt",), xrf.refuse_sidecar, "xrf",
             lambda p: p.name.startswith("maps_") and p.suffix == ".txt", "MAPS configuration (not data)"),
    Importer("wdf", (".wdf",), raman.read, "raman", None, "Renishaw WiRE WDF"),
    Importer("jobinyvon_xml", (".xml",), raman.read, "raman", None, "Horiba/Jobin Yvon LabSpec XML"),
    Importer("trivista", (".tvf",), raman.read, "raman", None, "Princeton TriVista TVF"),
    Importer("spectrum_text", (".txt", ".csv"), raman.read_text_spectrum, "raman", raman.sniff_text_spectrum,
             "two-column spectrum export"),
    Importer("labspec6", (".l6s",), _refuse_l6s, "raman", None, "Horiba LabSpec 6 binary (refused)"),
    Importer("sicm", (".sicm",), sicm.read, "sicm", None, "pySICM archive"),
    Importer("afm_image", (".jpk", ".jpk-qi-image", ".spm", ".top", ".topostats", ".nid"), afm.read_image, "afm",
             None, "AFM image"),
    Importer("afm_nanoscope", (), afm.read_image, "afm", None, "Nanoscope numbered file (.001 ...)"),
    Importer("afm_force", (".jpk-force", ".jpk-force-map", ".ibw"), afm.read_force, "afm", None,
             "AFM force curves"),
    Importer("ntmdt", (".mdt",), _refuse_mdt, "afm", None, "NT-MDT (refused)"),
    Importer("eclab", (".mpr", ".mpt"), echem.read, "echem", echem.sniff, "BioLogic EC-Lab"),
]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".jpk-qi-image", ".jpk-force-map", ".jpk-force"):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def find_importer(path: str | os.PathLike, fmt: str | None = None) -> Importer:
    """The importer for a file: by ``fmt`` (an importer name) if given, else by extension and content."""
    p = check_file(path)
    if fmt is not None:
        for imp in IMPORTERS:
            if imp.name == fmt:
                return imp
        raise UnreadableFile(f"format={fmt!r} is not an importer; known: {[i.name for i in IMPORTERS]}")
    ext = _suffix(p)
    cands = [i for i in IMPORTERS if ext in i.extensions]
    if not cands and afm.NANOSCOPE_NUMBERED.match(ext):
        cands = [i for i in IMPORTERS if i.name == "afm_nanoscope"]
    if not cands:
        known = sorted({e for i in IMPORTERS for e in i.extensions})
        raise UnreadableFile(f"file={p.name!r}: extension {ext!r} is not a known format (known: {known}, and "
                             "numbered Nanoscope files .001 ...)")
    if len(cands) == 1:
        imp = cands[0]
        if imp.sniff is not None and not imp.sniff(p):
            raise UnreadableFile(f"file={p.name!r}: named {ext!r} but its content is not {imp.description}")
        return imp
    for imp in cands:
        if imp.sniff is None or imp.sniff(p):
            return imp
    raise UnreadableFile(f"file={p.name!r}: its content matches none of the {ext!r} formats "
                         f"({', '.join(i.description for i in cands)})")


def read_file(path: str | os.PathLike, fmt: str | None = None) -> xr.Dataset:
    """Read one instrument file into a Dataset (see the module docstring); nothing is written anywhere.

    Raises
    ------
    UnreadableFile
        Unknown format, wrong extension for the content, truncated or damaged file, unknown vendor version.
    """
    p = check_file(path)
    imp = find_importer(p, fmt)
    ds = imp.read(p)
    ds.attrs["importer"] = imp.name
    ds.attrs["category"] = imp.category
    return ds


def read_white_light(path: str | os.PathLike) -> xr.Dataset:
    """The white-light image of a Renishaw WDF file, in the same stage frame as its map."""
    p = check_file(path)
    ds = raman.read_white_light(p)
    ds.attrs["importer"] = "wdf_white_light"
    ds.attrs["category"] = "raman"
    return ds
