"""Combinatorial parameter sweeps over spots (SECCM screens): a seeded random assignment of parameters to spots."""

import itertools
from typing import Any, Generator, Mapping, Sequence

import numpy as np
import bluesky.plan_stubs as bps
from bluesky.protocols import Configurable, Movable, Readable

from ..errors import InvalidArgument, check_choice, check_keys, check_number
from ._detectors import check_detectors
from ._common import (apply_settings, cell_on, check_int, check_step, checked_plan, configure_technique,
                      managed_run, probe_of, put_values, soft_signals)
from .approach import approach_stub, make_approach_spec
from .hopping import scan_points
from .imaging import _validate_technique_params
from .metadata import build_start_md

SWEEP_TECHNIQUES = ("CV", "LSV", "CA", "CP")
#: aliases a screen is usually described with -> potentiostat technique parameters
ALIASES = {"hold_time": "duration"}


def parameter_table(parameters: Mapping[str, Sequence], repeats: int, n_spots: int, seed: int
                    ) -> list[dict[str, Any]]:
    """Full-factorial table of ``parameters`` × ``repeats`` in a seeded random order, one row per spot.

    Each row has ``spot_index`` (the position in the spot list), ``repeat_index``, ``combination_index`` and the
    parameter values.  The same seed gives the same table.

    Examples
    --------
    >>> rows = parameter_table({"scan_rate": [0.1, 1.0]}, repeats=2, n_spots=4, seed=1)
    >>> sorted(r["scan_rate"] for r in rows)
    [0.1, 0.1, 1.0, 1.0]
    """
    names = list(parameters)
    combos = list(itertools.product(*(list(parameters[n]) for n in names)))
    runs = [(c, r, k) for k, c in enumerate(combos) for r in range(repeats)]
    if len(runs) > n_spots:
        raise InvalidArgument(f"{len(combos)} combinations × repeats={repeats} = {len(runs)} experiments need "
                              f"that many spots; only {n_spots} given")
    order = np.random.default_rng(int(seed)).permutation(len(runs))
    rows = []
    for spot, idx in enumerate(order):
        combo, rep, k = runs[int(idx)]
        row = {"spot_index": spot, "repeat_index": rep, "combination_index": k}
        row.update({n: v for n, v in zip(names, combo)})
        rows.append(row)
    return rows


