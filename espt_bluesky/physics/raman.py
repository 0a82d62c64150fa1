"""Raman spectra of the virtual sample: bands that follow its local state, a laser footprint, fluorescence, noise.

Units: Raman shift ν in cm⁻¹, positions µm, laser power mW, exposure s, counts per detector pixel.

Model.  The expected counts in a pixel of width Δν centred at ν are

    N(ν) = P·t·[ Σ_b A_b·L(ν; ν_b, Γ_b) + F·f(ν) ]·Δν  + dark

with P the laser power, t the exposure, A_b the integrated intensity of band b (counts·cm⁻¹ per mW·s) under the
laser spot, L a unit-area Lorentzian of centre ν_b and FWHM Γ_b (:data:`BANDS`), F·f(ν) a smooth fluorescence
background (``fluorescence_shape``).  The recorded spectrum is a Poisson draw of N plus Gaussian read noise per
accumulation, clipped at the CCD's full well (:func:`detect`).

What each band follows (per pixel of the sample grid, then averaged over the Gaussian laser spot,
:func:`footprint_average`):

* graphite G (1582 cm⁻¹), D (1350) and 2D (2700): G ∝ the graphitic carbon present; the D/G ratio of integrated
  intensities follows the crystallite size L_a by Tuinstra–Koenig with Cançado's wavelength dependence,
  I_D/I_G = 560/(E_L⁴·L_a) = 2.4e-10·λ⁴/L_a (λ, L_a in nm; Cançado et al., Appl. Phys. Lett. 88, 163106 (2006));
  I_2D/I_G falls with disorder (phenomenological: 0.8·L_a/(L_a + 20 nm)).  HOPG: L_a = 2 µm on the basal plane
  (D/G ≈ 0.01) and 40 nm on the edge-plane bands (D/G ≈ 0.5 at 532 nm); carbon black in a composite: 20 nm.
  Band positions are those at 532 nm; the dispersion of D and 2D with the laser energy and the D' shoulder are
  not modelled.
* SEI/CEI: the Li2CO3 carbonate ν1 stretch (1090 cm⁻¹) and the C–H stretch of alkyl carbonates (2930) grow in
  proportion to the SEI thickness the bench tracks (``sei_thickness_max``·θ, θ = 1 − exp(−q/Q_cap)), a film far
  thinner than the focal depth; its organic part also fluoresces (F grows with the thickness).
* layered oxide (NMC) particles: A1g (595) and Eg (480) bands; silicon: crystalline Si (520.5) that turns into
  the broad band of amorphous LixSi (480) with the lithiation state.

The intensities are of the right order for a confocal micro-Raman at a few mW (a G band of a few thousand counts
per pixel in a second); they are not a calibrated cross-section.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: band -> (centre cm⁻¹, FWHM cm⁻¹)
BANDS: dict[str, tuple[float, float]] = {
    "D": (1350.0, 40.0),
    "G": (1582.0, 18.0),
    "2D": (2700.0, 60.0),
    "carbonate": (1090.0, 12.0),
    "CH": (2930.0, 60.0),
    "NMC_A1g": (595.0, 60.0),
    "NMC_Eg": (480.0, 60.0),
    "Si": (520.5, 4.5),
    "aSi": (480.0, 70.0),
}

#: integrated intensity of the G band of a full graphite surface, counts·cm⁻¹ per mW·s
G_PER_MW_S = 1.0e4
#: carbonate and C–H bands per µm of SEI, counts·cm⁻¹ per mW·s
CARBONATE_PER_UM = 1.0e5
CH_PER_UM = 4.0e4
#: fluorescence per µm of SEI and of the bare surface, counts per cm⁻¹ per mW·s at the hump's maximum
FLUOR_PER_UM = 3000.0
FLUOR_BARE = 10.0
NMC_PER_MW_S = 3.0e3
SI_PER_MW_S = 1.2e4


def lorentzian(shift: np.ndarray, centre: float, fwhm: float) -> np.ndarray:
    """Unit-area Lorentzian (1/cm⁻¹) of ``centre`` and ``fwhm`` (cm⁻¹) at ``shift`` (cm⁻¹)."""
    g = 0.5 * fwhm
    return (g / math.pi) / ((np.asarray(shift, float) - centre) ** 2 + g * g)


def fluorescence_shape(shift: np.ndarray) -> np.ndarray:
    """Broad fluorescence hump (maximum 1 at 2200 cm⁻¹, 1/e half-width 2100 cm⁻¹): smooth over any band."""
    return np.exp(-(((np.asarray(shift, float) - 2200.0) / 2100.0) ** 2))


def shift_axis(n_pixels: int, offset: float, slope: float, quad: float = 0.0) -> np.ndarray:
    """Raman shift (cm⁻¹) of each detector pixel from its calibration ν = offset + slope·p + quad·p²."""
    p = np.arange(int(n_pixels), dtype=float)
    return offset + slope * p + quad * p * p


def d_over_g(la_nm, wavelength_nm: float = 532.0) -> np.ndarray:
    """I_D/I_G (integrated) for crystallite size ``la_nm`` (nm): Cançado 2006, 2.4e-10·λ⁴/L_a."""
    return 2.4e-10 * float(wavelength_nm) ** 4 / np.asarray(la_nm, float)


def two_d_over_g(la_nm) -> np.ndarray:
    """I_2D/I_G (integrated), phenomenological: 0.8·L_a/(L_a + 20 nm) (the 2D band fades with disorder)."""
    la = np.asarray(la_nm, float)
    return 0.8 * la / (la + 20.0)


def scatterer_fields(sample: Any) -> dict[str, np.ndarray]:
    """Static Raman fields of a preset sample over its grid.

    Returns ``graphite`` (fraction of the surface that is graphitic carbon, 0..1), ``la_nm`` (crystallite size,
    nm), ``nmc`` and ``si`` (fraction covered by a layered oxide / silicon, 0..1).
    """
    shape = sample.topography.shape
    zeros = np.zeros(shape)
    label = np.asarray(sample.label)
    if sample.name == "hopg":
        edge = label == 1
        return dict(graphite=np.ones(shape), la_nm=np.where(edge, 40.0, 2000.0), nmc=zeros, si=zeros)
    if sample.name == "composite_cathode":
        part = label > 0
        # carbon black everywhere in the matrix; a thin carbon coating (10 % of the signal) on the particles
        return dict(graphite=np.where(part, 0.1, 1.0), la_nm=np.full(shape, 20.0), nmc=part.astype(float),
                    si=zeros)
    if sample.name == "si_film":
        return dict(graphite=zeros, la_nm=np.full(shape, 20.0), nmc=zeros, si=(label == 1).astype(float))
    return dict(graphite=zeros, la_nm=np.full(shape, 20.0), nmc=zeros, si=zeros)  # patterned Au/SiO2


def footprint_average(field: np.ndarray, x0: float, y0: float, pixel: float, x, y, fwhm: float) -> np.ndarray:
    """Mean of ``field`` (on a grid with first pixel centre (x0, y0) µm, spacing ``pixel`` µm) over a Gaussian
    spot of ``fwhm`` µm centred at each (x, y) µm.  Outside the grid the nearest edge value is used."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    sigma = max(float(fwhm) / 2.3548, 1e-9)
    h = max(1, int(math.ceil(4.0 * sigma / pixel)))  # ±4σ: the truncated weight is below 1e-4
    off = np.arange(-h, h + 1)
    cx = np.rint((x - x0) / pixel).astype(int)
    cy = np.rint((y - y0) / pixel).astype(int)
    ix = np.clip(cx[:, None] + off[None, :], 0, field.shape[1] - 1)  # (n, w)
    iy = np.clip(cy[:, None] + off[None, :], 0, field.shape[0] - 1)
    # weights from the exact distance of each grid pixel to the spot centre
    dx = (x0 + (cx[:, None] + off[None, :]) * pixel) - x[:, None]
    dy = (y0 + (cy[:, None] + off[None, :]) * pixel) - y[:, None]
    w = np.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / sigma**2)  # (n, wy, wx)
    vals = field[iy[:, :, None], ix[:, None, :]]
    return (w * vals).sum(axis=(1, 2)) / w.sum(axis=(1, 2))


