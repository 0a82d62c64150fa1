"""X-ray fluorescence detector: an EPICS-MCA-like ophyd device; the simulated one reads the bench's sample.

Components follow ophyd's ``EpicsMCARecord`` (the MCA record of a beamline's Vortex/Xspress3 channel):
``preset_real_time`` (s, config), ``elapsed_real_time`` / ``elapsed_live_time`` (s), ``spectrum`` (counts per
channel, dimension ``channel``), ``rois.roiN`` with ``label`` / ``count`` like ``ophyd.mca.ROI``, the energy
calibration ``calibration_offset`` / ``_slope`` / ``_quad`` (keV, the record's CALO/CALS/CALQ) and the count rates
``input_count_rate`` / ``output_count_rate`` (/s) and ``dead_time`` (fraction) of an Xspress3 channel.  A
facility replaces :class:`SimXRFDetector` by its EPICS device with the same component names.

The spectrum goes to an external asset (HDF5, StreamResource/StreamDatum) when an ``asset_writer`` is set (use
:class:`~espt_bluesky.devices.waveform_assets.HDF5WaveformWriter` on the catalog's asset directory); otherwise it
is an array in the event.  ROI counts are scalars in every event.

The simulated detector looks where the beam hits the sample: the bench's tip position (the beam is aligned on
the probe), through ``mount`` -- the 3x3 affine map from this instrument's stage frame to the sample frame (the
identity on the electrochemical bench; a rotated, scaled, shifted one for a sample remounted at a beamline).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import InvalidArgument, check_positive
from ..physics import xrf as xrf_physics
from ..physics.bench_model import BenchModel
from .sim_status import complete_status
from .waveform_assets import WritesWaveformAssets

N_ROIS = 8
CHANNEL_DIM = "channel"


class ROI(Device):
    """One region of interest of the MCA (as ``ophyd.mca.ROI``): label, low/high channel, counts."""

    label = Cpt(Signal, value="", kind="config")
    lo_chan = Cpt(Signal, value=0, kind="config")
    hi_chan = Cpt(Signal, value=0, kind="config")
    count = Cpt(Signal, value=0.0, kind="hinted", metadata={"units": "counts"})


class ROIs(Device):
    roi0 = Cpt(ROI, "")
    roi1 = Cpt(ROI, "")
    roi2 = Cpt(ROI, "")
    roi3 = Cpt(ROI, "")
    roi4 = Cpt(ROI, "")
    roi5 = Cpt(ROI, "")
    roi6 = Cpt(ROI, "")
    roi7 = Cpt(ROI, "")


class XRFDetector(WritesWaveformAssets, Device):
    """MCA-record-like XRF detector channel."""

    preset_real_time = Cpt(Signal, value=0.1, kind="config", metadata={"units": "s"})
    elapsed_real_time = Cpt(Signal, value=0.0, kind="normal", metadata={"units": "s"})
    elapsed_live_time = Cpt(Signal, value=0.0, kind="normal", metadata={"units": "s"})
    input_count_rate = Cpt(Signal, value=0.0, kind="normal", metadata={"units": "1/s"})
    output_count_rate = Cpt(Signal, value=0.0, kind="normal", metadata={"units": "1/s"})
    dead_time = Cpt(Signal, value=0.0, kind="normal", metadata={"units": ""})
    spectrum = Cpt(Signal, value=np.zeros(0), kind="normal")
    calibration_offset = Cpt(Signal, value=0.0, kind="config", metadata={"units": "keV"})
    calibration_slope = Cpt(Signal, value=0.01, kind="config", metadata={"units": "keV"})
    calibration_quad = Cpt(Signal, value=0.0, kind="config", metadata={"units": "keV"})
    incident_energy = Cpt(Signal, value=12.0, kind="config", metadata={"units": "keV"})
    n_channels = Cpt(Signal, value=2048, kind="config")
    rois = Cpt(ROIs, "")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_assets()

    # ------------------------------------------------------------- configuration
    def energy_axis(self) -> np.ndarray:
        """Channel energies (keV) from the calibration."""
        ch = np.arange(int(self.n_channels.get()))
        return self.calibration_offset.get() + self.calibration_slope.get() * ch + self.calibration_quad.get() * ch**2

    def set_element_rois(self, elements: Sequence[str], width_fwhm: float = 1.0) -> None:
        """One ROI per element around its Kα1 line (± ``width_fwhm`` x the resolution there)."""
        import xraydb

        if len(elements) > N_ROIS:
            raise InvalidArgument(f"elements={list(elements)!r}: at most {N_ROIS} ROIs")
        e = self.energy_axis()
        for i in range(N_ROIS):
            roi = getattr(self.rois, f"roi{i}")
            if i < len(elements):
                el = elements[i]
                lines = xraydb.xray_lines(el, "K")
                if "Ka1" not in lines:
                    raise InvalidArgument(f"elements: {el!r} has no Kα line")
                e0 = lines["Ka1"].energy / 1000.0
                w = width_fwhm * float(xrf_physics.fwhm_kev(e0))
                roi.label.put(f"{el} Ka")
                roi.lo_chan.put(int(np.searchsorted(e, e0 - w)))
                roi.hi_chan.put(int(np.searchsorted(e, e0 + w)))
            else:
                roi.label.put("")
                roi.lo_chan.put(0)
                roi.hi_chan.put(0)

    def roi_counts(self, spectrum: np.ndarray) -> dict[str, float]:
        out = {}
        for i in range(N_ROIS):
            roi = getattr(self.rois, f"roi{i}")
            lo, hi = int(roi.lo_chan.get()), int(roi.hi_chan.get())
            out[roi.count.name] = float(np.sum(spectrum[lo:hi + 1])) if hi > lo else 0.0
        return out

    # ------------------------------------------------------------- bluesky protocol
    def describe(self):
        desc = super().describe()
        key = self.spectrum.name
        desc[key] = dict(source=f"SIM:{key}", dtype="array", dtype_numpy="<f8",
                         shape=[int(self.n_channels.get())], dims=[CHANNEL_DIM], units="counts")
        for i in range(N_ROIS):
            c = getattr(self.rois, f"roi{i}").count.name
            if c in desc:
                desc[c].update(dtype_numpy="<f8", units="counts")
        return self._describe_assets(desc)

    def _asset_keys(self) -> list[str]:
        return [self.spectrum.name]

    def read(self):
        return self._read_assets(super().read())

    def mark_not_measured(self) -> None:
        """Make the next ``read()`` say that nothing was measured (a point skipped after a fault): spectrum (also
        written to the asset writer), ROI counts and rates read NaN instead of repeating the previous spot."""
        nan = float("nan")
        self._publish(np.full(int(self.n_channels.get()), nan), nan, nan, nan, nan)
        self._note_acquisition()  # an acquisition that measured nothing: its NaN row is written like any other

    def _publish(self, spectrum: np.ndarray, real: float, live: float, icr: float, ocr: float) -> None:
        self.spectrum.put(spectrum)
        for k, v in self.roi_counts(spectrum).items():
            getattr(self.rois, k.split("_rois_")[-1].split("_")[0]).count.put(v)
        self.elapsed_real_time.put(real)
        self.elapsed_live_time.put(live)
        self.input_count_rate.put(icr)
        self.output_count_rate.put(ocr)
        self.dead_time.put(1.0 - (ocr / icr if icr > 0 else 1.0) if np.isfinite(icr) else float("nan"))


class SimXRFDetector(XRFDetector):
    """Simulated XRF detector over a :class:`~espt_bluesky.physics.bench_model.BenchModel`'s sample.

    Parameters (attributes, set before staging): ``beam_fwhm`` (µm, Gaussian footprint), ``flux`` (photons/s),
    ``solid_angle`` (fraction of 4π), ``tau`` (s, paralyzable dead time per event), ``mount`` (3x3 stage->sample
    affine).
    """

    def __init__(self, *args, beam_fwhm: float = 1.0, flux: float = 5e7, solid_angle: float = 0.05,
                 tau: float = 5e-7, **kwargs):
        super().__init__(*args, **kwargs)
        check_positive("beam_fwhm", beam_fwhm, units="µm")
        self.beam_fwhm = float(beam_fwhm)
        self.flux = float(flux)
        self.solid_angle = float(solid_angle)
        self.tau = float(tau)
        self.mount = np.eye(3)
        self._model: BenchModel | None = None
        self._time_scale = 0.0
        self._fields: dict[str, np.ndarray] | None = None
        self._fields_key: Any = None

    def attach(self, model: BenchModel, time_scale: float = 0.0, mount: Any = None) -> None:
        """Couple to a bench model; ``mount`` (3x3, or an object with ``.matrix``) maps stage -> sample µm."""
        self._model = model
        self._time_scale = time_scale
        if mount is not None:
            m = np.asarray(getattr(mount, "matrix", mount), float)
            if m.shape != (3, 3):
                raise InvalidArgument(f"mount of shape {m.shape} must be a 3x3 affine matrix")
            self.mount = m
        elements = list(model.sample.composition)
        if elements:
            self.set_element_rois(elements[:N_ROIS])

    def beam_position(self) -> np.ndarray:
        """(x, y) µm on the sample where the beam hits now."""
        x, y, _ = self._model.position
        xs, ys = self._model._sample_frame(x, y)
        return (self.mount @ np.array([float(xs), float(ys), 1.0]))[:2]

    def areal_density(self) -> dict[str, float]:
        """Element -> µg/cm² under the beam footprint at the present position."""
        s = self._model.sample
        key = (self.beam_fwhm, id(s.composition))
        if self._fields is None or self._fields_key != key:
            self._fields = xrf_physics.footprint_fields(s.composition, s.pixel_size, self.beam_fwhm)
            self._fields_key = key
        x, y = self.beam_position()
        iy, ix = s._index(x, y)
        from scipy import ndimage

        return {el: float(ndimage.map_coordinates(f, [[iy], [ix]], order=1, mode="constant", cval=0.0)[0])
                for el, f in self._fields.items()}

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        error = None
        real = float(self.preset_real_time.get())
        self._note_acquisition()
        try:
            rho = {k: np.array([v]) for k, v in self.areal_density().items()}
            expected = xrf_physics.expected_spectrum(rho, self.energy_axis(), incident_kev=self.incident_energy.get(),
                                                     flux=self.flux, solid_angle=self.solid_angle, real_time=real)
            recorded_mean, icr, ocr = xrf_physics.dead_time(expected, real, self.tau)
            spectrum = self._model.rng.poisson(recorded_mean[0]).astype(float)
            self._publish(spectrum, real, real * float(ocr[0] / icr[0]) if icr[0] > 0 else real, float(icr[0]),
                          float(ocr[0]))
            self._model.clock += real
        except Exception as exc:
            error = exc
        return complete_status(status, error, real, self._time_scale)
