"""Fly-scan trajectories: lines at constant speed with turnarounds, and sequences of hops (plain numpy).

A :class:`FlyRaster` is what a motion controller is loaded with: for each row of the image a forward pass
(x increasing) and a backward pass (x decreasing) at the constant ``speed``, each preceded by a run-up and
followed by a run-down at the stage's ``acceleration`` (ramp distance v²/(2A)); the row step in y happens during
the turnaround after the backward pass.  z follows the sample plane plus a height (tilt-corrected constant height),
linear in x and y.  The detector is gated: it samples only on the constant-speed part of each pass, at
``sample_rate``, ``samples_per_line`` samples per pass, sample k of a pass centred at
x_start + dir·(k + ½)·v/rate.

:meth:`FlyRaster.timeline` gives the whole path (run-ups, passes, turnarounds) sampled at the detector's rate,
with the index of the pass each sample belongs to (−1 when the gate is closed): the simulated controller feeds it
through the probe's response, so the state at the start of a pass is the physical one.

Lengths in µm, speed µm/s, acceleration µm/s², rates Hz, times s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FlyRaster:
    """A raster (or a single line, ``y`` of length 1) of bidirectional passes at constant speed.

    Attributes
    ----------
    x_start, x_stop : float
        Ends of the constant-speed part of every pass (µm), ``x_start < x_stop``.
    y : tuple of float
        The row positions (µm), in acquisition order.
    speed : float
        Constant speed of the passes (µm/s).
    sample_rate : float
        Detector sampling rate while the gate is open (Hz).
    acceleration : float
        Stage acceleration for run-ups, run-downs and turnarounds (µm/s²).
    plane : (z0, slope_x, slope_y, x0, y0)
        z of the probe = z0 + slope_x·(x − x0) + slope_y·(y − y0) (already including the height above the sample).
    bidirectional : bool
        Forward and backward pass on every row (trace/retrace); False: forward passes only, with a fly-back.
    """

    x_start: float
    x_stop: float
    y: tuple[float, ...]
    speed: float
    sample_rate: float
    acceleration: float = 2e4
    plane: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    bidirectional: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ geometry
    @property
    def length(self) -> float:
        return float(self.x_stop - self.x_start)

    @property
    def line_time(self) -> float:
        """Duration of the constant-speed part of one pass (s)."""
        return self.length / self.speed

    @property
    def samples_per_line(self) -> int:
        return max(int(math.floor(self.line_time * self.sample_rate + 1e-9)), 1)

    @property
    def passes_per_row(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def n_passes(self) -> int:
        return len(self.y) * self.passes_per_row

    @property
    def n_samples(self) -> int:
        return self.n_passes * self.samples_per_line

    @property
    def ramp(self) -> float:
        """Run-up / run-down distance v²/(2A) (µm)."""
        return self.speed ** 2 / (2.0 * self.acceleration)

    @property
    def x_travel(self) -> tuple[float, float]:
        """Smallest and largest x the stage reaches (ramps included)."""
        return self.x_start - self.ramp, self.x_stop + self.ramp

    def z_at(self, x, y) -> np.ndarray:
        z0, sx, sy, x0, y0 = self.plane
        return z0 + sx * (np.asarray(x, float) - x0) + sy * (np.asarray(y, float) - y0)

    def sample_x(self, direction: int) -> np.ndarray:
        """x of the samples of one pass (µm) in acquisition order."""
        k = np.arange(self.samples_per_line) + 0.5
        step = self.speed / self.sample_rate
        return self.x_start + k * step if direction > 0 else self.x_stop - k * step

    def passes(self) -> list[tuple[int, int, float]]:
        """``(row, direction, y)`` of every pass, in acquisition order."""
        out = []
        for r, y in enumerate(self.y):
            out.append((r, +1, float(y)))
            if self.bidirectional:
                out.append((r, -1, float(y)))
        return out

    @property
    def start_position(self) -> tuple[float, float, float]:
        """Where the stage waits before kickoff: the run-up start of the first pass."""
        x = self.x_start - self.ramp
        y = float(self.y[0])
        return x, y, float(self.z_at(x, y))

    # ------------------------------------------------------------------ timeline
    def _ramp_segment(self, x_from: float, v_from: float, v_to: float, dt: float) -> np.ndarray:
        """Positions every ``dt`` of a constant-acceleration segment from velocity v_from to v_to starting at
        x_from (µm)."""
        acc = math.copysign(self.acceleration, v_to - v_from) if v_to != v_from else 0.0
        dur = abs(v_to - v_from) / self.acceleration
        tt = np.arange(int(math.floor(dur / dt + 1e-9))) * dt
        return x_from + v_from * tt + 0.5 * acc * tt ** 2

    def timeline(self) -> dict[str, np.ndarray]:
        """The whole path sampled every 1/``sample_rate`` s: ``t``, ``x``, ``y``, ``z`` and ``gate`` (the pass
        index, −1 between passes).  Samples of pass p are those with ``gate == p``, ``samples_per_line`` each."""
        if "timeline" in self._cache:
            return self._cache["timeline"]
        dt = 1.0 / self.sample_rate
        v = self.speed
        xs, ys, gate = [], [], []
        n = self.samples_per_line
        passes = self.passes()
        y_prev = float(self.y[0])
        for p, (row, direction, y) in enumerate(passes):
            v_dir = v * direction
            x_gate0 = self.x_start if direction > 0 else self.x_stop
            # run-up from rest at x_gate0 - dir·ramp (turnaround halves join into one deceleration + acceleration)
            xr = self._ramp_segment(x_gate0 - direction * self.ramp, 0.0, v_dir, dt)
            yr = np.linspace(y_prev, y, xr.size) if xr.size else np.zeros(0)
            xs.append(xr); ys.append(yr); gate.append(np.full(xr.size, -1))
            xg = self.sample_x(direction)
            xs.append(xg); ys.append(np.full(n, y)); gate.append(np.full(n, p))
            x_end = x_gate0 + direction * n * v * dt
            xd = self._ramp_segment(x_end, v_dir, 0.0, dt)
            xs.append(xd); ys.append(np.full(xd.size, y)); gate.append(np.full(xd.size, -1))
            if not self.bidirectional and p + 1 < len(passes):  # fly-back to the start of the next row
                nb = max(int(math.ceil(2 * math.sqrt(self.length / self.acceleration) / dt)), 1)
                xb = np.linspace(x_end, self.x_start - self.ramp, nb)
                xs.append(xb); ys.append(np.full(nb, y)); gate.append(np.full(nb, -1))
            y_prev = y
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        out = dict(t=np.arange(x.size) * dt, x=x, y=y, z=self.z_at(x, y), gate=np.concatenate(gate))
        self._cache["timeline"] = out
        return out

    @property
    def duration(self) -> float:
        return float(self.timeline()["t"][-1]) + 1.0 / self.sample_rate


@dataclass(frozen=True)
class HopSequence:
    """A line or grid of hops executed by the controller: lateral moves at ``hop_height`` above the last contact,
    approaches at ``approach_speed`` until the criterion is met, one reading per hop.

    Attributes
    ----------
    x, y : tuple of float
        Hop positions (µm), in execution order.
    hop_height : float
        Retract above the last contact before each lateral move (µm).
    approach_speed : float
        Vertical speed of the approach (µm/s).
    lateral_speed : float
        Speed of the lateral moves (µm/s).
    setpoint : float
        SICM current-drop fraction that ends an approach (0 < f < 1).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    hop_height: float
    approach_speed: float
    lateral_speed: float
    setpoint: float

    @property
    def n_hops(self) -> int:
        return len(self.x)
