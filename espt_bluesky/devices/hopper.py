"""Device-side hopping: approach, measure and retract executed by the controller as one triggered action.

Fast SICM and SECCM controllers run the approach–measure–retract cycle in firmware.  :class:`SimHopController`
is the simulated one: ``set((x, y))`` loads the next hop position (returns at once), ``trigger()`` retracts to the
hop height, moves laterally, approaches in steps of ``approach_step`` until the criterion is met, optionally runs
the potentiostat's configured technique at the contact position, retracts by ``hop_height`` and reports.

Readings (µm): ``hopper_x``, ``hopper_y`` (lateral position of the hop), ``hopper_surface_z`` (the surface height
estimated by the hop, minus ``stop_offset``), ``hopper_surface_z_err`` (its standard error), ``hopper_contact_z``
(tip height where the approach stopped), ``hopper_reference_current`` (A, SICM: the far current I_sat, from the
readings at the top of the hop corrected for the gap there; SECCM: the current before landing), ``hopper_n_steps``, ``hopper_valid`` (1, or 0 for a hop that faulted) and
``hopper_fault`` (the reason: "" or "crash", "overload", "no_contact", "criterion_not_met"); when ``measure`` is on,
the potentiostat's own reading (currents and waveform keys) is merged into the hopper's.

Faults: a hop that crashes, overloads or travels ``max_travel`` without meeting its criterion retracts by
``hop_height`` (straight up, which cannot touch), sets ``valid`` to 0, the heights to NaN, the measurement to "not
measured" (NaN) and fails its status with the error, as a controller reports a fault; reading the hopper then
records the faulted hop, and the next ``trigger()`` hops again (``hopping_scan(on_fault="skip")`` does this).

Criteria (``criterion`` config signal):

=================  ===================================================================================
``current_drop``    SICM: the tip current falls below (1 − ``setpoint``)·I_sat (each reading the mean of
                    4 or more samples, enough for the curve to reach 4× the stop distance; I_sat from
                    the readings at the top; confirmed by the mean of 2 fresh readings, not the one that
                    fired).  The steps adapt to the current–distance curve as it comes in: coarse while
                    the current says the surface is far, ``approach_step`` as it starts to drop
                    (:func:`espt_bluesky.analysis.hop_height.sicm_next_step`, bounded by a fit of each
                    reading against the one at the top).  The height then comes from fresh samples at the
                    stop (as many as give a quarter-step precision, 16–4096, none selected by a decision), mapped
                    through the pipette's current–distance curve
                    (:func:`espt_bluesky.analysis.hop_height.sicm_hop_surface`): no half-step bias, no
                    selection bias, and an error bar from the noise (pooled over the hops).  Where the hops
                    around are steep, or ``max_slope`` says the sample may be (−1 = None, the default:
                    :func:`espt_bluesky.analysis.hop_height.auto_max_slope`), the stop distance grows to
                    slope·r_o + max(d_set/4, step) (neighbour slopes doubled) so that the glass rim stays
                    clear (:func:`espt_bluesky.analysis.hop_height.sicm_stop_distance`).
``contact``         SECCM: |substrate current| exceeds ``setpoint`` A (the meniscus touched) and 2 fresh
                    readings at the same height confirm it (no further descent: the meniscus is not driven
                    into the surface, a glitch does not end the approach); the landing is the midpoint of
                    the last two heights (error step/√12)
=================  ===================================================================================

``device_time`` accumulates the wall time (s) spent inside ``trigger()``: on hardware this is the controller's
time, on the bench the simulation's; benchmarks subtract it to get the software overhead per hop.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import (ApproachLimitReached, InvalidArgument, check_bool, check_choice, check_number, check_positive,
                      check_vector, fault_reason)
from ..analysis import hop_height
from ..physics import sicm
from ..physics.bench_model import BenchModel
from .sim_status import complete_status
from .signals import CURRENT_PRECISION, QuantitySignal

CRITERIA = ("current_drop", "contact")


class SimHopController(Device):
    """Simulated hopping controller coupled to a bench model, a stage and a potentiostat."""

    x = Cpt(QuantitySignal, value=0.0, kind="hinted", units="um")
    y = Cpt(QuantitySignal, value=0.0, kind="hinted", units="um")
    surface_z = Cpt(QuantitySignal, value=0.0, kind="hinted", units="um")
    contact_z = Cpt(QuantitySignal, value=0.0, kind="normal", units="um")
    surface_z_err = Cpt(QuantitySignal, value=0.0, kind="normal", units="um")
    reference_current = Cpt(QuantitySignal, value=0.0, kind="normal", units="A", precision=CURRENT_PRECISION)
    n_steps = Cpt(Signal, value=0, kind="normal")
    valid = Cpt(Signal, value=1, kind="normal")
    fault = Cpt(Signal, value="", kind="normal")
    criterion = Cpt(Signal, value="current_drop", kind="config")
    setpoint = Cpt(QuantitySignal, value=0.01, kind="config",  # a fraction (current_drop) or A (contact)
                   units=lambda sig: "A" if sig.parent.criterion.get() == "contact" else "1")
    hop_height = Cpt(QuantitySignal, value=2.0, kind="config", units="um")
    approach_step = Cpt(QuantitySignal, value=0.02, kind="config", units="um")
    max_travel = Cpt(QuantitySignal, value=20.0, kind="config", units="um")
    stop_offset = Cpt(QuantitySignal, value=0.0, kind="config", units="um")
    max_slope = Cpt(QuantitySignal, value=-1.0, kind="config", units="1")  # < 0: automatic (None)
    measure = Cpt(Signal, value=0, kind="config")

    def __init__(self, *args, stage=None, potentiostat=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.potentiostat = potentiostat
        self._model: BenchModel | None = None
        self._time_scale = 0.0
        self._target = (0.0, 0.0)
        self._last_contact: float | None = None
        self._last_surface: float | None = None
        self._history: list[tuple[float, float, float]] = []
        self._noise_ss = 0.0
        self._noise_dof = 0
        self.device_time = 0.0
        self.sample_count = 0  # current samples the controller has averaged (instrument time: × sample time)
        self._measured_time = 0.0
        for sig in (self.criterion, self.setpoint, self.hop_height, self.approach_step, self.max_travel,
                    self.stop_offset, self.max_slope, self.measure):
            sig.subscribe(self._forget_contact, run=False)

    HISTORY = 256  # hops remembered for the local slope

    def _forget_contact(self, **kwargs) -> None:
        self._last_contact = None
        self._last_surface = None
        self._history = []
        self._noise_ss = 0.0
        self._noise_dof = 0

    def attach(self, model: BenchModel, time_scale: float = 0.0) -> None:
        self._model = model
        self._time_scale = time_scale
        self._forget_contact()

    def configure_hop(self, *, criterion: str, setpoint: float, hop_height: float, approach_step: float,
                      max_travel: float, stop_offset: float = 0.0, max_slope: float | None = None,
                      measure: bool = False) -> None:
        """Load the hop programme (validated)."""
        for sig, v in self.hop_settings(criterion=criterion, setpoint=setpoint, hop_height=hop_height,
                                        approach_step=approach_step, max_travel=max_travel, stop_offset=stop_offset,
                                        max_slope=max_slope, measure=measure):
            sig.put(v)

    def hop_settings(self, *, criterion: str, setpoint: float, hop_height: float, approach_step: float,
                     max_travel: float, stop_offset: float = 0.0, max_slope: float | None = None,
                     measure: bool = False) -> list[tuple[Any, Any]]:
        """The ``(signal, value)`` writes of a hop programme, validated, without writing anything.

        Plans apply them as messages (``bps.mv``) so that ``summarize_plan`` changes nothing.  Writing any of
        them makes the controller forget the last contact height (a new programme starts from where the tip is).
        """
        criterion = check_choice("criterion", criterion, CRITERIA)
        if criterion == "current_drop":  # a fraction of the current at the top of the hop
            check_number("setpoint", setpoint, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        for name, v in (("setpoint", setpoint), ("hop_height", hop_height), ("approach_step", approach_step),
                        ("max_travel", max_travel)):
            check_positive(name, v)
        check_number("stop_offset", stop_offset, units="µm")
        # None: automatic, stored as -1 (hop_height.auto_max_slope, from the pipette and the measured noise)
        max_slope = -1.0 if max_slope is None else float(check_number("max_slope", max_slope, 0.0, 100.0))
        measure = check_bool("measure", measure)
        return [(self.criterion, criterion), (self.setpoint, float(setpoint)), (self.hop_height, float(hop_height)),
                (self.approach_step, float(approach_step)), (self.max_travel, float(max_travel)),
                (self.stop_offset, float(stop_offset)), (self.max_slope, float(max_slope)),
                (self.measure, int(bool(measure)))]

    def check_value(self, value) -> None:
        """Raise if the hop position (x, y) µm lies outside the stage's soft limits (``check_limits`` calls it)."""
        x, y = check_vector(f"{self.name} target (x, y)", value, 2, units="µm")
        if self.stage is not None:
            for ax, v in ((self.stage.x, x), (self.stage.y, y)):
                try:
                    ax.check_value(v)
                except InvalidArgument as exc:
                    raise type(exc)(f"{self.name} target (x, y)={tuple(value)!r}: {exc}") from None

    # ------------------------------------------------------------ bluesky protocol
    def set(self, value):
        """Load the lateral position (x, y) in µm of the next hop; nothing moves until ``trigger()``."""
        self.check_value(value)
        x, y = (float(v) for v in value)
        self._target = (x, y)
        st = DeviceStatus(self)
        st.set_finished()
        return st

    def describe(self):
        desc = super().describe()
        if self.measure.get() and self.potentiostat is not None:
            desc.update(self.potentiostat.describe())
        return desc

    def read(self):
        out = super().read()
        if self.measure.get() and self.potentiostat is not None:
            out.update(self.potentiostat.read())
        return out

    def collect_asset_docs(self):
        if self.measure.get() and self.potentiostat is not None and hasattr(self.potentiostat, "collect_asset_docs"):
            yield from self.potentiostat.collect_asset_docs()

    N_AVG = 4  # samples the controller averages per reading
    N_REF = 5  # readings at the top of the hop (the reference)
    N_CONFIRM = 2  # fresh readings that must confirm a crossing (the reading that fired is not among them)

    def _reading(self, i_true: float | None = None) -> float:
        m = self._model
        if self.criterion.get() == "current_drop":  # the controller averages N_AVG samples per reading
            i = m.sicm_current() if i_true is None else i_true
            return float(np.mean(m.add_noise(np.full(self.N_AVG, i))))
        return float(m.add_noise(m.contact_current(float(self.potentiostat.substrate.potential.get()))))

    def _vertical(self, z: float) -> None:
        """Move the tip straight down/up to ``z``: a crash stops it at contact."""
        m = self._model
        x, y, z0 = m.position
        if z < z0 and m.clearance(x, y, z) < 0:
            m.move_to(x, y, z)  # raises TipCrash at the contact point
        else:
            m.position = np.array([x, y, z])
            m.clock += abs(z - z0) / max(self.stage.z.velocity.get(), 1e-9) if self.stage is not None else 0.0

    def _pipette(self) -> tuple[float, float, float]:
        p = self._model.probe
        return p.radius, p.end_radius, p.half_angle

    def _stop_distance(self, x: float, y: float, setpoint: float, step: float, sigma1: float) -> float:
        """Axis gap to stop at (µm), :func:`espt_bluesky.analysis.hop_height.sicm_stop_distance`; ``max_slope``
        < 0 (None, the default) is :func:`~espt_bluesky.analysis.hop_height.auto_max_slope` of the pipette and
        the noise ``sigma1`` of one sample."""
        ri, ro, th = self._pipette()
        d_set = float(sicm.distance_for_current_drop(setpoint, ri, ro, th))
        s = float(self.max_slope.get())
        if not s >= 0.0:
            s = hop_height.auto_max_slope(th, ro, float(sicm.access_length(ri, ro, th)), d_set, step, sigma1)
        return hop_height.sicm_stop_distance(d_set, ro, s, self._history, x, y, step)

    def _approach_sicm(self, x: float, y: float, z_top: float, step: float, max_steps: int) -> dict:
        """Step down from ``z_top`` until the averaged ion current confirms the stop; heights from fresh readings.

        The steps adapt to the current–distance curve as it comes in
        (:func:`espt_bluesky.analysis.hop_height.sicm_next_step`): coarse while the current says the surface is
        far, down to ``step`` (``approach_step``) as it starts to drop.  Each reading integrates as many samples
        as let the curve see 4× the stop distance (:func:`~espt_bluesky.analysis.hop_height.
        sicm_reading_samples`, at least 4).  Returns the stop height, the number of steps, the surface estimate
        and its error and the far current.
        """
        m = self._model
        ri, ro, th = self._pipette()
        A = float(sicm.access_length(ri, ro, th))
        i_here = m.sicm_current()
        samples = np.asarray(self._noisy(i_here, self.N_REF * self.N_AVG), float)
        # the relative noise of one sample, pooled over the hops of this programme (a few samples per hop give
        # a noisy σ, and error bars computed from it would be too small on average); the controller then
        # averages as many samples (at the top and at the stop) as give the height to a quarter step: the gap's
        # sensitivity to the current, A/(1 − S)², grows fast above the setpoint
        if np.mean(samples):
            self._noise_ss += float(np.var(samples / np.mean(samples), ddof=1)) * (samples.size - 1)
            self._noise_dof += samples.size - 1
        sigma1 = math.sqrt(self._noise_ss / self._noise_dof) if self._noise_dof else 0.0
        d_stop = self._stop_distance(x, y, float(self.setpoint.get()), step, sigma1)
        s_stop = d_stop / (d_stop + A)  # I/I_sat at the stop
        n_avg = hop_height.samples_for_precision(sigma1, s_stop, A, 0.25 * step / math.sqrt(2.0))
        extra = max(n_avg - samples.size, 0)
        i_top = (float(np.sum(samples)) + float(np.sum(self._noisy(i_here, extra)))) / (samples.size + extra)
        gap_top = (z_top - self._last_surface) if self._last_surface is not None else math.inf
        i_sat = hop_height.sicm_far_current(i_top, gap_top, A)
        thr = abs(i_sat) * s_stop
        sigma = sigma1 / math.sqrt(n_avg)
        n_read = hop_height.sicm_reading_samples(sigma1, A, d_stop, low=self.N_AVG)
        # a reading's error as a ratio: its own noise and that of the reference, in quadrature
        sig_r = math.hypot(sigma1 / math.sqrt(n_read), sigma)
        travel = step * max_steps
        still = not any(m.options.drift)
        if still:  # the face heights hold during the hop: the current at any height from one look-up
            current_at = self._still_current(x, y, A)
            fx, fy = m._end_face_points(x, y)
            h_max = float(np.max(m.surface_z(fx, fy)))  # the face points of clearance()
            velocity = max(self.stage.z.velocity.get(), 1e-9) if self.stage is not None else math.inf
        z, n, s_last = z_top, 0, 1.0
        while True:
            dz = hop_height.sicm_next_step(s_last, sig_r, A, d_stop, step, travel, descended=z_top - z)
            if z_top - (z - dz) > travel + 1e-9:
                if z_top - z >= travel - 1e-9:
                    self._no_crossing(x, y)
                dz = travel - (z_top - z)  # the last bit of the travel
            z -= dz
            n += 1
            if still and z >= h_max:  # clear of the sample: the move cannot touch
                m.clock += abs(float(m.position[2]) - z) / velocity
                m.position = np.array([x, y, z])
            else:
                self._vertical(z)  # raises TipCrash where the face touches
            i_now = current_at(z) if still else m.sicm_current()
            r = float(np.mean(self._noisy(i_now, n_read)))
            s_last = abs(r / i_top)  # against the reading at the top: no assumption on the gap there
            # a crossing is confirmed by fresh readings at the same height (the one that fired is left out: it
            # was selected for being low), and the stop by the long average (the short readings can be unlucky)
            if abs(r) >= thr or abs(float(np.mean(self._noisy(i_now, self.N_CONFIRM * n_read)))) >= thr:
                continue
            i_stop = float(np.mean(self._noisy(i_now, n_avg)))
            if abs(i_stop) < thr * (1.0 + 3.0 * sigma):
                break
        surface, err, i_sat = hop_height.sicm_hop_surface(z, i_stop, i_top, z_top, A,
                                                          sigma_ratio=math.sqrt(2.0) * sigma)
        return dict(z=z, n=n, surface=surface, err=err, i_ref=i_sat)

    def _still_current(self, x: float, y: float, A: float):
        """The noise-free ion current at height z over (x, y) of a still sample, as ``BenchModel.sicm_current``
        computes it (the gap under the end face, sectors in parallel), without re-validating the pipette at every
        step."""
        m = self._model
        face = m.sicm_face(x, y)
        w = m._annulus()["w"]
        ri, _, th = self._pipette()
        i_sat = m.options.ion_bias / float(sicm.pipette_resistance(ri, th, m.options.conductivity))

        def current_at(z: float) -> float:
            d = float(sicm.effective_gap(z - face, w))
            return i_sat * d / (d + A)

        return current_at

    def _noisy(self, i_true: float, n: int) -> np.ndarray:
        """``n`` noisy samples of a steady current (and the count of samples the controller has taken)."""
        self.sample_count += int(n)
        return self._model.add_noise(np.full(int(n), float(i_true)))

    def _no_crossing(self, x: float, y: float):
        raise ApproachLimitReached(
            f"hop at x={x:.3f}, y={y:.3f} µm: criterion 'current_drop' not met within max_travel="
            f"{self.max_travel.get()} µm", reason="criterion_not_met")

    def _approach_contact(self, x: float, y: float, z_top: float, step: float, max_steps: int) -> dict:
        """SECCM: step down until the substrate current jumps; the landing lies between the last two heights."""
        setpoint = float(self.setpoint.get())
        ref = float(np.mean([self._reading() for _ in range(self.N_REF)]))
        z = z_top
        n = 0
        while True:
            if n >= max_steps:
                raise ApproachLimitReached(
                    f"hop at x={x:.3f}, y={y:.3f} µm: criterion 'contact' not met within max_travel="
                    f"{self.max_travel.get()} µm", reason="no_contact")
            z_prev = z
            z -= step
            n += 1
            self._vertical(z)
            # a jump is confirmed by fresh readings at the same height, without going further down: a glitch
            # (a spike on the line) does not end the approach, a real landing is not driven into the surface
            if abs(self._reading()) > setpoint and \
                    all(abs(self._reading()) > setpoint for _ in range(self.N_CONFIRM)):
                break
        landing, err = hop_height.contact_crossing(z_prev, z)
        return dict(z=z, n=n, surface=landing - float(self.stop_offset.get()), err=err, i_ref=ref)

    def _hop(self) -> None:
        m = self._model
        hop = float(self.hop_height.get())
        step = float(self.approach_step.get())
        crit = self.criterion.get()
        x, y = self._target
        z_now = float(m.position[2])
        z_top = max(z_now, (self._last_contact + hop) if self._last_contact is not None else z_now)
        self._vertical(z_top)
        m.move_to(x, y, z_top)
        max_steps = int(np.ceil(float(self.max_travel.get()) / step))
        if crit == "current_drop":
            res = self._approach_sicm(x, y, z_top, step, max_steps)
            res["surface"] -= float(self.stop_offset.get())
        else:
            res = self._approach_contact(x, y, z_top, step, max_steps)
        z = res["z"]
        self._last_contact = z
        self._last_surface = res["surface"]
        self._history.append((x, y, res["surface"]))
        del self._history[:-self.HISTORY]
        self.x.put(x)
        self.y.put(y)
        self.contact_z.put(z)
        self.surface_z.put(res["surface"])
        self.surface_z_err.put(res["err"])
        self.reference_current.put(res["i_ref"])
        self.n_steps.put(res["n"])
        self.valid.put(1)
        self.fault.put("")
        if self.measure.get():
            c0 = m.clock
            st = self.potentiostat.trigger()  # sleeps its own scaled instrument time
            st.wait()
            self._measured_time += m.clock - c0
        self._vertical(z + hop)

    def _fault(self, exc: BaseException) -> None:
        """After a fault: retract straight up by the hop height and record the hop as invalid."""
        m = self._model
        x, y, z = m.position
        z_top = z + float(self.hop_height.get())
        if self.stage is not None:
            z_top = min(z_top, self.stage.z.limits[1])
        self._vertical(max(z_top, z))
        self.x.put(self._target[0])
        self.y.put(self._target[1])
        for sig in (self.surface_z, self.contact_z, self.surface_z_err):
            sig.put(float("nan"))
        self.valid.put(0)
        self.fault.put(fault_reason(exc) or type(exc).__name__)
        if self.measure.get() and self.potentiostat is not None:
            self.potentiostat.mark_not_measured()

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        t0 = time.perf_counter()
        clock0 = self._model.clock
        self._measured_time = 0.0
        error = None
        try:
            self._hop()
        except Exception as exc:  # reported through the status, as a controller would
            error = exc
            try:
                self._fault(exc)
            except Exception as exc2:  # the retract itself failed: that is what the plan must hear about
                exc2.__cause__ = exc
                error = exc2
        finally:
            if self.stage is not None:
                for ax in (self.stage.x, self.stage.y, self.stage.z):
                    ax.sync()
        self.device_time += time.perf_counter() - t0
        # moves and approach steps take instrument time too (the measurement already waited for its own)
        motion_time = self._model.clock - clock0 - self._measured_time
        return complete_status(status, error, motion_time, self._time_scale)
