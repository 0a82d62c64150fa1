"""The fly controller of the bench over EPICS: trajectory and hop programs in, waveforms of every pass out.

:class:`FlyGroup` (PVs ``{P}fly:...`` of the combined ``bench`` IOC) wraps the same
:class:`~espt_bluesky.devices.fly.controller.SimFlyController` as the in-process bench, over the IOC's model, so a
fly scan over Channel Access runs exactly the physics of the in-process one.

Program PVs (write, then ``Prepare`` = 1, which loads the program and moves to its start):
``Kind`` (0 raster, 1 hops), ``XStart``, ``XStop`` (µm), ``Rows`` (waveform of row y, µm), ``Speed`` (µm/s),
``SampleRate`` (Hz), ``Plane`` (``[z0, slope_x, slope_y, x0, y0]``, z0 including the height), ``Bidirectional``;
hops: ``HopX``, ``HopY`` (waveforms, µm), ``HopHeight`` (µm), ``ApproachSpeed``, ``LateralSpeed`` (µm/s),
``Setpoint`` (current-drop fraction); ``ETip`` (V, NaN: the controller's default).

Run PVs: ``Kickoff`` (= 1 starts), ``Busy`` (1 while running), ``NDone`` (passes or hops completed so far, paced
by the IOC's time scale), ``NTotal``, ``Error`` (the controller's error message, "" if none; set when the run ends),
``Abort`` (= 1 stops a running program at the end of its current step: the passes done are kept and published at
once, ``Busy`` goes to 0 when it has stopped), ``Info`` (JSON: technique and the controller's limits and response
parameters).

A run writes ``NDone``, ``Error`` and ``Busy`` = 0 while it still holds the stage's lock, so a following
``Prepare`` (which takes the lock) never sees the end of an older run land after its own writes.

Readout: write ``ReadIndex`` = k, then read ``Data:<channel>`` (waveforms of the pass's samples, or one element per
hop/per-pass scalar) for pass or hop k.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ..devices.fly.controller import HOP_CHANNELS, LINE_CHANNELS, PASS_CHANNELS, POSITION_CHANNELS, SimFlyController
from ..devices.fly.trajectory import FlyRaster, HopSequence

#: Longest waveform served (samples per pass; rows; hops)
FLY_MAX = 400_000
DATA_CHANNELS = sorted({*LINE_CHANNELS["SECM"], *LINE_CHANNELS["EC-AFM"], *POSITION_CHANNELS, *PASS_CHANNELS,
                        *HOP_CHANNELS})


class _AxisShim:
    """What the fly controller asks of a stage axis: its velocity (µm/s) and to sync its readback (done by the
    group after each program)."""

    def __init__(self, motor: Any):
        self._motor = motor
        self.velocity = SimpleNamespace(get=lambda: float(motor.motor.field_inst.velocity.value or 1.0))

    def sync(self) -> None:
        return None


def _wf(name: str, dtype=ChannelType.DOUBLE, n: int = FLY_MAX) -> pvproperty:
    return pvproperty(name=name, value=[0.0], max_length=n, dtype=dtype)


class FlyGroup(PVGroup):
    """Fly controller PVs over the IOC's model and stage (see the module docstring)."""

    kind = pvproperty(name="Kind", value=0, dtype=ChannelType.LONG)
    x_start = pvproperty(name="XStart", value=0.0)
    x_stop = pvproperty(name="XStop", value=1.0)
    rows = _wf("Rows", n=4096)
    speed = pvproperty(name="Speed", value=1.0)
    sample_rate = pvproperty(name="SampleRate", value=1.0)
    plane = pvproperty(name="Plane", value=[0.0] * 5, max_length=5, dtype=ChannelType.DOUBLE)
    bidirectional = pvproperty(name="Bidirectional", value=1, dtype=ChannelType.LONG)
    hop_x = _wf("HopX", n=100_000)
    hop_y = _wf("HopY", n=100_000)
    hop_height = pvproperty(name="HopHeight", value=1.0)
    approach_speed = pvproperty(name="ApproachSpeed", value=10.0)
    lateral_speed = pvproperty(name="LateralSpeed", value=100.0)
    setpoint = pvproperty(name="Setpoint", value=0.01)
    e_tip = pvproperty(name="ETip", value=math.nan)
    prepare = pvproperty(name="Prepare", value=0, dtype=ChannelType.LONG)
    kickoff = pvproperty(name="Kickoff", value=0, dtype=ChannelType.LONG)
    abort = pvproperty(name="Abort", value=0, dtype=ChannelType.LONG)
    busy = pvproperty(name="Busy", value=0, read_only=True, dtype=ChannelType.LONG)
    n_done = pvproperty(name="NDone", value=0, read_only=True, dtype=ChannelType.LONG)
    n_total = pvproperty(name="NTotal", value=0, read_only=True, dtype=ChannelType.LONG)
    error = pvproperty(name="Error", value="", read_only=True, max_length=2000, dtype=ChannelType.CHAR)
    info = pvproperty(name="Info", value="", read_only=True, max_length=4000, dtype=ChannelType.CHAR)
    read_index = pvproperty(name="ReadIndex", value=0, dtype=ChannelType.LONG)

    def __init__(self, *args, model: Any, stage: Any, time_scale: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_group = stage
        self.model = model
        self.time_scale = float(time_scale)
        shim = SimpleNamespace(model=model, technique=model.technique, time_scale=0.0,
                               stage=SimpleNamespace(x=_AxisShim(stage.x), y=_AxisShim(stage.y),
                                                     z=_AxisShim(stage.z)))
        self.controller = SimFlyController(shim)
        self._aborted = asyncio.Event()  # the current run's abort request (a new one per Kickoff)
        # one waveform per data channel, added to the database directly (their names come from the channel list)
        from caproto import ChannelDouble

        self.data_pvs = {ch: ChannelDouble(value=[0.0], max_length=FLY_MAX) for ch in DATA_CHANNELS}
        for ch, pv in self.data_pvs.items():
            self.pvdb[f"{self.prefix}Data:{ch}"] = pv

    @info.startup
    async def info(self, instance, async_lib):
        c = self.controller
        p = self.model.probe
        await instance.write(json.dumps(dict(
            technique=self.model.technique, acceleration=c.acceleration, max_speed=c.max_speed,
            max_sample_rate=c.max_sample_rate, feedback_bandwidth=c.feedback_bandwidth,
            pipette_capacitance=c.pipette_capacitance, filter_bandwidth=c.filter_bandwidth,
            probe=dict(radius=p.radius, half_angle=p.half_angle, outer_radius=p.outer_radius),
            diffusion=self.model.environment["mediator"]["D"], conductivity=self.model.options.conductivity,
            data_max=FLY_MAX)))

    def _program(self) -> FlyRaster | HopSequence:
        if int(self.kind.value) == 0:
            return FlyRaster(float(self.x_start.value), float(self.x_stop.value),
                             tuple(float(v) for v in self.rows.value), float(self.speed.value),
                             float(self.sample_rate.value), acceleration=self.controller.acceleration,
                             plane=tuple(float(v) for v in self.plane.value),
                             bidirectional=bool(self.bidirectional.value))
        return HopSequence(tuple(float(v) for v in self.hop_x.value), tuple(float(v) for v in self.hop_y.value),
                           float(self.hop_height.value), float(self.approach_speed.value),
                           float(self.lateral_speed.value), float(self.setpoint.value))

    async def _publish_stage(self) -> None:
        for ax in self.stage_group.axes:
            await ax.publish(ax.motor, float(self.model.position[ax.index]))
        await self.stage_group.publish_position()

    @prepare.putter
    async def prepare(self, instance, value):
        if not int(value):
            return 0
        async with self.stage_group.lock:  # after an older run's last writes (made under the lock)
            await self.error.write("")
            try:
                e = float(self.e_tip.value)
                self.controller.e_tip = None if math.isnan(e) else e
                program = self._program()
                duration = self.controller.load(program)
            except Exception as exc:  # reported, not raised: the client reads Error
                await self.error.write(f"{type(exc).__name__}: {exc}"[:1999])
                await self._publish_stage()
                return 0
            await self._publish_stage()
        if self.time_scale > 0:
            await asyncio.sleep(duration * self.time_scale)
        n = program.n_passes if isinstance(program, FlyRaster) else program.n_hops
        await self.n_total.write(n)
        await self.n_done.write(0)
        return 0

    @kickoff.putter
    async def kickoff(self, instance, value):
        if not int(value):
            return 0
        await self.busy.write(1)
        await self.n_done.write(0)
        self._aborted = aborted = asyncio.Event()
        asyncio.get_running_loop().create_task(self._run(aborted))
        return 0

    @abort.putter
    async def abort(self, instance, value):
        """Stop the running program at the end of its current step (the controller's ``abort``); ``Busy`` goes
        to 0 when it has stopped.  Nothing happens when no program runs."""
        if not int(value):
            return 0
        self.controller.abort()
        self._aborted.set()
        return 0

    async def _run(self, aborted: asyncio.Event) -> None:
        """Run the program in a worker thread a few passes at a time, publishing ``NDone`` as passes complete
        (paced by the time scale), as a controller streams its data.  ``aborted`` (set by ``Abort``) stops it at
        the end of the current step and ends the pacing: the passes done are published at once.

        Everything, down to ``Busy`` = 0, is written under the stage's lock: a next run's ``Prepare`` (which takes
        the lock, and comes before its ``Kickoff``) acts after this run's last write."""
        ctl = self.controller
        t0 = time.monotonic()
        released = 0
        async with self.stage_group.lock:
            try:
                try:
                    res = ctl.start()
                    if aborted.is_set():  # Abort came between Kickoff and the start
                        ctl.abort()
                    while True:
                        finished = await asyncio.to_thread(ctl.advance)
                        released = await self._release(res, t0, released, aborted)
                        if finished:
                            break
                finally:
                    ctl.sync_stage()
                    await self._publish_stage()
                await self._release(res, t0, released, aborted)
                if res.error is not None:
                    await self.error.write(f"{type(res.error).__name__}: {res.error}"[:1999])
            except Exception as exc:  # reported, not raised: the client reads Error
                await self.error.write(f"{type(exc).__name__}: {exc}"[:1999])
            finally:
                await self.busy.write(0)

    async def _release(self, res, t0: float, released: int, aborted: asyncio.Event) -> int:
        """Publish ``NDone`` for the passes done since ``released``, each when its time has come (at once once
        ``aborted`` is set)."""
        n = res.n_done
        for i in range(released, n):
            if self.time_scale > 0 and not aborted.is_set():
                delay = t0 + float(res.planned_end_times[i]) * self.time_scale - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(aborted.wait(), delay)
            await self.n_done.write(i + 1)
        return max(released, n)

    @read_index.putter
    async def read_index(self, instance, value):
        res = self.controller.result
        k = int(value)
        if res is None or not (0 <= k < res.n_done):
            return value
        for ch, arr in res.data.items():
            row = np.atleast_1d(np.asarray(arr[k], float))
            await self.data_pvs[ch].write(row.tolist() if row.size == 1 else row)
        return value