def band_intensities(local: Mapping[str, np.ndarray], wavelength_nm: float = 532.0) -> dict[str, np.ndarray]:
    """Integrated band intensities (counts·cm⁻¹ per mW·s) and fluorescence amplitude from spot-averaged state.

    ``local`` holds, per position: ``graphite_G`` (graphitic fraction), ``graphite_D`` (graphitic fraction x the
    local D/G: the spot average of a D band that sits on the edges), ``graphite_2D`` (likewise for 2D),
    ``sei_um`` (SEI thickness, µm), ``nmc``, ``si``, ``lithiation`` (0..1 of the silicon).
    """
    out = {
        "G": G_PER_MW_S * local["graphite_G"],
        "D": G_PER_MW_S * local["graphite_D"],
        "2D": G_PER_MW_S * local["graphite_2D"],
        "carbonate": CARBONATE_PER_UM * local["sei_um"],
        "CH": CH_PER_UM * local["sei_um"],
        "NMC_A1g": NMC_PER_MW_S * local["nmc"],
        "NMC_Eg": 0.5 * NMC_PER_MW_S * local["nmc"],
        "Si": SI_PER_MW_S * local["si"] * (1.0 - local["lithiation"]),
        "aSi": 0.4 * SI_PER_MW_S * local["si"] * local["lithiation"],
    }
    out["fluorescence"] = FLUOR_BARE + FLUOR_PER_UM * local["sei_um"]
    return out


