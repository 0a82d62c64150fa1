"""Safe approach of the probe to the surface, for SECM, SICM, SECCM and EC-AFM.

``approach`` is a complete plan (one run); :func:`approach_stub` is the same procedure inside an open run, used by
``measure_tilt``, ``hopping_scan`` (plan mode), ``combinatorial_sweep`` and ``sgtc``.  Arguments are validated into
an :class:`ApproachSpec` before anything moves (:func:`make_approach_spec`).
"""

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Generator

import numpy as np
import bluesky.plan_stubs as bps
from bluesky.protocols import Configurable, Readable
import bluesky.preprocessors as bpp

from ..analysis import approach_criteria as crit
from ..errors import InvalidArgument, TipStateError, check_choice, check_number, check_positive, check_range
from ._common import (ApproachLimitReached, apply_settings, cell_on, check_int, check_potential, check_step, check_xy,
                      check_technique, checked_plan, configure_technique, managed_run, pipette_geometry, probe_of,
                      probe_radius, probe_rg, put_values, set_potential, simulated, soft_signals, value_of)
from .metadata import build_start_md

FEEDBACK = ("negative", "positive")
UNITS = ("radius", "um")
STRATEGIES = ("fit", "threshold")
TIP_CHECKS = ("off", "warn", "stop")
REFERENCES = ("auto", "off")

logger = logging.getLogger(__name__)


@dataclass
class ApproachSpec:
    """A validated approach programme (lengths in µm, currents in A, potentials in V)."""

    technique: str
    radius: float
    rg: float
    feedback: str
    threshold: float  # SECM: normalised current; SICM: 1 − drop; SECCM: contact current (A); EC-AFM: deflection (m)
    stop_distance: float  # µm between the tip at the stop and the surface (SECM: from the threshold; SICM: setpoint)
    working_distance: float  # µm above the surface to park at (None-like: NaN = stay at the stop)
    coarse_step: float
    fine_step: float
    max_travel: float
    n_confirm: int
    tip_potential: float | None
    reference_current: float | None
    surface_guess: float | None
    fine_zone: float
    stop_offset: float
    piezo_range: float
    near_deviation: float = 0.02
    strategy: str = "threshold"  # SECM: "fit" (steered by the exact theory, any κ) or "threshold" (fixed I_T)
    kappa: float | None = None  # SECM "fit": known κ = k·a/D (0 … inf), None = fitted as the curve comes in
    safety_margin: float = math.nan  # µm the tip never goes below the highest plausible surface ("fit")
    start_distance: float = math.nan  # µm the start is at least above the surface (prior of the "fit")
    tip_check: str = "warn"  # SECM "fit": what a tip that does not match its record does: off | warn | stop
    # SECM "fit" over a mixed footprint: "auto" (locate the surface at neighbouring points and transfer it),
    # "off" (stop with an error), or (x, y) µm: always take the surface there
    reference: Any = "auto"
    plane: Any = None  # SECM "fit": the sample plane (``z_at(x, y)``, e.g. measure_tilt's PlaneFit) for transfers

    @property
    def substrate(self) -> str:
        return "insulator" if self.feedback == "negative" else "conductor"


def make_approach_spec(stage: Any, potentiostat: Any, *, technique: str, probe: Any = None, afm: Any = None,
                       feedback: str = "negative", threshold: float | None = None, drop: float = 0.01,
                       contact_current: float = 5e-13, deflection_setpoint: float | None = None,
                       working_distance: float | None = 1.0, distance_units: str = "radius",
                       coarse_step: float | None = None, fine_step: float | None = None,
                       max_travel: float | None = None, n_confirm: int | None = None,
                       tip_potential: float | None = None, reference_current: float | None = None,
                       surface_guess: float | None = None, fine_zone: float | None = None,
                       stop_offset: float = 0.0, piezo_range: float = 1.0,
                       near_deviation: float = 0.02, strategy: str = "fit", kappa: float | None = None,
                       safety_margin: float | None = None, start_distance: float | None = None,
                       tip_check: str = "warn", reference: Any = "auto", plane: Any = None) -> ApproachSpec:
    """Validate approach arguments (no motion); see :func:`approach` for their meaning."""
    technique = check_technique(technique)
    if technique == "EC-AFM" and afm is None:
        raise InvalidArgument("afm=None: an EC-AFM approach needs the AFM head (afm=bench.afm)")
    pr = probe_of(potentiostat, probe, afm)
    if pr is None:
        raise InvalidArgument("probe=None and the potentiostat carries no probe: pass probe=")
    a = probe_radius(pr)
    rg = probe_rg(pr)
    feedback = check_choice("feedback", feedback, FEEDBACK)
    distance_units = check_choice("distance_units", distance_units, UNITS)
    if working_distance is not None:
        working_distance = float(check_range("working_distance", working_distance, 0.0, 1e4))
        working_distance *= a if distance_units == "radius" else 1.0
    stop_distance = 0.0
    strategy = check_choice("strategy", strategy, STRATEGIES)
    tip_check = check_choice("tip_check", tip_check, TIP_CHECKS)
    unit = a if distance_units == "radius" else 1.0
    if kappa is not None:
        kappa = crit.check_kappa(kappa)
    margin = start = math.nan
    if technique == "SECM" and strategy == "fit":
        target = working_distance if working_distance is not None else a
        margin = (min(0.2 * a, 0.5 * target) if safety_margin is None
                  else unit * float(check_range("safety_margin", safety_margin, 0.0, 1e4, low_inclusive=False)))
        if margin >= target:
            raise InvalidArgument(f"safety_margin={safety_margin!r} ({margin:.3g} µm) is not below the working "
                                  f"distance ({target:.3g} µm); allowed: 0 < safety_margin < working_distance")
        start = (5.0 * a if start_distance is None
                 else unit * float(check_range("start_distance", start_distance, 0.0, 1e5)))
    if technique == "SECM":
        sub = "insulator" if feedback == "negative" else "conductor"
        if threshold is None:
            threshold = 0.5 if feedback == "negative" else 2.0
        threshold = check_number("threshold", threshold)
        stop_distance = a * crit.secm_threshold_distance(float(threshold), rg, sub)
        dflt = dict(coarse=2.0 * a, fine=0.05 * a, travel=100.0 * a, confirm=0)
    elif technique == "SICM":
        check_range("drop", drop, 0.001, 0.5, units="(fraction of the far current)")
        threshold = 1.0 - float(drop)
        stop_distance = crit.sicm_setpoint_distance(float(drop), *pipette_geometry(pr))
        fine = 0.25 * stop_distance
        dflt = dict(coarse=fine, fine=fine, travel=20.0, confirm=2)
    elif technique == "SECCM":
        threshold = float(check_range("contact_current", contact_current, 1e-15, 1.0, low_inclusive=True,
                                      units="A"))
        dflt = dict(coarse=0.2 * a, fine=0.2 * a, travel=20.0, confirm=0)
    else:
        threshold = float(check_positive("deflection_setpoint",
                                         afm.setpoint.get() if deflection_setpoint is None else deflection_setpoint,
                                         units="m"))
        dflt = dict(coarse=0.5 * piezo_range, fine=0.05, travel=50.0, confirm=0)
    coarse = check_step("coarse_step", dflt["coarse"] if coarse_step is None else coarse_step)
    fine = check_step("fine_step", dflt["fine"] if fine_step is None else fine_step)
    if fine > coarse:
        raise InvalidArgument(f"fine_step={fine!r} µm is larger than coarse_step={coarse!r} µm; allowed: "
                              f"0 < fine_step <= coarse_step")
    travel = check_step("max_travel", dflt["travel"] if max_travel is None else max_travel)
    n_conf = check_int("n_confirm", dflt["confirm"] if n_confirm is None else n_confirm, 0, 20)
    if tip_potential is not None:
        tip_potential = check_potential(potentiostat, "tip_potential", tip_potential)
    if reference_current is not None:
        reference_current = float(check_range("reference_current", reference_current, units="A"))
        if reference_current == 0:
            raise InvalidArgument("reference_current=0.0 A: the far current must be nonzero")
    if surface_guess is not None:
        surface_guess = float(check_range("surface_guess", surface_guess, *stage.z.limits, units="µm"))
    fz = check_step("fine_zone", 5.0 * fine if fine_zone is None else fine_zone)
    check_range("stop_offset", stop_offset, -1e3, 1e3, units="µm")
    check_step("piezo_range", piezo_range)
    check_range("near_deviation", near_deviation, 0.0, 1.0, low_inclusive=False)
    reference = _check_reference(stage, reference)
    if plane is not None and not callable(getattr(plane, "z_at", None)):
        raise InvalidArgument(f"plane={plane!r} has no z_at(x, y); allowed: a PlaneFit from measure_tilt or None")
    return ApproachSpec(technique, a, rg, feedback, float(threshold), float(stop_distance),
                        math.nan if working_distance is None else working_distance, coarse, fine, travel, n_conf,
                        tip_potential, reference_current, surface_guess, fz, float(stop_offset), float(piezo_range),
                        float(near_deviation), strategy if technique == "SECM" else "threshold", kappa, margin,
                        start, tip_check, reference, plane)


