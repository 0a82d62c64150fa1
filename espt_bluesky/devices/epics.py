"""EPICS versions of the stage and the bipotentiostat (ophyd v1 over pyepics), and ``make_epics_bench``.

They expose the same components and methods as the simulated devices, so every plan runs on either:

* :class:`EpicsXYZStage` — axes ``x``, ``y``, ``z`` are :class:`EpicsStageAxis` (ophyd ``EpicsMotor`` on motor
  records ``{P}x``, ``{P}y``, ``{P}z``); readback keys ``stage_x``, ``stage_y``, ``stage_z`` (µm).  A move the IOC
  ends with a crash (``{P}CrashCount`` incremented) fails with :class:`~espt_bluesky.errors.TipCrash`.
* :class:`EpicsBipotentiostat` — a :class:`~espt_bluesky.devices.potentiostat.Bipotentiostat` whose signals are
  PVs under a prefix: ``tip.current``, ``tip.potential``, ``substrate.*``, ``technique``, ``working_channel``,
  ``cell_on``, ``params.*``, ``wf.*``; ``configure_technique``, ``open_circuit`` and ``compliance`` behave as on
  the simulated potentiostat.  ``trigger()`` writes ``Start`` without put-callback and waits for the monitored
  ``AcqCount`` to increment (the IOC increments it after every readback and waveform has been published).

Connection failures, disconnections during a move or an acquisition, and timeouts raise
:class:`PVConnectionError` / :class:`PVTimeoutError` naming the PV.  Every potentiostat signal is a
:class:`PVSignal`/:class:`PVSignalRO`: reading or writing a PV whose IOC is gone fails at once with
:class:`PVConnectionError` naming it (not after ophyd's connection timeout, not as ophyd's own error), and the
acquisition's status callbacks use only values already received, so a lost IOC ends an acquisition as soon as
Channel Access reports the disconnection, whatever the acquisition's length.  The PV list is
``docs/epics_pv_list.md``.

pyepics reads ``EPICS_CA_*`` when libca initialises (the first PV created in the process): set the environment
first (see :func:`espt_bluesky.ioc.launch.ca_environment`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.status import DeviceStatus
from ophyd.utils.errors import DisconnectedError

from ..errors import EsptError, InvalidArgument, Overload, TipCrash
from ..physics.bench_model import ProbeGeometry
from .potentiostat import (WAVEFORM_DIM, WAVEFORM_FIELDS, WAVEFORM_UNITS, Bipotentiostat, compliance_limits,
                           setpoint_limits)
from .probes import Probe, probe_from_geometry
from .signals import CURRENT_PRECISION, LimitViolation, QuantityEpicsSignal, QuantityEpicsSignalRO

logger = logging.getLogger(__name__)


class PVConnectionError(EsptError, ConnectionError):
    """A PV could not be connected, or its connection was lost (the message names the PV)."""


class PVTimeoutError(EsptError, TimeoutError):
    """An EPICS operation did not complete in time (the message names the PV)."""


class PotentiostatError(EsptError, RuntimeError):
    """The potentiostat IOC reported a failed acquisition (``Status`` not OK)."""


def _unconnected(device: Device) -> list[str]:
    """PV names of every signal of ``device`` that is not connected."""
    out = []
    for walk in device.walk_signals(include_lazy=True):
        sig = walk.item
        if not getattr(sig, "connected", True):
            out.append(getattr(sig, "pvname", sig.name))
    return out


def wait_connected(device: Device, timeout: float) -> None:
    """Wait for every PV of ``device``; raise :class:`PVConnectionError` listing those that did not connect."""
    try:
        device.wait_for_connection(timeout=timeout)
    except TimeoutError as exc:
        missing = _unconnected(device)
        raise PVConnectionError(f"{device.name}: could not connect within {timeout} s to "
                                f"{', '.join(missing) if missing else exc}") from exc


def _require(sig, what: str) -> None:
    if not sig.connected:
        raise PVConnectionError(f"{sig.pvname} is disconnected (its IOC does not answer): cannot {what}")


class _NamesLostPV:
    """``get``/``put``/``read``/``describe`` of a disconnected PV raise :class:`PVConnectionError` naming it, at
    once (ophyd would wait for its connection timeout, or raise its own ``DisconnectedError``)."""

    def read(self):
        _require(self, "read it")
        return super().read()

    def describe(self):
        _require(self, "describe it")
        return super().describe()

    def _named(self, what: str, call, *args, **kwargs):
        _require(self, what)
        try:
            return call(*args, **kwargs)
        except (TimeoutError, DisconnectedError) as exc:
            if self.connected:
                raise PVTimeoutError(f"{self.pvname}: {exc}") from exc
            raise PVConnectionError(f"{self.pvname} is disconnected (its IOC does not answer): {exc}") from exc

    def get(self, *args, **kwargs):
        return self._named("read it", super().get, *args, **kwargs)

    def put(self, *args, **kwargs):
        return self._named("write it", super().put, *args, **kwargs)


class PVSignal(_NamesLostPV, EpicsSignal):
    """An ``EpicsSignal`` whose lost connection is a :class:`PVConnectionError` naming the PV."""


class PVSignalRO(_NamesLostPV, EpicsSignalRO):
    """An ``EpicsSignalRO`` whose lost connection is a :class:`PVConnectionError` naming the PV."""


class QuantityPVSignal(_NamesLostPV, QuantityEpicsSignal):
    """A :class:`~espt_bluesky.devices.signals.QuantityEpicsSignal` (units, limits) that names a lost PV."""


class QuantityPVSignalRO(_NamesLostPV, QuantityEpicsSignalRO):
    """A read-only :class:`QuantityPVSignal`."""


class _Once:
    """Finish a status exactly once from whichever callback (value, disconnect, timer) comes first."""

    def __init__(self, status: DeviceStatus):
        self.status = status
        self.lock = threading.Lock()
        self.cleanups: list = []

    def __call__(self, exc: BaseException | None = None) -> None:
        with self.lock:
            if self.status.done:
                return
            for c in self.cleanups:
                try:
                    c()
                except Exception:  # pragma: no cover - cleanup must not mask the result
                    pass
            if exc is None:
                self.status.set_finished()
            else:
                self.status.set_exception(exc)


# ----------------------------------------------------------------------------------------------- stage
class EpicsStageAxis(EpicsMotor):
    """One stage axis: an ``EpicsMotor`` (µm) whose failed moves say why.

    A move ends with :class:`TipCrash` (message from ``{stage}CrashMessage``) when the IOC counted a crash
    during it, with :class:`PVConnectionError` naming ``.DMOV`` if the IOC is lost while moving, and otherwise with
    ophyd's own failure (soft limit, alarm).
    """

    def set(self, value: float, **kwargs) -> DeviceStatus:
        stage = self.parent
        crash_sig = getattr(stage, "crash_count", None)
        n0 = crash_sig.get() if crash_sig is not None and crash_sig.connected else None
        dmov = self.motor_done_move
        _require(self.user_setpoint, f"move {self.name}")
        outer = DeviceStatus(self)
        finish = _Once(outer)

        def on_meta(*, connected: bool = True, **kw):
            if not connected:
                finish(PVConnectionError(f"lost the connection to {dmov.pvname} while {self.name} was moving "
                                         f"to {value!r} um"))

        cid = dmov.subscribe(on_meta, event_type="meta", run=False)
        finish.cleanups.append(lambda: dmov.unsubscribe(cid))
        try:
            self.check_value(value)
            inner = EpicsMotor.move(self, value, wait=False, **kwargs)
        except Exception:
            finish.cleanups.clear()
            dmov.unsubscribe(cid)
            raise

        def on_done(st):
            if st.success:
                finish()
                return
            exc = st.exception()
            if n0 is not None:
                try:
                    n = crash_sig.get(use_monitor=False)
                    if n > n0:
                        exc = TipCrash(str(stage.crash_message.get(use_monitor=False)) or
                                       f"{self.name}: tip crash reported by {crash_sig.pvname}")
                except Exception:  # the stage IOC is gone: keep the original failure
                    pass
            if not dmov.connected:
                exc = PVConnectionError(f"lost the connection to {dmov.pvname} while {self.name} was moving")
            finish(exc if exc is not None else RuntimeError(f"{self.name}: move to {value!r} um failed"))

        inner.add_callback(on_done)
        return outer

    def describe(self) -> dict[str, dict]:
        """As ``EpicsMotor``'s, with the record's engineering units (``.EGU``) on keys whose PV carries none."""
        desc = super().describe()
        egu = self.motor_egu.get() if self.motor_egu.connected else ""
        for entry in desc.values():
            if not entry.get("units") and egu:
                entry["units"] = egu
        return desc

    def check_value(self, value: float) -> None:
        """Raise :class:`~espt_bluesky.devices.signals.LimitViolation` (an ophyd ``LimitError``) outside the motor
        record's soft limits (none when both are 0, as for ``EpicsMotor``); nothing moves."""
        low, high = self.limits
        if low < high and not (low <= value <= high):
            raise LimitViolation(f"{self.name}={value!r} {self.egu} is outside its soft limits [{low:g}, {high:g}] "
                                 f"{self.egu}; nothing moved")

    def _done_moving(self, success: bool = True, timestamp: float | None = None, value: Any = None,
                     **kwargs) -> None:
        """End of motion: run the one-shot "move done" callbacks, taking them out *before* running them.

        ophyd's version runs them and then clears every such subscription.  With an IOC that answers within a
        millisecond, the RunEngine (woken by the first callback) has often already started the next move and
        subscribed its status in between, and that clearing drops it: the next move never finishes.
        """
        if success:
            self._run_subs(sub_type=self.SUB_DONE, timestamp=timestamp, value=value)
        sub_type = self._SUB_REQ_DONE
        cids = [cid for cid, ev in list(self._cid_to_event_mapping.items()) if ev == sub_type]
        callbacks = [self._callbacks[sub_type].get(cid) for cid in cids]
        for cid in cids:
            self.unsubscribe(cid)
        kw = dict(success=success, timestamp=timestamp if timestamp is not None else time.time(),
                  sub_type=sub_type, obj=self)
        for cb in callbacks:
            if cb is None:
                continue
            try:
                cb(**kw)
            except Exception:  # as ophyd's subscription wrapper: a callback must not break the monitor thread
                logger.exception("%s: move-done callback failed", self.name)

    def move(self, position: float, wait: bool = True, timeout: float | None = None, **kwargs) -> DeviceStatus:
        """Move (interactive use); blocks until done when ``wait``."""
        st = self.set(position)
        if wait:
            st.wait(timeout)
        return st


