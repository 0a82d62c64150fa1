"""caproto IOCs serving the simulated bench over EPICS Channel Access.

Two PV groups, both thin shells over one :class:`~espt_bluesky.physics.bench_model.BenchModel`:

* :class:`StageGroup` — three motor records ``{P}x``, ``{P}y``, ``{P}z`` (µm) that ophyd's ``EpicsMotor``
  drives, with soft limits (``.LLM``/``.HLM``), velocity (``.VELO``) and motion through
  :meth:`BenchModel.move_to`, so a move into the sample stops at contact.  A crash puts the axis in a MAJOR alarm
  on ``.RBV`` (ophyd then fails the move), sets the problem bit of ``.MSTA``, increments ``{P}CrashCount`` and
  writes ``{P}CrashMessage``.  ``{P}TipPosition`` publishes ``[x, y, z, clock, crash_count]`` for a potentiostat
  IOC running in another process.
* :class:`PotentiostatGroup` — setpoints, technique parameters, ``Start``/``Abort``, ``Busy``, ``AcqCount``
  (incremented when an acquisition ends, after every readback and waveform has been written), ``Status`` /
  ``StatusMessage``, scalar current readbacks and waveform PVs.  It reads the tip position from a
  :class:`PositionSource`: the shared model in the combined IOC, or the stage IOC's ``TipPosition`` PV over
  Channel Access in the split layout.

Layouts (see :mod:`espt_bluesky.ioc.cli`): ``bench`` (one process, both groups, one model: exactly the physics
of the in-process bench), or ``stage`` + ``potentiostat`` in two processes (the potentiostat keeps its own copy of
the model built from the same sample and seed and synchronises the tip position and clock from the stage IOC
before every acquisition; killing it leaves the stage IOC alive).  In the split layout, sample changes made by
the potentiostat (SEI growth, film swelling) are not seen by the stage's crash detection.

The PV list is documented in ``docs/epics_pv_list.md``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from ..errors import EsptError, TipCrash
from ..physics.bench_model import BenchModel, BenchOptions, ProbeGeometry, default_probe

# The potentiostat's technique vocabulary is defined next to the device; import the plain constants/functions.
from ..devices.potentiostat import TECHNIQUES, technique_program, validate_technique

#: Longest waveform the IOC serves (samples); ``n_samples`` above this is refused.
WAVEFORM_MAX = 20000
CHANNELS = ("tip", "substrate")
STATUS_STRINGS = ("OK", "ERROR", "OVERLOAD", "ABORTED", "STAGE_LOST")
AXES = ("x", "y", "z")
#: Soft limits (µm) and velocities (µm/s) of the axes, the same defaults as the simulated stage.
AXIS_DEFAULTS = {"x": dict(limits=(-25.0, 125.0), velocity=100.0),
                 "y": dict(limits=(-25.0, 125.0), velocity=100.0),
                 "z": dict(limits=(-20.0, 2000.0), velocity=20.0)}
MSTA_PROBLEM = 1 << 9  # motor record MSTA bit 10 (1-based): "driver problem"
MSTA_DONE = 1 << 1


def enable_tcp_nodelay() -> None:
    """Make the caproto asyncio server's TCP circuits use ``TCP_NODELAY``.

    caproto 1.3 creates its listening socket with ``proto=0``, so asyncio's transport does not switch Nagle's
    algorithm off on accepted circuits.  A motor move publishes ``DMOV=0`` and, a millisecond later, ``DMOV=1``:
    with Nagle on, the second small packet waits for the client's delayed ACK (40 ms on Linux).  Measured here:
    44 ms per back-to-back move without this, 2-5 ms with it.
    """
    import socket

    import caproto.asyncio.server as aserver

    async def _create_bound_tcp_socket(addr, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.bind((addr, port))
        return sock

    aserver._create_bound_tcp_socket = _create_bound_tcp_socket


def build_model(technique: str = "SECM", sample: str = "patterned", seed: int = 0,
                options: dict[str, Any] | None = None, probe: dict[str, Any] | None = None,
                start: tuple[float, float] = (50.0, 50.0)) -> BenchModel:
    """Build the bench model an IOC serves, exactly as :func:`espt_bluesky.devices.make_sim_bench` does.

    Parameters
    ----------
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    sample : str
        Sample preset name.
    seed : int
        Seeds the sample and all noise.
    options : dict, optional
        Fields of :class:`~espt_bluesky.physics.bench_model.BenchOptions` (``noise``, ``drift`` ...).
    probe : dict, optional
        Fields of :class:`~espt_bluesky.physics.bench_model.ProbeGeometry`; default: the technique's usual probe.
    start : (x, y), µm
    """
    opts = BenchOptions(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in (options or {}).items()})
    geometry = ProbeGeometry(**probe) if probe else default_probe(technique)
    return BenchModel(technique, sample, probe=geometry, seed=seed, options=opts, start=tuple(start))


def model_info(model: BenchModel) -> dict[str, Any]:
    """JSON-able description of the served bench: technique, probe geometry, sample and environment."""
    return dict(technique=model.technique, probe=asdict(model.probe), environment=model.environment,
                sample=dict(name=model.sample.name, description=model.sample.description, simulated=True),
                seed=model.seed)


def pstat_defaults(model: BenchModel) -> dict[str, Any]:
    """Initial potentials (V), current ranges (A) and compliance (V), as :class:`SimBipotentiostat` sets them."""
    env = model.environment
    e_ocp = env["e_ocp"]
    if model.technique == "SECM":
        e_tip = env["mediator"]["E0"] + 0.35
    elif model.technique == "SICM":
        e_tip = model.options.ion_bias
    else:
        e_tip = e_ocp
    compliance = (e_ocp - 5.0, e_ocp + 5.0) if env["reference_electrode"] != "Li+/Li" else (-0.5, 5.0)
    return dict(e_tip=e_tip, e_sub=e_ocp, range_tip=1e-6, range_sub=1e-2, compliance=compliance)


# ----------------------------------------------------------------------------------------------- stage
class BenchMotor(PVGroup):
    """One motor record moving the bench's tip along one axis (positions µm, velocity µm/s)."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=4, dtype=ChannelType.DOUBLE)

    def __init__(self, *args, axis: str = "x", **kwargs):
        super().__init__(*args, **kwargs)
        self.axis = axis
        self.index = AXES.index(axis)
        self._stop_requested = False

    @property
    def stage(self) -> "StageGroup":
        return self.parent

    @motor.startup
    async def motor(self, instance, async_lib):
        fields = instance.field_inst
        d = AXIS_DEFAULTS[self.axis]
        pos = float(self.stage.model.position[self.index])

        async def stop_putter(field, value):
            """``.STOP`` = 1 ends a move in progress where the tip is (only moves with a time scale > 0 last)."""
            if int(value):
                self._stop_requested = True
            return 0

        fields.stop.putter = stop_putter
        await fields.velocity.write(d["velocity"])
        await fields.user_low_limit.write(d["limits"][0])
        await fields.user_high_limit.write(d["limits"][1])
        await fields.engineering_units.write("um")
        await fields.motor_step_size.write(1e-6)
        await fields.done_moving_to_value.write(1, verify_value=False)
        await fields.motor_is_moving.write(0, verify_value=False)
        await fields.motor_status.write(MSTA_DONE, verify_value=False)
        await fields.user_readback_value.write(pos)
        await fields.dial_readback_value.write(pos)
        await instance.write_metadata(lower_ctrl_limit=d["limits"][0], upper_ctrl_limit=d["limits"][1], units="um")
        await instance.write(pos, verify_value=False)

    @motor.putter
    async def motor(self, instance, value):
        """A write to ``.VAL``: check the soft limits, move through the model, publish the motion."""
        return await self.stage.move_axis(self, instance, float(value))

    async def publish(self, instance, pos: float, *, severity=AlarmSeverity.NO_ALARM,
                      status=AlarmStatus.NO_ALARM) -> None:
        fields = instance.field_inst
        rbv = fields.user_readback_value
        await fields.dial_readback_value.write(pos)
        await rbv.write(pos)
        if rbv.alarm.severity != severity or rbv.alarm.status != status:
            # caproto resets the alarm on a value write (limit check); set the record's alarm after it
            await rbv.alarm.write(severity=severity, status=status)