def _technique_params(technique: str, row: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    p = dict(fixed)
    for k, v in row.items():
        if k in ("spot_index", "repeat_index", "combination_index"):
            continue
        if k == "window":
            lo, hi = float(v[0]), float(v[1])
            if technique == "CV":
                p.update(e_vertex1=lo, e_vertex2=hi)
                start = float(fixed.get("e_start", hi))
                p["e_start"] = min(max(start, lo), hi)
            elif technique == "LSV":
                p.update(e_start=hi, e_end=lo)
            else:
                raise InvalidArgument(f"parameter 'window' applies to CV or LSV, not {technique}")
        else:
            p[ALIASES.get(k, k)] = v
    return p


@checked_plan(("SECCM", "SICM"))
def combinatorial_sweep(stage: Readable, potentiostat: Readable, *, parameters: Mapping[str, Sequence], seed: int,
                        technique: str = "SECCM", measure_technique: str = "CV", repeats: int = 1,
                        fixed: Mapping[str, Any] | None = None, x_range: tuple | None = None,
                        y_range: tuple | None = None, points: Sequence | None = None, snake: bool = True,
                        hop_height: float = 2.0, approach_step: float | None = None, max_travel: float = 20.0,
                        contact_current: float = 5e-13, drop: float = 0.01, mode: str = "plan",
                        hopper: Movable | None = None, probe: Configurable | None = None, retract: float | None = None, context: Any = None,
                        sample_md: dict | None = None, detectors: Sequence[Readable] | None = None, md: dict | None = None
                        ) -> Generator[Any, Any, list[dict[str, Any]]]:
    """A grid of measurement parameters with repeats, spread over spots in a seeded random order.

    Every combination of ``parameters`` is measured ``repeats`` times; the experiments are shuffled with
    ``numpy.random.default_rng(seed)`` and given to the spots in visiting order, so spatial trends over the sample
    do not alias into parameter effects.  At every spot the probe lands (SECCM contact / SICM setpoint), the
    measurement runs on the substrate channel with that spot's parameters, and the probe hops on.  The table is in
    the start document (``parameter_table``, column lists) and every event carries ``spot_index``,
    ``repeat_index``, ``combination_index`` and ``param_<name>`` fields (``window`` gives ``param_window_low``
    and ``param_window_high``).  The waveform length is fixed by ``n_samples`` (in ``fixed``, default 200) so
    every event of the stream has the same shape whatever the scan rate.

    Parameters
    ----------
    parameters : dict of name -> list of values
        Potentiostat technique parameters (``scan_rate``, ``n_cycles``, ``e_vertex1`` ..., ``hold_time`` as an
        alias of ``duration``) or ``window`` = list of (low, high) V pairs.
    seed : int
        Seeds the assignment (same seed, same table).
    measure_technique : {"CV", "LSV", "CA", "CP"}
    repeats : int
        Repeats of every combination (>= 1).
    fixed : dict
        Technique parameters common to every spot.
    x_range, y_range, points, snake
        The spots (a grid or an explicit list, µm); at least as many as experiments.
    mode : {"plan", "device"}
        Landing driven by the plan or by a hopping controller (``hopper``).
    detectors : list of devices, optional
        Extra detectors (e.g. ``[xrf]``) read at every spot after its measurement.

    Returns
    -------
    list of dict
        The parameter table (row ``i`` belongs to the ``i``-th spot visited).

    Examples
    --------
    >>> bench = make_sim_bench("SECCM", "hopg"); RE(bps.mv(bench.stage.z, bench.stage.z.position + 1.5))
    >>> table = RE(combinatorial_sweep(bench.stage, bench.potentiostat, seed=7, x_range=(10, 90, 4),
    ...            y_range=(10, 90, 4), parameters={"scan_rate": [0.1, 1.0], "window": [(0.5, 3.0), (1.5, 3.0)]},
    ...            repeats=4, fixed={"e_start": 3.0})).plan_result
    """
    technique = check_choice("technique", technique, ("SECCM", "SICM"))
    mtech = check_choice("measure_technique", measure_technique, SWEEP_TECHNIQUES)
    mode = check_choice("mode", mode, ("device", "plan"))
    repeats = check_int("repeats", repeats, 1, 10000)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    dets = check_detectors(detectors)
    if not isinstance(parameters, Mapping) or not parameters:
        raise InvalidArgument(f"parameters={parameters!r} must be a non-empty dict of name -> list of values")
    allowed = set(potentiostat.params.component_names) - {"n_samples"} | {"window"} | set(ALIASES)
    for name, values in parameters.items():
        if name not in allowed:
            raise InvalidArgument(f"parameters: {name!r} cannot be swept; allowed: {sorted(allowed)}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
            raise InvalidArgument(f"parameters[{name!r}]={values!r} must be a non-empty list of values")
        if name == "window":
            for w in values:
                ok = not isinstance(w, (str, bytes)) and hasattr(w, "__len__") and len(w) == 2
                if not ok or not check_number("parameters['window'] low", w[0]) < \
                        check_number("parameters['window'] high", w[1]):
                    raise InvalidArgument(f"parameters['window'] entry {w!r} V must be (low, high) with "
                                          f"low < high")
    fixed = check_keys("fixed", fixed or {}, optional=potentiostat.params.component_names)
    if "n_samples" in parameters:
        raise InvalidArgument("parameters['n_samples'] cannot be swept: it fixes the waveform shape of the stream")
    fixed.setdefault("n_samples", 200)
    pts = scan_points(stage, x_range=x_range, y_range=y_range, points=points,
                      order="points" if points is not None else "grid", snake=snake)
    rows = parameter_table(parameters, repeats, pts["x"].size, seed)
    prepared = [_technique_params(mtech, r, fixed) for r in rows]
    for p in prepared:
        _validate_technique_params(potentiostat, mtech, p, "parameters")
    xs, ys = pts["x"][:len(rows)], pts["y"][:len(rows)]
    for r, x, y in zip(rows, xs, ys):
        r.update(x=float(x), y=float(y))
    if approach_step is not None:
        approach_step = check_step("approach_step", approach_step)
    spec = make_approach_spec(stage, potentiostat, technique=technique, probe=probe, drop=drop,
                              contact_current=contact_current, working_distance=None, fine_step=approach_step,
                              coarse_step=approach_step, max_travel=max_travel)
    hop_height = check_step("hop_height", hop_height)
    if mode == "device" and hopper is None:
        raise InvalidArgument("hopper=None with mode='device': pass bench.hopper or use mode='plan'")
    retract = check_step("retract", max(hop_height, 2.0) if retract is None else retract)
    keys = (hopper.x.name, hopper.y.name) if mode == "device" else (stage.x.name, stage.y.name)
    columns = {k: [r[k] if not isinstance(r[k], tuple) else list(r[k]) for r in rows] for k in rows[0]}
    args = dict(parameters=parameters, seed=seed, technique=technique, measure_technique=mtech, repeats=repeats,
                fixed=fixed, x_range=x_range, y_range=y_range, points=points, snake=snake, hop_height=hop_height,
                approach_step=spec.fine_step, max_travel=max_travel, contact_current=contact_current, drop=drop,
                mode=mode, detectors=[d.name for d in dets])
    start_md = build_start_md("combinatorial_sweep", args, technique=technique, mode="combinatorial",
                              probe=probe_of(potentiostat, probe), context=context, sample_md=sample_md, md=md,
                              map_keys=keys, order="points" if points is not None else ("snake" if snake else "raster"),
                              hints={"dimensions": [[["spot_index"], "primary"]]},
                              extra={"parameter_table": columns, "parameter_names": list(parameters),
                                     "num_points": len(rows), "seed": seed})

    def row_signals():
        spec_sig = {"spot_index": (0, ""), "repeat_index": (0, ""), "combination_index": (0, "")}
        for name in parameters:
            if name == "window":
                spec_sig.update(param_window_low=(0.0, "V"), param_window_high=(0.0, "V"))
            else:
                spec_sig[f"param_{name}"] = (0.0, "")
        return soft_signals(**spec_sig)

    def fill(sigs, row):
        vals = {k: row[k] for k in ("spot_index", "repeat_index", "combination_index")}
        for name in parameters:
            if name == "window":
                vals.update(param_window_low=float(row["window"][0]), param_window_high=float(row["window"][1]))
            else:
                vals[f"param_{name}"] = float(row[name])
        put_values(sigs, **vals)

    def body():
        yield from cell_on(potentiostat)
        sigs = row_signals()
        if mode == "device":
            yield from apply_settings(hopper.hop_settings(
                criterion="current_drop" if technique == "SICM" else "contact",
                setpoint=drop if technique == "SICM" else contact_current, hop_height=hop_height,
                approach_step=spec.fine_step, max_travel=max_travel,
                stop_offset=spec.stop_distance if technique == "SICM" else 0.0, measure=True))
        last = None
        for row, p, x, y in zip(rows, prepared, xs, ys):
            yield from bps.checkpoint()
            fill(sigs, row)
            if mode == "device":
                yield from configure_technique(potentiostat, mtech, channel="substrate", **p)
                yield from bps.mv(hopper, (float(x), float(y)))
                yield from bps.trigger_and_read([hopper, *sigs.values(), *dets])
                continue
            if last is not None:
                yield from bps.mv(stage.z, max(last + hop_height, float(stage.z.position)))
            yield from bps.mv(stage.x, float(x), stage.y, float(y))
            res = yield from approach_stub(stage, potentiostat, spec, stream="approach", park=False)
            last = res["stop_z"]
            yield from configure_technique(potentiostat, mtech, channel="substrate", **p)
            yield from bps.trigger_and_read([potentiostat, stage.x, stage.y, *sigs.values(), *dets])
            yield from bps.mv(stage.z, last + hop_height)
        return rows

    return (yield from managed_run(body(), md=start_md, stage=stage, potentiostat=potentiostat, retract=retract,
                                   stage_devices=[potentiostat, *dets]))