class EpicsXYZStageBase(Device):
    """Three motor records ``{P}x``, ``{P}y``, ``{P}z`` (µm); ``z`` positive away from the sample."""

    x = Cpt(EpicsStageAxis, "x")
    y = Cpt(EpicsStageAxis, "y")
    z = Cpt(EpicsStageAxis, "z")


class EpicsXYZStage(EpicsXYZStageBase):
    """The stage of the bench IOC: motor records plus its crash counter and message."""

    crash_count = Cpt(EpicsSignalRO, "CrashCount", kind="omitted", auto_monitor=True)
    crash_message = Cpt(EpicsSignalRO, "CrashMessage", kind="omitted", string=True, auto_monitor=True)


# ---------------------------------------------------------------------------------------- potentiostat
def _pv(cls, suffix: str, kind: str = "config", **kw) -> Cpt:
    return Cpt(cls, suffix, kind=kind, auto_monitor=True, **kw)


def _volts(suffix: str) -> Cpt:
    """A potential PV (V) checked against the potentiostat's compliance before it is written."""
    return _pv(QuantityPVSignal, suffix, units="V", precision=4, limits=compliance_limits,
               limits_name="potentiostat compliance")


class EpicsPotentiostatChannel(Device):
    """One working electrode: ``Potential`` (V), ``Current`` (A, read only), ``CurrentRange`` (A)."""

    potential = _volts("Potential")
    current = _pv(QuantityPVSignalRO, "Current", kind="hinted", units="A", precision=CURRENT_PRECISION)
    current_range = _pv(QuantityPVSignal, "CurrentRange", units="A", precision=CURRENT_PRECISION)


