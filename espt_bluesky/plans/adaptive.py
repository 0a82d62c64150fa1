"""Adaptive (autonomous) hopping: the instrument chooses its next hop from a Gaussian-process map of the hops so far.

:func:`adaptive_hopping_scan` surveys the region (corners + centre or a 3 × 3 grid), then asks the agent
(:class:`~espt_bluesky.plans.adaptive_agent.GPMapAgent`, bluesky-adaptive's suggest/ingest protocol) for one
landing at a time, hops there exactly as :func:`~espt_bluesky.plans.hopping.hopping_scan` does (device or plan
mode, the same fault policy), turns the hop's reading into the objective with ``analysis/`` and feeds it back.

Everything is in one run: the hops in ``primary`` (as any hopping map; ``read_map`` returns them as scattered
spots with x/y in µm), the approach curves in ``approach`` (plan mode), skipped hops in ``faults``, and one event
per landing in ``decisions``: where, why (strategy, predicted mean and standard deviation, acquisition score, the
reason in words, the GP's hyperparameters) and what came of it (valid, objective).  The start document's
``adaptive`` entry holds the settings that, with the decisions, rebuild every proposal
(:func:`~espt_bluesky.plans.adaptive_agent.replay_decisions`) and the final map
(:func:`espt_bluesky.callbacks.adaptive.adaptive_map_dataset`).
"""


import math
import time
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Configurable, Movable, Readable

from ..analysis import gp_sampling as gps
from ..analysis import voltammetry as volt
from ..errors import InvalidArgument, check_bool, check_choice, check_int, check_number, check_positive
from ._common import (cell_on, check_xy, check_z, checked_plan, managed_run, pipette_geometry, probe_radius, put_values,
                      simulated, soft_signals)
from .adaptive_agent import GPMapAgent
from .imaging import _as_plane, _move_xyz, _prepare_read
from .hopping import (SicmHops, _FaultLog, check_hop_args, configure_measure, device_hop, hop_stub,
                      prepare_device_hops)
from .metadata import build_start_md

__all__ = ["adaptive_hopping_scan", "OBJECTIVES", "DECISION_KEYS"]

#: Built-in objectives: name -> (units, what it needs).
OBJECTIVES = {
    "height": ("um", "the hop's surface height (SICM topography, SECCM landing height)"),
    "current": ("A", "the measured current of the hop's channel (a READ or the mean of a waveform)"),
    "passivation_ratio": (None, "Q_p2/Q_p1 of a two-cycle CV (analysis.voltammetry.passivation_ratio)"),
    "peak_current": ("A", "|cathodic peak current| of the first CV cycle "
                          "(analysis.voltammetry.peak_currents_and_potentials)"),
    "normalised_current": (None, "SECM: the tip current over i_T,inf (I_T, feedback)"),
    "log_kappa": (None, "SECM: log10 of κ = k·a/D from I_T at L = height/a "
                        "(analysis.kinetic_maps.invert_kappa), clipped to 1e-3..1e3"),
}
_SECM_OBJECTIVES = ("normalised_current", "log_kappa", "current")
#: κ beyond these bounds is not resolved by a feedback current (the conductor / insulator limits)
_KAPPA_CLIP = (1e-3, 1e3)
_WAVEFORM_OBJECTIVES = ("passivation_ratio", "peak_current")
DECISION_KEYS = ("decision_hop", "decision_x", "decision_y", "decision_strategy", "decision_mean",
                 "decision_std", "decision_score", "decision_reason", "decision_valid", "decision_objective",
                 "decision_n_model", "decision_n_attempted", "decision_n_candidates", "decision_length_scale",
                 "decision_length_scale_y", "decision_amplitude", "decision_noise", "decision_refit", "decision_threshold")


class ObjectiveError(InvalidArgument):
    """The objective gave no finite value for a valid hop."""


