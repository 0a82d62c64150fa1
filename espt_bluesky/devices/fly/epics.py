"""The fly devices over EPICS: the same ``FlyStage``/``FlyDetector`` model, talking to the IOC's fly controller
(:mod:`espt_bluesky.ioc.fly_ioc`, PVs ``{P}fly:...``) through ophyd-async's Channel Access signals (aioca).

The stage writes the program PVs and puts ``Prepare``/``Kickoff``; ``complete`` waits for ``Busy`` = 0 and fails
with the controller's ``Error`` (a ``TipCrash`` stays a ``TipCrash``).  Unstaging the stage (the end of a plan, a
failure in it, a RunEngine stop) puts ``Abort`` when a program still runs and waits for ``Busy`` = 0: the controller
stops at the end of its current step (the passes done are kept) instead of flying on to the programme's end.
The detector follows ``NDone``: for each completed pass it writes ``ReadIndex`` and reads the ``Data:*`` waveforms
(one per channel), then appends them to the run's HDF5 file exactly as the simulated detector does (same data
logic, same datasets and data keys).  The controller's limits and response parameters come from ``{P}fly:Info``
when the devices are made, so a plan validates against them at call time.

Set ``EPICS_CA_MAX_ARRAY_BYTES`` above 8 × the longest pass (samples) before the first channel is created.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import Array1D, FlyableLogic, PathProvider, StandardFlyable
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from ...errors import TipCrash
from ...physics import scan_dynamics as sd
from .controller import HOP_CHANNELS, LINE_CHANNELS, PASS_CHANNELS, POSITION_CHANNELS, ProgramChannels
from .devices import _ControllerProperty, _FlyDetectorBase, _TaskAcquire, _flush_due, _publish, _write_rows
from .trajectory import FlyRaster, HopSequence

DATA_CHANNELS = sorted({*LINE_CHANNELS["SECM"], *LINE_CHANNELS["EC-AFM"], *POSITION_CHANNELS, *PASS_CHANNELS,
                        *HOP_CHANNELS})


class EpicsFlyController(ProgramChannels):
    """What a plan and the detector need to know of the IOC's fly controller (from its ``Info`` PV)."""

    def __init__(self, prefix: str, info: dict[str, Any]):
        self.prefix = prefix
        self.info = info
        self.technique = info["technique"]
        self.acceleration = float(info["acceleration"])
        self.max_speed = float(info["max_speed"])
        self.max_sample_rate = float(info["max_sample_rate"])
        self.loaded: FlyRaster | HopSequence | None = None
        self.e_tip: float | None = None
        self.time_scale = 0.0  # the IOC paces the data itself

    def time_constants(self, height: float | None = None) -> tuple[float, ...]:
        """The same response times as :meth:`SimFlyController.time_constants`, from the IOC's parameters."""
        i, p = self.info, self.info["probe"]
        if self.technique == "SECM":
            return sd.secm_time_constants(p["radius"], p["radius"] if height is None else height, i["diffusion"])
        if self.technique == "SICM":
            return sd.sicm_time_constants(p["radius"], p["half_angle"], i["conductivity"],
                                          capacitance=i["pipette_capacitance"],
                                          filter_bandwidth=i["filter_bandwidth"])
        return sd.afm_time_constants(i["feedback_bandwidth"])



def _raise_for(message: str) -> None:
    if message:
        if message.startswith("TipCrash"):
            raise TipCrash(message.split(": ", 1)[-1])
        raise RuntimeError(f"fly controller: {message}")