class EpicsTechniqueParameters(Device):
    """Technique parameters (V, V/s, s, A) under ``{P}Par:``."""

    e_start = _volts("EStart")
    e_vertex1 = _volts("EVertex1")
    e_vertex2 = _volts("EVertex2")
    e_end = _volts("EEnd")
    e_hold = _volts("EHold")
    scan_rate = _pv(QuantityPVSignal, "ScanRate", units="V/s")
    n_cycles = _pv(PVSignal, "NCycles")
    duration = _pv(QuantityPVSignal, "Duration", units="s")
    current_setpoint = _pv(QuantityPVSignal, "CurrentSetpoint", units="A", precision=CURRENT_PRECISION,
                           limits=setpoint_limits, limits_name="working channel's current range")
    n_samples = _pv(PVSignal, "NSamples")
    integration_time = _pv(QuantityPVSignal, "IntegrationTime", units="s")


class EpicsWaveformSignals(Device):
    """The last acquired waveform under ``{P}Wf:`` (s, V, A, A)."""

    time = _pv(PVSignalRO, "Time", kind="normal")
    potential = _pv(PVSignalRO, "Potential", kind="normal")
    current = _pv(PVSignalRO, "Current", kind="normal")
    collector_current = _pv(PVSignalRO, "CollectorCurrent", kind="normal")
    max_elements = _pv(PVSignalRO, "MaxElements", kind="omitted")


