"""Device-side hopping: approach, measure and retract executed by the controller as one triggered action.

Fast SICM and SECCM controllers run the approach–measure–retract cycle in firmware.  :class:`SimHopController`
is the simulated one: ``set((x, y))`` loads the next hop position (returns at once), ``trigger()`` retracts to the
hop height, moves laterally, approaches in steps of ``approach_step`` until the criterion is met, optionally runs
the potentiostat's configured technique at the contact position, retracts by ``hop_height`` and reports.

Readings (µm): ``hopper_x``, ``hopper_y`` (lateral position of the hop), ``hopper_surface_z`` (contact height minus
``stop_offset``), ``hopper_contact_z`` (tip height where the criterion was met), ``hopper_reference_current`` (A,
the reading at the top of the hop), ``hopper_n_steps``, ``hopper_valid`` (1, or 0 for a hop that faulted) and
``hopper_fault`` (the reason: "" or "crash", "overload", "no_contact", "criterion_not_met"); when ``measure`` is on,
the potentiostat's own reading (currents and waveform keys) is merged into the hopper's.

Faults: a hop that crashes, overloads or travels ``max_travel`` without meeting its criterion retracts by
``hop_height`` (straight up, which cannot touch), sets ``valid`` to 0, the heights to NaN, the measurement to "not
measured" (NaN) and fails its status with the error, as a controller reports a fault; reading the hopper then
records the faulted hop, and the next ``trigger()`` hops again (``hopping_scan(on_fault="skip")`` does this).

Criteria (``criterion`` config signal):

=================  ===================================================================================
``current_drop``    SICM: the tip current falls below (1 − ``setpoint``)·I_top (each reading the mean of 4
                    samples; I_top the mean of 5 readings; confirmed by 2 more readings)
``contact``         SECCM: |substrate current| exceeds ``setpoint`` A (the meniscus touched)
=================  ===================================================================================

``device_time`` accumulates the wall time (s) spent inside ``trigger()``: on hardware this is the controller's
time, on the bench the simulation's; benchmarks subtract it to get the software overhead per hop.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from ..errors import (ApproachLimitReached, InvalidArgument, check_bool, check_choice, check_number, check_positive,
                      check_vector, fault_reason)
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
    measure = Cpt(Signal, value=0, kind="config")

    def __init__(self, *args, stage=None, potentiostat=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.potentiostat = potentiostat
        self._model: BenchModel | None = None
        self._time_scale = 0.0
        self._target = (0.0, 0.0)
        self._last_contact: float | None = None
        self.device_time = 0.0
        self._measured_time = 0.0
        for sig in (self.criterion, self.setpoint, self.hop_height, self.approach_step, self.max_travel,
                    self.stop_offset, self.measure):
            sig.subscribe(self._forget_contact, run=False)

    def _forget_contact(self, **kwargs) -> None:
        self._last_contact = None

    def attach(self, model: BenchModel, time_scale: float = 0.0) -> None:
        self._model = model
        self._time_scale = time_scale
        self._last_contact = None

    def configure_hop(self, *, criterion: str, setpoint: float, hop_height: float, approach_step: float,
                      max_travel: float, stop_offset: float = 0.0, measure: bool = False) -> None:
        """Load the hop programme (validated)."""
        for sig, v in self.hop_settings(criterion=criterion, setpoint=setpoint, hop_height=hop_height,
                                        approach_step=approach_step, max_travel=max_travel, stop_offset=stop_offset,
                                        measure=measure):
            sig.put(v)

    def hop_settings(self, *, criterion: str, setpoint: float, hop_height: float, approach_step: float,
                     max_travel: float, stop_offset: float = 0.0, measure: bool = False) -> list[tuple[Any, Any]]:
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
        measure = check_bool("measure", measure)
        return [(self.criterion, criterion), (self.setpoint, float(setpoint)), (self.hop_height, float(hop_height)),
                (self.approach_step, float(approach_step)), (self.max_travel, float(max_travel)),
                (self.stop_offset, float(stop_offset)), (self.measure, int(bool(measure)))]

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

    def _reading(self) -> float:
        m = self._model
        if self.criterion.get() == "current_drop":  # the controller averages 4 samples per step
            return float(np.mean(m.add_noise(np.full(4, m.sicm_current()))))
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

    def _hop(self) -> None:
        m = self._model
        hop = float(self.hop_height.get())
        step = float(self.approach_step.get())
        setpoint = float(self.setpoint.get())
        crit = self.criterion.get()
        x, y = self._target
        z_now = float(m.position[2])
        z_top = max(z_now, (self._last_contact + hop) if self._last_contact is not None else z_now)
        self._vertical(z_top)
        m.move_to(x, y, z_top)
        ref = float(np.mean([self._reading() for _ in range(5)]))
        z = z_top
        n = 0
        max_steps = int(np.ceil(float(self.max_travel.get()) / step))
        while True:
            if n >= max_steps:
                raise ApproachLimitReached(
                    f"hop at x={x:.3f}, y={y:.3f} µm: criterion {crit!r} not met within max_travel="
                    f"{self.max_travel.get()} µm", reason="no_contact" if crit == "contact" else "criterion_not_met")
            z -= step
            n += 1
            self._vertical(z)
            r = self._reading()
            if crit == "current_drop":
                met = abs(r) < (1 - setpoint) * abs(ref)
                if met:  # confirm against noise
                    met = abs(np.mean([r] + [self._reading() for _ in range(2)])) < (1 - setpoint) * abs(ref)
            else:
                met = abs(r) > setpoint
            if met:
                break
        self._last_contact = z
        self.x.put(x)
        self.y.put(y)
        self.contact_z.put(z)
        self.surface_z.put(z - float(self.stop_offset.get()))
        self.reference_current.put(ref)
        self.n_steps.put(n)
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
        for sig in (self.surface_z, self.contact_z):
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
