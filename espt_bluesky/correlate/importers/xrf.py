"""X-ray fluorescence: APS MDA scans, MAPS raw HDF5 per-pixel spectra, GSE MCA spectra and XDI scans.

* ``.mda`` (EPICS synApps sscan files; read with the synApps ``mda`` module shipped by ``mdaviz``): a 2-D map
  gives every detector (scalers, ROI counts) on the positioners' grid in µm; a 3-D scan (map x MCA) also gives
  the per-pixel spectra.  0-/1-D scans are point lists.
* ``.h5`` with ``MAPS_RAW`` (XRF-Maps / MAPS raw fly-scan spectra, 4-element detector): per-pixel spectra of
  every element and their sum, live/real time, ICR/OCR.  The file holds no positions: they come from the scan's
  MDA file next to it (``<scan>.mda`` for ``<scan>_<detector>__<n>.h5``), the energy calibration from
  ``maps_fit_parameters_override.txt`` in the same folder when present (else the MDA's MCA calibration).
  Element maps are ROI sums over each Kα line (±1 FWHM, line energies from ``xraydb``).
* ``.mca`` (GSE/CARS multi-element MCA text, ``VERSION: 3.1``): one spectrum per element, calibration, ROIs.
* ``.xdi`` (XAS Data Interchange 1.x): an energy scan with its columns.

MAPS sidecar text files (``maps_fit_parameters_override.txt``, ``maps_standardinfo.txt``) are read by
:func:`read_maps_parameters` / :func:`read_maps_standardinfo`; importing one alone is refused with an explanation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .base import UnreadableFile, damaged, grid_dataset, jsonable, source_info, spot_dataset, to_um

#: Kα lines drawn as element channels when the file does not list its elements
DEFAULT_ELEMENTS = ("Si", "P", "S", "Cl", "Ar", "K", "Ca", "Ti", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn")


# ------------------------------------------------------------------------------------------------ sidecars
def read_maps_parameters(path: Path) -> dict[str, Any]:
    """``maps_fit_parameters_override.txt``: ``KEY: value`` lines (numbers parsed; lists split at commas)."""
    out: dict[str, Any] = {}
    for key, value in read_maps_parameters_like(path).items():
        try:
            out[key] = float(value) if isinstance(value, str) else value
        except ValueError:
            out[key] = value
    if "VERSION" not in out:
        raise UnreadableFile(f"file={path.name!r}: no 'VERSION:' line; not a MAPS fit-parameter file")
    return out


def read_maps_standardinfo(path: Path) -> dict[str, Any]:
    """``maps_standardinfo.txt``: the standard's file, elements and areal densities (µg/cm²)."""
    p = read_maps_parameters_like(path)
    if "FILENAME" not in p or "ELEMENTS_IN_STANDARD" not in p:
        raise UnreadableFile(f"file={path.name!r}: not a MAPS standard-info file (needs FILENAME and "
                             "ELEMENTS_IN_STANDARD)")
    elements = p["ELEMENTS_IN_STANDARD"]
    weights = p.get("WEIGHT", [])
    elements = elements if isinstance(elements, list) else [elements]
    weights = [float(w) for w in (weights if isinstance(weights, list) else [weights])]
    if len(weights) != len(elements):
        raise UnreadableFile(f"file={path.name!r}: {len(elements)} elements but {len(weights)} weights")
    return dict(filename=str(p["FILENAME"]), areal_density_ug_cm2=dict(zip(elements, weights)))