def _decision_signals(obj_units: str | None) -> dict[str, Any]:
    nan = math.nan
    return soft_signals(decision_hop=(0, None), decision_x=(nan, "um"), decision_y=(nan, "um"),
                        decision_strategy=("", None), decision_mean=(nan, obj_units), decision_std=(nan, obj_units),
                        decision_score=(nan, None), decision_reason=("", None), decision_valid=(0, None),
                        decision_objective=(nan, obj_units), decision_n_model=(0, None),
                        decision_n_attempted=(0, None), decision_n_candidates=(0, None),
                        decision_length_scale=(nan, "um"), decision_length_scale_y=(nan, "um"),
                        decision_amplitude=(nan, None),
                        decision_noise=(nan, None), decision_refit=(0, None), decision_threshold=(nan, obj_units))


def _capture_reads(gen, sink: dict, stream: str):
    """Run plan ``gen`` unchanged, keeping in ``sink`` the values read into the last ``stream`` event."""
    reply, exc, bundle = None, None, None
    while True:
        try:
            msg = gen.throw(exc) if exc is not None else gen.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, exc = None, None
        if msg.command == "create":
            bundle = msg.kwargs.get("name", msg.args[0] if msg.args else None)
            if bundle == stream:
                sink.clear()
        try:
            reply = yield msg
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as e:  # hand it to the plan, as if we were not here
            exc = e
            continue
        if msg.command == "read" and bundle == stream and isinstance(reply, Mapping):
            sink.update({k: v.get("value") for k, v in reply.items() if isinstance(v, Mapping)})


def _objective_fn(objective: Any, technique: str, meas: Mapping | None, potentiostat: Any, keys: Mapping[str, str],
                  secm_md: Mapping[str, Any] | None = None) -> tuple[Callable[[Mapping], float], str, str | None]:
    """(function of a flat reading -> float, name, units) of the objective."""
    if callable(objective):
        return objective, getattr(objective, "__name__", "user function"), None
    name = check_choice("objective", objective, tuple(OBJECTIVES))
    units = OBJECTIVES[name][0]
    if (technique == "SECM") != (name in _SECM_OBJECTIVES) and name != "current":
        allowed = _SECM_OBJECTIVES if technique == "SECM" else tuple(o for o in OBJECTIVES
                                                                      if o not in _SECM_OBJECTIVES[:2])
        raise InvalidArgument(f"objective={name!r} does not suit technique={technique!r}; allowed: {allowed}")
    if name in ("normalised_current", "log_kappa"):
        from ..analysis.kinetic_maps import invert_kappa

        key, i_inf, L, rg = keys["current"], secm_md["i_inf"], secm_md["L"], secm_md["rg"]
        if name == "normalised_current":
            return (lambda r: float(r[key]) / i_inf), name, units
        return (lambda r: float(np.log10(np.clip(invert_kappa(float(r[key]) / i_inf, L, rg), *_KAPPA_CLIP)))), \
            name, units
    if name in _WAVEFORM_OBJECTIVES and (meas is None or meas["technique"] != "CV"):
        raise InvalidArgument(f"objective={name!r} needs a CV per hop: pass measure={{'technique': 'CV', "
                              f"'n_cycles': 2, ...}} (got measure={None if meas is None else dict(meas)!r})")
    if name == "passivation_ratio" and meas is not None and int(meas["params"].get(
            "n_cycles", potentiostat.params.n_cycles.get())) < 2:
        raise InvalidArgument("objective='passivation_ratio' needs at least 2 CV cycles: measure['n_cycles'] >= 2")
    wf = {f: getattr(potentiostat.wf, f).name for f in ("time", "potential", "current")}
    if name == "height":
        return (lambda r: float(r[keys["height"]])), name, units
    if name == "current":
        def current(r):
            if wf["current"] in r and np.size(r[wf["current"]]) > 1:
                return float(np.mean(r[wf["current"]]))
            return float(r[keys["current"]])
        return current, name, units
    if name == "passivation_ratio":
        return (lambda r: volt.passivation_ratio(r[wf["time"]], r[wf["potential"]], r[wf["current"]])), name, units
    return (lambda r: abs(float(volt.peak_currents_and_potentials(
        r[wf["time"]], r[wf["potential"]], r[wf["current"]]).ip_cathodic[0]))), name, units