def expected_spectrum(intensities: Mapping[str, np.ndarray], shift: np.ndarray, *, power_mw: float,
                      exposure_s: float, dark_counts: float = 2.0) -> np.ndarray:
    """Expected counts per pixel, shape (n, n_pixels), for band intensities from :func:`band_intensities`."""
    shift = np.asarray(shift, float)
    dnu = np.abs(np.gradient(shift))
    n = np.atleast_1d(next(iter(intensities.values()))).size
    spec = np.zeros((n, shift.size))
    for band, (centre, fwhm) in BANDS.items():
        a = np.atleast_1d(np.asarray(intensities.get(band, 0.0), float))
        spec += a[:, None] * lorentzian(shift, centre, fwhm)[None, :]
    fl = np.atleast_1d(np.asarray(intensities.get("fluorescence", 0.0), float))
    spec += fl[:, None] * fluorescence_shape(shift)[None, :]
    return power_mw * exposure_s * spec * dnu[None, :] + dark_counts


def detect(expected: np.ndarray, rng: np.random.Generator, *, read_noise: float = 4.0, accumulations: int = 1,
           full_well: float = 65535.0) -> tuple[np.ndarray, int]:
    """Recorded spectrum: ``accumulations`` CCD reads of ``expected`` each (shot noise + Gaussian read noise,
    counts), summed.  A pixel at the full well is clipped there, as the CCD does.

    Returns
    -------
    counts : ndarray (same shape as ``expected``)
    n_saturated : int
        Pixels clipped at the full well (summed over accumulations).
    """
    total = np.zeros(np.shape(expected))
    n_sat = 0
    for _ in range(max(1, int(accumulations))):
        read = rng.poisson(np.clip(expected, 0.0, None)) + rng.normal(0.0, read_noise, np.shape(expected))
        n_sat += int(np.count_nonzero(read >= full_well))
        total += np.clip(read, None, full_well)
    return total, n_sat
