"""Safe approach of the probe to the surface, for SECM, SICM, SECCM and EC-AFM.

``approach`` is a complete plan (one run); :func:`approach_stub` is the same procedure inside an open run, used by
``measure_tilt``, ``hopping_scan`` (plan mode), ``combinatorial_sweep`` and ``sgtc``.  Arguments are validated into
an :class:`ApproachSpec` before anything moves (:func:`make_approach_spec`).
"""

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
from ._common import (ApproachLimitReached, apply_settings, cell_on, check_int, check_potential, check_step,
                      check_technique, checked_plan, configure_technique, managed_run, pipette_geometry, probe_of,
                      probe_radius, probe_rg, put_values, set_potential, simulated, soft_signals, value_of)
from .metadata import build_start_md

FEEDBACK = ("negative", "positive")
UNITS = ("radius", "um")
STRATEGIES = ("fit", "threshold")
TIP_CHECKS = ("off", "warn", "stop")

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
                       tip_check: str = "warn") -> ApproachSpec:
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
    return ApproachSpec(technique, a, rg, feedback, float(threshold), float(stop_distance),
                        math.nan if working_distance is None else working_distance, coarse, fine, travel, n_conf,
                        tip_potential, reference_current, surface_guess, fz, float(stop_offset), float(piezo_range),
                        float(near_deviation), strategy if technique == "SECM" else "threshold", kappa, margin,
                        start, tip_check)


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
        n_ref = 5 if spec.technique == "SICM" or fit else 3
        for _ in range(n_ref):
            yield from measure()
        if ref is None:
            ref = float(np.mean(vals[-n_ref:])) if not preview else math.nan
        if ref == 0:
            raise ApproachLimitReached("the far current is zero: is the cell connected and the probe immersed?",
                                           reason="no_current")
    if fit and not preview:
        return (yield from _secm_fit_approach(stage, spec, zs, vals, ref, measure, stream=stream, park=park,
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
            tip_ok=(1, ""))
    return _FIT_SIGNALS[stream]


def _secm_fit_approach(stage, spec: ApproachSpec, zs: list[float], vals: list[float], ref: float, measure, *,
                       stream: str, park: bool, ref_measured: bool):
    """SECM approach steered by the exact feedback theory: after every reading the surface height (and κ when
    unknown) is re-estimated from the whole curve (:func:`~espt_bluesky.analysis.approach_criteria.
    secm_surface_estimate`) and the next step comes from :func:`~espt_bluesky.analysis.approach_criteria.
    next_approach_step`: towards ``surface + working distance``, never below the highest plausible surface plus
    the safety margin.  The final estimate is recorded in the ``<stream>_fit`` stream."""
    a = spec.radius
    target = spec.working_distance if math.isfinite(spec.working_distance) else a
    z_start = float(zs[0])
    rel = np.asarray(vals, float) / ref
    # the noise of one normalised reading, from the repeated readings at the start (never below 0.1 % of i_T,inf)
    noise = max(float(np.std(rel, ddof=1)) if rel.size > 1 else 0.0, 1e-3)
    scale_err = 0.1  # i_T,inf read at a finite start height (its footprint may see other materials): fitted too
    n, n_stay = 0, 0
    z = float(zs[-1])

    def estimate():
        return crit.secm_surface_estimate_local(zs, np.asarray(vals, float) / ref, a, spec.rg, kappa=spec.kappa,
                                          noise=noise, scale_err=scale_err, start_distance=spec.start_distance,
                                          footprint_scale=5.0 * a)

    est = prev = estimate()
    while True:
        step, status = crit.next_approach_step(z, est, target, margin=spec.safety_margin,
                                               coarse_step=spec.coarse_step, radius=a,
                                               previous=prev if n else None)
        if not est.consistent and status != "done":
            # one substrate does not explain the curve (a mixed footprint, or the curve just turned away from
            # the prediction), so its bounds mean little: steps of at most 30 % of the smallest distance the
            # present current allows for any κ, until the stretch close to the surface pins the surface down
            cap = max(spec.fine_step, 0.3 * a * crit.secm_cautious_distance(vals[-1] / ref, spec.rg))
            step, status = min(cap, max(spec.fine_step, 0.25 * a)), "cautious"
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
        if prev.surprised_by(z, vals[-1] / ref, a, spec.rg):
            est.consistent = False  # the curve turned away from the prediction: small steps until it is explained
    surface, err = est.z0, est.z0_err
    tip = None
    if spec.tip_check != "off":  # does the curve match the recorded tip? (the closest 25 readings)
        tip = crit.check_tip_state(zs[-25:], np.asarray(vals[-25:], float) / ref, a, spec.rg, kappa=est.kappa,
                                   noise=noise)
    sigs = _fit_signals(f"{stream}_fit")
    put_values(sigs, surface_z=surface, surface_z_err=err, surface_z_lo=est.z0_lo, surface_z_hi=est.z0_hi,
               kappa=est.kappa, kappa_lo=est.kappa_lo, kappa_hi=est.kappa_hi, distance=z - surface,
               noise=est.noise, chi2=est.chi2, n_points=est.n, converged=int(status == "done"),
               rg_apparent=tip.rg_apparent if tip else math.nan, tip_ok=int(tip.ok) if tip else 1)
    yield from bps.trigger_and_read(list(sigs.values()), name=f"{stream}_fit")
    if tip is not None and not tip.ok:
        msg = "SECM approach: the tip does not match its record: " + "; ".join(tip.findings)
        if spec.tip_check == "stop":
            raise TipStateError(msg, tip.findings)
        logger.warning(msg)
    if park and math.isfinite(spec.working_distance):
        # at the best estimate, but never closer than the safety margin above the highest plausible surface
        yield from bps.mv(stage.z, max(surface + spec.working_distance, est.z0_hi + spec.safety_margin))
    if status != "done":
        logger.warning("SECM approach: surface known only to ±%.3g µm (κ between %.3g and %.3g; best %.3g): pass "
                       "kappa= if the kinetics are known", 0.5 * (est.z0_hi - est.z0_lo), est.kappa_lo,
                       est.kappa_hi, est.kappa)
    return dict(surface_z=float(surface), surface_z_err=float(err), stop_z=float(z), n_steps=n,
                reference_current=float(ref), kappa=est.kappa, kappa_lo=est.kappa_lo, kappa_hi=est.kappa_hi,
                surface_z_lo=est.z0_lo, surface_z_hi=est.z0_hi, converged=status == "done", noise=est.noise)


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
             retract: float | None = None, context: Any = None, sample_md: dict | None = None,
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
    safety_margin : float, optional
        SECM ``"fit"``: the tip never goes closer than this to the highest surface the data allow (in
        ``distance_units``; default min(0.2 a, working_distance/2)).
    start_distance : float, optional
        SECM ``"fit"``: the start is at least this far above the surface (``distance_units``, default 5 a); i_T,∞
        is read there.
    tip_check : {"warn", "stop", "off"}
        SECM ``"fit"``: what to do when the curve says the tip is not the one recorded (apparent RG, recessed or
        contaminated electrode, noise): log a warning, or end the run with ``TipStateError``.
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
                              start_distance=start_distance, tip_check=tip_check)
    retract = check_step("retract", max(5.0 * spec.radius, 2.0) if retract is None else retract)
    pr = probe_of(potentiostat, probe, afm)
    args = dict(technique=technique, feedback=feedback, threshold=spec.threshold,
                working_distance_um=spec.working_distance, **{k: v for k, v in asdict(spec).items()
                                                              if k not in ("technique", "feedback", "threshold")})
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
