"""The simulated fly controller: executes a :class:`FlyRaster` or a :class:`HopSequence` on the bench model.

This is the simulated firmware behind the ophyd-async devices of :mod:`espt_bluesky.devices.fly.devices`: the
motion controller that runs the loaded trajectory and the acquisition board that samples during it.  It is plain
Python over :class:`~espt_bluesky.physics.bench_model.BenchModel` (read-only use of the model's physics, plus moving
its tip and clock), so the same executed data can be served over EPICS waveform PVs.

Executing a raster streams, as a controller does: :meth:`SimFlyController.start` plans the run,
:meth:`SimFlyController.advance` (from the fly stage's worker thread) simulates the next few whole passes -- the
path (run-ups, passes, turnarounds) sampled at the detector rate, the stationary signal along it from
:func:`~espt_bluesky.physics.scan_dynamics.stationary_along_path`, the probe's response
(:func:`~espt_bluesky.physics.scan_dynamics.apply_lag_stream`, the filter's state carried from step to step, so the
result is that of the whole path at once) and noise -- and marks them done in :class:`FlyResult`, where the
detector picks them up while the rest is computed.  If the probe's end face would touch the surface anywhere on
the path, the controller stops there: the passes completed before are kept, the tip stays at the last safe point
and the error is :class:`~espt_bluesky.errors.TipCrash`.  :meth:`SimFlyController.execute` runs a program to its
end in one call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidArgument, TipCrash
from ...physics import scan_dynamics as sd
from ...physics import sicm as sicm_physics
from .trajectory import FlyRaster, HopSequence

#: Channels recorded per technique: name -> (units, description)
LINE_CHANNELS: dict[str, dict[str, tuple[str, str]]] = {
    "SECM": {"current": ("A", "tip current")},
    "SICM": {"current": ("A", "ion current")},
    "EC-AFM": {"height": ("um", "height reported by the z feedback"),
               "error": ("um", "feedback error: reported minus true height")},
}
POSITION_CHANNELS = {"x": ("um", "encoder x"), "y": ("um", "encoder y"), "z": ("um", "encoder z"),
                     "time": ("s", "time since kickoff")}
PASS_CHANNELS = {"direction": ("", "+1 forward (x increasing), -1 backward"), "row": ("", "row index")}
HOP_CHANNELS = {"x": ("um", "hop x"), "y": ("um", "hop y"), "surface_z": ("um", "surface height found"),
                "current_ref": ("A", "ion current at the top of the hop"),
                "current": ("A", "ion current at contact"), "time": ("s", "time since kickoff"),
                "valid": ("", "1, or 0 for a hop that faulted")}


#: Samples of path simulated per step of a streaming raster (whole passes, at least one): small enough that the
#: detector writes the first passes while the rest is computed, large enough that numpy's per-call cost is noise
STEP_SAMPLES = 65536
#: Hops handed out per step of a hop programme (all planned at once; :meth:`SimFlyController.abort` stops it between
#: two steps)
HOP_STEP = 64


@dataclass
class FlyResult:
    """What one execution records, filled while it runs (a controller streams its passes).

    ``buffers`` hold every planned pass / hop; rows ``[0, n_done)`` are complete (filled before ``n_done`` moves, so
    another thread reading ``n_done`` first sees whole rows).  Line channels are (n_passes, samples_per_line), hop
    channels (n_hops,).  ``finished`` turns True when the controller stopped (at the end, or at an ``error``).
    """

    kind: str  # "lines" | "hops"
    buffers: dict[str, np.ndarray]
    planned_end_times: np.ndarray  # s after kickoff at which each planned pass / hop is complete
    duration: float  # s; the planned one until ``finished``, then the one executed
    error: BaseException | None = None
    compute_time: float = 0.0  # CPU time spent simulating (the instrument's own time on hardware)
    n_done: int = 0
    finished: bool = False
    finished_at: float = 0.0  # time.perf_counter() when it finished (a benchmark's mark)

    @property
    def data(self) -> dict[str, np.ndarray]:
        """The completed rows of every channel."""
        n = self.n_done
        return {k: v[:n] for k, v in self.buffers.items()}

    @property
    def end_times(self) -> np.ndarray:
        """End times (s after kickoff) of the completed passes / hops."""
        return self.planned_end_times[:self.n_done]


class ProgramChannels:
    """What the detectors ask a fly controller (simulated or over EPICS) about the loaded program."""

    technique: str
    loaded: FlyRaster | HopSequence | None

    def channels(self) -> dict[str, tuple[str, str]]:
        """The per-sample (lines) or per-hop channels of what is loaded."""
        if isinstance(self.loaded, HopSequence):
            return dict(HOP_CHANNELS)
        return {**LINE_CHANNELS[self.technique], **POSITION_CHANNELS}

    def per_collection(self) -> int:
        """Samples per collection: ``samples_per_line`` of a raster, 1 for hops."""
        return self.loaded.samples_per_line if isinstance(self.loaded, FlyRaster) else 1


@dataclass
class SimFlyController(ProgramChannels):
    """Simulated motion controller and acquisition board of a fly scan over one :class:`SimBench`.

    Parameters
    ----------
    bench : SimBench
    acceleration : float
        Stage acceleration (µm/s²) for run-ups and turnarounds (5 m/s²: a piezo scanner).
    max_speed : float
        Fastest constant speed the stage can fly (µm/s; 10 mm/s).
    max_sample_rate : float
        Fastest sampling of the acquisition board (Hz).
    feedback_bandwidth : float
        EC-AFM z-feedback bandwidth (Hz).
    pipette_capacitance, filter_bandwidth : float
        SICM pipette wall capacitance (F) and current-amplifier filter (Hz).
    path_resolution : float, optional
        Spacing (µm) at which the stationary signal is evaluated along the path and interpolated between; default
        a tenth of the probe radius.
    """

    bench: Any
    acceleration: float = 5e6
    max_speed: float = 1e4
    max_sample_rate: float = 1e5
    feedback_bandwidth: float = 500.0
    pipette_capacitance: float = 2e-12
    filter_bandwidth: float = 10e3
    path_resolution: float | None = None
    e_tip: float | None = None
    loaded: FlyRaster | HopSequence | None = field(default=None, init=False)
    result: FlyResult | None = field(default=None, init=False)
    compute_time: float = field(default=0.0, init=False)
    _steps: Any = field(default=None, init=False, repr=False)
    _abort: bool = field(default=False, init=False, repr=False)

    @property
    def model(self):
        return self.bench.model

    @property
    def technique(self) -> str:
        return self.bench.technique

    @property
    def time_scale(self) -> float:
        return float(self.bench.time_scale)

    # ------------------------------------------------------------------ what the controller reports
    def time_constants(self, height: float | None = None) -> tuple[float, ...]:
        """The probe's response times (s) on this bench; SECM's depend on the tip–sample ``height`` (µm)."""
        m = self.model
        p = m.probe
        if self.technique == "SECM":
            d = p.radius if height is None else float(height)
            return sd.secm_time_constants(p.radius, d, m.environment["mediator"]["D"])
        if self.technique == "SICM":
            return sd.sicm_time_constants(p.radius, p.half_angle, m.options.conductivity,
                                          capacitance=self.pipette_capacitance,
                                          filter_bandwidth=self.filter_bandwidth)
        if self.technique == "EC-AFM":
            return sd.afm_time_constants(self.feedback_bandwidth)
        raise InvalidArgument(f"technique={self.technique!r}: fly scanning covers SECM, SICM and EC-AFM")

    # ------------------------------------------------------------------ motion
    def _sync_stage(self) -> None:
        st = self.bench.stage
        for ax in (st.x, st.y, st.z):
            ax.sync()

    def load(self, program: FlyRaster | HopSequence) -> float:
        """Load a program and move to its start (up first, then across, then down); returns the move's time (s)."""
        if not isinstance(program, (FlyRaster, HopSequence)):
            raise InvalidArgument(f"{program!r} is not a FlyRaster or a HopSequence")
        self.loaded = program
        self.result = None
        m = self.model
        if isinstance(program, FlyRaster):
            x, y, z = program.start_position
        else:
            x, y = program.x[0], program.y[0]
            z = max(float(m.position[2]), float(m.surface_z(x, y)) + program.hop_height)
        vxy = float(self.bench.stage.x.velocity.get())
        vz = float(self.bench.stage.z.velocity.get())
        x0, y0, z0 = m.position
        t = 0.0
        try:
            if z >= z0:
                t += m.move_to(x0, y0, z, velocity=vz)
                t += m.move_to(x, y, z, velocity=vxy)
            else:
                t += m.move_to(x, y, z0, velocity=vxy)
                t += m.move_to(x, y, z, velocity=vz)
        finally:
            self._sync_stage()
        return t

    def start(self) -> FlyResult:
        """Start the loaded program: returns its (empty) :class:`FlyResult`; :meth:`advance` runs it step by step."""
        if self.loaded is None:
            raise RuntimeError("no program loaded: prepare the fly stage first")
        if isinstance(self.loaded, FlyRaster):
            res, steps = self._raster_steps(self.loaded)
        else:
            res, steps = self._hop_steps(self.loaded)
        self.result, self._steps, self._abort = res, steps, False
        return res

    def advance(self) -> bool:
        """Run the next step of the started program (some whole passes); True once it has finished.

        Plain numpy on the bench model: may run in a worker thread while the event loop writes what is done.
        Call :meth:`sync_stage` from the thread that owns the ophyd devices when it has finished."""
        res = self.result
        if res is None or self._steps is None:
            raise RuntimeError("no program started: kick the fly stage off first")
        if res.finished:
            return True
        t0 = time.thread_time()
        try:
            if self._abort:
                self._steps.close()
                raise StopIteration
            next(self._steps)
        except StopIteration:
            res.finished_at, res.finished = time.perf_counter(), True
        except BaseException as exc:  # a fault of the simulation ends the program like a controller fault
            res.error = exc
            res.finished_at, res.finished = time.perf_counter(), True
        finally:
            dt = time.thread_time() - t0
            res.compute_time += dt
            self.compute_time += dt
        return res.finished

    def abort(self) -> None:
        """Stop a running program at the end of the current step (the passes done stay); any thread."""
        self._abort = True

    def sync_stage(self) -> None:
        """Tell the ophyd stage where the controller left the tip."""
        self._sync_stage()

    def execute(self) -> FlyResult:
        """Run the loaded program to its end now (instantly: the devices pace the data by ``time_scale``)."""
        res = self.start()
        try:
            while not self.advance():
                pass
        finally:
            self._sync_stage()
        return res

    def _stationary(self, x, y, z) -> dict[str, np.ndarray]:
        """Stationary signals along a path, evaluated every ``path_resolution`` µm of path and interpolated."""
        res = self.path_resolution or 0.1 * self.model.probe.radius
        seg = np.hypot(np.diff(x), np.diff(y))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        if s[-1] / res >= 0.5 * x.size:  # no saving: evaluate every sample
            return sd.stationary_along_path(self.model, x, y, z, e_tip=self.e_tip)
        nodes = np.unique(np.concatenate([np.searchsorted(s, np.arange(0.0, s[-1], res)), [x.size - 1]]))
        nodes = np.clip(nodes, 0, x.size - 1)
        vals = sd.stationary_along_path(self.model, x[nodes], y[nodes], z[nodes], e_tip=self.e_tip)
        # interpolate in path length; samples where the stage rests (same s) get the node's value
        return {k: np.interp(s, s[nodes], v) for k, v in vals.items()}

    def _raster_steps(self, r: FlyRaster):
        """The raster's result (empty) and the generator that fills it, a few whole passes per step (planning the
        path is the controller's work too: done in the first step)."""
        res = FlyResult("lines", {}, np.zeros(0), 0.0)
        return res, self._raster_run(r, res)

    def _raster_run(self, r: FlyRaster, res: FlyResult):
        m = self.model
        tl = r.timeline()
        t, x, y, zpath, gate = tl["t"], tl["x"], tl["y"], tl["z"], tl["gate"]
        n, n_pass = r.samples_per_line, r.n_passes
        dt = 1.0 / r.sample_rate
        first = np.flatnonzero((gate >= 0) & (np.r_[-2, gate[:-1]] != gate))  # first sample of each pass
        if first.size != n_pass or np.any(first + n > x.size) or np.any(gate[np.minimum(first + n - 1, x.size - 1)]
                                                                           != np.arange(first.size)):
            raise RuntimeError(f"raster timeline has {first.size} passes of uneven length; planned {n_pass} × {n}")
        passes = r.passes()
        buf = {k: np.empty((n_pass, n)) for k in [*LINE_CHANNELS[self.technique], *POSITION_CHANNELS]}
        buf["direction"] = np.array([p[1] for p in passes], dtype=int)
        buf["row"] = np.array([p[0] for p in passes], dtype=int)
        res.buffers, res.planned_end_times, res.duration = buf, t[first + n - 1] + dt, float(t[-1] + dt)
        # step boundaries: after whole passes, at least STEP_SAMPLES of path per step; the last step takes the rest
        bounds = [0]
        for p in range(n_pass):
            if first[p] + n - bounds[-1] >= STEP_SAMPLES:
                bounds.append(int(first[p] + n))
        if bounds[-1] < x.size:
            bounds.append(x.size)
        height = None
        if self.technique == "SECM":
            height = float(np.median(zpath - m.surface_z(x, y)))
        taus = self.time_constants(height)
        state = None
        error, n_keep = None, x.size
        done_to = 0  # samples of the path executed so far
        try:
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                xs, ys, zs = x[s0:s1], y[s0:s1], zpath[s0:s1]
                stat = self._stationary(xs, ys, zs)
                if "clearance" in stat:
                    bad = np.flatnonzero(stat["clearance"] < 0.0)
                    if bad.size:
                        k = s0 + int(bad[0])
                        n_keep = k
                        error = TipCrash(f"tip crash during the fly scan: the probe end touched the sample at "
                                         f"x={x[k]:.3f}, y={y[k]:.3f} µm, z={zpath[k]:.3f} µm (t={t[k]:.4f} s "
                                         f"after kickoff); passes completed before it are kept")
                if self.technique == "EC-AFM":
                    h_true = stat["height"]
                    h, state = sd.apply_lag_stream(h_true, dt, taus, state)
                    if m.options.noise > 0:
                        h = h + m.rng.normal(0.0, m.options.height_noise, h.shape)
                    rec = {"height": h, "error": h - h_true}
                    zrec = h  # the z piezo follows the feedback output
                else:
                    i, state = sd.apply_lag_stream(stat["current"], dt, taus, state)
                    scale = m.i_tip_inf() if self.technique == "SECM" else None
                    rec = {"current": np.asarray(m.add_noise(i, scale=scale), float)}
                    zrec = zs
                rec.update(x=xs, y=ys, z=zrec, time=t[s0:s1])
                p = res.n_done
                while p < first.size and first[p] + n <= min(s1, n_keep):
                    a = int(first[p]) - s0
                    for k, v in rec.items():
                        buf[k][p] = v[a:a + n]
                    p += 1
                    res.n_done = p  # after the row is whole: a reader in another thread sees complete rows
                done_to = min(s1, n_keep)
                if error is not None:
                    break
                yield
        finally:  # at the end, at a crash, or stopped (abort): the tip is where the path was executed to
            last = max(done_to - 1, 0)
            m.position = np.array([x[last], y[last], zpath[last] if self.technique != "EC-AFM" else m.position[2]])
            if error is not None:
                m.crashed = True
            res.duration = float(t[last] + dt)
            m.clock += res.duration
            res.error = error

    def _hop_steps(self, h: HopSequence):
        """The hop programme's result (empty) and the generator that fills it: every hop is planned in the first
        step (vectorised), then handed out ``HOP_STEP`` hops per step, so that :meth:`abort` stops the programme
        between two steps with the hops done kept and the tip above the last of them."""
        res = FlyResult("hops", {}, np.zeros(0), 0.0)

        def run():
            m = self.model
            clock0 = m.clock
            done, tops = self._execute_hops(h)
            res.buffers, res.planned_end_times, res.duration = done.buffers, done.planned_end_times, done.duration
            n, k = done.n_done, 0
            try:
                while k < n:
                    k = min(k + HOP_STEP, n)
                    res.n_done = k
                    if k < n:
                        yield
            finally:
                if k < n:  # stopped (at a yield: k >= 1): the tip rests above the last hop done, the clock at its end
                    last = k - 1
                    m.position = np.array([done.buffers["x"][last], done.buffers["y"][last], tops[last]])
                    res.duration = float(done.planned_end_times[last])
                    m.clock = clock0 + res.duration
                else:
                    res.error = done.error
            yield

        return res, run()

    def _execute_hops(self, h: HopSequence) -> tuple[FlyResult, np.ndarray]:
        """Hops as the firmware runs them: retract, move, approach until the current has dropped by the setpoint;
        returns their result and the height (µm) the tip retracts to after each hop.

        The contact height comes from the analytic SICM approach curve (the approach is continuous at
        ``approach_speed``; the controller stops within one sample of 1/``max_sample_rate`` s)."""
        m = self.model
        if self.technique != "SICM":
            raise InvalidArgument(f"fly_hops runs SICM hops; this bench is {self.technique}")
        p = m.probe
        x = np.asarray(h.x, float)
        y = np.asarray(h.y, float)
        d_set = float(sicm_physics.distance_for_current_drop(h.setpoint, p.radius, p.outer_radius or 1.5 * p.radius,
                                                             p.half_angle))
        surf = m.surface_z(x, y)
        z_contact = surf + d_set
        bias, kap = m.options.ion_bias, m.options.conductivity
        ro = p.outer_radius or 1.5 * p.radius
        i_sat = float(bias / sicm_physics.pipette_resistance(p.radius, p.half_angle, kap))
        z_top = np.concatenate([[float(m.position[2])], z_contact[:-1] + h.hop_height])
        z_top = np.maximum(z_top, z_contact + h.hop_height)
        i_ref = sicm_physics.ion_current(z_top - surf, p.radius, ro, p.half_angle, kap, bias)
        i_contact = np.full(x.shape, i_sat * (1.0 - h.setpoint))
        # time per hop: lateral move at the top, approach and retract
        lateral = np.hypot(np.diff(np.r_[m.position[0], x]), np.diff(np.r_[m.position[1], y]))
        t_hop = lateral / h.lateral_speed + 2.0 * (z_top - z_contact) / h.approach_speed
        end = np.cumsum(t_hop)
        # the lateral move at z_top must clear the surface everywhere between hops
        error = None
        n_ok = x.size
        fx, fy = m._end_face_points(0.0, 0.0)
        x_prev = np.r_[m.position[0], x[:-1]]
        y_prev = np.r_[m.position[1], y[:-1]]
        s = np.linspace(0.0, 1.0, 9)
        px = x_prev[:, None] + s[None, :] * (x - x_prev)[:, None]
        py = y_prev[:, None] + s[None, :] * (y - y_prev)[:, None]
        tops = m.surface_z(px[..., None] + fx, py[..., None] + fy).max(axis=(1, 2))
        bad = np.flatnonzero(tops >= z_top)
        if bad.size:
            n_ok = int(bad[0])
            error = TipCrash(f"hop {n_ok}: the lateral move to x={x[n_ok]:.3f}, y={y[n_ok]:.3f} µm at "
                             f"z={z_top[n_ok]:.3f} µm would touch the sample (hop_height too small for the "
                             f"topography); hops before it are kept")
        # the approach is sampled every dz = approach_speed / max_sample_rate: it stops at the first sample past
        # the setpoint
        dz = h.approach_speed / self.max_sample_rate
        z_meas = z_top - np.ceil((z_top - z_contact) / dz) * dz
        noisy = np.asarray(m.add_noise(i_contact), float)
        out = dict(x=x[:n_ok], y=y[:n_ok], surface_z=z_meas[:n_ok], current_ref=i_ref[:n_ok],
                   current=noisy[:n_ok], time=end[:n_ok], valid=np.ones(n_ok, dtype=int))
        if n_ok:
            m.position = np.array([x[n_ok - 1], y[n_ok - 1], z_contact[n_ok - 1] + h.hop_height])
        duration = float(end[n_ok - 1]) if n_ok else 0.0
        m.clock += duration
        return FlyResult("hops", out, end[:n_ok], duration, error, n_done=n_ok), z_contact[:n_ok] + h.hop_height
