"""Read SECM approach curves exported by instruments and fitting programs, for :func:`fit_approach_curve`.

:func:`read_approach_curve` picks the format by extension and content:

==============================  =======================================================================  ========
format                          content                                                                  reader
==============================  =======================================================================  ========
SECM-Fitter ``.xls``            no header; columns index, distance (µm), tip current (nA)                xlrd
SECM-Fitter processed ``.csv``  header ``L_data,iT_experimental,iT_simulated``: L = d/a and I_T          numpy
CH Instruments text export      free-text header, then ``Distance/um, Current/A`` and comma-separated    numpy
                                rows (units read from that line: m, mm, um, nm; A, mA, uA, nA, pA)
plain two-column text           distance, current (comma, semicolon, tab or blank separated); ``#``      numpy
                                comments and one optional header line
==============================  =======================================================================  ========

Units out: distance in µm and current in A, unless the file holds normalised data (``normalised=True``:
distance is L = d/a and current is I_T).  Nothing is dropped silently: rows that are not numbers raise
:class:`~espt_bluesky.errors.InvalidArgument` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument

_LENGTH = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0, "nm": 1e-3}
_CURRENT = {"a": 1.0, "ma": 1e-3, "ua": 1e-6, "µa": 1e-6, "μa": 1e-6, "na": 1e-9, "pa": 1e-12}


@dataclass
class ApproachCurve:
    """An approach curve read from a file.

    Attributes
    ----------
    distance : numpy.ndarray
        Probe–substrate distance as the file gives it (µm, or L = d/a when ``normalised``); the offset is the
        file's (SECM-Fitter and CHI give the piezo distance, whose zero need not be the contact).
    current : numpy.ndarray
        Tip current (A, or I_T when ``normalised``), sign as recorded.
    normalised : bool
    source : str
        Format that was read (``"secm-fitter-xls"``, ``"secm-fitter-csv"``, ``"chi"``, ``"two-column"``).
    metadata : dict
        Header fields the format carries (CHI header lines, SECM-Fitter's simulated column ...).
    """

    distance: np.ndarray
    current: np.ndarray
    normalised: bool
    source: str
    metadata: dict = field(default_factory=dict)

    def contact_points(self, rel_tol: float = 1e-9) -> int:
        """Number of points at the closest distances where the current no longer changes (the tip touched the
        substrate and the piezo went on): those are not approach data and are best left out of a free fit."""
        order = np.argsort(self.distance)
        c = self.current[order]
        scale = max(float(np.max(np.abs(c))), 1e-300)
        same = np.abs(c - c[0]) <= rel_tol * scale
        n = int(np.argmin(same)) if not same.all() else c.size
        return n if n > 1 else 0


def _numbers(rows: list[tuple[int, str]], sep: str | None, path: Path) -> np.ndarray:
    out = []
    for lineno, line in rows:
        parts = [p for p in (line.split(sep) if sep else line.split()) if p.strip() != ""]
        try:
            out.append([float(p) for p in parts[:2]])
        except ValueError:
            raise InvalidArgument(f"file={path.name!r} line {lineno}: {line.strip()!r} is not two numbers") from None
        if len(parts) < 2:
            raise InvalidArgument(f"file={path.name!r} line {lineno}: {line.strip()!r} has fewer than two columns")
    if len(out) < 2:
        raise InvalidArgument(f"file={path.name!r}: fewer than two data rows")
    return np.asarray(out, float)


def _sep(line: str) -> str | None:
    for s in (",", ";", "\t"):
        if s in line:
            return s
    return None


def _read_xls(path: Path) -> ApproachCurve:
    import xlrd

    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    rows = [sheet.row_values(i) for i in range(sheet.nrows)]
    data = []
    for i, r in enumerate(rows, start=1):
        try:
            data.append([float(v) for v in r[:3]])
        except (TypeError, ValueError):
            if data:  # a text cell inside the data: refuse rather than drop
                raise InvalidArgument(f"file={path.name!r} row {i}: {r[:3]!r} is not numeric") from None
    arr = np.asarray(data, float)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[0] < 2:
        raise InvalidArgument(f"file={path.name!r}: expected columns index, distance (µm), current (nA)")
    return ApproachCurve(arr[:, 1], arr[:, 2] * 1e-9, False, "secm-fitter-xls", {"columns": ["index", "um", "nA"]})


def _read_text(path: Path) -> ApproachCurve:
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.replace(" ", "").lower().startswith("l_data,it_experimental"):
        rows = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()][1:]
        arr = _numbers(rows, ",", path)
        sim = _numbers([(i, ln.split(",", 1)[1]) for i, ln in rows], ",", path)[:, 1] \
            if first.count(",") >= 2 else None
        return ApproachCurve(arr[:, 0], arr[:, 1], True, "secm-fitter-csv",
                             {"iT_simulated": sim} if sim is not None else {})
    # CH Instruments: a header of free text, then "Distance/<unit>, Current/<unit>" and the data
    for k, ln in enumerate(lines):
        m = re.match(r"\s*distance\s*/\s*([a-zµμ]+)\s*[,;\t]\s*current\s*/\s*([a-zµμ]+)", ln, re.I)
        if m:
            lu, cu = m.group(1).lower(), m.group(2).lower()
            if lu not in _LENGTH or cu not in _CURRENT:
                raise InvalidArgument(f"file={path.name!r}: units {m.group(1)!r}/{m.group(2)!r} not understood")
            rows = [(i + 1, x) for i, x in enumerate(lines[k + 1:], start=k + 1) if x.strip()]
            arr = _numbers(rows, _sep(rows[0][1]) if rows else None, path)
            header = {f"line{i}": x.strip() for i, x in enumerate(lines[:k]) if x.strip()}
            return ApproachCurve(arr[:, 0] * _LENGTH[lu], arr[:, 1] * _CURRENT[cu], False, "chi", header)
    # plain two columns: '#' comments, one optional header line
    rows = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if rows:
        try:
            float(re.split(r"[,;\t ]+", rows[0][1].strip())[0])
        except ValueError:
            rows = rows[1:]
    arr = _numbers(rows, _sep(rows[0][1]) if rows else None, path)
    return ApproachCurve(arr[:, 0], arr[:, 1], False, "two-column", {"units": "as in the file (µm, A assumed)"})


def read_approach_curve(path: str | Path) -> ApproachCurve:
    """Read an approach-curve export (see the module docstring for the formats).

    Examples
    --------
    >>> curve = read_approach_curve("approach_curve_dummy_data.xls")   # SECM-Fitter
    >>> fit = fit_approach_curve(curve.distance, curve.current, a=12.5, fix={"rg": 5.0})
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"file={str(path)!r} does not exist")
    if path.suffix.lower() == ".xls":
        return _read_xls(path)
    return _read_text(path)