class _EpicsTrajectoryLogic(FlyableLogic):
    #: s to wait for ``Busy`` = 0 after ``Abort``: the IOC finishes the step it is computing (at most
    #: ``STEP_SAMPLES`` of path plus one pass, well under a second on the bench), then publishes the passes done at
    #: once, unpaced
    abort_timeout = 10.0

    def __init__(self, dev: "EpicsFlyStage"):
        self.dev = dev
        self.started: asyncio.Event | None = None

    async def on_prepare(self, value: FlyRaster | HopSequence) -> Any:
        d = self.dev
        self.started = asyncio.Event()
        d.controller.loaded = value
        e = d.controller.e_tip
        writes = [d.e_tip.set(float("nan") if e is None else float(e))]
        if isinstance(value, FlyRaster):
            writes += [d.kind.set(0), d.x_start.set(value.x_start), d.x_stop.set(value.x_stop),
                       d.rows.set(np.asarray(value.y, float)), d.speed.set(value.speed),
                       d.sample_rate.set(value.sample_rate), d.plane.set(np.asarray(value.plane, float)),
                       d.bidirectional.set(int(value.bidirectional))]
        else:
            writes += [d.kind.set(1), d.hop_x.set(np.asarray(value.x, float)), d.hop_y.set(np.asarray(value.y, float)),
                       d.hop_height.set(value.hop_height), d.approach_speed.set(value.approach_speed),
                       d.lateral_speed.set(value.lateral_speed), d.setpoint.set(value.setpoint)]
        await asyncio.gather(*writes)
        await d.prepare_pv.set(1, timeout=120.0)
        _raise_for(await d.error.get_value())
        return value

    async def on_kickoff(self, ctx: Any) -> Any:
        await self.dev.kickoff_pv.set(1, timeout=120.0)
        self.started.set()
        return ctx

    async def on_complete(self, ctx: Any) -> None:
        while await self.dev.busy.get_value():
            await asyncio.sleep(0.02)
        _raise_for(await self.dev.error.get_value())

    async def stop(self) -> None:
        """Stop a running program (``stage``/``unstage``: ophyd-async calls it at the start and end of a plan,
        and the end comes after a failure or a RunEngine stop too): put ``Abort`` = 1 and wait for ``Busy`` = 0.
        The controller stops at the end of its current step; the passes done stay on the IOC."""
        d = self.dev
        if await d.busy.get_value():
            await d.abort_pv.set(1, timeout=10.0)
            deadline = time.monotonic() + self.abort_timeout
            while await d.busy.get_value():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fly controller: {d.busy.source} still 1 {self.abort_timeout:g} s after "
                                       f"{d.abort_pv.source} = 1 (the program did not stop)")
                await asyncio.sleep(0.02)
        # the IOC has told its stage where the controller left the tip (before Busy = 0)
        d.controller.loaded = None


class EpicsFlyStage(_ControllerProperty, StandardFlyable):
    """Fly stage over the IOC's ``{P}fly:`` PVs (see :mod:`espt_bluesky.ioc.fly_ioc`)."""

    def __init__(self, prefix: str, controller: EpicsFlyController, name: str = "fly_stage") -> None:
        p = prefix
        self._controller = controller
        self.kind = epics_signal_rw(int, f"{p}Kind")
        self.x_start = epics_signal_rw(float, f"{p}XStart")
        self.x_stop = epics_signal_rw(float, f"{p}XStop")
        self.rows = epics_signal_rw(Array1D[np.float64], f"{p}Rows")
        self.speed = epics_signal_rw(float, f"{p}Speed")
        self.sample_rate = epics_signal_rw(float, f"{p}SampleRate")
        self.plane = epics_signal_rw(Array1D[np.float64], f"{p}Plane")
        self.bidirectional = epics_signal_rw(int, f"{p}Bidirectional")
        self.hop_x = epics_signal_rw(Array1D[np.float64], f"{p}HopX")
        self.hop_y = epics_signal_rw(Array1D[np.float64], f"{p}HopY")
        self.hop_height = epics_signal_rw(float, f"{p}HopHeight")
        self.approach_speed = epics_signal_rw(float, f"{p}ApproachSpeed")
        self.lateral_speed = epics_signal_rw(float, f"{p}LateralSpeed")
        self.setpoint = epics_signal_rw(float, f"{p}Setpoint")
        self.e_tip = epics_signal_rw(float, f"{p}ETip")
        self.prepare_pv = epics_signal_rw(int, f"{p}Prepare")
        self.kickoff_pv = epics_signal_rw(int, f"{p}Kickoff")
        self.abort_pv = epics_signal_rw(int, f"{p}Abort")
        self.busy = epics_signal_r(int, f"{p}Busy")
        self.n_done = epics_signal_r(int, f"{p}NDone")
        self.n_total = epics_signal_r(int, f"{p}NTotal")
        self.error = epics_signal_r(str, f"{p}Error")
        self.read_index = epics_signal_rw(int, f"{p}ReadIndex")
        for ch in DATA_CHANNELS:
            setattr(self, f"data_{ch}", epics_signal_r(Array1D[np.float64], f"{p}Data:{ch}"))
        super().__init__(name=name)

    @cached_property
    def flyable_logic(self) -> _EpicsTrajectoryLogic:
        return _EpicsTrajectoryLogic(self)