class EpicsBipotentiostat(Bipotentiostat):
    """Two-channel potentiostat over Channel Access (same components and methods as the simulated one).

    Parameters
    ----------
    prefix : str
        PV prefix, e.g. ``"ESPT:pstat:"``.
    name : str
        Ophyd name; readings are ``{name}_tip_current`` ...
    probe : Probe, optional
        The mounted probe (its geometry lands in every descriptor's configuration).
    trigger_timeout : float
        Seconds to wait for ``AcqCount`` beyond the technique's own duration × the IOC's ``TimeScale``.
    """

    tip = Cpt(EpicsPotentiostatChannel, "Tip:")
    substrate = Cpt(EpicsPotentiostatChannel, "Sub:")
    technique = _pv(PVSignal, "Technique", string=True)
    working_channel = _pv(PVSignal, "WorkingChannel", string=True)
    cell_on = _pv(PVSignal, "CellOn")
    params = Cpt(EpicsTechniqueParameters, "Par:")
    wf = Cpt(EpicsWaveformSignals, "Wf:")
    # acquisition control (not read into events)
    start = _pv(PVSignal, "Start", kind="omitted")
    abort = _pv(PVSignal, "Abort", kind="omitted")
    busy = _pv(PVSignalRO, "Busy", kind="omitted")
    acq_count = _pv(PVSignalRO, "AcqCount", kind="omitted")
    status_code = _pv(PVSignalRO, "Status", kind="omitted", string=True)
    status_message = _pv(PVSignalRO, "StatusMessage", kind="omitted", string=True)
    compliance_low = _pv(PVSignalRO, "ComplianceLow", kind="omitted")
    compliance_high = _pv(PVSignalRO, "ComplianceHigh", kind="omitted")
    time_scale = _pv(PVSignalRO, "TimeScale", kind="omitted")

    def __init__(self, prefix: str = "", *, name: str, probe: Probe | None = None, trigger_timeout: float = 10.0,
                 **kwargs):
        super().__init__(prefix, name=name, probe=probe, **kwargs)
        self.trigger_timeout = float(trigger_timeout)
        # ``online`` follows the Channel Access connection of the acquisition counter (a suspender watches it)
        self.acq_count.subscribe(self._on_connection, event_type="meta", run=True)

    def _on_connection(self, *, connected: bool = False, **kwargs) -> None:
        if int(bool(connected)) != self.online.get():
            self.online.put(int(bool(connected)))

    # ------------------------------------------------------------------ configuration
    @property
    def compliance(self) -> tuple[float, float]:  # type: ignore[override]
        """Potentials (V) the instrument can apply, from ``ComplianceLow``/``ComplianceHigh``."""
        return (float(self.compliance_low.get()), float(self.compliance_high.get()))

    def technique_settings(self, technique: str, channel: str = "substrate", **params: Any) -> list[tuple[Any, Any]]:
        """As :meth:`Bipotentiostat.technique_settings`; also refuses ``n_samples`` above the IOC's waveform
        length (``Wf:MaxElements``)."""
        n = params.get("n_samples")
        if n is not None:
            nmax = int(self.wf.max_elements.get())
            if isinstance(n, (int, np.integer)) and n > nmax:
                raise InvalidArgument(f"n_samples={n!r} exceeds the waveform length of "
                                      f"{self.wf.max_elements.pvname} ({nmax})")
        return super().technique_settings(technique, channel, **params)

    def configure_technique(self, technique: str, channel: str = "substrate", **params: Any) -> None:
        """Validate and set technique, channel and parameters (see :meth:`Bipotentiostat.configure_technique`)."""
        # put with completion (about 1 ms each on loopback): the IOC has applied every value before a Start
        changed = self.technique_settings(technique, channel, **params)
        for sig, v in changed:
            _require(sig, f"configure {self.name}")
            sig.put(v, wait=True, timeout=self.trigger_timeout)
        # the put completes before its monitor update arrives: wait for it, describe()/read() use monitored values
        deadline = time.monotonic() + 2.0
        for sig, v in changed:
            while sig.get() != v:
                if time.monotonic() > deadline:
                    raise PVTimeoutError(f"{sig.pvname} did not report {v!r} after it was written "
                                         f"(it reads {sig.get()!r})")
                time.sleep(0.0005)

    def open_circuit_settings(self) -> list[tuple[Any, Any]]:
        """As :meth:`Bipotentiostat.open_circuit_settings`; none (and an error logged) if the IOC is unreachable."""
        if not self.cell_on.connected:
            logger.error("%s: could not open the cell: %s is disconnected", self.name, self.cell_on.pvname)
            return []
        return super().open_circuit_settings()

    def open_circuit(self) -> None:
        """Open the cell (``CellOn`` = 0, technique READ).  If the IOC is unreachable, log an error, do not raise.

        Called from every plan's cleanup: raising here would hide the error that ended the run.
        """
        try:
            _require(self.cell_on, "put the cell at open circuit")
            super().open_circuit()
        except Exception as exc:
            logger.error("%s: could not open the cell: %s", self.name, exc)

    def stop(self, *, success: bool = False) -> None:
        """Abort a running acquisition (``Abort`` = 1); called by the RunEngine on stop/abort/halt."""
        try:
            if self.abort.connected and int(self.busy.get()):
                self.abort.put(1)
        except Exception as exc:  # must not mask the reason the run is stopping
            logger.error("%s: could not abort the acquisition: %s", self.name, exc)

    # ------------------------------------------------------------------ bluesky protocol
    def describe(self) -> dict[str, dict]:
        desc = super().describe()
        for f in WAVEFORM_FIELDS:
            sig = getattr(self.wf, f)
            if sig.name in desc:
                desc[sig.name]["source"] = f"PV:{sig.pvname}"
                desc[sig.name]["units"] = WAVEFORM_UNITS[f]
                desc[sig.name]["dims"] = [WAVEFORM_DIM]
        for ch in (self.tip, self.substrate):
            if ch.current.name in desc:
                desc[ch.current.name].update(units="A", dtype_numpy="<f8")
        return desc

    def _checked_waveforms(self, out: dict[str, dict]) -> dict[str, dict]:
        """Waveforms of exactly ``n_samples``, asked of the IOC if the monitor has not caught up yet."""
        n = int(self.params.n_samples.get())
        for f in WAVEFORM_FIELDS:
            key = getattr(self.wf, f).name
            if key in out:
                v = np.asarray(out[key]["value"], dtype=float)
                if v.size != n:  # not the monitored update of this acquisition yet: ask the IOC
                    sig = getattr(self.wf, f)
                    v = np.asarray(sig.get(use_monitor=False), dtype=float)
                    if v.size < n:
                        off = "" if self.cell_on.get() else f"; the cell is off ({self.cell_on.pvname}=0)"
                        raise PotentiostatError(f"{sig.pvname} holds {v.size} samples, n_samples={n} were "
                                                f"expected (technique {self.technique.get()}{off})")
                out[key] = dict(out[key], value=v[:n])
        return out

    def _expected_duration(self) -> float:
        tech = self.technique.get()
        p = self.params
        if tech in ("CA", "OCP", "CP"):
            return float(p.duration.get())
        if tech == "CV":
            span = abs(p.e_vertex1.get() - p.e_vertex2.get())
            return 2.0 * span * int(p.n_cycles.get()) / max(p.scan_rate.get(), 1e-12)
        if tech == "LSV":
            return abs(p.e_end.get() - p.e_start.get()) / max(p.scan_rate.get(), 1e-12)
        return float(p.integration_time.get())

    def trigger(self) -> DeviceStatus:
        """Start one acquisition; the status finishes when ``AcqCount`` increments (no put-callback).

        Fails with :class:`~espt_bluesky.errors.Overload` or :class:`PotentiostatError` when the IOC reports
        so, with :class:`PVConnectionError` naming ``AcqCount`` when the IOC is lost meanwhile, and with
        :class:`PVTimeoutError` after ``trigger_timeout`` s plus the technique's scaled duration.
        """
        for sig in (self.start, self.acq_count):
            _require(sig, f"trigger {self.name}")
        status = DeviceStatus(self)
        finish = _Once(status)
        self._note_acquisition()
        n0 = int(self.acq_count.get())
        acq = self.acq_count
        technique = self.technique.get()  # read now: the callbacks below never call into the IOC

        def on_count(*, value, **kw):
            try:
                if int(value) <= n0:
                    return
                code = self.status_code.get()  # monitored: already here (or PVConnectionError at once)
                msg = self.status_message.get()
                if code == "OK":
                    finish()
                elif code == "OVERLOAD":
                    finish(Overload(msg))
                elif code == "STAGE_LOST":
                    finish(PVConnectionError(msg))
                else:
                    finish(PotentiostatError(f"{self.status_code.pvname}={code}: {msg}"))
            except Exception as exc:  # noqa: BLE001 - ophyd would swallow it and leave the status pending
                finish(exc)

        def on_meta(*, connected: bool = True, **kw):
            if not connected:
                finish(PVConnectionError(f"lost the connection to {acq.pvname} during an acquisition of {self.name} "
                                         f"(technique {technique}): the potentiostat IOC is unreachable"))

        timeout = self.trigger_timeout + self._expected_duration() * float(self.time_scale.get())
        timer = threading.Timer(timeout, lambda: finish(PVTimeoutError(
            f"{acq.pvname} did not increment within {timeout:.3g} s after {self.start.pvname}=1")))
        timer.daemon = True
        cids = [acq.subscribe(on_count, run=False), acq.subscribe(on_meta, event_type="meta", run=False)]
        finish.cleanups += [timer.cancel, *(lambda c=c: acq.unsubscribe(c) for c in cids)]
        timer.start()
        try:
            self.start.put(1)
        except Exception as exc:
            finish(PVConnectionError(f"could not write {self.start.pvname}: {exc}"))
        return status


