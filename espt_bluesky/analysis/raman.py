"""Raman band intensities and band ratios (D/G, carbonate/G, ...) from spectra, background removed.

Units: Raman shift in cm⁻¹, spectra in counts per pixel; integrated intensities in counts (the background-free
counts summed over the window's pixels).

Each spectrum's fluorescence background is removed with the improved modified polynomial fit (I-ModPoly: a
polynomial fitted iteratively to the lower envelope, Zhao et al., Appl. Spectrosc. 61, 1225 (2007), the usual choice
for fluorescence under Raman bands; ``pybaselines``), then each band's window is summed. A window cuts the
Lorentzian tails of its band (a band of FWHM Γ integrated over ±w keeps (2/π)·atan(2w/Γ) of its area), so ratios are
comparable between spectra analysed with the same windows; :func:`window_fraction` gives that fraction to convert to
full band areas. The default windows suit 532 nm excitation of graphitic carbon and a carbonate-rich SEI (D
1290–1410, G 1545–1620, 2D 2610–2790, carbonate 1070–1110 cm⁻¹).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidArgument

__all__ = ["DEFAULT_WINDOWS", "remove_background", "band_intensities", "band_ratio", "window_fraction",
           "shift_from_configuration"]

#: band -> (low, high) cm⁻¹
DEFAULT_WINDOWS: dict[str, tuple[float, float]] = {
    "D": (1290.0, 1410.0), "G": (1545.0, 1620.0), "2D": (2610.0, 2790.0), "carbonate": (1070.0, 1110.0),
    "CH": (2860.0, 3000.0),
}


def _spectra(shift, spectra) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    nu = np.asarray(shift, float)
    y = np.asarray(spectra, float)
    if nu.ndim != 1 or nu.size < 16:
        raise InvalidArgument(f"shift must be a 1-D axis of at least 16 pixels; got shape {nu.shape}")
    if y.shape[-1] != nu.size:
        raise InvalidArgument(f"spectra of shape {y.shape}: the last axis must match shift ({nu.size} pixels)")
    if not np.all(np.diff(nu) > 0):
        raise InvalidArgument("shift must increase along the pixels")
    return nu, y.reshape(-1, nu.size), y.shape[:-1]


def remove_background(shift, spectra, *, poly_order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(spectra − background, background): each spectrum's background by I-ModPoly of ``poly_order``
    (``pybaselines``).  A spectrum with a non-finite value is returned as NaN.
    """
    from pybaselines import Baseline

    nu, y, lead = _spectra(shift, spectra)
    fitter = Baseline(x_data=nu)
    base = np.full_like(y, np.nan)
    for n in range(y.shape[0]):
        if np.all(np.isfinite(y[n])):
            base[n] = fitter.imodpoly(y[n], poly_order=poly_order)[0]
    return (y - base).reshape(*lead, nu.size), base.reshape(*lead, nu.size)


def band_intensities(shift, spectra, windows: Optional[Mapping[str, Sequence[float]]] = None, *,
                     background: bool = True, poly_order: int = 3) -> dict[str, np.ndarray]:
    """Integrated intensity (counts) of each band window, per spectrum (leading dimensions kept).

    Parameters
    ----------
    shift : array_like
        Raman shift of each pixel, cm⁻¹, increasing.
    spectra : array_like
        (..., n_pixels) counts.
    windows : mapping, optional
        band -> (low, high) cm⁻¹; default :data:`DEFAULT_WINDOWS`.
    background : bool
        Remove the fluorescence background first (:func:`remove_background`).
    """
    nu, y, lead = _spectra(shift, spectra)
    windows = dict(DEFAULT_WINDOWS if windows is None else windows)
    if background:
        y = remove_background(nu, y, poly_order=poly_order)[0]
    out = {}
    for name, w in windows.items():
        lo, hi = (float(v) for v in w)
        if not (nu[0] <= lo < hi <= nu[-1]):
            raise InvalidArgument(f"windows[{name!r}]=({lo}, {hi}) cm⁻¹ must be increasing and within the "
                                  f"spectra's range {nu[0]:.0f}-{nu[-1]:.0f} cm⁻¹")
        sel = (nu >= lo) & (nu <= hi)
        out[name] = y[:, sel].sum(axis=1).reshape(lead)
    return out


def band_ratio(shift, spectra, numerator: str, denominator: str, *,
               windows: Optional[Mapping[str, Sequence[float]]] = None, poly_order: int = 3) -> np.ndarray:
    """Ratio of integrated band intensities (e.g. ``"D"``/``"G"``, ``"carbonate"``/``"G"``) per spectrum.

    NaN where the denominator is not positive (no such band under the laser).
    """
    windows = dict(DEFAULT_WINDOWS if windows is None else windows)
    for b in (numerator, denominator):
        if b not in windows:
            raise InvalidArgument(f"band {b!r} has no window; known: {sorted(windows)}")
    bands = band_intensities(shift, spectra, {k: windows[k] for k in (numerator, denominator)},
                             poly_order=poly_order)
    num, den = bands[numerator], bands[denominator]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def window_fraction(window: Sequence[float], centre: float, fwhm: float) -> float:
    """Fraction of a Lorentzian band's area (``centre``, ``fwhm`` cm⁻¹) inside ``window`` (low, high) cm⁻¹."""
    lo, hi = (float(v) for v in window)
    g = 0.5 * float(fwhm)
    return (math.atan((hi - centre) / g) - math.atan((lo - centre) / g)) / math.pi


def shift_from_configuration(configuration: Mapping, name: str = "raman") -> np.ndarray:
    """Raman shift axis (cm⁻¹) from a descriptor's ``configuration[name]`` (the spectrometer's calibration
    ``<name>_calibration_offset`` / ``_slope`` / ``_quad`` and ``<name>_n_pixels``), as recorded in every run."""
    from ..physics.raman import shift_axis

    data = configuration.get("data", configuration)
    try:
        return shift_axis(int(data[f"{name}_n_pixels"]), float(data[f"{name}_calibration_offset"]),
                          float(data[f"{name}_calibration_slope"]), float(data.get(f"{name}_calibration_quad", 0.0)))
    except KeyError as exc:
        raise InvalidArgument(f"configuration of {name!r} has no {exc.args[0]!r}: not a Raman spectrometer's "
                              "configuration") from None
