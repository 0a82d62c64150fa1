"""Raman spectrometer: an area-detector-like ophyd device; the simulated one reads the bench's sample state.

Components follow what a beamline's EPICS Raman set-up exposes -- an areaDetector spectroscopy camera (ADAndor /
ADPICam ``cam``: ``acquire_time`` s, ``num_exposures`` accumulations, ``temperature_actual`` °C), the excitation
laser (``laser.wavelength`` nm, ``laser.power`` mW), the spectrograph's Raman-shift calibration
``calibration_offset`` / ``_slope`` / ``_quad`` (cm⁻¹ per pixel, like the MCA record's energy calibration),
``spectrum`` (counts per pixel, dimension ``raman_pixel``, the camera's binned image row), ``rois.roiN`` with
``label`` / ``lo_chan`` / ``hi_chan`` / ``count`` (band windows summed per event, as an ROI-stat plugin does) and
``saturated`` (pixels at the CCD's full well in the last acquisition).  A facility replaces
:class:`SimRamanSpectrometer` by its EPICS device with the same component names.

The spectrum goes to an external asset (HDF5, StreamResource/StreamDatum) when an ``asset_writer`` is set (use
:class:`~espt_bluesky.devices.waveform_assets.HDF5WaveformWriter` on the catalog's asset directory); otherwise it
is an array in the event.  ROI counts are scalars in every event.

The simulated spectrometer looks where the laser is focused: the bench's probe position (the microscope is
aligned on the SECCM pipette / SECM tip), through ``mount`` -- the 3x3 affine map from the stage to the sample
frame (identity on the bench).  The bands follow the sample's state at that moment (``physics.raman``): a
spectrum taken right after a hop's CV sees the SEI that CV grew.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import InvalidArgument, check_positive
from ..physics import raman as raman_physics
from ..physics.bench_model import BenchModel
from .sim_status import complete_status
from .waveform_assets import WritesWaveformAssets
from .xrf import N_ROIS, ROIs

PIXEL_DIM = "raman_pixel"

#: default band windows (cm⁻¹) given to the ROIs: graphite D, G, 2D, SEI carbonate and C–H, NMC A1g, Si
DEFAULT_ROIS: dict[str, tuple[float, float]] = {
    "D": (1290.0, 1410.0), "G": (1545.0, 1620.0), "2D": (2610.0, 2790.0), "carbonate": (1070.0, 1110.0),
    "CH": (2860.0, 3000.0), "NMC_A1g": (540.0, 650.0), "Si": (505.0, 535.0),
}


class RamanCam(Device):
    """The spectroscopy CCD's areaDetector cam (the fields a plan needs)."""

    acquire_time = Cpt(Signal, value=1.0, kind="config", metadata={"units": "s"})
    num_exposures = Cpt(Signal, value=1, kind="config")
    temperature_actual = Cpt(Signal, value=-70.0, kind="config", metadata={"units": "degC"})


class RamanLaser(Device):
    """Excitation laser."""

    wavelength = Cpt(Signal, value=532.0, kind="config", metadata={"units": "nm"})
    power = Cpt(Signal, value=5.0, kind="config", metadata={"units": "mW"})


class RamanSpectrometer(WritesWaveformAssets, Device):
    """Raman spectrometer: CCD cam, laser, Raman-shift calibration, spectrum and band ROIs."""

    cam = Cpt(RamanCam, "")
    laser = Cpt(RamanLaser, "")
    spectrum = Cpt(Signal, value=np.zeros(0), kind="normal")
    saturated = Cpt(Signal, value=0, kind="normal")
    calibration_offset = Cpt(Signal, value=150.0, kind="config", metadata={"units": "1/cm"})
    calibration_slope = Cpt(Signal, value=3.0, kind="config", metadata={"units": "1/cm"})
    calibration_quad = Cpt(Signal, value=0.0, kind="config", metadata={"units": "1/cm"})
    n_pixels = Cpt(Signal, value=1024, kind="config")
    rois = Cpt(ROIs, "")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_assets()

    # ------------------------------------------------------------- configuration
    def shift_axis(self) -> np.ndarray:
        """Raman shift (cm⁻¹) of each pixel from the calibration."""
        return raman_physics.shift_axis(int(self.n_pixels.get()), self.calibration_offset.get(),
                                        self.calibration_slope.get(), self.calibration_quad.get())

    def set_band_rois(self, windows: Mapping[str, tuple[float, float]] | None = None) -> None:
        """One ROI per band window ``name -> (low, high)`` cm⁻¹ (default :data:`DEFAULT_ROIS`); the rest cleared."""
        windows = dict(DEFAULT_ROIS if windows is None else windows)
        if len(windows) > N_ROIS:
            raise InvalidArgument(f"windows={list(windows)!r}: at most {N_ROIS} ROIs")
        nu = self.shift_axis()
        items = list(windows.items())
        for i in range(N_ROIS):
            roi = getattr(self.rois, f"roi{i}")
            if i < len(items):
                name, (lo, hi) = items[i]
                if not (nu.min() <= lo < hi <= nu.max()):
                    raise InvalidArgument(f"windows[{name!r}]=({lo}, {hi}) cm⁻¹ must be increasing and within "
                                          f"the spectrometer's range {nu.min():.0f}-{nu.max():.0f} cm⁻¹")
                roi.label.put(str(name))
                roi.lo_chan.put(int(np.searchsorted(nu, lo)))
                roi.hi_chan.put(int(np.searchsorted(nu, hi)) - 1)
            else:
                roi.label.put("")
                roi.lo_chan.put(0)
                roi.hi_chan.put(0)

    def roi_counts(self, spectrum: np.ndarray) -> dict[str, float]:
        out = {}
        for i in range(N_ROIS):
            roi = getattr(self.rois, f"roi{i}")
            lo, hi = int(roi.lo_chan.get()), int(roi.hi_chan.get())
            out[f"roi{i}"] = float(np.sum(spectrum[lo:hi + 1])) if hi > lo else 0.0
        return out

    # ------------------------------------------------------------- bluesky protocol
    def describe(self):
        desc = super().describe()
        key = self.spectrum.name
        desc[key] = dict(source=f"SIM:{key}", dtype="array", dtype_numpy="<f8",
                         shape=[int(self.n_pixels.get())], dims=[PIXEL_DIM], units="counts")
        for i in range(N_ROIS):
            c = getattr(self.rois, f"roi{i}").count.name
            if c in desc:
                desc[c].update(dtype_numpy="<f8", units="counts")
        if self.saturated.name in desc:
            desc[self.saturated.name].update(dtype_numpy="<i8", units="pixels")
        return self._describe_assets(desc)

    def _asset_keys(self) -> list[str]:
        return [self.spectrum.name]

    def read(self):
        return self._read_assets(super().read())

    def mark_not_measured(self) -> None:
        """Make the next ``read()`` say that nothing was measured (a point skipped after a fault): the spectrum
        (``n_pixels`` long, also written to the asset writer) and the ROI counts read NaN, so the event keeps the
        stream's keys and shapes instead of repeating the previous spot's spectrum."""
        self._publish(np.full(int(self.n_pixels.get()), np.nan), 0)
        self._note_acquisition()  # an acquisition that measured nothing: its NaN row is written like any other

    def _publish(self, spectrum: np.ndarray, n_saturated: int) -> None:
        self.spectrum.put(spectrum)
        for roi, v in self.roi_counts(spectrum).items():
            getattr(self.rois, roi).count.put(v)
        self.saturated.put(int(n_saturated))