def _check_reference(stage: Any, reference: Any):
    """``reference=``: "auto", "off" (None is "off") or an (x, y) position (µm) inside the stage limits."""
    if reference is None:
        return "off"
    if isinstance(reference, str):
        return check_choice("reference", reference, REFERENCES)
    try:
        x, y = (float(v) for v in reference)
    except (TypeError, ValueError):
        raise InvalidArgument(f"reference={reference!r}; allowed: 'auto', 'off', None or an (x, y) position in "
                              f"µm") from None
    check_xy(stage, "reference", x, y)
    return (x, y)


def _signal_key(spec: ApproachSpec, potentiostat: Any):
    return potentiostat.substrate.current if spec.technique == "SECCM" else potentiostat.tip.current


def approach_stub(stage: Any, potentiostat: Any, spec: ApproachSpec, *, afm: Any = None,
                  stream: str = "approach", park: bool = True) -> Generator[Any, Any, dict]:
    """Plan stub (inside an open run): approach from the present height until ``spec``'s criterion is met.

    Records every reading in the event stream ``stream`` and returns a dict with ``surface_z`` (µm),
    ``stop_z`` (µm, tip height at the stop), ``surface_z_err`` (µm), ``n_steps`` and ``reference_current``.
    With ``park`` the tip is then moved to ``surface_z + spec.working_distance``.
    """
    if spec.technique == "EC-AFM":
        return (yield from _afm_approach(stage, afm, spec, stream=stream, park=park))
    yield from configure_technique(potentiostat, "READ", channel="tip")
    if spec.tip_potential is not None:
        yield from set_potential(potentiostat.tip, spec.tip_potential)
    if not potentiostat.cell_on.get():
        yield from cell_on(potentiostat)
    sig = _signal_key(spec, potentiostat)
    devices = [potentiostat, stage.z]
    zs: list[float] = []
    vals: list[float] = []
    preview = False  # no readings (summarize_plan, check_limits): show the first step and stop there

    def measure():
        nonlocal preview
        r = yield from bps.trigger_and_read(devices, name=stream)
        if simulated(r):
            preview = True
            return math.nan
        zs.append(value_of(r, stage.z))
        vals.append(value_of(r, sig))
        return vals[-1]

    z0 = float(stage.z.position)
    ref = spec.reference_current
    fit = spec.technique == "SECM" and spec.strategy == "fit"
    if (spec.technique in ("SECM", "SICM") and ref is None) or fit:
        # SECM "fit": the start readings also give the noise its consistency test rests on (10: see below)
        n_ref = 10 if fit else 5 if spec.technique == "SICM" else 3
        for _ in range(n_ref):
            yield from measure()
        if ref is None:
            ref = float(np.mean(vals[-n_ref:])) if not preview else math.nan
        if ref == 0:
            raise ApproachLimitReached("the far current is zero: is the cell connected and the probe immersed?",
                                           reason="no_current")
    if fit and not preview:
        return (yield from _secm_fit_approach(stage, potentiostat, sig, spec, zs, vals, ref, measure, stream=stream,
                                              park=park,
                                              ref_measured=spec.reference_current is None))

    def norm(v):
        return v / ref if ref else abs(v)

    def met(s):
        if spec.technique == "SECM":
            return s <= spec.threshold if spec.feedback == "negative" else s >= spec.threshold
        if spec.technique == "SICM":
            return s <= spec.threshold
        return s >= spec.threshold  # SECCM: |substrate current| jumps above the contact current

    def progress(s):
        if spec.technique in ("SECM", "SICM"):
            return (s - 1.0) / (spec.threshold - 1.0)
        return 0.0

    z = z0
    n = 0
    near = False
    zp: list[float] = []
    pp: list[float] = []
    s_last = 1.0
    # noise of one normalised reading, from the repeated readings at the start (None: not measured here)
    sigma = float(np.std(np.asarray(vals) / ref, ddof=1)) if len(vals) > 1 and ref else None
    if zs:
        s_last = norm(float(np.mean(vals)))
        zp.append(z0)
        pp.append(progress(s_last))
    z_prev, s_prev = z, s_last  # the last height (and its reading) where the criterion was not met
    n_conf = spec.n_confirm if spec.technique != "SECCM" else max(spec.n_confirm, 1)
    s_met = s_last
    while True:
        if spec.technique == "SECM" and pp:
            # once the current departs from i_T,inf by more than near_deviation the surface is within a few
            # radii (a mixed footprint can bring it back near 1 closer in): from then on, steps of <= a/4
            near = near or abs(s_last - 1.0) > spec.near_deviation
            cap = max(spec.fine_step, min(spec.coarse_step, 0.25 * spec.radius)) if near else spec.coarse_step
            step = crit.predicted_remaining(zp, pp, spec.fine_step, cap)
            # never step more than 30 % of the distance the present current implies (either substrate kind)
            L_est = float(crit.secm_distance_estimate(s_last, spec.rg))
            step = min(step, max(spec.fine_step, 0.3 * spec.radius * L_est))
        elif spec.surface_guess is not None and z - spec.coarse_step > spec.surface_guess + spec.fine_zone:
            step = spec.coarse_step
        else:
            step = spec.fine_step
        z_next = z - step
        if z0 - z_next > spec.max_travel + 1e-9 or z_next < stage.z.limits[0]:
            raise ApproachLimitReached(
                f"{spec.technique} approach: criterion not met after {z0 - z:.3f} µm of travel (max_travel="
                f"{spec.max_travel} µm, z low limit {stage.z.limits[0]} µm)",
                reason="no_contact" if spec.technique == "SECCM" else "criterion_not_met")
        yield from bps.checkpoint()
        yield from bps.mv(stage.z, z_next)
        z = z_next
        n += 1
        s = s_last = norm((yield from measure()))
        if preview:
            break
        zp.append(z)
        pp.append(progress(s))
        if met(s):
            s_met = s
            if n_conf:
                # confirm with fresh readings at the same height; the one that triggered is left out of the
                # average (it was selected for being past the threshold: including it biases towards early stops)
                for _ in range(n_conf):
                    yield from measure()
                s_met = norm(float(np.mean(vals[-n_conf:])))
                s_last = norm(float(np.mean(vals[-n_conf - 1:])))
                if not met(s_met):
                    z_prev, s_prev = z, s_last
                    continue
            break
        z_prev, s_prev = z, s
    if preview:
        surface, err = z - spec.stop_distance - spec.stop_offset, math.nan
    elif spec.technique == "SECM":
        s_all = np.asarray(vals) / ref
        surface, err = crit.surface_from_secm_curve(zs, s_all, spec.radius, spec.rg, spec.substrate, spec.threshold)
    elif spec.technique == "SICM":
        # the crossing of the set drop, interpolated between the last reading above it and the confirmed one
        # below (the stop itself lies up to a step past the crossing: an unbiased height needs the crossing)
        # (against the bulk current: the reference read at the start height is itself a little below it)
        surface, err = crit.sicm_surface_from_curve(zs, np.asarray(vals) / ref, 1.0 - spec.threshold,
                                                    spec.stop_distance, sigma=sigma,
                                                    n_reference=5 if spec.reference_current is None else 0)
    else:
        # SECCM: the meniscus landed somewhere between the last height without contact and the stop
        surface, err = 0.5 * (z + z_prev) - spec.stop_offset, abs(z_prev - z) / math.sqrt(12)
    if park and math.isfinite(spec.working_distance):
        yield from bps.mv(stage.z, surface + spec.working_distance)
    return dict(surface_z=float(surface), surface_z_err=float(err), stop_z=float(z), n_steps=n,
                reference_current=float(ref) if ref is not None else math.nan)


