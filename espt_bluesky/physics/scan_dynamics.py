"""Response of a moving probe: how a continuously scanned signal lags and blurs along the scan direction.

A scanning probe does not read the stationary signal of the point it is over: each technique relaxes towards
it on its own time scale, so at a constant speed v the recorded profile is the stationary profile seen through a
causal low-pass filter.  We model every technique as a cascade of first-order relaxations (an LTI filter with
impulse response h = ∗_k exp(−t/τ_k)/τ_k), which is an approximation of the true (non-linear, geometry-dependent)
transients, chosen because it keeps the two quantities a user sees exact and easy to check:

* the **shift**: the first moment of h is Σ τ_k, so a feature appears displaced by v·Σ τ_k along the scan
  direction, and forward and backward lines are displaced from each other by 2·v·Σ τ_k;
* the **blur**: a step (an edge) is smeared over the step response of h; for one pole the 10–90 % rise takes
  ln(9)·τ (2.197 τ), for two equal poles 3.357 τ.

Time constants (lengths in µm, D in m²/s, times in s)
-----------------------------------------------------
SECM
    The tip current relaxes by diffusion: across the tip's own diffusion layer, τ_a = a²/(2D), and across the gap
    to the substrate, τ_d = d²/(2D) (the times whose diffusion length √(2Dt) equals a and d).  a²/D is the
    usual pixel-time limit of SECM (Bard & Mirkin, *Scanning Electrochemical Microscopy*, 2nd ed.); the Péclet
    number Pe = v·a/D compares the scan speed with it: Pe ≪ 1 is the quasi-stationary regime, Pe ≫ 1 blurs and
    shifts the image by more than the tip radius.
SICM
    The ion current follows the gap through the pipette's RC time, τ_RC = R_p·C_p (pipette resistance
    :func:`~espt_bluesky.physics.sicm.pipette_resistance` times the wall capacitance, ~1–10 pF), and the current
    amplifier's low-pass filter, τ_f = 1/(2π f_c).
EC-AFM
    The reported height is the z-feedback loop's output; a loop of bandwidth f_fb (−3 dB) follows the surface as
    a first-order system, τ = 1/(2π f_fb).

In the stationary limit (v → 0, or all τ → 0) the filter is the identity: the recorded profile is the
stationary one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, signal

from ..errors import InvalidArgument, check_positive

__all__ = ["secm_time_constants", "sicm_time_constants", "afm_time_constants", "peclet", "lag_distance",
           "step_response", "rise_distance", "apply_lag", "apply_lag_stream", "first_order_hold_coefficients"]

_UM = 1e-6


def _taus(taus: Sequence[float] | float) -> tuple[float, ...]:
    t = tuple(float(x) for x in np.atleast_1d(np.asarray(taus, float)))
    if any(not math.isfinite(x) or x < 0 for x in t):
        raise InvalidArgument(f"time constants {list(t)} must be finite and >= 0 s")
    return t


def secm_time_constants(radius: float, distance: float, diffusion: float) -> tuple[float, float]:
    """SECM relaxation times (s): τ_a = a²/(2D) (tip diffusion layer) and τ_d = d²/(2D) (gap).

    Parameters
    ----------
    radius : float
        Tip radius a (µm, > 0).
    distance : float
        Tip–substrate distance d (µm, >= 0).
    diffusion : float
        Diffusion coefficient of the mediator D (m²/s, > 0).
    """
    a = float(check_positive("radius", radius, units="µm")) * _UM
    d = max(float(distance), 0.0) * _UM
    D = float(check_positive("diffusion", diffusion, units="m²/s"))
    return a * a / (2.0 * D), d * d / (2.0 * D)


def sicm_time_constants(inner_radius: float, half_angle: float, conductivity: float, *,
                        capacitance: float = 2e-12, filter_bandwidth: float = 10e3) -> tuple[float, float]:
    """SICM relaxation times (s): the pipette's RC time R_p·C_p and the amplifier filter 1/(2π f_c).

    Parameters
    ----------
    inner_radius : float
        Pipette aperture radius r_i (µm).
    half_angle : float
        Half-cone angle (degrees).
    conductivity : float
        Electrolyte conductivity (S/m).
    capacitance : float
        Pipette wall capacitance C_p (F), ~1–10 pF for a quartz pipette immersed a few mm.
    filter_bandwidth : float
        −3 dB bandwidth of the current amplifier's filter (Hz).
    """
    from .sicm import pipette_resistance

    rp = float(pipette_resistance(inner_radius, half_angle, conductivity))
    c = float(check_positive("capacitance", capacitance, units="F"))
    fc = float(check_positive("filter_bandwidth", filter_bandwidth, units="Hz"))
    return rp * c, 1.0 / (2.0 * math.pi * fc)


def afm_time_constants(feedback_bandwidth: float) -> tuple[float]:
    """EC-AFM z-feedback relaxation time (s): τ = 1/(2π f_fb) for a loop of −3 dB bandwidth ``feedback_bandwidth``
    (Hz)."""
    f = float(check_positive("feedback_bandwidth", feedback_bandwidth, units="Hz"))
    return (1.0 / (2.0 * math.pi * f),)


def peclet(speed: ArrayLike, radius: float, diffusion: float) -> np.ndarray:
    """Péclet number Pe = v·a/D of a tip of radius ``radius`` (µm) moving at ``speed`` (µm/s), D in m²/s."""
    return np.abs(np.asarray(speed, float)) * _UM * float(radius) * _UM / float(diffusion)


def lag_distance(speed: ArrayLike, taus: Sequence[float] | float) -> np.ndarray:
    """Mean lag (µm) of the recorded profile behind the probe at ``speed`` (µm/s): v·Σ τ_k (the first moment of the
    response).  Forward and backward lines are displaced from each other by twice this."""
    return np.abs(np.asarray(speed, float)) * sum(_taus(taus))


def step_response(t: ArrayLike, taus: Sequence[float] | float) -> np.ndarray:
    """Unit step response of the cascade of first-order lags (0 for t < 0, → 1), evaluated analytically for one
    pole and numerically (exact discretisation on a fine grid) for more."""
    t = np.asarray(t, float)
    ts = [x for x in _taus(taus) if x > 0]
    out = np.where(t >= 0, 1.0, 0.0)
    if not ts:
        return out
    if len(ts) == 1:
        return np.where(t >= 0, 1.0 - np.exp(-np.clip(t, 0, None) / ts[0]), 0.0)
    if len(ts) == 2 and abs(ts[0] - ts[1]) > 1e-9 * max(ts):
        t1, t2 = ts
        tt = np.clip(t, 0, None)
        return np.where(t >= 0, 1.0 - (t1 * np.exp(-tt / t1) - t2 * np.exp(-tt / t2)) / (t1 - t2), 0.0)
    if len(ts) == 2:  # equal poles
        tt = np.clip(t, 0, None) / ts[0]
        return np.where(t >= 0, 1.0 - (1.0 + tt) * np.exp(-tt), 0.0)
    tmax = max(float(np.max(t)), 0.0)
    dt = min(ts) / 50.0
    grid = np.arange(0.0, tmax + dt, dt)
    y = apply_lag(np.ones_like(grid), dt, ts, initial=0.0)
    return np.where(t >= 0, np.interp(t, grid, y), 0.0)


def rise_distance(speed: float, taus: Sequence[float] | float, low: float = 0.1, high: float = 0.9) -> float:
    """Distance (µm) over which an edge scanned at ``speed`` (µm/s) rises from ``low`` to ``high`` of its height."""
    ts = [x for x in _taus(taus) if x > 0]
    if not ts:
        return 0.0
    span = 50.0 * sum(ts)

    def at(level):
        return optimize.brentq(lambda t: float(step_response(t, ts)) - level, 0.0, span, xtol=1e-12 * span)

    return abs(float(speed)) * (at(high) - at(low))


def first_order_hold_coefficients(dt: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """IIR coefficients ``(b, a)`` of y' = (x − y)/τ, exact for an input that is linear between samples.

    With α = exp(−dt/τ): y[n] = α·y[n−1] + b0·x[n] + b1·x[n−1], b0 = 1 − (τ/dt)(1 − α), b1 = (τ/dt)(1 − α) − α.
    Unlike the zero-order hold, this keeps the first moment of the response exactly τ (no half-sample bias).
    """
    if tau <= 0:
        return np.array([1.0, 0.0]), np.array([1.0, 0.0])
    r = tau / dt
    alpha = math.exp(-dt / tau)
    g = -math.expm1(-dt / tau)  # 1 − α without cancellation
    b0 = 1.0 - r * g
    b1 = r * g - alpha
    return np.array([b0, b1]), np.array([1.0, -alpha])


def apply_lag(values: ArrayLike, dt: float, taus: Sequence[float] | float, *,
              initial: float | np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """The signal a probe records when the stationary signal along its path is ``values`` sampled every ``dt`` s.

    Parameters
    ----------
    values : array_like
        Stationary signal along the path (any units), uniformly sampled in time along ``axis``.
    dt : float
        Sample interval (s, > 0).
    taus : sequence of float
        Time constants of the cascade (s); zeros are skipped.
    initial : float or array, optional
        The filter's state before the first sample (the probe's reading on arrival).  Default: the first value
        (the probe has been sitting at the start long enough to be at steady state).
    axis : int
        Time axis.

    Returns
    -------
    numpy.ndarray
        The recorded signal, same shape as ``values``.
    """
    x = np.asarray(values, float)
    dt = float(check_positive("dt", dt, units="s"))
    y = np.moveaxis(x, axis, -1)
    if y.shape[-1] == 0:
        return x.copy()
    for tau in _taus(taus):
        if tau <= 0:
            continue
        b, a = first_order_hold_coefficients(dt, tau)
        # each stage starts in the state it was in before the first sample: at steady state with the input's first
        # value (initial=None), or at ``initial`` with that input held before
        x0 = y[..., 0]
        y0 = x0 if initial is None else np.broadcast_to(np.asarray(initial, float), x0.shape)
        zi = (b[1] * x0 - a[1] * y0)[..., None]
        y, _ = signal.lfilter(b, a, y, axis=-1, zi=zi)
    return np.moveaxis(y, -1, axis)


def apply_lag_stream(values: ArrayLike, dt: float, taus: Sequence[float] | float,
                     state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`apply_lag` of a 1-D signal that arrives in consecutive pieces (a controller streaming its passes).

    Parameters
    ----------
    values : array_like, 1-D
        The next piece of the stationary signal (any units), sampled every ``dt`` s.
    dt : float
        Sample interval (s, > 0).
    taus : sequence of float
        Time constants of the cascade (s); zeros are skipped.
    state : list of arrays, optional
        What the previous piece returned; None for the first piece (the probe at steady state with its first value,
        as :func:`apply_lag` with ``initial=None``).

    Returns
    -------
    recorded : numpy.ndarray
        The recorded piece.
    state : list of numpy.ndarray
        The filter's state after the piece: pass it with the next one.  The pieces recorded this way, joined, are
        :func:`apply_lag` of the joined signal.
    """
    y = np.asarray(values, float)
    if y.ndim != 1:
        raise InvalidArgument(f"values has shape {y.shape}; apply_lag_stream takes one 1-D piece at a time")
    dt = float(check_positive("dt", dt, units="s"))
    stages = [t for t in _taus(taus) if t > 0]
    if state is not None and len(state) != len(stages):
        raise InvalidArgument(f"state has {len(state)} stages, taus={taus!r} has {len(stages)}")
    if y.size == 0:
        return y.copy(), ([] if state is None else list(state))
    out_state = []
    for k, tau in enumerate(stages):
        b, a = first_order_hold_coefficients(dt, tau)
        zi = np.array([b[1] * y[0] - a[1] * y[0]]) if state is None else state[k]
        y, zf = signal.lfilter(b, a, y, zi=zi)
        out_state.append(zf)
    return y, out_state