# ------------------------------------------------------------------------------------------------ bench
@dataclass
class EpicsBench:
    """The devices of an instrument driven over EPICS: the same fields as :class:`SimBench` (``model`` is None)."""

    technique: str
    stage: EpicsXYZStageBase
    potentiostat: EpicsBipotentiostat
    probe: Probe
    info: dict[str, Any] = field(default_factory=dict)
    model: None = None
    time_scale: float = 0.0
    afm: None = None
    hopper: None = None

    @property
    def devices(self) -> list:
        return [self.stage, self.potentiostat]

    def metadata(self) -> dict[str, Any]:
        """Technique, probe, sample and environment for start documents (from the IOC's ``Info`` PV if served)."""
        env = self.info.get("environment", {})
        out: dict[str, Any] = dict(technique=self.technique, probe=self.probe.metadata())
        if self.info.get("sample"):
            out["sample"] = dict(self.info["sample"])
        for k in ("electrolyte", "reference_electrode"):
            if k in env:
                out[k] = env[k]
        if "mediator" in env:
            out["mediator"] = dict(env["mediator"])
        return out


#: Devices made by :func:`make_epics_bench`, kept for the life of the process.  pyepics shares one channel per PV
#: name in a process; when an ophyd signal is garbage-collected it releases that channel, which silently stops the
#: monitors of every other live signal on the same PV.  So each PV set gets one ophyd device, reused.
_DEVICES: dict[tuple, Any] = {}