_FIT_SIGNALS: dict[str, dict] = {}


def _fit_signals(stream: str) -> dict:
    """The soft signals of the ``<stream>_fit`` stream (one set per stream name: a stream reads the same objects)."""
    if stream not in _FIT_SIGNALS:
        _FIT_SIGNALS[stream] = soft_signals(
            surface_z=(0.0, "um"), surface_z_err=(0.0, "um"), surface_z_lo=(0.0, "um"), surface_z_hi=(0.0, "um"),
            kappa=(0.0, ""), kappa_lo=(0.0, ""), kappa_hi=(0.0, ""), distance=(0.0, "um"), noise=(0.0, ""),
            chi2=(0.0, ""), n_points=(0, ""), converged=(0, ""), rg_apparent=(math.nan, ""),
            tip_ok=(1, ""), transferred=(0, ""), reference_x=(math.nan, "um"), reference_y=(math.nan, "um"),
            lateral_contrast=(math.nan, ""), lateral_height=(math.nan, "um"), lateral_checks=(0, ""))
    return _FIT_SIGNALS[stream]


_REF_SIGNALS: dict[str, dict] = {}


def _reference_signals(stream: str) -> dict:
    """Soft signals of the ``<stream>_reference`` stream: one event per reference approach tried."""
    if stream not in _REF_SIGNALS:
        _REF_SIGNALS[stream] = soft_signals(
            reference_x=(0.0, "um"), reference_y=(0.0, "um"), surface_z=(0.0, "um"), surface_z_err=(0.0, "um"),
            surface_z_hi=(0.0, "um"), transferred_z=(0.0, "um"), kappa=(0.0, ""), accepted=(0, ""),
            lateral_contrast=(math.nan, ""), lateral_height=(math.nan, "um"), n_steps=(0, ""))
    return _REF_SIGNALS[stream]


#: readings per point of a lateral probe, and how far (in a) the tip descends between two probes
_LATERAL_N = 2
_LATERAL_EVERY = 0.5
#: how much closer than the working distance (in a) the tip may park to the highest plausible surface
_PARK_SLACK = 0.1
#: significance (σ) above which a lateral probe's contrast says the footprint is not uniform
_NONUNIFORM = 5.0


def _lateral_probe(stage, potentiostat, sig, x0: float, y0: float, delta: float, stream: str):
    """Readings at the axis and at (±Δ, 0), (0, ±Δ) at the present height (points off the stage are skipped);
    the tip ends back on the axis.  Returns {"c": [...], "+x": [...], ...} (A)."""
    out: dict[str, list[float]] = {}
    (xl, xh), (yl, yh) = stage.x.limits, stage.y.limits
    for key, dx, dy in (("c", 0.0, 0.0), ("+x", delta, 0.0), ("-x", -delta, 0.0), ("+y", 0.0, delta),
                        ("-y", 0.0, -delta)):
        x, y = x0 + dx, y0 + dy
        out[key] = []
        if not (xl <= x <= xh and yl <= y <= yh):
            continue
        yield from bps.mv(stage.x, x, stage.y, y)
        for _ in range(_LATERAL_N):
            r = yield from bps.trigger_and_read([potentiostat, stage.x, stage.y, stage.z], name=stream)
            out[key].append(value_of(r, sig))
    yield from bps.mv(stage.x, x0, stage.y, y0)
    return out