def _region(stage: Any, x_range: Any, y_range: Any, region: Any) -> tuple[tuple[float, ...], np.ndarray | None]:
    """(bounds (x0, x1, y0, y1) µm inside the stage limits, polygon or None)."""
    poly = None
    if region is not None:
        poly = gps.check_polygon(region)
    if x_range is None or y_range is None:
        if poly is None:
            raise InvalidArgument("x_range=None / y_range=None and region=None: give the mapped area as "
                                  "x_range=(x0, x1), y_range=(y0, y1) in µm, or a region polygon")
        x_range = (poly[:, 0].min(), poly[:, 0].max())
        y_range = (poly[:, 1].min(), poly[:, 1].max())
    out = []
    for nm, r in (("x_range", x_range), ("y_range", y_range)):
        if not isinstance(r, (tuple, list, np.ndarray)) or len(r) != 2:
            raise InvalidArgument(f"{nm}={r!r} must be (start, stop) in µm")
        a, b = sorted((check_number(f"{nm} start", r[0]), check_number(f"{nm} stop", r[1])))
        if a == b:
            raise InvalidArgument(f"{nm}={tuple(r)!r}: start equals stop, the region is empty")
        out.append((a, b))
    (x0, x1), (y0, y1) = out
    check_xy(stage, "x_range/y_range", [x0, x1], [y0, y1])
    return (x0, x1, y0, y1), poly


def _footprint(probe: Any) -> float:
    """Default minimum separation (µm): the probe's footprint diameter (pipette outer diameter, else 2a)."""
    try:
        return 2.0 * pipette_geometry(probe)[1]
    except InvalidArgument:
        return 2.0 * probe_radius(probe)