class _EpicsAcquire(_TaskAcquire):
    """Follows ``NDone`` and copies each completed pass from the IOC's waveforms into the run's file."""

    async def _acquire(self) -> None:
        st = self.state
        stage: EpicsFlyStage = st.stage
        logic = stage.flyable_logic
        await logic.started.wait()
        channels = list(st.channels)
        total = await stage.n_total.get_value()
        k = 0
        while k < total:
            n = await stage.n_done.get_value()
            if n <= k:
                if not await stage.busy.get_value() and await stage.n_done.get_value() <= k:
                    break  # the controller stopped early (an error): what was done is written
                if _flush_due(st) <= 0:
                    _publish(st)
                await asyncio.sleep(0.02)
                continue
            rows: dict[str, list] = {ch: [] for ch in channels}
            for i in range(k, n):
                await stage.read_index.set(i)
                vals = await asyncio.gather(*(getattr(stage, f"data_{ch}").get_value() for ch in channels))
                for ch, v in zip(channels, vals):
                    rows[ch].append(np.asarray(v) if st.per_collection > 1 and ch not in PASS_CHANNELS
                                    else np.asarray(v).reshape(-1)[0])
            _write_rows(st, {ch: np.asarray(v) for ch, v in rows.items()}, 0, n - k)
            k = n
        _raise_for(await stage.error.get_value())


class EpicsFlyDetector(_FlyDetectorBase):
    """:class:`~espt_bluesky.devices.fly.devices.FlyDetector` fed from the IOC's waveforms."""

    def __init__(self, stage: EpicsFlyStage, path_provider: PathProvider, name: str = "fly") -> None:
        super().__init__(stage.controller, stage, path_provider, _EpicsAcquire, name)


def read_fly_info(prefix: str, timeout: float = 5.0) -> dict[str, Any]:
    """The IOC fly controller's ``Info`` JSON (one synchronous Channel Access read, caproto's client)."""
    from caproto.sync.client import read

    resp = read(f"{prefix}Info", timeout=timeout)
    raw = bytes(np.asarray(resp.data, dtype=np.uint8)).split(b"\0", 1)[0]
    return json.loads(raw.decode())


def make_epics_fly_devices(prefix: str, directory: str | Path, *, name: str = "fly"):
    """Fly stage and detector over an IOC's fly controller (``prefix`` e.g. ``"ESPT:fly:"``), writing HDF5 files
    into ``directory``.  Returns ``(stage, detector)``; plans connect them (``ensure_connected``)."""
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider

    ctl = EpicsFlyController(prefix, read_fly_info(prefix))
    stage = EpicsFlyStage(prefix, ctl, name=f"{name}_stage")
    det = EpicsFlyDetector(stage, StaticPathProvider(UUIDFilenameProvider(), Path(directory).resolve()), name=name)
    return stage, det