def _fit_descent(stage, spec: ApproachSpec, zs: list[float], vals: list[float], ref: float, measure, noise: float,
                 *, target: float, start_distance: float, lateral=None, bounded: bool = False):
    """The steered SECM descent at one lateral position (see :func:`_secm_fit_approach`).

    ``lateral(z, est)`` (a plan returning a :class:`~espt_bluesky.analysis.approach_criteria.LateralCheck`) is run
    before the tip enters the last ``target + a`` above the highest plausible surface, and again every
    ``_LATERAL_EVERY`` a of descent and at the stop: a mixed footprint ends the descent with status ``"mixed"``.
    Returns dict(status, est, n, z, checks)."""
    a = spec.radius
    z_start = float(zs[0])
    scale_err = 0.1  # i_T,inf read at a finite start height (its footprint may see other materials): fitted too
    n, n_stay = 0, 0
    z = float(zs[-1])
    checks: list = []
    last_check = math.inf

    def estimate():
        return crit.secm_surface_estimate_local(zs, np.asarray(vals, float) / ref, a, spec.rg, kappa=spec.kappa,
                                                noise=noise, scale_err=scale_err, start_distance=start_distance,
                                                footprint_scale=5.0 * a)

    h_lat = 0.0  # µm: height the last lateral probe's significant contrast is worth (the footprint's doubt)
    z_inside = -math.inf  # the tip height at which the current alone showed the tip inside the target distance

    def check_here(est):
        nonlocal last_check, h_lat
        chk = yield from lateral(z, est)
        last_check = z
        checks.append(chk)
        h_lat = chk.height if chk.significance > _NONUNIFORM else 0.0
        return chk.mixed

    est = prev = estimate()
    surprised = False
    while True:
        # a footprint not quite uniform (a feature at its rim) leaves the one-κ estimate that much in doubt below
        # (the floor, its upper bound, is kept): not "done" until a probe closer in, over a smaller footprint, agrees
        eff = est if h_lat <= 0.08 * a else dataclasses.replace(est, z0_lo=est.z0_lo - h_lat)
        step, status = crit.next_approach_step(z, eff, target, margin=spec.safety_margin,
                                               coarse_step=spec.coarse_step, radius=a,
                                               previous=prev if n else None)
        if (not est.consistent or surprised) and status != "done":
            # one substrate does not explain the curve (a mixed footprint, or the curve just turned away from
            # the prediction), so its bounds mean little: steps of at most 30 % of the smallest distance the
            # present current allows for any κ (no minimum: over a conductor they shrink geometrically and never
            # reach it), until the stretch close to the surface pins the surface down
            i_now = vals[-1] / ref
            cap = max(0.3 * a * crit.secm_cautious_distance(i_now, spec.rg), 0.01 * a)
            # ... never below the floor (the highest plausible surface plus the margin) when κ is given (the model
            # is then fully specified: a surprise is noise, its bounds hold) or on a reference descent
            # ... and when one κ does explain the curve, only the last reading surprised it and the last lateral
            # probe saw a uniform footprint (the estimate's bounds then hold: a finite-κ curve saturates where a
            # conductor's keeps rising, so the any-κ step alone would walk into it; over a feature that fills the
            # footprint close in, an Au disc, the one-κ bounds of the mixed stretch above it do not hold)
            uniform = not checks or checks[-1].significance <= _NONUNIFORM
            held = spec.kappa is not None or bounded or (est.consistent and uniform)
            room = z - (est.z0_hi + spec.safety_margin) if held else math.inf
            # ... and not at all once the largest distance any κ (or mixture of κ) allows for the present
            # current is within half the target and a/10 (where a feature larger than the tip fills the
            # footprint): the tip is as close as it needs to be, wherever the surface is
            i_far = i_now - 3.0 * noise if i_now > 1.0 else min(i_now + 3.0 * noise, 1.0)
            inside = a * float(crit.secm_distance_estimate(i_far, spec.rg)) <= min(0.5 * target, 0.1 * a)
            if room > 0.02 * a and not inside:
                step, status = min(cap, max(spec.fine_step, 0.25 * a), room), "cautious"
            elif status != "floor":
                step, status = 0.0, "floor"
            if inside:
                z_inside = z
        if lateral is not None:
            # is the footprint uniform enough for the one-κ estimate to be trusted this close?  Checked on entering
            # the last (target + a) above the highest plausible surface (once the estimate is bounded on both
            # sides: before that its steps keep to the upper bound), then before every _LATERAL_EVERY a of descent
            # (steps no longer than that) and at the stop
            stop = status in ("done", "floor")
            # (or, once the current has left i_T,inf by more than near_deviation, without the lower bound: a fooled
            # estimate may lose it close in); once probed, steps stay within the cadence while the current is off
            rel3 = np.convolve(np.asarray(vals, float) / ref, np.ones(3) / 3.0, mode="valid")
            departed = rel3.size > 0 and bool(np.any(np.abs(rel3 - 1.0) > spec.near_deviation))
            near = (z - step) - est.z0_hi < target + a and (math.isfinite(est.z0_lo) or departed)
            if near:
                due = last_check - z >= 0.25 * a if stop else last_check - (z - step) > _LATERAL_EVERY * a + 1e-9
                if due and (yield from check_here(est)):
                    return dict(status="mixed", est=est, n=n, z=z, checks=checks)
                if due and stop and h_lat > 0.08 * a:
                    continue  # judge the stop again with the doubt the probe found
            if not stop and checks and (near or departed):
                step = min(step, max(_LATERAL_EVERY * a - (last_check - z), spec.fine_step))
        logger.debug("SECM approach: z %.3f µm, I_T %.4f, %s step %.3f µm; surface %.3f (%.3f … %.3f) µm, κ %.3g%s%s",
                     z, vals[-1] / ref, status, step, est.z0, est.z0_lo, est.z0_hi, est.kappa,
                     "" if est.consistent else " (inconsistent)", " (surprised)" if surprised else "")
        if status in ("done", "floor"):
            if status == "floor" and n == 0:
                raise ApproachLimitReached(
                    f"SECM approach: the start height cannot be told from one close to the surface (estimate "
                    f"{est.z0:.3f} µm, highest plausible {est.z0_hi:.3f} µm): start farther away or give "
                    f"start_distance=", reason="criterion_not_met")
            if status == "floor" and n_stay < 3:
                n_stay += 1  # more readings where we are before settling for a wide estimate
                yield from measure()
                prev, est = est, estimate()
                continue
            break
        z_next = z - step
        if z_start - z_next > spec.max_travel + 1e-9 or z_next < stage.z.limits[0]:
            raise ApproachLimitReached(
                f"SECM approach: surface not found after {z_start - z:.3f} µm of travel (max_travel="
                f"{spec.max_travel} µm, z low limit {stage.z.limits[0]} µm)", reason="criterion_not_met")
        if n >= 1000:
            raise ApproachLimitReached("SECM approach: no convergence after 1000 steps", reason="criterion_not_met")
        yield from bps.checkpoint()
        yield from bps.mv(stage.z, z_next)
        z = z_next
        n += 1
        yield from measure()
        prev, est = est, estimate()
        # the curve turned away from the prediction: small steps until it is explained
        surprised = prev.surprised_by(z, vals[-1] / ref, a, spec.rg)
    return dict(status=status, est=est, n=n, z=z, checks=checks, z_inside=z_inside)