@checked_plan(("SICM", "SECCM", "SECM"))
def adaptive_hopping_scan(stage: Readable, potentiostat: Readable, *, technique: str,
                          x_range: tuple | None = None, y_range: tuple | None = None,
                          region: Sequence | None = None, objective: Any = "height", strategy: str = "mapping",
                          max_hops: int = 50, max_time: float | None = None, max_invalid: int | None = None,
                          min_separation: float | None = None, spacing: float | None = None,
                          survey: str = "corners", beta: float = 2.0, threshold: float | None = None,
                          nu: float = 1.5, refit_every: int = 5, anisotropic: bool = False,
                          reconstruction: str = "gp", resume: Any = None, height: float | None = None,
                          plane: Any = None, i_inf: float | None = None, hop_height: float = 2.0,
                          approach_step: float | None = None, max_travel: float = 20.0, drop: float = 0.01,
                          contact_current: float = 5e-13, stop_offset: float = 0.0, max_slope: float | None = None,
                          measure: Mapping | None = None, mode: str = "device", hopper: Movable | None = None,
                          on_fault: str = "skip", max_consecutive_faults: int = 5,
                          probe: Configurable | None = None, retract: float | None = None, context: Any = None,
                          sample_md: dict | None = None, detectors: Sequence[Readable] | None = None,
                          md: dict | None = None) -> Generator[Any, Any, dict]:
    """Adaptive hopping map: survey, then hop where a Gaussian-process map of the objective says it pays most.

    Parameters
    ----------
    technique : {"SICM", "SECCM", "SECM"}
        SICM and SECCM hop (approach at every landing); SECM visits each landing at a constant height above the
        sample plane (``height``, ``plane``, as :func:`~espt_bluesky.plans.imaging.constant_height_image`) and
        reads the tip current there.
    x_range, y_range : (start, stop), µm
        The mapped rectangle (inside the stage limits); default: the bounding box of ``region``.
    region : list of (x, y), µm, optional
        A polygon (stage frame) the landings must lie in, e.g. a particle outlined on a correlated XRF/Raman map
        (``espt_bluesky.correlate.regions.threshold_polygon``, mapped to the stage frame).
    objective : {"height", "current", "passivation_ratio", "peak_current", "normalised_current", "log_kappa"} \
or callable
        What the map is of (see :data:`OBJECTIVES`); a callable gets the hop's reading as ``{data key: value}``
        and returns a float.  A callable is tried on the devices' present reading before anything moves and must
        give a finite number; a valid hop whose objective is not finite ends the run with
        :class:`ObjectiveError` (after the hop and its decision are recorded).
    strategy : {"mapping", "hotspots", "balanced", "boundary", "gradient"}
        Acquisition (:mod:`espt_bluesky.analysis.gp_sampling`): max σ; UCB μ + β·σ; their mean; the straddle
        score at the class ``threshold`` (edges of an edge/basal or particle/binder map); σ weighted by the
        predicted map's local slope (rims and steps, where a map's error lives).
    max_hops : int
        Budget of valid hops, survey included (invalid landings do not count).
    max_time : float, s, optional
        Budget of instrument time: no new hop starts when the time used plus the mean hop time would exceed it.
    max_invalid : int, optional
        Most invalid landings in all (default ``max_hops``); the consecutive limit ``max_consecutive_faults``
        applies as in :func:`~espt_bluesky.plans.hopping.hopping_scan`.
    min_separation : float, µm
        No landing within this distance of an earlier one, valid or not (default: the probe footprint,
        the pipette's outer diameter).
    spacing : float, µm
        Pitch of the candidate grid (default ``min_separation / 2``, at least 1/60 of the region's span).
    survey : {"corners", "3x3"}
        Seed hops: corners + centre, or a 3 × 3 grid.
    beta, threshold, nu, refit_every
        UCB weight; class threshold of ``"boundary"`` (default: midpoint of the values measured); Matérn
        smoothness; hyperparameters fitted every ``refit_every`` valid hops (kept in between).  ``threshold`` is
        also the class threshold of ``reconstruction="piecewise"``.
    anisotropic : bool
        One GP length scale per axis (straight features, e.g. HOPG step bands), for the proposals and the map.
    reconstruction : {"gp", "piecewise"}
        How the final map product is made from the hops (:func:`espt_bluesky.analysis.gp_sampling.reconstruct`):
        the GP mean, or one GP per class of a two-phase sample (particles on a flat binder; the class boundary
        between hops of both classes by the ``"censored"`` rule, recorded as ``adaptive["boundary"]``).
    resume : Tiled BlueskyRun node or list of (name, doc), optional
        An earlier adaptive run of the same area: its landings (valid or not) and objectives rebuild the model,
        the survey is not repeated and its valid hops count against ``max_hops``.
    height, plane : float (µm), PlaneFit/dict/float
        SECM only: tip–plane distance and the sample plane (from ``measure_tilt``, or a height in µm).
    i_inf : float, A, optional
        SECM only: i_T,inf that normalises the tip current (default: 4nFDc*aβ(RG) from the probe and the
        ``context``'s mediator, :func:`espt_bluesky.analysis.kinetic_maps.theoretical_i_inf`).
    hop_height, approach_step, max_travel, drop, contact_current, stop_offset, max_slope, measure, mode, hopper,
    on_fault, max_consecutive_faults, detectors
        As :func:`~espt_bluesky.plans.hopping.hopping_scan`.

    Returns
    -------
    dict
        ``x``, ``y`` (µm), ``valid``, ``objective`` per landing (in order), ``stop_reason``.

    Examples
    --------
    >>> bench = make_sim_bench("SICM", "composite_cathode"); RE(bps.mv(bench.stage.z, 8.0))
    >>> RE(adaptive_hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(20, 40),
    ...                          y_range=(20, 40), max_hops=30, hop_height=8.0, hopper=bench.hopper))
    """
    technique = check_choice("technique", technique, ("SICM", "SECCM", "SECM"))
    secm = technique == "SECM"
    if secm:  # constant height: no hops, no hopping controller
        mode, hopper = "plan", None
    strategy = check_choice("strategy", strategy, gps.STRATEGIES)
    survey = check_choice("survey", survey, gps.SURVEYS)
    max_hops = check_int("max_hops", max_hops, 1, 100_000)
    max_invalid = max_hops if max_invalid is None else check_int("max_invalid", max_invalid, 0, 100_000)
    refit_every = check_int("refit_every", refit_every, 1, 10_000)
    anisotropic = check_bool("anisotropic", anisotropic)
    reconstruction = check_choice("reconstruction", reconstruction, gps.RECONSTRUCTIONS)
    if max_time is not None:
        max_time = float(check_positive("max_time", max_time, units="s"))
    beta = check_number("beta", beta, 0.0, 100.0)
    nu = float(check_choice("nu", str(float(nu)) if isinstance(nu, (int, float)) else nu, ("0.5", "1.5", "2.5")))
    if threshold is not None:
        threshold = check_number("threshold", threshold)
    if secm and measure is not None:
        raise InvalidArgument(f"measure={measure!r} with technique='SECM': the constant-height landing reads the tip "
                              f"current; pass measure=None")
    # the checks and derived settings every hopping map shares (hopping_scan's)
    hs = check_hop_args(stage, potentiostat, technique=technique, mode=mode, hopper=hopper, on_fault=on_fault,
                        max_consecutive_faults=max_consecutive_faults, hop_height=hop_height,
                        approach_step=approach_step, max_slope=max_slope, measure=measure, detectors=detectors,
                        probe=probe, drop=drop, contact_current=contact_current, max_travel=max_travel,
                        stop_offset=stop_offset, retract=retract, approach=not secm)
    mode, on_fault, hop_height, max_slope = hs.mode, hs.on_fault, hs.hop_height, hs.max_slope
    meas, dets, spec, sigs, pr = hs.meas, hs.dets, hs.spec, hs.signals, hs.probe
    keys, topo_key, valid_key = hs.keys, hs.topo_key, hs.valid_key

    # the region, its candidates and the survey: all checked before anything moves
    bounds, poly = _region(stage, x_range, y_range, region)
    span = max(bounds[1] - bounds[0], bounds[3] - bounds[2])
    # SECM reads from a height and touches nothing: the default separation is the electrode radius (its
    # resolution), not a footprint
    min_sep = ((probe_radius(pr) if secm else _footprint(pr)) if min_separation is None
               else float(check_positive("min_separation",
                                                                                min_separation, units="µm")))
    if min_sep >= span:
        raise InvalidArgument(f"min_separation={min_sep:g} µm is not smaller than the region ({span:g} µm across):"
                              f" at most one landing would fit; allowed: 0 < min_separation < {span:g} µm")
    # candidates: half the separation, but no finer than 1/60 of the region (the map's useful resolution;
    # prediction cost grows with the number of candidates)
    spacing = (max(0.5 * min_sep, span / 60.0) if spacing is None
               else float(check_positive("spacing", spacing, units="µm")))
    cand = gps.candidate_grid(bounds, spacing, poly)
    if cand.shape[0] == 0:
        raise InvalidArgument(f"region={None if poly is None else poly.tolist()!r}: no candidate landing lies inside "
                              f"it and inside x_range/y_range {bounds!r} (pitch {spacing:g} µm): the region is "
                              f"empty")
    check_xy(stage, "candidate landings", cand[:, 0], cand[:, 1])
    pl, secm_md = None, {}
    if secm:
        pl, secm_md = _secm_setup(stage, pr, cand, height, plane, i_inf, context)
    elif height is not None or plane is not None or i_inf is not None:
        raise InvalidArgument(f"height/plane/i_inf are for technique='SECM' (constant height); technique="
                              f"{technique!r} hops to the surface at every landing")
    seeds = gps.survey_points(cand, survey, margin=0.5 * min_sep)
    seeds = seeds[_spread(seeds, min_sep)]
    if len(cand) < 2:
        raise InvalidArgument(f"the region holds {len(cand)} candidate landing: a map needs at least 2")

    # the objective
    chan = (meas or {}).get("channel", "substrate" if technique == "SECCM" else "tip")
    obj_fn, obj_name, obj_units = _objective_fn(objective, technique, meas, potentiostat,
                                                {"height": topo_key, "current": getattr(potentiostat, chan).current.name},
                                                secm_md)
    if callable(objective):
        _try_objective(obj_fn, [potentiostat, stage, *dets] + ([hopper] if hopper is not None else []))

    # a resumed run: rebuild the model from its decisions
    previous = _previous_landings(resume) if resume is not None else None
    min_length = max(0.5 * min_sep, spacing)
    agent = GPMapAgent(cand, strategy=strategy, min_separation=min_sep,
                       survey=seeds if previous is None else np.zeros((0, 2)), max_hops=max_hops,
                       max_attempts=max_hops + max_invalid, span=span, min_length=min_length, beta=beta,
                       threshold=threshold, nu=nu, refit_every=refit_every, anisotropic=anisotropic)
    if previous is not None:
        agent.load(previous["x"], previous["y"], previous["valid"], previous["objective"])
        if agent.n_valid < 2:
            raise InvalidArgument(f"resume: the earlier run has {agent.n_valid} valid hop(s) with an objective; "
                                  f"at least 2 are needed to rebuild the model")
    settings = dict(strategy=strategy, objective=obj_name, objective_units=obj_units, min_separation=min_sep,
                    spacing=spacing, bounds=list(bounds), region=None if poly is None else poly.tolist(),
                    span=span, min_length=min_length, beta=beta, threshold=threshold, nu=nu,
                    refit_every=refit_every, anisotropic=anisotropic, reconstruction=reconstruction,
                    boundary="censored",
                    survey=survey, survey_points=seeds.tolist(), max_hops=max_hops,
                    max_time=max_time, max_invalid=max_invalid, n_candidates=int(cand.shape[0]),
                    resumed_from=None if previous is None else previous["uid"],
                    n_resumed=0 if previous is None else len(previous["x"]))
    args = dict(technique=technique, x_range=x_range, y_range=y_range, region=settings["region"],
                objective=obj_name, strategy=strategy, max_hops=max_hops, max_time=max_time,
                max_invalid=max_invalid, min_separation=min_separation, spacing=spacing, survey=survey, beta=beta,
                threshold=threshold, nu=nu, refit_every=refit_every, anisotropic=anisotropic,
                reconstruction=reconstruction, hop_height=hop_height,
                approach_step=None if secm else spec.fine_step, max_travel=max_travel, drop=drop,
                contact_current=contact_current, height=height, i_inf=secm_md.get("i_inf"),
                stop_offset=stop_offset, max_slope=max_slope, measure=measure, mode=mode, on_fault=on_fault,
                max_consecutive_faults=hs.max_consecutive_faults, detectors=[d.name for d in dets])
    start_md = build_start_md("adaptive_hopping_scan", args, technique=technique,
                              mode="constant_height" if secm else "hopping", probe=pr,
                              context=context, sample_md=sample_md, md=md, map_keys=keys, order="adaptive",
                              extents=[[bounds[2], bounds[3]], [bounds[0], bounds[1]]],
                              hints={"dimensions": [[[keys[1]], "primary"], [[keys[0]], "primary"]]},
                              extra={"topography_key": topo_key, "valid_key": valid_key,
                                     "hop_mode": "constant_height" if secm else mode,
                                     "setpoint_distance": None if secm else spec.stop_distance,
                                     "num_points": int(max_hops), "adaptive": settings,
                                     "decisions_stream": "decisions",
                                     **({} if not secm else dict(plane=pl.as_dict(), height=float(height),
                                                                 i_inf=secm_md["i_inf"]))})
    faults = _FaultLog(int(max_hops), hs.max_consecutive_faults)
    dsig = _decision_signals(obj_units)
    state: dict[str, Any] = dict(x=[], y=[], valid=[], objective=[], stop_reason="", t_hops=[])
    reading: dict[str, Any] = {}

    def dev_hop(x, y):
        # hopping_scan's device hop; the reading of the hop (valid or not) is kept for the objective
        return (yield from _capture_reads(device_hop(hopper, dets, x, y, on_fault=on_fault), reading, "primary"))

    last = {"contact": None}
    # plan-mode SICM hops estimate heights as hopping_scan's do (noise-adapted averaging, slope margin)
    sicm = (SicmHops(pipette_geometry(pr), max_slope, spec.fine_step, spec.stop_distance)
            if technique == "SICM" and mode == "plan" else None)

    def plan_hop(x, y):
        top = None if last["contact"] is None else last["contact"] + hop_height
        res = yield from _capture_reads(hop_stub(stage, potentiostat, spec, x, y, hop_height=hop_height,
                                                 signals=sigs, top=top, measure=meas, on_fault=on_fault,
                                                 extra=dets, sicm=sicm), reading, "primary")
        if res["valid"]:
            last["contact"] = res["contact_z"]
        return res

    def secm_hop(x, y):
        # the same move as constant_height_image: up first, down last, never sweeping below the target height
        yield from _move_xyz(stage, x, y, float(pl.z_at(x, y)) + float(height))
        yield from _capture_reads(bps.trigger_and_read([potentiostat, stage.x, stage.y, stage.z, *dets]), reading,
                                  "primary")
        return dict(valid=True, fault="", message="")

    def value_for(res):
        if not res["valid"]:
            return math.nan
        if simulated(reading):  # a preview (summarize_plan, check_limits) reads nothing: follow a flat map
            return 0.0
        if obj_name in _WAVEFORM_OBJECTIVES or (obj_name == "current" and meas is not None):
            # waveforms written as external assets are not in the reading: take them from the device
            for f in ("time", "potential", "current"):
                sig = getattr(potentiostat.wf, f)
                if sig.name not in reading:
                    reading[sig.name] = yield from bps.rd(sig)
        try:
            return float(obj_fn(dict(reading)))
        except Exception as exc:  # recorded as a NaN objective, then reported below
            state["objective_error"] = f"{type(exc).__name__}: {exc}"
            return math.nan

    def body():
        if sicm is None:
            return (yield from loop())
        yield from cell_on(potentiostat)
        yield from sicm.setup(stage, potentiostat)
        return (yield from bpp.finalize_wrapper(loop(), sicm.restore(potentiostat)))

    def loop():
        if secm:
            yield from _prepare_read(potentiostat, None)
        elif mode == "device":
            yield from prepare_device_hops(hopper, potentiostat, hs, technique=technique, drop=drop,
                                           contact_current=contact_current, max_travel=max_travel)
        else:
            yield from cell_on(potentiostat)
            yield from configure_measure(potentiostat, meas)
        t0 = time.monotonic()
        hop = 0
        while True:
            yield from bps.checkpoint()
            stop, why = agent.should_stop()
            if stop:
                state["stop_reason"] = why
                break
            if max_time is not None and state["t_hops"]:
                used = time.monotonic() - t0
                if used + float(np.mean(state["t_hops"])) > max_time:
                    state["stop_reason"] = f"time budget used ({used:.1f} s of max_time={max_time:g} s)"
                    break
            sugg = agent.suggest(1)
            if not sugg:
                state["stop_reason"] = agent.should_stop()[1] or "the agent proposed nothing"
                break
            s = sugg[0]
            prop: gps.Proposal = s["proposal"]
            x, y = check_xy(stage, "proposed landing", s["x"], s["y"])  # the same validation as any point
            x, y = float(x[0]), float(y[0])
            t_hop = time.monotonic()
            reading.clear()
            res = yield from (secm_hop(x, y) if secm else dev_hop(x, y) if mode == "device" else plan_hop(x, y))
            state["t_hops"].append(time.monotonic() - t_hop)
            val = yield from value_for(res)
            agent.ingest([{"_id": s["_id"], "x": x, "y": y, "objective": val, "valid": res["valid"]}])
            for k, v in (("x", x), ("y", y), ("valid", bool(res["valid"])), ("objective", val)):
                state[k].append(v)
            put_values(dsig, decision_hop=hop, decision_x=x, decision_y=y, decision_strategy=prop.strategy,
                       decision_mean=prop.mean, decision_std=prop.std, decision_score=prop.score,
                       decision_reason=prop.reason[:500], decision_valid=int(bool(res["valid"])),
                       decision_objective=val, decision_n_model=prop.n_model,
                       decision_n_attempted=prop.n_attempted, decision_n_candidates=prop.n_candidates,
                       decision_length_scale=prop.length_scale, decision_length_scale_y=prop.length_scale_y,
                       decision_amplitude=prop.amplitude,
                       decision_noise=prop.noise, decision_refit=int(prop.refit), decision_threshold=prop.threshold)
            yield from bps.trigger_and_read(list(dsig.values()), name="decisions")
            hop += 1
            if res["valid"]:
                faults.ok()
                if not math.isfinite(val):
                    why = state.get("objective_error", f"it returned {val!r}")
                    raise ObjectiveError(f"objective={obj_name!r} gave no finite value for the valid hop {hop - 1} "
                                         f"at x={x:.3f}, y={y:.3f} µm ({why}); the hop and its decision are "
                                         f"recorded. An objective must return a finite number for every valid hop")
            else:
                yield from faults.record(hop - 1, x, y, res["fault"] or "fault", res["message"])
        return {k: np.asarray(state[k]) for k in ("x", "y", "valid", "objective")} | {
            "stop_reason": state["stop_reason"]}

    def stop_reason():
        parts = [f"adaptive: {state['stop_reason']}" if state["stop_reason"] else "",
                 f"{agent.n_valid} valid hops", faults.summary()]
        return "; ".join(p for p in parts if p)

    return (yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=hs.retract,
                                   stage_devices=[potentiostat, *dets], stop_reason=stop_reason))


