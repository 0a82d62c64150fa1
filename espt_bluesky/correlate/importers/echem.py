"""BioLogic EC-Lab files (binary ``.mpr`` and ASCII ``.mpt`` exports), read with ``yadg``.

Every numeric column becomes a waveform of one spot (an EC-Lab file records no map position): time (s),
potentials (V), currents (A; EC-Lab's mA converted), charges, impedance ...  Measurement uncertainties that
yadg derives from the instrument's resolution are kept as ``<name>_uncertainty`` variables.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, jsonable, source_info, spot_dataset

_SCALE = {"mA": (1e-3, "A"), "µA": (1e-6, "A"), "uA": (1e-6, "A"), "mA·h": (3.6, "C"), "mA.h": (3.6, "C")}


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(32)
    return head.startswith(b"BIO-LOGIC MODULAR FILE") or head.startswith(b"EC-Lab ASCII FILE")


def read(path: Path) -> xr.Dataset:
    """An EC-Lab technique file as one spot with its time series."""
    from yadg import extractors

    with open(path, "rb") as f:
        head = f.read(32)
    kind = "mpr" if head.startswith(b"BIO-LOGIC MODULAR FILE") else "mpt" if head.startswith(b"EC-Lab ASCII FILE") \
        else None
    if kind is None:
        raise UnreadableFile(f"file={path.name!r}: neither an EC-Lab binary (BIO-LOGIC MODULAR FILE) nor ASCII "
                             "(EC-Lab ASCII FILE) header")
    logging.getLogger("yadg").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = extractors.extract(filetype=f"eclab.{kind}", path=path)
        ds = tree.to_dataset()
    except Exception as exc:
        raise damaged(path, f"a BioLogic EC-Lab .{kind} file", exc) from exc
    if "uts" not in ds.dims or ds.sizes["uts"] < 1:
        raise UnreadableFile(f"file={path.name!r}: the EC-Lab file holds no data points")
    vars_ = {}
    for name, da in ds.data_vars.items():
        if da.dims != ("uts",) or da.dtype.kind not in "fiub":
            continue
        units = da.attrs.get("units") or ""
        f, units = _SCALE.get(units, (1.0, units))
        key = str(name).replace("/", "_").replace(" ", "_")
        vars_[key] = (("spot", "sample"), np.asarray(da.values, float)[None] * f,
                      {"units": units or "1", "eclab_name": str(name)})
    md = jsonable(dict(tree.attrs), max_items=200)
    src = source_info(path, f"BioLogic EC-Lab .{kind}", "yadg", "yadg")
    return spot_dataset(vars_, [np.nan], [np.nan], technique="EC", instrument="biologic", source=src,
                        instrument_metadata=md, position_known=False,
                        coords={"uts": ("sample", np.asarray(ds["uts"].values, float), {"units": "s (unix)"})})