def _ring(stage, x0: float, y0: float, radius: float, first_axis: str) -> list[tuple[float, float]]:
    """Candidate reference points around (x0, y0): two rings (3 a, 5 a for ``radius`` = a), the axis along which
    the footprint changed first (across the feature), points off the stage left out."""
    (xl, xh), (yl, yh) = stage.x.limits, stage.y.limits
    ang = [90, 270, 0, 180, 45, 225, 135, 315] if first_axis == "y" else [0, 180, 90, 270, 45, 225, 135, 315]
    out = []
    for r in (3.0 * radius, 5.0 * radius):
        for t in ang:
            x, y = x0 + r * math.cos(math.radians(t)), y0 + r * math.sin(math.radians(t))
            if xl <= x <= xh and yl <= y <= yh:
                out.append((x, y))
    return out


def _reference_surface(stage, potentiostat, sig, spec: ApproachSpec, ref: float, noise: float, x0: float,
                       y0: float, *, z_up: float, start_distance: float, target: float, candidates, local,
                       stream: str, max_tries: int = 6, n_accept: int = 2):
    """Locate the surface at neighbouring points whose footprint is uniform and transfer it to (x0, y0).

    Each candidate: at ``z_up`` (above every surface the data allow) move there, run the steered descent with its
    own lateral checks; it is accepted when the estimate converged, one κ explains its curve, no check found a
    mixed footprint, and the transferred surface is physically possible for the readings ``local`` (z, I_T)
    already taken at (x0, y0): any kinetics, uniform or mixed, reads between the insulator and conductor curves.
    Up to ``n_accept`` candidates are accepted; the most uniform (smallest significant lateral contrast, in
    height) gives the surface, the highest plausible surface of all bounds it from above.
    Every attempt is recorded in ``<stream>_reference`` (its curve in ``<stream>_reference_curve``).
    Returns (transfer dict, list of attempts) or raises ApproachLimitReached when no candidate locates it."""
    a = spec.radius
    devices = [potentiostat, stage.x, stage.y, stage.z]
    sigs = _reference_signals(f"{stream}_reference")
    tried: list = []
    accepted: list[dict] = []
    for (xr, yr) in list(candidates)[:max_tries]:
        yield from bps.mv(stage.z, z_up)
        yield from bps.mv(stage.x, xr, stage.y, yr)
        zs: list[float] = []
        vals: list[float] = []

        def measure():
            r = yield from bps.trigger_and_read(devices, name=f"{stream}_reference_curve")
            zs.append(value_of(r, stage.z))
            vals.append(value_of(r, sig))
            return vals[-1]

        def lateral(z, est, xr=xr, yr=yr):
            return (yield from _check_footprint(stage, potentiostat, sig, spec, ref, noise, xr, yr, z, est, stream,
                                                curve=vals))

        for _ in range(2):
            yield from measure()
        why = ""
        try:
            # a reference is taken close in (at most 0.5 a): the smaller footprint sees less of its neighbourhood
            res = yield from _fit_descent(stage, spec, zs, vals, ref, measure, noise, target=min(target, 0.5 * a),
                                          bounded=True,
                                          start_distance=start_distance, lateral=lateral)
        except ApproachLimitReached as exc:
            res, why = None, str(exc)
        transfer = None
        if res is not None:
            est = res["est"]
            if res["status"] == "mixed":
                why = "its footprint is mixed too: " + res["checks"][-1].describe()
            elif not est.consistent or (res["status"] != "done" and 0.5 * (est.z0_hi - est.z0_lo) > 0.1 * a):
                # (a reference stopped at its floor still serves when its 3σ bounds are within ±0.1 a)
                why = (f"its estimate did not converge (surface {est.z0:.3f} µm within {est.z0_lo:.3f} … "
                       f"{est.z0_hi:.3f} µm)")
            else:
                dz = 0.0 if spec.plane is None else float(spec.plane.z_at(x0, y0) - spec.plane.z_at(xr, yr))
                # no tilt plane: flat, with 0.5° of unknown tilt over the transfer in the upper bound
                allow = 0.0 if spec.plane is not None else math.hypot(xr - x0, yr - y0) * math.tan(math.radians(0.5))
                transfer = dict(z0=est.z0 + dz, err=est.z0_err, lo=est.z0_lo + dz - allow, hi=est.z0_hi + dz + allow,
                                kappa=est.kappa, x=xr, y=yr, n=res["n"], checks=res["checks"])
                bad = crit.secm_transfer_conflict(local[0], local[1], transfer["z0"], a, spec.rg, noise)
                if bad:
                    why, transfer = "it does not fit the readings at the target point: " + bad, None
        chk = res["checks"][-1] if res and res["checks"] else None
        est = res["est"] if res else None
        put_values(sigs, reference_x=xr, reference_y=yr, surface_z=est.z0 if est else math.nan,
                   surface_z_err=est.z0_err if est else math.nan, surface_z_hi=est.z0_hi if est else math.nan,
                   transferred_z=transfer["z0"] if transfer else math.nan, kappa=est.kappa if est else math.nan,
                   accepted=int(transfer is not None), lateral_contrast=chk.contrast if chk else math.nan,
                   lateral_height=chk.height if chk else math.nan, n_steps=res["n"] if res else 0)
        yield from bps.trigger_and_read(list(sigs.values()), name=f"{stream}_reference")
        tried.append(((xr, yr), why))
        if transfer is not None:
            last = transfer["checks"][-1] if transfer["checks"] else None  # the probe at its stop, closest in
            transfer["h"] = last.height if last is not None and last.significance > 3.0 else 0.0
            accepted.append(transfer)
            yield from bps.mv(stage.z, max(z_up, est.z0_hi + 4.0 * a))
            if len(accepted) >= n_accept:
                break
        else:
            logger.info("SECM approach: reference at (%.1f, %.1f) µm rejected: %s", xr, yr, why)
        z_up = max(z_up, float(stage.z.position))
    if accepted:
        # the most uniform reference gives the surface (a neighbouring feature at the rim of a reference's footprint
        # biases it by about its lateral contrast in height); the highest plausible surface of all bounds the park
        best = min(accepted, key=lambda t: t["h"])
        best = dict(best, hi=max(t["hi"] for t in accepted), checks=sum((t["checks"] for t in accepted), []),
                    n=sum(t["n"] for t in accepted))
        return best, tried
    yield from bps.mv(stage.z, z_up)
    yield from bps.mv(stage.x, x0, stage.y, y0)
    raise ApproachLimitReached(
        f"SECM approach at ({x0:.1f}, {y0:.1f}) µm: the footprint is mixed (no single κ locates the surface from "
        f"the current) and no reference point located it either (" + "; ".join(
            f"({p[0]:.1f}, {p[1]:.1f}): {w}" for p, w in tried) + "): pass reference=(x, y) at a uniform spot "
        "or a known surface", reason="criterion_not_met")