def _secm_setup(stage: Any, probe: Any, cand: np.ndarray, height: Any, plane: Any, i_inf: Any, context: Any
                ) -> tuple[Any, dict[str, Any]]:
    """SECM constant height: (plane, {i_inf (A), L = height/a, rg}) checked before anything moves."""
    from ..analysis.kinetic_maps import theoretical_i_inf
    from .metadata import ExperimentContext, probe_metadata

    if height is None or plane is None:
        raise InvalidArgument(f"height={height!r}, plane={plane!r}: technique='SECM' visits every landing at a "
                              f"constant height; give height (µm above the plane) and plane (from measure_tilt, "
                              f"or a height in µm)")
    height = check_number("height", height, 0.0, math.inf, low_inclusive=False, units="µm")
    pl = _as_plane("plane", plane)
    check_z(stage, "plane + height at the candidate landings", pl.z_at(cand[:, 0], cand[:, 1]) + height)
    pm = probe_metadata(probe) or {}
    a, rg = pm.get("radius"), float(pm.get("rg", 10.0))
    if a is None:
        raise InvalidArgument(f"probe metadata {pm!r} lacks 'radius' (µm): SECM needs it for L = height/a")
    if i_inf is None:
        med = ExperimentContext.from_dict(context).as_dict().get("mediator")
        try:
            i_inf = theoretical_i_inf(pm, med)
        except InvalidArgument as exc:
            raise InvalidArgument(f"i_inf=None: pass i_inf (A) or context with the mediator's D and c ({exc})") from None
    i_inf = float(check_number("i_inf", i_inf, units="A"))
    if i_inf == 0:
        raise InvalidArgument("i_inf=0 A: the tip current cannot be normalised; pass the far-field tip current")
    return pl, dict(i_inf=i_inf, L=float(height) / float(a), rg=rg)