# ---------------------------------------------------------------------------------------------- the bench's signal
def stationary_along_path(model, x: ArrayLike, y: ArrayLike, z: ArrayLike, *, e_tip: float | None = None
                          ) -> dict[str, np.ndarray]:
    """The stationary (v → 0) signals of a :class:`~espt_bluesky.physics.bench_model.BenchModel` at every point of a
    path, vectorised: what the probe would read if it stopped there (noise free).

    Returns ``{"current": A}`` for SECM (tip current: feedback over the same footprint as
    :meth:`BenchModel.secm_feedback`, times the tip's wave fraction at ``e_tip``) and SICM (ion current at the
    pipette's bias), ``{"height": µm}`` (the true surface under the tip) for EC-AFM, and ``"clearance"`` (µm, the
    smallest gap between the probe's end face and the surface; negative = contact) for SECM/SICM.
    """
    from . import secm, sicm

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    z = np.asarray(z, float)
    tech = model.technique
    if tech == "EC-AFM":
        return {"height": np.asarray(model.surface_z(x, y), float)}
    fx, fy = model._end_face_points(0.0, 0.0)
    clearance = z - model.surface_z(x[:, None] + fx[None, :], y[:, None] + fy[None, :]).max(axis=1)
    d = z - model.surface_z(x, y)
    if tech == "SICM":
        p = model.probe
        i = sicm.ion_current(np.clip(d, 1e-4, None), p.radius, p.outer_radius or 1.5 * p.radius, p.half_angle,
                             model.options.conductivity, model.options.ion_bias)
        return {"current": np.asarray(i, float), "clearance": clearance}
    if tech != "SECM":
        raise InvalidArgument(f"technique={tech!r}: fly scanning covers SECM, SICM and EC-AFM")
    a = model.probe.radius
    ux, uy, w = model._footprint(0.0, 0.0, 0.0)  # unit pattern (radius a): scaled by (a + d)/a per point
    scale = (a + np.clip(d, 0.0, None)) / a
    xs = x[:, None] + scale[:, None] * ux[None, :]
    ys = y[:, None] + scale[:, None] * uy[None, :]
    L = np.clip((z[:, None] - model.surface_z(xs, ys)) / a, 0.05, None)
    xs_s, ys_s = model._sample_frame(xs, ys)
    k = model.sample.at("k_feedback", xs_s, ys_s) * model._activity_at(xs_s, ys_s)
    kappa = k * (a * 1e-6) / model.environment["mediator"]["D"]
    fb = np.sum(w[None, :] * secm.feedback_current(L, model.probe.rg, kappa), axis=1)
    fb = np.where(d > 50.0 * a, 1.0, fb)
    frac = float(model.tip_wave_fraction(model.environment["mediator"]["E0"] + 0.3 if e_tip is None else e_tip))
    return {"current": model.i_tip_inf() * fb * frac, "clearance": clearance}