def _check_footprint(stage, potentiostat, sig, spec, ref, noise, x0, y0, z, est, stream, tolerance=None,
                     curve=None):
    """One lateral probe at height z around (x0, y0), judged by :func:`~espt_bluesky.analysis.approach_criteria.
    lateral_heterogeneity` with the slope of the estimate's model curve."""
    a = spec.radius
    r = yield from _lateral_probe(stage, potentiostat, sig, x0, y0, a, f"{stream}_lateral")
    n = {k: np.asarray(v, float) / ref for k, v in r.items()}
    # the noise from 5 readings at the start is itself uncertain (±30 %): pool the scatter within each probe point
    groups = [v for v in n.values() if v.size > 1]
    dof = sum(v.size - 1 for v in groups)
    pooled = math.sqrt(sum(float(np.sum((v - v.mean()) ** 2)) for v in groups) / dof) if dof else 0.0
    return crit.lateral_heterogeneity(n["c"], n["+x"], n["-x"], n["+y"], n["-y"], noise=max(noise, pooled),
                                      slope=crit.model_slope(est, z, a, spec.rg), radius=a, delta=a,
                                      tolerance=tolerance, minimum=_running_min(curve, ref))


def _running_min(curve, ref) -> float | None:
    """The lowest 3-reading mean of the normalised approach readings so far (None: fewer than 3)."""
    if curve is None or len(curve) < 3:
        return None
    v = np.asarray(curve, float) / ref
    return float(np.min(np.convolve(v, np.ones(3) / 3.0, mode="valid")))


def _secm_fit_approach(stage, potentiostat, sig, spec: ApproachSpec, zs: list[float], vals: list[float], ref: float,
                       measure, *, stream: str, park: bool, ref_measured: bool):
    """SECM approach steered by the exact feedback theory: after every reading the surface height (and κ when
    unknown) is re-estimated from the whole curve (:func:`~espt_bluesky.analysis.approach_criteria.
    secm_surface_estimate`) and the next step comes from :func:`~espt_bluesky.analysis.approach_criteria.
    next_approach_step`: towards ``surface + working distance``, never below the highest plausible surface plus
    the safety margin.

    Close to the surface the footprint is probed sideways (:func:`~espt_bluesky.analysis.approach_criteria.
    lateral_heterogeneity`); where it is mixed (an active band in an inert plane averaging to ~i_T,inf: no single
    κ locates the surface from the current) the surface is located at neighbouring points and transferred
    (``spec.reference``).  The final estimate is recorded in the ``<stream>_fit`` stream."""
    a = spec.radius
    target = spec.working_distance if math.isfinite(spec.working_distance) else a
    rel = np.asarray(vals, float) / ref
    # the noise of one normalised reading, from the repeated readings at the start (never below 0.1 % of i_T,inf)
    noise = max(crit.noise_upper_bound(rel), 1e-3)
    x0, y0 = float(stage.x.position), float(stage.y.position)
    z_first = float(zs[0])

    def lateral(z, est):
        return (yield from _check_footprint(stage, potentiostat, sig, spec, ref, noise, x0, y0, z, est, stream,
                                            curve=vals))

    transfer = tried = None
    mixed_check = None
    if isinstance(spec.reference, tuple):  # the user names where the surface is to be taken
        res = None
        transfer, tried = yield from _reference_surface(
            stage, potentiostat, sig, spec, ref, noise, x0, y0, z_up=z_first, start_distance=spec.start_distance,
            target=target, candidates=[spec.reference], local=(list(zs), list(np.asarray(vals) / ref)),
            stream=stream, max_tries=1, n_accept=1)
    else:
        res = yield from _fit_descent(stage, spec, zs, vals, ref, measure, noise, target=target,
                                      start_distance=spec.start_distance, lateral=lateral)
        if res["status"] == "mixed":
            mixed_check = res["checks"][-1]
            msg = (f"SECM approach at ({x0:.1f}, {y0:.1f}) µm: the footprint is mixed ({mixed_check.describe()}); "
                   f"a one-κ fit cannot locate the surface here")
            if spec.reference == "off":
                raise ApproachLimitReached(msg + " (reference='off'): give reference='auto' or (x, y)",
                                           reason="criterion_not_met")
            z_here = res["z"]
            ax = mixed_check.axis
            z_up = min(z_here + 4.0 * a, stage.z.limits[1])
            # the tip stood at z_here without touching: a flat surface nearby lies below it (0.5° of tilt allowed)
            allow = 5.0 * a * math.tan(math.radians(0.5))
            logger.warning(msg + "; locating it at neighbouring points")
            transfer, tried = yield from _reference_surface(
                stage, potentiostat, sig, spec, ref, noise, x0, y0, z_up=z_up, start_distance=z_up - z_here - allow,
                target=target, candidates=_ring(stage, x0, y0, a, ax),
                local=(list(zs), list(np.asarray(vals) / ref)), stream=stream)
    if transfer is None:
        est, status, z, n = res["est"], res["status"], res["z"], res["n"]
        surface, err, lo, hi, kap = est.z0, est.z0_err, est.z0_lo, est.z0_hi, (est.kappa, est.kappa_lo, est.kappa_hi)
        checks = res["checks"]
    else:
        # back over the target point, above every surface the data allow, then down to the working distance
        surface, err, lo, hi = transfer["z0"], transfer["err"], transfer["lo"], transfer["hi"]
        yield from bps.mv(stage.x, x0, stage.y, y0)
        z = max(surface + target, hi + spec.safety_margin)
        n = (res["n"] if res else 0) + transfer["n"]
        status = "done"
        if park or isinstance(spec.reference, tuple):
            # down in steps of <= a/2 (a reading each), then readings at the working distance
            z_from = float(stage.z.position)
            for zz in np.arange(z_from - 0.5 * a, z, -0.5 * a)[:20]:
                yield from bps.checkpoint()
                yield from bps.mv(stage.z, float(zz))
                yield from measure()
            yield from bps.checkpoint()
            yield from bps.mv(stage.z, z)
            for _ in range(_LATERAL_N):
                yield from measure()
            # the local curve, now close in, agrees with the transfer: where the footprint became uniform on the way
            # down (a feature larger than the tip) its own estimate is the sharper one and replaces the transfer
            loc = crit.secm_surface_estimate_local(zs, np.asarray(vals, float) / ref, a, spec.rg, kappa=spec.kappa,
                                                   noise=noise, scale_err=0.1, start_distance=spec.start_distance,
                                                   footprint_scale=5.0 * a)
            slack = 3.0 * math.hypot(loc.z0_err, err) + transfer.get("h", 0.0)
            logger.debug("local %s transfer %.3f err %.3f slack %.3f", loc, surface, err, slack)
            if (loc.consistent and np.isfinite(loc.z0_lo) and loc.z0_hi - loc.z0_lo < 0.16 * a
                    and abs(loc.z0 - surface) <= slack):
                surface, err, lo, hi = loc.z0, loc.z0_err, loc.z0_lo, max(loc.z0_hi, hi)
                z = max(surface + target, hi + spec.safety_margin)
                yield from bps.mv(stage.z, z)
            bad = crit.secm_transfer_conflict(zs[-_LATERAL_N:], np.asarray(vals[-_LATERAL_N:]) / ref, surface, a,
                                              spec.rg, noise)
            if bad:
                raise ApproachLimitReached(
                    f"SECM approach: the surface transferred from ({transfer['x']:.1f}, {transfer['y']:.1f}) µm "
                    f"does not fit the readings at the working distance: {bad}", reason="criterion_not_met")
        else:
            z = float(stage.z.position)
        try:  # the apparent κ of the footprint here, with the offset held at the transferred surface
            kap = crit.secm_kappa_at_offset(zs, np.asarray(vals, float) / ref, a, spec.rg, surface, noise=noise)
        except InvalidArgument:
            kap = (math.nan, math.nan, math.nan)
        est = None
        checks = (res["checks"] if res else []) + transfer["checks"]
        logger.warning("SECM approach at (%.1f, %.1f) µm: surface %.3f ± %.3f µm taken from a reference approach at "
                       "(%.1f, %.1f) µm (κ there %.3g; %d reference point(s) tried)%s", x0, y0, surface, err,
                       transfer["x"], transfer["y"], transfer["kappa"], len(tried),
                       "" if spec.plane is not None else ", transferred flat (no tilt plane given)")
    tip = None
    if spec.tip_check != "off" and est is not None:  # does the curve match the recorded tip?
        # the closest 25 readings; where a lateral probe saw a non-uniform footprint (an Au disc) only the stretch
        # one κ explains: no inlaid-disk curve fits a footprint of changing materials, that is not the tip's fault
        k = min(25, est.n) if any(c.significance > _NONUNIFORM for c in checks) else 25
        tip = crit.check_tip_state(zs[-k:], np.asarray(vals[-k:], float) / ref, a, spec.rg, kappa=est.kappa,
                                   noise=noise)
    worst = mixed_check or (max(checks, key=lambda c: c.significance) if checks else None)
    sigs = _fit_signals(f"{stream}_fit")
    put_values(sigs, surface_z=surface, surface_z_err=err, surface_z_lo=lo, surface_z_hi=hi,
               kappa=kap[0], kappa_lo=kap[1], kappa_hi=kap[2], distance=z - surface,
               noise=est.noise if est else noise, chi2=est.chi2 if est else math.nan,
               n_points=est.n if est else len(zs), converged=int(status == "done"),
               rg_apparent=tip.rg_apparent if tip else math.nan, tip_ok=int(tip.ok) if tip else 1,
               transferred=int(transfer is not None), reference_x=transfer["x"] if transfer else math.nan,
               reference_y=transfer["y"] if transfer else math.nan,
               lateral_contrast=worst.contrast if worst else math.nan,
               lateral_height=worst.height if worst else math.nan, lateral_checks=len(checks))
    yield from bps.trigger_and_read(list(sigs.values()), name=f"{stream}_fit")
    if tip is not None and not tip.ok:
        msg = "SECM approach: the tip does not match its record: " + "; ".join(tip.findings)
        if spec.tip_check == "stop":
            raise TipStateError(msg, tip.findings)
        logger.warning(msg)
    if transfer is None and park and math.isfinite(spec.working_distance):
        # at the best estimate, but never more than _PARK_SLACK closer than asked to the highest plausible surface
        # (fast kinetics of unknown κ read like a conductor ~a/κ farther away, and the margin keeps the tip out of
        # the stretch that would tell them apart: the doubt is spent on the far side), never closer than the safety
        # margin, nor below a height the current alone showed to be inside the working distance
        yield from bps.mv(stage.z, max(surface + spec.working_distance, hi + spec.working_distance - _PARK_SLACK * a,
                                       hi + spec.safety_margin, res["z_inside"]))
    if status != "done":
        logger.warning("SECM approach: surface known only to ±%.3g µm (κ between %.3g and %.3g; best %.3g): pass "
                       "kappa= if the kinetics are known", 0.5 * (hi - lo), kap[1], kap[2], kap[0])
    return dict(surface_z=float(surface), surface_z_err=float(err), stop_z=float(z), n_steps=n,
                reference_current=float(ref), kappa=kap[0], kappa_lo=kap[1], kappa_hi=kap[2],
                surface_z_lo=lo, surface_z_hi=hi, converged=status == "done", noise=est.noise if est else noise,
                reference=(transfer["x"], transfer["y"]) if transfer else None)