def read_maps_parameters_like(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open(path, "r", encoding="latin-1") as f:
        for line in f:
            m = re.match(r"^\s*([A-Z][A-Z0-9_\[\]]+):\s*(.*?)\s*$", line)
            if m:
                key, value = m.groups()
                parts = [v.strip() for v in value.split(",") if v.strip()]
                out[key] = parts if len(parts) > 1 else (parts[0] if parts else "")
    return out


def refuse_sidecar(path: Path) -> xr.Dataset:
    raise UnreadableFile(f"file={path.name!r} is a MAPS configuration file, not data: import the scan's .mda or "
                         "MAPS .h5 file next to it (this file is read with it)")


# ------------------------------------------------------------------------------------------------ lines
def kalpha_kev(element: str) -> float:
    """Kα1 energy (keV) of an element, from xraydb."""
    import xraydb

    lines = xraydb.xray_lines(element, "K")
    if "Ka1" not in lines:
        raise UnreadableFile(f"element {element!r} has no Kα line in xraydb")
    return lines["Ka1"].energy / 1000.0


def roi_maps(spectra: np.ndarray, energy: np.ndarray, elements, fwhm_kev) -> dict[str, np.ndarray]:
    """Counts in ±FWHM around each element's Kα (spectra on the last axis, energy in keV)."""
    out = {}
    for el in elements:
        try:
            e0 = kalpha_kev(el)
        except (UnreadableFile, ValueError):
            continue
        w = fwhm_kev(e0)
        sel = (energy >= e0 - w) & (energy <= e0 + w)
        if sel.any():
            out[el] = spectra[..., sel].sum(axis=-1)
    return out


# ------------------------------------------------------------------------------------------------ MDA
def _read_mda(path: Path):
    try:
        from mdaviz.synApps_mdalib import mda
    except ImportError as exc:
        raise UnreadableFile(f"file={path.name!r}: MDA files need the synApps mda module; install it with "
                             "pip install 'espt_bluesky[mda]'") from exc

    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise UnreadableFile(f"file={path.name!r} is too short to be an MDA file")
    try:
        d = mda.readMDA(str(path), verbose=0, showHelp=0)
    except Exception as exc:
        raise damaged(path, "an EPICS MDA scan", exc) from exc
    if not d or not isinstance(d, list) or not isinstance(d[0], dict) or "rank" not in d[0]:
        raise damaged(path, "an EPICS MDA scan", ValueError("the MDA reader returned no header"))
    version = float(d[0].get("version", 0))
    if not (1.0 <= version < 2.0):
        raise UnreadableFile(f"file={path.name!r}: MDA version {version} is unknown (expected 1.x)")
    return d


def _s(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def mda_positions(d) -> tuple[np.ndarray, np.ndarray, int, int, dict]:
    """(x µm (nx,), y µm (ny,), ny acquired, nx acquired, positioner info) of a 2-D (or higher) MDA scan."""
    outer, inner = d[1], d[2]
    if not outer.p or not inner.p:
        raise UnreadableFile("MDA scan without positioners: its points cannot be placed")
    py, px = outer.p[0], inner.p[0]
    ny = int(outer.curr_pt)
    yv = to_um(np.asarray(py.data, float)[:ny], _s(py.unit) or "mm", _s(py.name))
    xr_ = np.asarray(px.data, float)
    xv = xr_[0] if xr_.ndim == 2 else xr_
    # an unnamed fly-scan drive carries no units: EPICS sample motors at APS are in mm
    xv = to_um(xv, _s(px.unit) or "mm", _s(px.name))
    info = dict(y=dict(pv=_s(py.name), desc=_s(py.desc), unit=_s(py.unit) or "mm"),
                x=dict(pv=_s(px.name), desc=_s(px.desc), unit=_s(px.unit) or "mm (assumed: no unit recorded)"))
    nx = int(inner.curr_pt)
    return xv, yv, ny, nx, info


def _mca_calibration(header: dict) -> dict[str, float]:
    cal = {}
    for k, v in header.items():
        name = _s(k)
        for tag, key in ((".CALO", "offset"), (".CALS", "slope"), (".CALQ", "quad")):
            if name.endswith(tag) and "mca1" in name and key not in cal:
                cal[key] = float(np.ravel(v[2])[0])
    return cal


def read_mda(path: Path) -> xr.Dataset:
    """An MDA scan: 2-D maps as grids of every detector (and 3-D MCA spectra), 1-D scans as point lists."""
    d = _read_mda(path)
    header = d[0]
    rank = int(header["rank"])
    md = {"scan_number": header.get("scan_number"), "rank": rank, "dimensions": header.get("dimensions"),
          "version": header.get("version")}
    md["pvs"] = {_s(k): jsonable(v[2]) for k, v in header.items() if isinstance(v, tuple) and len(v) == 5
                 and not isinstance(v[2], bytes) and np.size(v[2]) == 1}
    cal = _mca_calibration(header)
    src = source_info(path, f"EPICS MDA scan (rank {rank})", "mdaviz.synApps_mdalib.mda", "mdaviz")
    if rank < 2:
        scan = d[1]
        n = int(scan.curr_pt)
        vars_ = {}
        for det in scan.d:
            vars_[_safe(_s(det.name))] = (("spot",), np.asarray(det.data, float)[:n],
                                          {"units": _s(det.unit) or "counts", "pv": _s(det.name)})
        coords = {}
        for p in scan.p:
            coords[_safe(_s(p.name))] = ("spot", np.asarray(p.data, float)[:n], {"units": _s(p.unit)})
        return spot_dataset(vars_, np.full(n, np.nan), np.full(n, np.nan), technique="XRF", instrument="aps_xrf",
                            source=src, instrument_metadata=md, coords=coords, position_known=False)
    xv, yv, ny, nx, pinfo = mda_positions(d)
    xv = xv[:nx]
    if ny < 1 or nx < 1:
        raise UnreadableFile(f"file={path.name!r}: the MDA scan recorded no points")
    vars_: dict[str, tuple] = {}
    inner = d[2]
    for det in inner.d:
        a = np.asarray(det.data, float)
        if a.ndim != 2:
            continue
        name = _safe(_s(det.desc) or _s(det.name)) or _safe(_s(det.name))
        name = name if name not in vars_ else _safe(_s(det.name))
        vars_[name] = (("y", "x"), a[:ny, :nx], {"units": _s(det.unit) or "counts", "pv": _s(det.name),
                                                 "description": _s(det.desc)})
    coords = {}
    if rank >= 3 and len(d) > 3 and d[3].d:
        nch = int(d[3].curr_pt)
        spectra = np.stack([np.asarray(det.data, float)[:ny, :nx, :nch] for det in d[3].d], axis=0)
        offset, slope, quad = cal.get("offset", 0.0), cal.get("slope", 0.01), cal.get("quad", 0.0)
        ch = np.arange(nch)
        energy = offset + slope * ch + quad * ch**2
        coords["energy"] = ("channel", energy, {"units": "keV"})
        vars_["spectrum"] = (("y", "x", "channel"), spectra.sum(axis=0),
                             {"units": "counts", "elements": int(spectra.shape[0])})
        for el, m in roi_maps(spectra.sum(axis=0), energy, DEFAULT_ELEMENTS, lambda e: 0.12).items():
            vars_[f"{el}_Ka"] = (("y", "x"), m, {"units": "counts", "roi": "Ka ± 120 eV"})
    md["positioners"] = pinfo
    md["mca_calibration"] = cal
    std = path.parent / "maps_standardinfo.txt"
    if std.exists():
        info = read_maps_standardinfo(std)
        if info["filename"] == path.name:  # this scan is the quantification standard described there
            md["standard"] = info
            src = source_info(path, f"EPICS MDA scan (rank {rank})", "mdaviz.synApps_mdalib.mda", "mdaviz",
                              extra_files=[std])
    return grid_dataset(vars_, xv, yv, technique="XRF", instrument="aps_xrf", source=src, instrument_metadata=md,
                        coords=coords)


# ------------------------------------------------------------------------------------------------ MAPS raw HDF5
def sniff_maps_h5(path: Path) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "MAPS_RAW" in f
    except Exception:
        return False


def _companion_mda(path: Path) -> Path | None:
    m = re.match(r"^(.+?)_[^_]+__\d+\.h5$", path.name)
    stem = m.group(1) if m else path.stem
    for cand in (path.with_name(stem + ".mda"), path.parent.parent / "mda" / (stem + ".mda")):
        if cand.exists():
            return cand
    return None


def read_maps_h5(path: Path) -> xr.Dataset:
    """MAPS raw per-pixel spectra with positions from the scan's MDA and element ROI maps."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "MAPS_RAW" not in f:
                raise UnreadableFile(f"file={path.name!r}: HDF5 without a MAPS_RAW group; not a MAPS raw file")
            g = f["MAPS_RAW"]
            names = sorted(k for k in g if re.fullmatch(r"data_[a-z]", k))
            if not names:
                raise UnreadableFile(f"file={path.name!r}: MAPS_RAW holds no data_a..data_d spectra")
            spectra = np.stack([np.asarray(g[k], float) for k in names], axis=0)  # (det, ch, y, x)
            extra = {k: np.asarray(g[k], float) for k in ("livetime", "realtime", "inputcounts", "ouputcounts",
                                                          "outputcounts") if k in g}
    except UnreadableFile:
        raise
    except Exception as exc:
        raise damaged(path, "a MAPS raw HDF5 file", exc) from exc
    ndet, nch, ny, nx = spectra.shape
    mda_path = _companion_mda(path)
    if mda_path is None:
        raise UnreadableFile(f"file={path.name!r}: MAPS raw spectra carry no positions and the scan's MDA file "
                             f"was not found next to it (looked for {path.name.split('_2xfm')[0]}.mda); copy it "
                             "beside the HDF5 file")
    d = _read_mda(mda_path)
    xv, yv, ny_m, nx_m, pinfo = mda_positions(d)
    if ny > yv.size or nx > xv.size:
        raise UnreadableFile(f"file={path.name!r}: {ny} x {nx} pixels but its MDA scan {mda_path.name} has only "
                             f"{yv.size} x {xv.size} positions")
    # fly scans record fewer pixels per line than the positioner array holds: the first nx are the acquired ones
    xv, yv = xv[:nx], yv[:ny]
    params_path = path.parent / "maps_fit_parameters_override.txt"
    companions = [mda_path]
    if params_path.exists():
        params = read_maps_parameters(params_path)
        companions.append(params_path)
        offset = float(params.get("CAL_OFFSET_[E_OFFSET]", 0.0))
        slope = float(params.get("CAL_SLOPE_[E_LINEAR]", 0.01))
        quad = float(params.get("CAL_QUAD_[E_QUADRATIC]", 0.0))
        fwhm0 = float(params.get("FWHM_OFFSET", 0.1))
        fano = float(params.get("FWHM_FANOPRIME", 0.0002))
        elements = params.get("ELEMENTS_TO_FIT") or list(DEFAULT_ELEMENTS)
        elements = elements if isinstance(elements, list) else [elements]
        cal_src = params_path.name
    else:
        cal = _mca_calibration(d[0])
        offset, slope, quad = cal.get("offset", 0.0), cal.get("slope", 0.01), cal.get("quad", 0.0)
        fwhm0, fano, elements, cal_src = 0.1, 0.0002, list(DEFAULT_ELEMENTS), f"{mda_path.name} MCA calibration"
        params = {}
    ch = np.arange(nch)
    energy = offset + slope * ch + quad * ch**2
    # MAPS: FWHM² = offset² + 2.35²·fano'·E (keV)
    fwhm = lambda e: float(np.sqrt(fwhm0**2 + 2.3548**2 * fano * e))  # noqa: E731
    total = spectra.sum(axis=0).transpose(1, 2, 0)  # (y, x, ch)
    vars_: dict[str, tuple] = {
        "spectrum": (("y", "x", "channel"), total, {"units": "counts", "detector_elements": ndet}),
        "spectrum_per_element": (("detector", "y", "x", "channel"), spectra.transpose(0, 2, 3, 1),
                                 {"units": "counts"}),
    }
    for k, v in extra.items():
        key = "outputcounts" if k == "ouputcounts" else k
        vars_[key] = (("detector", "y", "x"), v[:, :ny, :nx],
                      {"units": "s" if "time" in k else "counts"})
    for el, m in roi_maps(total, energy, elements, fwhm).items():
        vars_[el] = (("y", "x"), m, {"units": "counts", "roi": "Kα ± FWHM", "line_keV": kalpha_kev(el)})
    md = dict(energy_calibration=dict(offset=offset, slope=slope, quad=quad, source=cal_src),
              fwhm=dict(offset=fwhm0, fanoprime=fano), elements=elements, positioners=pinfo,
              mda_scan_number=d[0].get("scan_number"),
              fit_parameters={k: v for k, v in params.items() if not isinstance(v, list) or len(v) < 50})
    src = source_info(path, "MAPS raw HDF5 (MAPS_RAW)", "h5py", "h5py", extra_files=companions)
    return grid_dataset(vars_, xv, yv, technique="XRF", instrument="aps_xrf", source=src, instrument_metadata=md,
                        coords={"energy": ("channel", energy, {"units": "keV"}),
                                "detector": ("detector", np.arange(ndet), {"units": ""})})


# ------------------------------------------------------------------------------------------------ GSE MCA
def sniff_gse_mca(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"VERSION:"


def read_gse_mca(path: Path) -> xr.Dataset:
    """A GSE/CARS MCA file: one spectrum per detector element with calibration, live/real time and ROIs."""
    head: dict[str, list[str]] = {}
    rows: list[list[float]] = []
    try:
        with open(path, "r", encoding="latin-1") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise damaged(path, "a GSE MCA file", exc) from exc
    if not lines or not lines[0].startswith("VERSION:"):
        raise UnreadableFile(f"file={path.name!r}: no 'VERSION:' first line; not a GSE MCA file")
    version = lines[0].split(":", 1)[1].strip()
    if not version.startswith("3."):
        raise UnreadableFile(f"file={path.name!r}: GSE MCA version {version!r} is unknown (expected 3.x)")
    in_data = False
    for line in lines[1:]:
        if in_data:
            if line.strip():
                try:
                    rows.append([float(v) for v in line.split()])
                except ValueError as exc:
                    raise damaged(path, "a GSE MCA file", exc) from exc
        elif line.startswith("DATA:"):
            in_data = True
        elif ":" in line:
            k, v = line.split(":", 1)
            head[k.strip()] = v.split("&") if "LABEL" in k else v.split()
    n_el = int(head.get("ELEMENTS", ["1"])[0])
    n_ch = int(head.get("CHANNELS", ["0"])[0])
    if any(len(r) != n_el for r in rows):
        raise UnreadableFile(f"file={path.name!r}: DATA rows of unequal length ({n_el} elements expected; "
                             "truncated?)")
    data = np.asarray(rows, float).reshape(-1, n_el)
    if data.shape != (n_ch, n_el):
        raise UnreadableFile(f"file={path.name!r}: header says {n_ch} channels x {n_el} elements, the DATA block "
                             f"has {data.shape} (truncated?)")
    num = lambda k: np.asarray([float(v) for v in head.get(k, ["0"] * n_el)])  # noqa: E731
    offset, slope, quad = num("CAL_OFFSET"), num("CAL_SLOPE"), num("CAL_QUAD")
    ch = np.arange(n_ch)
    energy = offset[0] + slope[0] * ch + quad[0] * ch**2
    rois = {}
    for i in range(int(head.get("ROIS", ["0"])[0])):
        label = (head.get(f"ROI_{i}_LABEL") or ["?"])[0].strip()
        rois[label] = dict(left=[int(v) for v in head.get(f"ROI_{i}_LEFT", [])],
                           right=[int(v) for v in head.get(f"ROI_{i}_RIGHT", [])])
    md = dict(version=version, date=" ".join(head.get("DATE", [])), real_time=num("REAL_TIME").tolist(),
              live_time=num("LIVE_TIME").tolist(), calibration=dict(offset=offset.tolist(), slope=slope.tolist(),
                                                                      quad=quad.tolist()), rois=rois)
    src = source_info(path, "GSE MCA text", "espt_bluesky (GSE MCA 3.x layout)")
    spectra = data.T[None]  # (spot, element, channel)
    return spot_dataset({"spectrum_per_element": (("spot", "detector", "channel"), spectra, {"units": "counts"}),
                         "spectrum": (("spot", "channel"), spectra.sum(axis=1), {"units": "counts"}),
                         "live_time": (("spot", "detector"), num("LIVE_TIME")[None], {"units": "s"}),
                         "real_time": (("spot", "detector"), num("REAL_TIME")[None], {"units": "s"})},
                        [np.nan], [np.nan], technique="XRF", instrument="gse_mca", source=src,
                        instrument_metadata=md, position_known=False,
                        coords={"energy": ("channel", energy, {"units": "keV"})})


# ------------------------------------------------------------------------------------------------ XDI
def _xdi_version(first_line: str) -> str | None:
    m = re.match(r"^#\s*XDI/(\S+)", first_line)
    return m.group(1) if m else None


def sniff_xdi(path: Path) -> bool:
    with open(path, "rb") as f:
        return _xdi_version(f.readline().decode("latin-1")) is not None


def read_xdi(path: Path) -> xr.Dataset:
    """An XDI 1.x scan: every column along ``energy`` (one spot; XDI records no map position)."""
    with open(path, "r", encoding="latin-1") as f:
        lines = f.read().splitlines()
    version = _xdi_version(lines[0]) if lines else None
    if version is None:
        raise UnreadableFile(f"file={path.name!r}: no '#XDI/' first line; not an XDI file")
    if not version.startswith("1."):
        raise UnreadableFile(f"file={path.name!r}: XDI version {version!r} is unknown (expected 1.x)")
    fields: dict[str, str] = {}
    columns: dict[int, tuple[str, str]] = {}
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*([\w.]+):\s*(.*)$", line)
        if line.startswith("# ///") or line.startswith("#---"):
            continue
        if m:
            k, v = m.groups()
            fields[k] = v.strip()
            cm = re.match(r"Column\.(\d+)$", k)
            if cm:
                parts = v.split("||")[0].split()
                columns[int(cm.group(1))] = (parts[0], parts[1] if len(parts) > 1 else "")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise damaged(path, "an XDI file", exc) from exc
    if not columns or data.shape[1] < len(columns):
        raise UnreadableFile(f"file={path.name!r}: {len(columns)} columns declared, {data.shape[1]} found")
    names = [columns[i][0] for i in sorted(columns)]
    units = [columns[i][1] for i in sorted(columns)]
    e_idx = next((i for i, n in enumerate(names) if n.lower().startswith("energy")), 0)
    energy = data[:, e_idx]
    vars_ = {}
    for i, (n, u) in enumerate(zip(names, units)):
        if i == e_idx:
            continue
        vars_[_safe(n)] = (("spot", "point"), data[None, :, i], {"units": u or "counts"})
    src = source_info(path, f"XDI {version}", "numpy.loadtxt (XDI 1.x layout)", "numpy")
    return spot_dataset(vars_, [np.nan], [np.nan], technique="XAS", instrument="xdi", source=src,
                        instrument_metadata=fields, position_known=False,
                        coords={"energy": ("point", energy, {"units": units[e_idx] or "eV"})})