def _read_info(pvname: str, timeout: float) -> dict[str, Any]:
    key = ("info", pvname)
    if key not in _DEVICES:
        _DEVICES[key] = EpicsSignalRO(pvname, name="info", string=True)
    sig = _DEVICES[key]
    try:
        sig.wait_for_connection(timeout=timeout)
        return json.loads(sig.get() or "{}")
    except Exception:  # a vendor IOC without the optional Info PV
        return {}


def _probe_of(info: Mapping[str, Any], technique: str) -> Probe:
    """The probe the IOC's ``Info`` describes, else the technique's usual probe."""
    from ..physics.bench_model import default_probe

    geom = ProbeGeometry(**info["probe"]) if info.get("probe") else default_probe(technique)
    return probe_from_geometry(geom)


def make_epics_bench(prefix: str = "ESPT:", *, stage_prefix: str | None = None, pstat_prefix: str | None = None,
                     technique: str | None = None, probe: Probe | None = None, crash_pvs: bool = True,
                     connection_timeout: float = 5.0, trigger_timeout: float = 10.0) -> EpicsBench:
    """Connect to a stage and a potentiostat over EPICS and return a bench like :func:`make_sim_bench`'s.

    Parameters
    ----------
    prefix : str
        Bench IOC prefix: the stage is ``{prefix}stage:``, the potentiostat ``{prefix}pstat:``.
    stage_prefix, pstat_prefix : str, optional
        Override either prefix (e.g. a vendor's potentiostat IOC next to the beamline's motors).
    technique : str, optional
        Default: the ``technique`` of the IOC's ``{pstat}Info`` PV (else "SECM").
    probe : Probe, optional
        Default: the geometry the IOC's ``Info`` PV describes, else the technique's usual probe.
    crash_pvs : bool
        The stage IOC serves ``CrashCount``/``CrashMessage`` (the bench IOC does; plain motor IOCs do not).
    connection_timeout : float, s
    trigger_timeout : float, s

    Raises
    ------
    PVConnectionError
        Naming every PV that did not connect.

    Notes
    -----
    The ophyd devices are made once per PV prefix and process and reused by later calls (see ``_DEVICES``).
    """
    stage_prefix = stage_prefix or f"{prefix}stage:"
    pstat_prefix = pstat_prefix or f"{prefix}pstat:"
    info = _read_info(f"{pstat_prefix}Info", connection_timeout)
    given_technique, given_probe = technique, probe
    technique = technique or info.get("technique", "SECM")
    if probe is None:
        probe = _probe_of(info, technique)
    skey = ("stage", stage_prefix, bool(crash_pvs))
    if skey not in _DEVICES:
        _DEVICES[skey] = (EpicsXYZStage if crash_pvs else EpicsXYZStageBase)(stage_prefix, name="stage",
                                                                                labels={"motors"})
    pkey = ("pstat", pstat_prefix)
    if pkey not in _DEVICES:
        _DEVICES[pkey] = EpicsBipotentiostat(pstat_prefix, name="pstat", probe=probe, trigger_timeout=trigger_timeout,
                                             labels={"detectors"})
    stage, pstat = _DEVICES[skey], _DEVICES[pkey]
    pstat.probe = probe
    pstat.trigger_timeout = float(trigger_timeout)
    wait_connected(stage, connection_timeout)
    wait_connected(pstat, connection_timeout)
    if not info:
        # Info may simply have been slow (a loaded host, an IOC just restarted on the same port): the potentiostat's
        # PVs are connected now, so an IOC that serves Info answers at once; never guess the technique if it does
        info = _read_info(f"{pstat_prefix}Info", connection_timeout)
        if info:
            technique = given_technique or info.get("technique", "SECM")
            if given_probe is None:
                probe = _probe_of(info, technique)
            pstat.probe = probe
    return EpicsBench(technique, stage, pstat, probe, info, time_scale=float(pstat.time_scale.get()))


__all__ = ["EpicsBench", "EpicsBipotentiostat", "EpicsStageAxis", "EpicsXYZStage", "EpicsXYZStageBase",
           "PVConnectionError", "PVTimeoutError", "PotentiostatError", "make_epics_bench", "wait_connected"]