def _afm_approach(stage, afm, spec: ApproachSpec, *, stream: str, park: bool):
    """EC-AFM: a force curve per step; stop when the deflection setpoint is reached within the piezo range."""
    z0 = float(stage.z.position)
    state = dict(z=z0, n=0, t_hit=0.0, err=math.nan)

    def steps():
        yield from apply_settings(afm.force_curve_settings(travel=0.02, n_points=200))
        z = z0
        while True:
            r = yield from bps.trigger_and_read([afm, stage.z], name=stream)
            if simulated(r):  # a preview (summarize_plan): no force curve to decide from
                break
            travel = np.asarray(r[afm.fc_z.name]["value"])
            defl = np.asarray(r[afm.fc_deflection.name]["value"])
            hit = np.flatnonzero(defl >= spec.threshold)
            t_hit = float(travel[hit[0]]) if hit.size else math.inf
            state.update(t_hit=t_hit, err=float(travel[1] - travel[0]))
            if t_hit <= spec.piezo_range:
                break
            step = min(spec.coarse_step, max(spec.fine_step, t_hit - 0.5 * spec.piezo_range))
            if z0 - (z - step) > spec.max_travel or z - step < stage.z.limits[0]:
                raise ApproachLimitReached(f"EC-AFM approach: setpoint not reached within max_travel="
                                           f"{spec.max_travel} µm")
            yield from bps.checkpoint()
            z -= step
            yield from bps.mv(stage.z, z)
            state.update(z=z, n=state["n"] + 1)

    yield from bpp.finalize_wrapper(steps(), apply_settings(afm.mode_settings("contact")))
    z = state["z"]
    surface = z - state["t_hit"]
    if park and math.isfinite(spec.working_distance):
        yield from bps.mv(stage.z, surface + spec.working_distance)
    return dict(surface_z=float(surface), surface_z_err=state["err"], stop_z=float(z), n_steps=state["n"],
                reference_current=math.nan)


