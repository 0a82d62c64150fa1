"""X-ray fluorescence of the virtual sample: expected MCA spectra, counting statistics and dead time.

Model (thin-sample approximation, no matrix absorption; say so when quantifying thick particles):

    counts of line L of element Z per second = Φ · (Ω/4π) · ε · ρA_Z · τ_Z(E0) · ω_K · p_L

with Φ the incident flux (photons/s), Ω/4π the detector's solid-angle fraction, ε its efficiency (1 here),
ρA_Z the areal density (g/cm²), τ_Z(E0) the photo-absorption cross section at the incident energy (cm²/g),
ω_K the K-shell fluorescence yield and p_L the line's share of the K emission (xraydb: Elam tables).
Each line is a Gaussian of FWHM² = FWHM0² + 2.3548²·F·E (keV; F the MAPS "fanoprime"), on an elastic +
Compton scatter peak and a flat background.  A paralyzable detector of dead time τ records an output rate
ICR·exp(−ICR·τ); the live time is the real time x OCR/ICR.  Areal densities at a beam position are the sample's
fields averaged over a Gaussian beam footprint (``footprint_fields``).
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=64)
def k_lines(element: str, incident_kev: float) -> tuple[tuple[float, float], ...]:
    """((line energy keV, photons per incident photon per g/cm²), ...) of an element's K lines at E0."""
    import xraydb

    e0 = incident_kev * 1000.0
    edge = xraydb.xray_edge(element, "K")
    if edge is None or edge.energy >= e0:
        return ()
    tau = float(xraydb.mu_elam(element, e0, kind="photo"))
    out = []
    lines = xraydb.xray_lines(element, "K")
    total = sum(l.intensity for l in lines.values()) or 1.0
    omega = float(xraydb.fluor_yield(element, "K", "Ka", e0)[0])
    for line in lines.values():
        out.append((line.energy / 1000.0, tau * omega * line.intensity / total))
    return tuple(out)


def fwhm_kev(energy_kev, fwhm0: float = 0.1, fano: float = 2.2e-4):
    """Detector resolution (keV) at ``energy_kev`` (silicon drift detector, MAPS parametrisation)."""
    return np.sqrt(fwhm0**2 + 2.3548**2 * fano * np.asarray(energy_kev, float))


def expected_spectrum(areal_density: Mapping[str, np.ndarray], energy: np.ndarray, *, incident_kev: float = 12.0,
                      flux: float = 1e9, solid_angle: float = 0.05, real_time: float = 0.1,
                      scatter: float = 2e-4, background: float = 2e-7, fwhm0: float = 0.1,
                      fano: float = 2.2e-4) -> np.ndarray:
    """Expected counts per channel (before dead time) for ``n`` positions: shape (n, n_channels).

    ``areal_density`` maps element -> µg/cm² at each position (arrays of length n); ``energy`` is the channel
    energy axis (keV).
    """
    energy = np.asarray(energy, float)
    n = len(next(iter(areal_density.values()))) if areal_density else 1
    photons = flux * real_time * solid_angle
    shapes = _line_shapes(energy.tobytes(), tuple(areal_density), float(incident_kev), float(fwhm0), float(fano))
    spec = np.zeros((n, energy.size))
    for el, rho in areal_density.items():
        rho = np.asarray(rho, float) * 1e-6  # g/cm²
        for yield_per_gcm2, shape in shapes[el]:
            spec += photons * yield_per_gcm2 * rho[:, None] * shape[None, :]
    for shape in shapes[None]:  # elastic and (broader) Compton
        spec += photons * scatter * shape
    spec += photons * background * (energy < incident_kev)
    return spec


@functools.lru_cache(maxsize=32)
def _line_shapes(energy_bytes: bytes, elements: tuple[str, ...], incident_kev: float, fwhm0: float,
                 fano: float) -> dict:
    """The unit line shapes of :func:`expected_spectrum` (counts per channel per unit line intensity): element ->
    ((photons per incident photon per g/cm², shape), ...) and ``None`` -> (elastic, Compton) scatter shapes.

    They depend only on the energy axis, the incident energy and the detector resolution, not on the position: a
    map of spectra evaluates the Gaussians once (they were ~90 % of a one-spot spectrum), with the same arithmetic.
    """
    energy = np.frombuffer(energy_bytes, float)
    de = float(np.median(np.diff(energy)))
    out: dict = {}
    for el in elements:
        lines = []
        for e_line, yield_per_gcm2 in k_lines(el, incident_kev):
            sig = fwhm_kev(e_line, fwhm0, fano) / 2.3548
            lines.append((yield_per_gcm2,
                          np.exp(-0.5 * ((energy - e_line) / sig) ** 2) * de / (sig * math.sqrt(2 * math.pi))))
        out[el] = tuple(lines)
    scatter = []
    for e_sc, w in ((incident_kev, 1.0), (incident_kev * 0.93, 2.0)):
        sig = w * fwhm_kev(e_sc, fwhm0, fano) / 2.3548
        scatter.append(np.exp(-0.5 * ((energy - e_sc) / sig) ** 2) * de / (sig * math.sqrt(2 * math.pi)))
    out[None] = tuple(scatter)
    for shapes in out.values():  # cached: nobody may change them
        for item in shapes:
            (item[1] if isinstance(item, tuple) else item).setflags(write=False)
    return out


def dead_time(counts: np.ndarray, real_time: float, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recorded counts, ICR /s, OCR /s) of a paralyzable detector with dead time ``tau`` (s) per event.

    Recorded spectra are the true ones scaled by OCR/ICR = exp(−ICR·τ) (the detector is live that fraction).
    """
    counts = np.atleast_2d(np.asarray(counts, float))
    icr = counts.sum(axis=1) / real_time
    frac = np.exp(-icr * tau)
    return counts * frac[:, None], icr, icr * frac


def footprint_fields(fields: Mapping[str, np.ndarray], pixel: float, fwhm: float) -> dict[str, np.ndarray]:
    """Fields averaged over a Gaussian beam of ``fwhm`` µm (grid pixel ``pixel`` µm)."""
    sigma = fwhm / 2.3548 / pixel
    return {k: (ndimage.gaussian_filter(v, sigma, mode="nearest") if sigma > 0.3 else v) for k, v in fields.items()}
