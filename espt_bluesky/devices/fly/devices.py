"""ophyd-async fly devices: a trajectory stage (:class:`FlyStage`) and a sampling detector (:class:`FlyDetector`).

Both follow ophyd-async 0.21's composition model and run in the same RunEngine as the project's ophyd v1 devices:

* :class:`FlyStage` is a ``StandardFlyable`` whose ``FlyableLogic`` talks to a fly controller
  (:class:`~espt_bluesky.devices.fly.controller.SimFlyController` on the bench): ``prepare(program)`` loads a
  :class:`~espt_bluesky.devices.fly.trajectory.FlyRaster` or
  :class:`~espt_bluesky.devices.fly.trajectory.HopSequence` and moves to its start, ``kickoff()`` starts it,
  ``complete()`` waits for its end (and fails with the controller's error, e.g. a ``TipCrash``).
* :class:`FlyDetector` is a ``StandardDetector`` composed of a trigger logic (the sample period and the samples per
  collection: ``TriggerInfo(livetime=1/rate, exposures_per_collection=samples_per_line,
  number_of_events=n_passes)``), an acquire logic (writes each pass or hop as it completes) and a data logic that
  writes one HDF5 file per run where the ``PathProvider`` says, registered through StreamResource/StreamDatum.
  One collection is one pass of a raster (arrays of ``samples_per_line``) or one hop (scalars).

A raster's file groups its channels into few datasets, one data key each (:func:`dataset_layout`): every data key
becomes a node of its own in Tiled, registered, updated and closed by requests of their own, so a run's fixed cost
in Tiled grows with the number of keys, not with the samples.  The signal channels keep a key each
(``current``, or ``height`` and ``error``), the encoder positions are one ``position`` array of (3, samples)
(x, y, z in µm: ``axes`` in its data key), ``time`` (s) stays its own key (other units), and the per-pass
``row`` and ``direction`` are one ``pass`` array of two integers (``fields`` in its data key).  A hop's lateral
position is one ``position`` array (x, y in µm: ``axes``) and its two ion currents one ``currents`` array
(``current_ref``, ``current`` in A: ``fields``); ``surface_z`` (the measurement), ``time`` and ``valid`` keep a key
each.

Prepare the stage before the detector: the detector takes its channels and shapes from the loaded program.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DataKey
from ophyd_async.core import (DetectorAcquireLogic, DetectorDataLogic, DetectorTriggerLogic, FlyableLogic,
                              PathProvider, StandardDetector, StandardFlyable, StreamResourceDataProvider,
                              StreamResourceInfo, TriggerInfo, soft_signal_r_and_setter)

from ...errors import EsptError
from ..waveform_assets import MIMETYPE
from .controller import PASS_CHANNELS, FlyResult
from .trajectory import FlyRaster, HopSequence

#: Rows of samples per HDF5 chunk target (samples), so that a chunk is ~0.5 MB of float64
CHUNK_SAMPLES = 65536
#: Rows of per-pass / per-hop values per HDF5 chunk
CHUNK_ROWS_SCALAR = 1024
#: Seconds at most between a collection written to the file and its being flushed and counted (what a reader of a
#: running scan lags behind at most, besides the Tiled writer's ``live_interval``)
FLUSH_INTERVAL = 0.25
#: Chunk cache of each dataset (bytes): holds a whole chunk of the widest dataset (``position``, 3 × 0.5 MB)
CHUNK_CACHE_BYTES = 8 * 2**20
#: A raster's per-sample encoder channels, grouped into one ``position`` data key of shape (3, samples), µm
POSITION_AXES = ("x", "y", "z")
#: A raster's per-pass channels, grouped into one integer ``pass`` data key of shape (2,)
PASS_FIELDS = ("row", "direction")
#: A hop's lateral position, grouped into one ``position`` data key of shape (2,), µm
HOP_POSITION_AXES = ("x", "y")
#: A hop's ion currents (at the top of the hop, at contact), grouped into one ``currents`` data key of shape (2,), A
HOP_CURRENT_FIELDS = ("current_ref", "current")


class FlyWriteError(EsptError, OSError):
    """The fly detector could not write its HDF5 file; the rows written before stay in the file and are registered."""


@dataclass(frozen=True)
class FlyDataset:
    """One dataset of the detector's file and its data key (``<detector>_<name>``).

    ``channels`` are the controller channels it holds: one is stored as it comes; several are stacked on axis 1
    (a collection's ``shape`` is then ``(len(channels), ...)``).
    """

    name: str
    channels: tuple[str, ...]
    shape: tuple[int, ...]  # of one collection
    dtype: np.dtype
    units: str
    dims: tuple[str, ...]  # of one collection
    labels: dict[str, list[str]]  # extra data-key fields naming the stacked channels ("axes" / "fields")

    def block(self, data: dict[str, np.ndarray], i: int, j: int) -> np.ndarray:
        """Collections ``i..j-1`` of this dataset from the controller's per-channel arrays."""
        if len(self.channels) == 1:
            return np.asarray(data[self.channels[0]][i:j], dtype=self.dtype)
        return np.stack([np.asarray(data[c][i:j], dtype=self.dtype) for c in self.channels], axis=1)

    def append(self, ds: Any, data: dict[str, np.ndarray], i: int, j: int, n0: int) -> None:
        """Write collections ``i..j-1`` to rows ``n0..`` of ``ds`` (an h5py dataset already that long).

        Through h5py's low-level calls: its ``ds[a:b] = x`` costs ~0.1 ms of selection handling per write, a third
        of the write itself at a fast scan's batch sizes.  A stacked per-sample dataset (``position``) is written
        channel by channel into its rows (no stacked copy of the samples); anything else as :meth:`block`."""
        import h5py

        k = j - i
        if len(self.channels) > 1 and "sample" in self.dims:
            rows = (k, 1, *self.shape[1:])
            for c, name in enumerate(self.channels):
                a = np.ascontiguousarray(data[name][i:j], dtype=self.dtype).reshape(rows)
                _write_at(ds, (n0, c, *(0,) * (len(self.shape) - 1)), a, h5py)
            return
        _write_at(ds, (n0, *(0,) * len(self.shape)), np.ascontiguousarray(self.block(data, i, j)), h5py)


def _write_at(ds: Any, start: tuple[int, ...], a: np.ndarray, h5py: Any) -> None:
    """Write the C-contiguous array ``a`` into ``ds`` at ``start`` (h5py's low-level hyperslab write)."""
    space = ds.id.get_space()
    space.select_hyperslab(start, a.shape)
    ds.id.write(h5py.h5s.create_simple(a.shape), space, a)


def dataset_layout(channels: dict[str, tuple[str, str]], per_collection: int, raster: bool) -> list[FlyDataset]:
    """The datasets (and data keys) of a detector file for the loaded program's ``channels`` (name -> (units,
    description)) with ``per_collection`` samples per collection; see the module docstring."""
    f8, i8 = np.dtype("<f8"), np.dtype("<i8")
    n = int(per_collection)
    if not raster:  # hops: one row per hop; the lateral position (x, y) and the two currents grouped
        return _grouped_layout(channels, {"position": (HOP_POSITION_AXES, "axis", "axes"),
                                          "currents": (HOP_CURRENT_FIELDS, "field", "fields")})
    sample = () if n == 1 else (n,)
    out = [FlyDataset(ch, (ch,), sample, f8, units, ("sample",) if sample else (), {})
           for ch, (units, _d) in channels.items() if ch not in (*POSITION_AXES, "time", *PASS_FIELDS)]
    units = {channels[a][0] for a in POSITION_AXES}
    if len(units) != 1:  # one array carries one unit
        raise ValueError(f"position channels {POSITION_AXES} have different units {units}")
    out.append(FlyDataset("position", POSITION_AXES, (len(POSITION_AXES), *sample), f8, units.pop(),
                          ("axis", "sample") if sample else ("axis",), {"axes": list(POSITION_AXES)}))
    out.append(FlyDataset("time", ("time",), sample, f8, channels["time"][0], ("sample",) if sample else (), {}))
    out.append(FlyDataset("pass", PASS_FIELDS, (len(PASS_FIELDS),), i8, "", ("field",),
                          {"fields": list(PASS_FIELDS)}))
    return out


def _grouped_layout(channels: dict[str, tuple[str, str]],
                    groups: dict[str, tuple[tuple[str, ...], str, str]]) -> list[FlyDataset]:
    """One scalar per hop and channel, except ``groups`` (name -> (channels, dim, label field)): one row each."""
    f8, i8 = np.dtype("<f8"), np.dtype("<i8")
    grouped = {c for chs, _dim, _label in groups.values() for c in chs}
    out = []
    for name, (chs, dim, label) in groups.items():
        units = {channels[c][0] for c in chs}
        if len(units) != 1:  # one array carries one unit
            raise ValueError(f"{name} channels {chs} have different units {units}")
        out.append(FlyDataset(name, chs, (len(chs),), f8, units.pop(), (dim,), {label: list(chs)}))
    out += [FlyDataset(ch, (ch,), (), i8 if ch == "valid" else f8, units, (), {})
            for ch, (units, _d) in channels.items() if ch not in grouped]
    return out


async def _sleep_until(t0: float, t: float) -> None:
    delay = t0 + t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _TrajectoryLogic(FlyableLogic):
    """Loads the program at prepare; at kickoff starts it in a worker thread that streams passes (``progress`` is
    set each time some are done); complete waits for its end, paced by ``time_scale``."""

    def __init__(self, controller: Any):
        self.controller = controller
        self.started: asyncio.Event | None = None
        self.progress: asyncio.Event | None = None
        self.task: asyncio.Future | None = None
        self.t_kickoff = 0.0
        self.halted_at: float | None = None  # time.monotonic() of a stop while flying

    async def on_prepare(self, value: FlyRaster | HopSequence) -> Any:
        self.started = asyncio.Event()
        duration = self.controller.load(value)
        if self.controller.time_scale > 0:
            await asyncio.sleep(duration * self.controller.time_scale)
        return value

    async def on_kickoff(self, ctx: Any) -> Any:
        ctl = self.controller
        loop = asyncio.get_running_loop()
        self.progress = progress = asyncio.Event()

        def run() -> None:  # the controller's firmware: its own thread, numpy releases the GIL for the file writes
            try:
                while not ctl.advance():
                    loop.call_soon_threadsafe(progress.set)
            finally:
                loop.call_soon_threadsafe(progress.set)

        self.t_kickoff = time.monotonic()
        self.halted_at = None
        ctl.start()
        self.task = loop.run_in_executor(None, run)
        self.started.set()
        return ctx

    async def on_complete(self, ctx: Any) -> None:
        await self.task
        self.controller.sync_stage()
        res: FlyResult = self.controller.result
        await _sleep_until(self.t_kickoff, res.duration * self.controller.time_scale)
        if res.error is not None:
            raise res.error

    async def stop(self) -> None:
        if self.task is not None and self.halted_at is None:  # paced passes after this moment were never flown
            self.halted_at = time.monotonic()
        self.controller.abort()
        if self.task is not None:
            with suppress(Exception):
                await self.task
            self.controller.sync_stage()
        self.controller.loaded = None


class _ControllerProperty:
    @property
    def controller(self) -> Any:
        """The fly controller (simulated, or the IOC's) the stage drives."""
        return self._controller

    async def halt(self) -> None:
        """Stop a running programme now: the controller stops at the end of its current step, the passes (hops)
        done are kept.  What unstaging does too; a plan calls it first when it fails or is stopped, so that the
        detector can write and count every pass done before the plan's last collect."""
        await self.flyable_logic.stop()


class FlyStage(_ControllerProperty, StandardFlyable):
    """The stage as a fly device: ``prepare(FlyRaster | HopSequence)``, ``kickoff()``, ``complete()``."""

    def __init__(self, controller: Any, name: str = "fly_stage") -> None:
        self._controller = controller
        super().__init__(name=name)

    @cached_property
    def flyable_logic(self) -> _TrajectoryLogic:
        return _TrajectoryLogic(self._controller)


class _State:
    """What the detector's logics share: the sample period, samples per collection, the file and the counter."""

    def __init__(self, controller: Any, stage: FlyStage, name: str = "fly"):
        self.controller = controller
        self.stage = stage
        self.name = name  # the detector's, for error messages
        self.period = 0.0
        self.per_collection = 1
        self.n_exposures = 0
        self.file = None
        self.path: Path | None = None
        self.datasets: dict[str, Any] = {}  # name -> h5py dataset
        self.layout: list[FlyDataset] = []
        self.channels: list[str] = []  # the controller channels the layout holds
        self.written, self.set_written = soft_signal_r_and_setter(int, 0)
        self.n_written = 0  # collections flushed and counted (``written``): what readers and Tiled see
        self.n_appended = 0  # collections in the datasets, flushed or not
        self.flushed_at = 0.0  # time.monotonic() of the last flush


def chunk_rows(per_collection: int, raster: bool) -> int:
    """Collections per HDF5 chunk of every dataset of a detector file: ~``CHUNK_SAMPLES`` samples of one channel
    for a raster's passes (at least one pass), ``CHUNK_ROWS_SCALAR`` hops."""
    return max(CHUNK_SAMPLES // max(int(per_collection), 1), 1) if raster else CHUNK_ROWS_SCALAR


class _SampleTrigger(DetectorTriggerLogic):
    def __init__(self, state: _State):
        self.state = state

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.state.period = livetime + deadtime
        self.state.n_exposures = num

    async def prepare_exposures_per_collection(self, exposures_per_collection: int) -> None:
        self.state.per_collection = int(exposures_per_collection)

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _TaskAcquire(DetectorAcquireLogic):
    """An acquire logic that runs ``_acquire`` (write passes to the file as they come) as one task per kickoff."""

    def __init__(self, state: _State):
        self.state = state
        self.task: asyncio.Task | None = None

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._acquire()
        except BaseException:
            with suppress(Exception):  # what was written before a failure or a stop is flushed and counted
                _publish(self.state)
            raise
        _publish(self.state)

    async def _acquire(self) -> None:
        raise NotImplementedError

    async def wait_for_idle(self) -> None:
        if self.task is not None:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None


class _PacedAcquire(_TaskAcquire):
    """Writes each pass (or hop) to the file as soon as the controller has done it, paced by ``time_scale``."""

    async def _acquire(self) -> None:
        st = self.state
        logic = st.stage.flyable_logic
        if logic.started is None:
            raise RuntimeError(f"{st.stage.name} was not prepared before the detector was kicked off")
        await logic.started.wait()
        res: FlyResult = st.controller.result
        scale = st.controller.time_scale
        i = 0
        while True:
            finished = res.finished  # read before n_done: once finished, n_done is final
            n = res.n_done
            j = n
            if scale > 0 and i < n:  # released when its time has come
                if logic.halted_at is None:
                    await _sleep_until(logic.t_kickoff, float(res.planned_end_times[i]) * scale)
                now = (time.monotonic() - logic.t_kickoff) / scale
                if logic.halted_at is not None:  # stopped (the stage's stop): only what was flown by then
                    now = min(now, (logic.halted_at - logic.t_kickoff) / scale)
                    j = min(int(np.searchsorted(res.planned_end_times, now, side="right")), n)
                    finished = finished or j <= i
                else:
                    j = min(max(int(np.searchsorted(res.planned_end_times, now, side="right")), i + 1), n)
            if j > i:
                _write_rows(st, res.buffers, i, j)
                i = j
                continue
            if finished:
                break
            logic.progress.clear()
            if res.n_done > i or res.finished:
                continue
            await _wait_or_flush(st, logic.progress)
        if res.error is not None:
            raise res.error


def _write_rows(st: _State, data: dict[str, np.ndarray], i: int, j: int) -> None:
    """Append collections i..j-1 (of the controller's per-channel arrays ``data``) to every dataset; flush and count
    what the file holds once ``FLUSH_INTERVAL`` has passed since the last flush.

    A flush (SWMR: the file's metadata and every partly filled chunk) costs ~1 ms and rewrites each partly filled
    chunk: flushing after every pass wrote a chunk of k passes k times over (16 times at 4096 samples per pass) and
    took a third of a fast scan's time.  Collections written between two flushes wait at most ``FLUSH_INTERVAL``
    (the acquire loop flushes on time while it waits, :func:`_wait_or_flush`), and the last ones are flushed when
    the acquisition ends (:func:`_publish`).

    Raises
    ------
    FlyWriteError
        If the file cannot take them (disk full, file gone, ...): the datasets are cut back to the collections
        written before, which are flushed and counted (so the file holds only whole, registered rows), and the error
        names the file and the cause.
    """
    n0 = st.n_appended
    if j <= i:
        return
    try:
        for spec in st.layout:
            ds = st.datasets[spec.name]
            ds.id.set_extent((n0 + (j - i), *spec.shape))
            spec.append(ds, data, i, j, n0)
    except Exception as exc:
        _cut_back(st, n0)
        what = _collections(st)
        raise FlyWriteError(
            f"{st.name}: writing {what} {n0}..{n0 + (j - i) - 1} to {st.path} failed "
            f"({type(exc).__name__}: {exc}); the {st.n_written} {what} written before are kept in the file and "
            f"registered") from exc
    st.n_appended = n0 + (j - i)
    if _flush_due(st) <= 0:
        _publish(st)


async def _wait_or_flush(st: _State, event: asyncio.Event) -> None:
    """Wait for ``event``; flush what waits to be flushed if ``FLUSH_INTERVAL`` runs out first."""
    due = _flush_due(st)
    if due == math.inf:
        await event.wait()
        return
    try:
        await asyncio.wait_for(event.wait(), timeout=max(due, 0.0))
    except TimeoutError:
        _publish(st)


def _collections(st: _State) -> str:
    """What one collection of the detector's file is, for messages: "passes" (a raster's file has a ``pass``
    dataset) or "hops".  From the file, not the loaded programme: a halted stage has unloaded it."""
    return "passes" if "pass" in st.datasets else "hops"


def _flush_due(st: _State) -> float:
    """Seconds until collections written but not flushed must be flushed (``inf`` if there are none)."""
    if st.n_appended == st.n_written:
        return math.inf
    return st.flushed_at + FLUSH_INTERVAL - time.monotonic()


def _publish(st: _State) -> None:
    """Flush the file and count every collection in it as written (readers, and the Tiled run, see them)."""
    if st.n_appended == st.n_written or st.file is None:
        return
    try:
        st.file.flush()
    except Exception as exc:
        n0 = st.n_written
        _cut_back(st, n0)
        what = _collections(st)
        raise FlyWriteError(
            f"{st.name}: flushing {what} {n0}..{st.n_appended - 1} to {st.path} failed ({type(exc).__name__}: "
            f"{exc}); the {n0} {what} written before are kept in the file and registered") from exc
    st.flushed_at = time.monotonic()
    st.n_written = st.n_appended
    st.set_written(st.n_written)


def _cut_back(st: _State, n: int) -> None:
    """Best effort after a failed write: datasets cut back to ``n`` collections, flushed and counted (the file may
    be beyond repair: then readers stop at the last good flush)."""
    for ds in st.datasets.values():
        with suppress(Exception):
            ds.resize(n, axis=0)
    st.n_appended = n
    with suppress(Exception):
        st.file.flush()
        st.flushed_at = time.monotonic()
        st.n_written = n
        st.set_written(n)


async def _fail_fast(updates: Any, task: asyncio.Future | None) -> Any:
    """Yield ``updates`` (an async iterator) until it ends, but raise at once when ``task`` fails."""
    it = aiter(updates)
    while True:
        nxt = asyncio.ensure_future(anext(it))
        try:
            if task is not None and not task.done():
                await asyncio.wait({nxt, task}, return_when=asyncio.FIRST_COMPLETED)
            if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
            update = await nxt
        except StopAsyncIteration:
            return
        finally:
            if not nxt.done():
                nxt.cancel()
                with suppress(BaseException):
                    await nxt
        yield update


class _UnitsProvider(StreamResourceDataProvider):
    """StreamResourceDataProvider whose data keys carry units, dims and the shape of one collection."""

    def __init__(self, *args: Any, meta: dict[str, dict], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.meta = meta

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        if collections_per_event != 1:
            raise ValueError("the fly detector emits one collection (a pass or a hop) per event")
        out = {}
        for r in self.resources:
            m = self.meta[r.data_key]
            dk = DataKey(source=r.source or self.uri, shape=list(r.shape),
                         dtype="array" if r.shape else ("integer" if m["kind"] == "i" else "number"),
                         dtype_numpy=r.dtype_numpy, external="STREAM:")
            if m["units"]:
                dk["units"] = m["units"]
            if r.shape:
                dk["dims"] = list(m["dims"])
            dk.update(m["labels"])  # "axes" / "fields": what the stacked rows are
            out[r.data_key] = dk
        return out


class _HDF5Data(DetectorDataLogic):
    def __init__(self, state: _State, path_provider: PathProvider):
        self.state = state
        self.path_provider = path_provider

    async def prepare_unbounded(self, datakey_name: str):
        import h5py

        st = self.state
        ctl = st.controller
        if ctl.loaded is None:
            raise RuntimeError(f"prepare {st.stage.name} with a FlyRaster or HopSequence before the detector")
        await self.stop()
        info = self.path_provider(datakey_name)
        directory = Path(str(info.directory_path))
        directory.mkdir(parents=True, exist_ok=True)
        st.path = directory / f"{info.filename}.h5"
        n = st.per_collection
        expected = ctl.per_collection()
        if n != expected:
            raise ValueError(f"{datakey_name}: prepared for {n} samples per collection, the loaded program has "
                             f"{expected}")
        channels = dict(ctl.channels())
        raster = isinstance(ctl.loaded, FlyRaster)
        if raster:
            channels.update(PASS_CHANNELS)
        layout = dataset_layout(channels, n, raster)
        rows = chunk_rows(n, raster)
        f = h5py.File(st.path, "w", libver="latest", rdcc_nbytes=CHUNK_CACHE_BYTES)
        resources, meta = [], {}
        for spec in layout:
            # every dataset's chunks hold the same collections (~0.5 MB of each per-sample channel;
            # CHUNK_ROWS_SCALAR hops), so all datasets' chunks fill, and are written out, together
            chunks = (rows, *spec.shape)
            f.create_dataset(f"/{spec.name}", shape=(0, *spec.shape), maxshape=(None, *spec.shape),
                             dtype=spec.dtype, chunks=chunks)
            key = f"{datakey_name}_{spec.name}"
            resources.append(StreamResourceInfo(data_key=key, shape=spec.shape, chunk_shape=chunks,
                                                dtype_numpy=spec.dtype.str,
                                                parameters={"dataset": f"/{spec.name}", "swmr": True}))
            meta[key] = dict(units=spec.units, kind=spec.dtype.kind, dims=spec.dims, labels=spec.labels)
        f.swmr_mode = True
        st.file = f
        st.layout = layout
        st.channels = [c for spec in layout for c in spec.channels]
        st.datasets = {spec.name: f[f"/{spec.name}"] for spec in layout}
        st.n_written = st.n_appended = 0
        st.flushed_at = time.monotonic()
        st.set_written(0)
        return _UnitsProvider(uri=st.path.as_uri(), resources=resources, mimetype=MIMETYPE,
                              collections_written_signal=st.written, meta=meta)

    def get_hinted_fields(self, datakey_name: str) -> list[str]:
        ctl = self.state.controller
        if isinstance(ctl.loaded, HopSequence):
            return [f"{datakey_name}_surface_z"]  # what a hop map shows: the surface found at each hop
        ch = "height" if ctl.technique == "EC-AFM" else "current"
        return [f"{datakey_name}_{ch}"]

    async def stop(self) -> None:
        st = self.state
        if st.file is not None:
            st.file.close()
            st.file = None
            st.datasets = {}
            st.layout = []


class _FlyDetectorBase(StandardDetector):
    """A fly detector: sample trigger, an acquire logic that fills the run's HDF5 file, the HDF5 data logic."""

    def __init__(self, controller: Any, stage: Any, path_provider: PathProvider, acquire: type[_TaskAcquire],
                 name: str) -> None:
        self._state = _State(controller, stage, name)
        self.add_detector_logics(_SampleTrigger(self._state), acquire(self._state),
                                 _HDF5Data(self._state, path_provider))
        super().__init__(name=name)

    async def _wait_for_index(self, *args: Any, **kwargs: Any) -> Any:
        # ophyd-async waits for the written counter to reach its target, for up to ``exposure_timeout`` between
        # two updates (4 line times + 60 s here): a write that failed would be noticed only then.  The acquire
        # task is what writes the file, so its failure ends the wait (``complete``, ``trigger``) at once.
        task = getattr(self._acquire_logic, "task", None)
        async for update in _fail_fast(super()._wait_for_index(*args, **kwargs), task):
            yield update

    async def finish_writing(self) -> None:
        """Wait until the acquisition has ended (the controller done or stopped) and everything it wrote is flushed
        and counted; its failure is not raised here (``complete`` raises it)."""
        task = getattr(self._acquire_logic, "task", None)
        if task is not None:
            await asyncio.wait({task})

    @property
    def file_path(self) -> Path | None:
        """The HDF5 file of the current (or last) run."""
        return self._state.path


class FlyDetector(_FlyDetectorBase):
    """Potentiostat / AFM acquisition sampling at a set rate during a fly scan, writing HDF5 assets.

    Data keys (``<name>_<key>``) of a raster, per pass: ``current`` (A; SECM tip current, SICM ion current) or
    ``height`` and ``error`` (µm; EC-AFM), arrays of ``samples_per_line``; ``position``, the encoder x, y, z (µm)
    of every sample as one (3, ``samples_per_line``) array (``axes`` in its data key); ``time`` (s) of every
    sample; ``pass``, the pass's row index and direction (+1 forward, −1 backward) as two integers (``fields``).
    :func:`espt_bluesky.storage.maps.fly_channels` splits them back into ``x``, ``y``, ``z``, ``row``,
    ``direction``.  For hops, per hop: ``position`` (x, y in µm; ``axes``), ``surface_z`` (µm), ``currents``
    (``current_ref``, ``current`` in A; ``fields``), ``time`` (s), ``valid``; ``fly_channels`` splits them the same
    way.
    """

    def __init__(self, controller: Any, stage: FlyStage, path_provider: PathProvider, name: str = "fly") -> None:
        super().__init__(controller, stage, path_provider, _PacedAcquire, name)


def trigger_info_for(program: FlyRaster | HopSequence) -> TriggerInfo:
    """The detector's ``TriggerInfo`` for a program: one event per pass (samples at the raster's rate) or per hop."""
    if isinstance(program, FlyRaster):
        return TriggerInfo(livetime=1.0 / program.sample_rate, exposures_per_collection=program.samples_per_line,
                           number_of_events=program.n_passes,
                           exposure_timeout=program.line_time * 4 + 60.0)
    return TriggerInfo(number_of_events=program.n_hops, exposure_timeout=60.0)


def make_fly_devices(bench: Any, directory: str | Path, *, name: str = "fly", **controller_options: Any):
    """The fly stage and detector of a simulated bench, writing HDF5 files into ``directory`` (a Tiled readable
    location, e.g. ``catalog.asset_dir``).  Returns ``(stage, detector)``; plans connect them in the RunEngine's
    event loop (``ensure_connected``).

    Examples
    --------
    >>> fly_stage, fly_det = make_fly_devices(bench, catalog.asset_dir)
    """
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider

    from .controller import SimFlyController

    ctl = SimFlyController(bench, **controller_options)
    stage = FlyStage(ctl, name=f"{name}_stage")
    det = FlyDetector(ctl, stage, StaticPathProvider(UUIDFilenameProvider(), Path(directory).resolve()), name=name)
    return stage, det