def _spread(points: np.ndarray, min_sep: float) -> list[int]:
    """Indices of ``points`` kept greedily so that no two are closer than ``min_sep``."""
    keep: list[int] = []
    for i, p in enumerate(points):
        if all(math.hypot(*(p - points[j])) >= min_sep for j in keep):
            keep.append(i)
    return keep


def _try_objective(fn: Callable, devices: Sequence[Any]) -> None:
    """A user objective, tried on the devices' present reading (no message, no motion): it must give a finite
    number."""
    r: dict[str, Any] = {}
    for d in devices:
        try:
            r.update({k: v["value"] for k, v in d.read().items()})
        except Exception:  # a device that cannot be read now: the objective is tried without it
            continue
    try:
        v = float(fn(r))
    except Exception as exc:
        raise InvalidArgument(f"objective={fn!r} failed on the devices' present reading ({type(exc).__name__}: "
                              f"{exc}); it gets {{data key: value}} of the hop and must return a float") from exc
    if not math.isfinite(v):
        raise InvalidArgument(f"objective={fn!r} returned {v!r} on the devices' present reading; it must return a "
                              f"finite number for every valid hop")


def _previous_landings(run: Any) -> dict[str, Any]:
    """Landings of an earlier adaptive run (Tiled node or documents): its ``decisions`` stream."""
    from ..storage.maps import as_run_data

    try:
        rd = as_run_data(run, "decisions")
    except InvalidArgument as exc:
        raise InvalidArgument(f"resume: {exc}") from None
    if rd.start.get("plan_name") != "adaptive_hopping_scan" or not rd.data_keys:
        raise InvalidArgument(f"resume: run {rd.start.get('uid', '?')[:8]} is not an adaptive_hopping_scan with "
                              f"a decisions stream")
    a = rd.arrays
    return dict(uid=rd.start.get("uid"), x=np.asarray(a["decision_x"], float), y=np.asarray(a["decision_y"], float),
                valid=np.asarray(a["decision_valid"]).astype(bool),
                objective=np.asarray(a["decision_objective"], float))