@checked_plan()
def approach(stage: Readable, potentiostat: Readable, *, technique: str, probe: Configurable | None = None, afm: Readable | None = None,
             feedback: str = "negative", threshold: float | None = None, drop: float = 0.01,
             contact_current: float = 5e-13, deflection_setpoint: float | None = None,
             working_distance: float = 1.0, distance_units: str = "radius", coarse_step: float | None = None,
             fine_step: float | None = None, max_travel: float | None = None, n_confirm: int | None = None,
             tip_potential: float | None = None, reference_current: float | None = None,
             surface_guess: float | None = None, fine_zone: float | None = None, stop_offset: float = 0.0,
             near_deviation: float = 0.02, strategy: str = "fit", kappa: float | None = None,
             safety_margin: float | None = None, start_distance: float | None = None, tip_check: str = "warn",
             reference: Any = "auto", plane: Any = None, retract: float | None = None, context: Any = None,
             sample_md: dict | None = None,
             md: dict | None = None) -> Generator[Any, Any, float]:
    """Bring the probe to the surface, stop on the technique's criterion, park at a working distance.

    SECM, default ``strategy="fit"``: the surface (and κ unless ``kappa`` is given) is re-fitted with the exact
    feedback theory after every reading; steps head for ``surface + working_distance``, never below the highest
    plausible surface plus ``safety_margin``; the fit is recorded in the ``approach_fit`` stream.
    Criteria of ``strategy="threshold"``: SECM — normalised tip current I_T = i_T/i_T,inf (i_T,inf read first at the start height) crossing
    ``threshold`` (below for ``feedback="negative"``/insulator, default 0.5; above for ``"positive"``/conductor,
    default 2.0); SICM — ion current dropping by ``drop`` (fraction, typically 0.005–0.02; confirmed by
    ``n_confirm`` repeat readings); SECCM — meniscus contact, |substrate current| > ``contact_current`` (A);
    EC-AFM — a force curve per step until ``deflection_setpoint`` (m) is reached within the piezo range.
    Steps are coarse far away and fine near the surface: SECM steps follow the slope of the approach curve,
    never exceed 30 % of the distance the current implies, and stay below a/4 once the current has departed
    from i_T,inf by ``near_deviation`` (a footprint over mixed conductor/insulator can read ~1 close in);
    SICM/SECCM have no precursor, so they step finely except above ``surface_guess + fine_zone``.  The surface
    height is found by ``espt_bluesky.analysis.approach_criteria`` (SECM: feedback theory over the end of the
    curve; SICM: the ohmic setpoint distance; SECCM: the landing height minus ``stop_offset``).

    Parameters
    ----------
    stage, potentiostat : devices
        An XYZ stage (``.x/.y/.z`` with ``set/position/limits``) and a bipotentiostat.
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    working_distance : float
        Where to park above the surface, in ``distance_units`` ("radius": probe radii; "um").
    coarse_step, fine_step, max_travel : float, µm
        Step bounds and the hard travel limit (defaults scale with the probe).
    strategy : {"fit", "threshold"}
        SECM: ``"fit"`` (default) steers every step by the exact feedback theory fitted to the curve so far
        (surface height, and κ unless given) and stops at ``working_distance``; ``"threshold"`` is the classical
        programme (stop at a fixed I_T read on the insulator/conductor curve, then park).
    kappa : float, optional
        SECM ``"fit"``: the substrate's κ = k·a/D when known (0 insulator … ``math.inf`` conductor); None fits it.
        Unknown fast kinetics (κ ≳ 3) read like a conductor ~a/κ farther away: the surface is then known only
        within its bounds, and the tip parks at most a/10 closer than asked to the highest plausible surface
        (farther than asked by up to what the bounds leave open; a warning gives them).
    safety_margin : float, optional
        SECM ``"fit"``: the tip never goes closer than this to the highest surface the data allow (in
        ``distance_units``; default min(0.2 a, working_distance/2)).
    start_distance : float, optional
        SECM ``"fit"``: the start is at least this far above the surface (``distance_units``, default 5 a); i_T,∞
        is read there.
    tip_check : {"warn", "stop", "off"}
        SECM ``"fit"``: what to do when the curve says the tip is not the one recorded (apparent RG, recessed or
        contaminated electrode, noise): log a warning, or end the run with ``TipStateError``.
    reference : "auto", "off", None or (x, y)
        SECM ``"fit"``: what to do when a lateral probe near the surface finds the footprint mixed (a feature
        narrower than the tip, e.g. an HOPG edge band, averaging to ~i_T,inf: no one-κ fit locates the surface).
        ``"auto"``: locate the surface at neighbouring points (rings of 3 a and 5 a, each approach self-checked)
        and transfer it, recorded in ``approach_reference``; ``"off"``/None: stop with ``ApproachLimitReached``;
        ``(x, y)`` µm: always take the surface at that point.
    plane : PlaneFit, optional
        SECM ``"fit"``: the sample plane (``measure_tilt``) along which a reference's surface is transferred
        (default flat).
    retract : float, µm
        How far the cleanup raises the tip after a failure (default 5 probe radii, at least 2 µm).
    context, sample_md, md : dict
        Experiment context (``bench.metadata()`` or an :class:`~espt_bluesky.plans.metadata.ExperimentContext`),
        extra sample keys, and user metadata for the start document.

    Returns
    -------
    float
        The surface height z (µm) under the probe (also in the ``surface`` stream as ``surface_z``).

    Examples
    --------
    >>> bench = make_sim_bench("SECM", "patterned"); RE(bps.mv(bench.stage.z, 250))
    >>> z_s = RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="positive",
    ...                   working_distance=1.0, context=bench.metadata())).plan_result
    """
    spec = make_approach_spec(stage, potentiostat, technique=technique, probe=probe, afm=afm, feedback=feedback,
                              threshold=threshold, drop=drop, contact_current=contact_current,
                              deflection_setpoint=deflection_setpoint, working_distance=working_distance,
                              distance_units=distance_units, coarse_step=coarse_step, fine_step=fine_step,
                              max_travel=max_travel, n_confirm=n_confirm, tip_potential=tip_potential,
                              reference_current=reference_current, surface_guess=surface_guess,
                              fine_zone=fine_zone, stop_offset=stop_offset, near_deviation=near_deviation,
                              strategy=strategy, kappa=kappa, safety_margin=safety_margin,
                              start_distance=start_distance, tip_check=tip_check, reference=reference,
                              plane=plane)
    retract = check_step("retract", max(5.0 * spec.radius, 2.0) if retract is None else retract)
    pr = probe_of(potentiostat, probe, afm)
    args = dict(technique=technique, feedback=feedback, threshold=spec.threshold,
                working_distance_um=spec.working_distance, **{k: v for k, v in asdict(spec).items()
                                                              if k not in ("technique", "feedback", "threshold")})
    if spec.plane is not None:  # JSON-safe in the start document
        args["plane"] = spec.plane.as_dict() if hasattr(spec.plane, "as_dict") else repr(spec.plane)
    if args.get("kappa") is not None and math.isinf(args["kappa"]):
        args["kappa"] = "inf"  # JSON-safe in the start document
    start_md = build_start_md("approach", args, technique=spec.technique, mode="approach", probe=pr,
                              context=context, sample_md=sample_md, md=md,
                              hints={"dimensions": [[[stage.z.name], "approach"]]})

    def body():
        res = yield from approach_stub(stage, potentiostat, spec, afm=afm, stream="approach", park=True)
        sigs = soft_signals(surface_z=(res["surface_z"], "um"), surface_z_err=(res["surface_z_err"], "um"),
                            stop_z=(res["stop_z"], "um"))
        put_values(sigs, surface_z=res["surface_z"], surface_z_err=res["surface_z_err"], stop_z=res["stop_z"])
        yield from bps.trigger_and_read([stage.x, stage.y, stage.z, *sigs.values()], name="surface")
        return res["surface_z"]

    return (yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                                   stage_devices=[potentiostat] if technique != "EC-AFM" else [afm],
                                   retract_on_success=False))