class StageGroup(PVGroup):
    """Three motor records over the bench model, with crash reporting.

    PVs: ``x``, ``y``, ``z`` (motor records), ``TipPosition`` (RO, ``[x, y, z, clock, crash_count]`` in µm, µm, µm,
    s, -), ``CrashCount`` (RO), ``CrashMessage`` (RO), ``Info`` (RO JSON: technique, probe, sample, environment).
    """

    x = SubGroup(BenchMotor, axis="x", prefix="x")
    y = SubGroup(BenchMotor, axis="y", prefix="y")
    z = SubGroup(BenchMotor, axis="z", prefix="z")
    tip_position = pvproperty(name="TipPosition", value=[0.0] * 5, max_length=5, read_only=True,
                              dtype=ChannelType.DOUBLE, doc="x, y, z (µm), bench clock (s), crash count")
    crash_count = pvproperty(name="CrashCount", value=0, read_only=True, dtype=ChannelType.LONG)
    crash_message = pvproperty(name="CrashMessage", value="", read_only=True, max_length=1000,
                               dtype=ChannelType.CHAR)
    info = pvproperty(name="Info", value="", read_only=True, max_length=8000, dtype=ChannelType.CHAR)

    def __init__(self, *args, model: BenchModel, time_scale: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = model
        self.time_scale = float(time_scale)
        self.lock = asyncio.Lock()  # one motion at a time through the model
        self.external_clock = 0.0  # s of instrument time spent elsewhere (potentiostat) in the combined IOC

    @info.startup
    async def info(self, instance, async_lib):
        await instance.write(json.dumps(model_info(self.model)))
        await self.publish_position()

    async def publish_position(self) -> None:
        m = self.model
        await self.tip_position.write([*map(float, m.position), float(m.clock), float(self.crash_count.value)])

    async def move_axis(self, motor: BenchMotor, instance, target: float) -> float:
        """Move ``motor`` to ``target`` µm; return the position the record's ``.VAL`` ends at."""
        fields = instance.field_inst
        low, high = fields.user_low_limit.value, fields.user_high_limit.value
        if (instance.lower_ctrl_limit, instance.upper_ctrl_limit) != (low, high):
            await instance.write_metadata(lower_ctrl_limit=low, upper_ctrl_limit=high)  # what EpicsMotor.limits reads
        start = float(self.model.position[motor.index])
        if low < high and not (low <= target <= high):
            # a real motor record refuses the move and raises LVIO; we pulse DMOV so a client waiting sees the end
            await fields.limit_violation.write(1, verify_value=False)
            await fields.done_moving_to_value.write(0, verify_value=False)
            await motor.publish(instance, start, severity=AlarmSeverity.MAJOR_ALARM, status=AlarmStatus.SOFT)
            await fields.done_moving_to_value.write(1, verify_value=False)
            return start
        await fields.limit_violation.write(0, verify_value=False)
        async with self.lock:
            for ax in self.axes:
                ax._stop_requested = False
            await fields.done_moving_to_value.write(0, verify_value=False)
            await fields.motor_is_moving.write(1, verify_value=False)
            await fields.direction_of_travel.write(1 if target >= start else 0, verify_value=False)
            begin = self.model.position.copy()
            goal = begin.copy()
            goal[motor.index] = target
            crash: TipCrash | None = None
            try:
                duration = self.model.move_to(*goal, velocity=fields.velocity.value or None)
            except TipCrash as exc:
                crash, duration = exc, 0.0
            end = float(self.model.position[motor.index])
            if self.time_scale > 0 and duration > 0 and crash is None:
                end = await self._animate(motor, instance, begin, duration * self.time_scale)
            if crash is not None:
                await self.crash_count.write(self.crash_count.value + 1)
                await self.crash_message.write(f"{self.prefix}{motor.axis}: {crash}")
                await fields.motor_status.write(MSTA_DONE | MSTA_PROBLEM, verify_value=False)
                await motor.publish(instance, end, severity=AlarmSeverity.MAJOR_ALARM, status=AlarmStatus.STATE)
            else:
                await fields.motor_status.write(MSTA_DONE, verify_value=False)
                await motor.publish(instance, end)
            # a crash in x or y may leave the other axes' readbacks unchanged; refresh all of them
            for ax in self.axes:
                if ax is not motor:
                    pos = float(self.model.position[ax.index])
                    if abs(pos - ax.motor.field_inst.user_readback_value.value) > 1e-12:
                        await ax.motor.field_inst.user_readback_value.write(pos)
            await self.publish_position()
            await fields.motor_is_moving.write(0, verify_value=False)
            await fields.done_moving_to_value.write(1, verify_value=False)
        return end

    async def _animate(self, motor: BenchMotor, instance, begin: np.ndarray, wall: float) -> float:
        """Show the readback travelling for ``wall`` seconds; a STOP leaves the tip where it is."""
        goal = self.model.position.copy()
        t0 = time.monotonic()
        while True:
            frac = min((time.monotonic() - t0) / wall, 1.0)
            here = begin + frac * (goal - begin)
            if motor._stop_requested and frac < 1.0:
                self.model.move_to(*here)  # back along the path just cleared: cannot crash
                return float(here[motor.index])
            await motor.publish(instance, float(here[motor.index]))
            if frac >= 1.0:
                return float(goal[motor.index])
            await asyncio.sleep(min(0.05, wall))

    @property
    def axes(self) -> tuple[BenchMotor, BenchMotor, BenchMotor]:
        return (self.x, self.y, self.z)


# ---------------------------------------------------------------------------------------- positions
class PositionSource:
    """Where the potentiostat IOC learns the true tip position and bench clock before each acquisition."""

    async def sync(self, model: BenchModel) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class SharedModelPosition(PositionSource):
    """The combined IOC: the stage and potentiostat share one model, nothing to copy."""

    async def sync(self, model: BenchModel) -> None:
        return None


class ChannelAccessPosition(PositionSource):
    """Read ``{stage_prefix}TipPosition`` from the stage IOC over Channel Access (caproto asyncio client).

    Parameters
    ----------
    stage_prefix : str
        Prefix of the stage IOC (e.g. ``"ESPT:stage:"``).
    timeout : float
        Seconds to wait for the stage IOC to answer.
    """

    def __init__(self, stage_prefix: str, timeout: float = 2.0):
        self.pvname = f"{stage_prefix}TipPosition"
        self.timeout = float(timeout)
        self._ctx = None
        self._pv = None
        self.own_clock = 0.0  # s spent in potentiostat acquisitions (added to the stage's clock)

    async def sync(self, model: BenchModel) -> None:
        from caproto.asyncio.client import Context

        if self._pv is None:
            self._ctx = Context()
            (self._pv,) = await asyncio.wait_for(self._ctx.get_pvs(self.pvname, timeout=self.timeout),
                                                 self.timeout)
        try:
            resp = await asyncio.wait_for(self._pv.read(timeout=self.timeout), self.timeout + 0.5)
        except Exception as exc:
            raise EsptError(f"stage PV {self.pvname} did not answer within {self.timeout} s: {exc!r}") from exc
        x, y, z, clock, crashes = (float(v) for v in resp.data[:5])
        model.position = np.array([x, y, z])
        model.crashed = crashes > 0
        model.clock = clock + self.own_clock


# ------------------------------------------------------------------------------------- potentiostat
def _wf(name: str, doc: str) -> pvproperty:
    return pvproperty(name=name, value=[0.0], max_length=WAVEFORM_MAX, read_only=True, dtype=ChannelType.DOUBLE,
                      doc=doc)


class PotentiostatGroup(PVGroup):
    """A two-channel potentiostat over the bench model.  Units: V, A, s, V/s."""

    # channels
    tip_potential = pvproperty(name="Tip:Potential", value=0.0, units="V", precision=4)
    tip_current = pvproperty(name="Tip:Current", value=0.0, units="A", read_only=True, precision=6)
    tip_range = pvproperty(name="Tip:CurrentRange", value=1e-6, units="A")
    sub_potential = pvproperty(name="Sub:Potential", value=0.0, units="V", precision=4)
    sub_current = pvproperty(name="Sub:Current", value=0.0, units="A", read_only=True, precision=6)
    sub_range = pvproperty(name="Sub:CurrentRange", value=1e-2, units="A")
    # technique and cell
    technique = pvproperty(name="Technique", value="READ", dtype=ChannelType.ENUM, enum_strings=list(TECHNIQUES))
    working_channel = pvproperty(name="WorkingChannel", value="substrate", dtype=ChannelType.ENUM,
                                 enum_strings=list(CHANNELS))
    # off at every (re)start: an IOC that restarts must not drive a cell nobody is watching; plans switch it on
    cell_on = pvproperty(name="CellOn", value=0, dtype=ChannelType.LONG)
    # parameters
    e_start = pvproperty(name="Par:EStart", value=0.0, units="V")
    e_vertex1 = pvproperty(name="Par:EVertex1", value=-0.5, units="V")
    e_vertex2 = pvproperty(name="Par:EVertex2", value=0.5, units="V")
    e_end = pvproperty(name="Par:EEnd", value=0.5, units="V")
    e_hold = pvproperty(name="Par:EHold", value=0.0, units="V")
    scan_rate = pvproperty(name="Par:ScanRate", value=0.1, units="V/s")
    n_cycles = pvproperty(name="Par:NCycles", value=1, dtype=ChannelType.LONG)
    duration = pvproperty(name="Par:Duration", value=1.0, units="s")
    current_setpoint = pvproperty(name="Par:CurrentSetpoint", value=0.0, units="A")
    n_samples = pvproperty(name="Par:NSamples", value=1000, dtype=ChannelType.LONG)
    integration_time = pvproperty(name="Par:IntegrationTime", value=0.01, units="s")
    # acquisition control
    start = pvproperty(name="Start", value=0, dtype=ChannelType.LONG)
    abort = pvproperty(name="Abort", value=0, dtype=ChannelType.LONG)
    busy = pvproperty(name="Busy", value=0, read_only=True, dtype=ChannelType.LONG)
    acq_count = pvproperty(name="AcqCount", value=0, read_only=True, dtype=ChannelType.LONG)
    status = pvproperty(name="Status", value="OK", read_only=True, dtype=ChannelType.ENUM,
                        enum_strings=list(STATUS_STRINGS))
    status_message = pvproperty(name="StatusMessage", value="", read_only=True, max_length=1000,
                                dtype=ChannelType.CHAR)
    # waveforms of the last acquisition
    wf_time = _wf("Wf:Time", "time since start of the technique, s")
    wf_potential = _wf("Wf:Potential", "potential of the driven channel, V")
    wf_current = _wf("Wf:Current", "current of the driven channel, A")
    wf_collector = _wf("Wf:CollectorCurrent", "current of the other channel, A")
    wf_nelm = pvproperty(name="Wf:NElements", value=0, read_only=True, dtype=ChannelType.LONG)
    wf_max = pvproperty(name="Wf:MaxElements", value=WAVEFORM_MAX, read_only=True, dtype=ChannelType.LONG)
    # instrument description
    compliance_low = pvproperty(name="ComplianceLow", value=-10.0, read_only=True, units="V")
    compliance_high = pvproperty(name="ComplianceHigh", value=10.0, read_only=True, units="V")
    time_scale_pv = pvproperty(name="TimeScale", value=0.0, read_only=True)
    info = pvproperty(name="Info", value="", read_only=True, max_length=8000, dtype=ChannelType.CHAR)
    stage_crash_count = pvproperty(name="StageCrashCount", value=0, read_only=True, dtype=ChannelType.LONG)

    def __init__(self, *args, model: BenchModel, position: PositionSource, time_scale: float = 0.0,
                 stage: StageGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = model
        self.position = position
        self.time_scale = float(time_scale)
        self.stage = stage
        self._abort = asyncio.Event()
        self._task: asyncio.Task | None = None

    @info.startup
    async def info(self, instance, async_lib):
        d = pstat_defaults(self.model)
        await instance.write(json.dumps(model_info(self.model)))
        await self.tip_potential.write(d["e_tip"])
        await self.sub_potential.write(d["e_sub"])
        await self.tip_range.write(d["range_tip"])
        await self.sub_range.write(d["range_sub"])
        await self.compliance_low.write(d["compliance"][0])
        await self.compliance_high.write(d["compliance"][1])
        await self.time_scale_pv.write(self.time_scale)

    @start.putter
    async def start(self, instance, value):
        if int(value) and not self.busy.value:
            await self.busy.write(1)
            self._abort.clear()
            self._task = asyncio.get_running_loop().create_task(self._acquire())
        return 0

    @abort.putter
    async def abort(self, instance, value):
        if int(value):
            self._abort.set()
        return 0

    def _params(self) -> dict[str, Any]:
        return dict(e_start=self.e_start.value, e_vertex1=self.e_vertex1.value, e_vertex2=self.e_vertex2.value,
                    e_end=self.e_end.value, e_hold=self.e_hold.value, scan_rate=self.scan_rate.value,
                    n_cycles=int(self.n_cycles.value), duration=self.duration.value,
                    current_setpoint=self.current_setpoint.value, n_samples=int(self.n_samples.value),
                    integration_time=self.integration_time.value)

    async def _acquire(self) -> None:
        """Run the selected technique once; publish readbacks, waveforms, status, then AcqCount."""
        # let writes queued before Start on this circuit finish (caproto runs each write as its own task)
        for _ in range(3):
            await asyncio.sleep(0)
        status, message, wave = "OK", "", None
        duration = 0.0
        try:
            await self.position.sync(self.model)
            if self.stage is None:
                await self.stage_crash_count.write(int(self.model.crashed))
            technique = self.technique.value
            p = self._params()
            model = self.model
            if technique not in ("READ", "OCP") and not self.cell_on.value:
                await self.cell_on.write(1)  # a technique connects the cell (as the simulated potentiostat does)
            if technique == "READ" and not self.cell_on.value:
                i_tip = i_sub = 0.0
                duration = p["integration_time"]
                model.clock += duration
            elif technique == "READ":
                duration = p["integration_time"]
                model.clock += duration
                i_tip, i_sub = self._read_scalar()
            else:
                if p["n_samples"] > WAVEFORM_MAX:
                    raise EsptError(f"n_samples={p['n_samples']} exceeds the IOC's waveform length {WAVEFORM_MAX}")
                validate_technique(technique, p, (self.compliance_low.value, self.compliance_high.value))
                t, program = technique_program(technique, p)
                channel = self.working_channel.value
                other = self.sub_potential if channel == "tip" else self.tip_potential
                wave = model.run_program(channel, technique, t, program, float(other.value))
                duration = float(t[-1] - t[0])
                i_drv, i_oth = float(wave["current"][-1]), float(wave["collector_current"][-1])
                i_tip, i_sub = (i_drv, i_oth) if channel == "tip" else (i_oth, i_drv)
            if isinstance(self.position, ChannelAccessPosition):
                self.position.own_clock += duration
            if self.time_scale > 0 and duration > 0:
                try:
                    await asyncio.wait_for(self._abort.wait(), duration * self.time_scale)
                    status, message = "ABORTED", "acquisition aborted"
                except asyncio.TimeoutError:
                    pass
            if wave is not None:
                for pv, key in ((self.wf_time, "time"), (self.wf_potential, "potential"),
                                (self.wf_current, "current"), (self.wf_collector, "collector_current")):
                    await pv.write(np.asarray(wave[key], dtype=float))
                await self.wf_nelm.write(len(wave["time"]))
            await self.tip_current.write(float(i_tip))
            await self.sub_current.write(float(i_sub))
            for name, i, rng in (("tip", i_tip, self.tip_range.value), ("substrate", i_sub, self.sub_range.value)):
                if abs(i) > rng and status == "OK":
                    status = "OVERLOAD"
                    message = f"{self.prefix}{'Tip' if name == 'tip' else 'Sub'}:Current: |current| = " \
                              f"{abs(i):.3g} A exceeds the current range {rng:.3g} A"
        except EsptError as exc:
            status, message = ("STAGE_LOST" if "stage PV" in str(exc) else "ERROR"), str(exc)
        except Exception as exc:  # a bug must not leave Busy set forever: report it through Status
            status, message = "ERROR", f"{type(exc).__name__}: {exc}"
        await self.status_message.write(message)
        await self.status.write(status)
        await self.busy.write(0)
        await self.acq_count.write(self.acq_count.value + 1)

    def _read_scalar(self) -> tuple[float, float]:
        """Steady-state currents (A) of both channels: the same model call as the simulated potentiostat."""
        return self.model.read_currents(float(self.tip_potential.value), float(self.sub_potential.value),
                                        float(self.integration_time.value))


# -------------------------------------------------------------------------------------------- IOCs
class BenchIOC(PVGroup):
    """Both PV groups over ONE model in one process: ``{P}stage:...`` and ``{P}pstat:...``; on SECM, SICM and
    EC-AFM benches also the fly controller ``{P}fly:...`` (:mod:`espt_bluesky.ioc.fly_ioc`)."""

    def __init__(self, prefix: str, *, model: BenchModel, time_scale: float = 0.0, **kwargs):
        super().__init__(prefix, **kwargs)
        self.stage = StageGroup(f"{prefix}stage:", model=model, time_scale=time_scale)
        self.pstat = PotentiostatGroup(f"{prefix}pstat:", model=model, position=SharedModelPosition(),
                                       time_scale=time_scale, stage=self.stage)
        self.pvdb.update(self.stage.pvdb)
        self.pvdb.update(self.pstat.pvdb)
        if model.technique in ("SECM", "SICM", "EC-AFM"):  # the fly controller: trajectory and waveform PVs
            from .fly_ioc import FlyGroup

            self.fly = FlyGroup(f"{prefix}fly:", model=model, stage=self.stage, time_scale=time_scale)
            self.pvdb.update(self.fly.pvdb)


def make_pvdb(role: str, prefix: str, model: BenchModel, time_scale: float = 0.0,
              stage_prefix: str | None = None) -> dict:
    """The PV database of one IOC process.

    Parameters
    ----------
    role : {"bench", "stage", "potentiostat"}
        ``bench``: stage and potentiostat over one model (PVs ``{prefix}stage:*`` and ``{prefix}pstat:*``).
        ``stage``: motor records only (PVs ``{prefix}*``).  ``potentiostat``: potentiostat only (PVs
        ``{prefix}*``), reading the tip position from ``{stage_prefix}TipPosition``.
    prefix : str
    model : BenchModel
    time_scale : float
        0: moves and acquisitions finish at once; 1: in instrument time.
    stage_prefix : str, optional
        Required for ``role="potentiostat"``.
    """
    if role == "bench":
        return BenchIOC(prefix, model=model, time_scale=time_scale).pvdb
    if role == "stage":
        return StageGroup(prefix, model=model, time_scale=time_scale).pvdb
    if role == "potentiostat":
        if not stage_prefix:
            raise EsptError("the potentiostat IOC needs --stage-prefix: it reads the tip position from the stage IOC")
        return PotentiostatGroup(prefix, model=model, position=ChannelAccessPosition(stage_prefix),
                                 time_scale=time_scale).pvdb
    raise EsptError(f"role={role!r} is not one of ['bench', 'stage', 'potentiostat']")


__all__ = ["BenchIOC", "BenchMotor", "ChannelAccessPosition", "PotentiostatGroup", "SharedModelPosition",
           "StageGroup", "WAVEFORM_MAX", "build_model", "enable_tcp_nodelay", "make_pvdb", "model_info",
           "pstat_defaults"]