class SimRamanSpectrometer(RamanSpectrometer):
    """Simulated Raman spectrometer over a :class:`~espt_bluesky.physics.bench_model.BenchModel`'s sample.

    Parameters (attributes): ``spot_fwhm`` (µm, Gaussian laser focus; ~0.5 λ/NA), ``read_noise`` (counts rms per
    read), ``dark_counts`` (counts per pixel per read), ``mount`` (3x3 stage->sample affine).
    """

    def __init__(self, *args, spot_fwhm: float = 1.0, read_noise: float = 4.0, dark_counts: float = 2.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        check_positive("spot_fwhm", spot_fwhm, units="µm")
        self.spot_fwhm = float(spot_fwhm)
        self.read_noise = float(read_noise)
        self.dark_counts = float(dark_counts)
        self.mount = np.eye(3)
        self._model: BenchModel | None = None
        self._time_scale = 0.0
        self._static: dict[str, np.ndarray] | None = None
        self.set_band_rois()

    def attach(self, model: BenchModel, time_scale: float = 0.0, mount: Any = None) -> None:
        """Couple to a bench model; ``mount`` (3x3, or an object with ``.matrix``) maps stage -> sample µm."""
        self._model = model
        self._time_scale = time_scale
        self._static = None
        if mount is not None:
            m = np.asarray(getattr(mount, "matrix", mount), float)
            if m.shape != (3, 3):
                raise InvalidArgument(f"mount of shape {m.shape} must be a 3x3 affine matrix")
            self.mount = m

    def laser_position(self) -> np.ndarray:
        """(x, y) µm on the sample where the laser is focused now."""
        x, y, _ = self._model.position
        xs, ys = self._model._sample_frame(x, y)
        return (self.mount @ np.array([float(xs), float(ys), 1.0]))[:2]

    def local_state(self) -> dict[str, float]:
        """The sample's state averaged over the laser spot at the present position (see ``physics.raman``)."""
        s = self._model.sample
        if self._static is None:
            f = raman_physics.scatterer_fields(s)
            lam = float(self.laser.wavelength.get())
            self._static = dict(graphite_G=f["graphite"],
                                graphite_D=f["graphite"] * raman_physics.d_over_g(f["la_nm"], lam),
                                graphite_2D=f["graphite"] * raman_physics.two_d_over_g(f["la_nm"]),
                                nmc=f["nmc"], si=f["si"], lam=lam)
        if self._static["lam"] != float(self.laser.wavelength.get()):
            self._static = None
            return self.local_state()
        x, y = self.laser_position()
        fields = {k: v for k, v in self._static.items() if k != "lam"}
        fields["sei_um"] = s.sei_thickness_max * s.sei_coverage()
        fields["lithiation"] = s.lithiation
        return {k: float(raman_physics.footprint_average(v, float(s.x[0]), float(s.y[0]), s.pixel_size, x, y,
                                                         self.spot_fwhm)[0])
                for k, v in fields.items()}

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        error = None
        exposure = float(self.cam.acquire_time.get())
        n_acc = int(self.cam.num_exposures.get())
        self._note_acquisition()
        try:
            if self._model is None:
                raise InvalidArgument(f"{self.name} is not attached to a bench: call .attach(bench.model)")
            bands = raman_physics.band_intensities({k: np.array([v]) for k, v in self.local_state().items()},
                                                   float(self.laser.wavelength.get()))
            expected = raman_physics.expected_spectrum(bands, self.shift_axis(), power_mw=self.laser.power.get(),
                                                       exposure_s=exposure, dark_counts=self.dark_counts)
            counts, n_sat = raman_physics.detect(expected[0], self._model.rng, read_noise=self.read_noise,
                                                 accumulations=n_acc)
            self._publish(counts, n_sat)
            self._model.clock += exposure * n_acc
        except Exception as exc:
            error = exc
        return complete_status(status, error, exposure * n_acc, self._time_scale)
