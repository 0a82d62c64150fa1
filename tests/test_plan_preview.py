"""Previewing a plan touches nothing: ``summarize_plan`` and ``check_limits`` of every project plan leave every
device's readings and configuration (and the bench's true state) unchanged."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from bluesky.simulators import check_limits, summarize_plan
from bluesky.utils import is_plan

import espt_bluesky.plans as plans
from espt_bluesky.devices import make_sim_bench

CV = dict(technique="CV", e_start=0.0, e_vertex1=-0.3, e_vertex2=0.3, scan_rate=0.1)
GRID = dict(x_range=(40, 60, 3), y_range=(40, 60, 3))

#: one or more previews per plan: (bench technique, plan factory)
CASES = {
    "approach": [("SECM", lambda b: plans.approach(b.stage, b.potentiostat, technique="SECM")),
                 ("SICM", lambda b: plans.approach(b.stage, b.potentiostat, technique="SICM")),
                 ("SECCM", lambda b: plans.approach(b.stage, b.potentiostat, technique="SECCM")),
                 ("EC-AFM", lambda b: plans.approach(b.stage, b.potentiostat, technique="EC-AFM", afm=b.afm))],
    "measure_tilt": [("SECM", lambda b: plans.measure_tilt(b.stage, b.potentiostat, [(30, 30), (60, 30), (30, 60)],
                                                           technique="SECM"))],
    "constant_height_image": [("SECM", lambda b: plans.constant_height_image(
        b.stage, b.potentiostat, height=5.0, plane=0.0, tip_potential=0.2, **GRID))],
    "operando_imaging": [("SECM", lambda b: plans.operando_imaging(b.stage, b.potentiostat, height=5.0, plane=0.0,
                                                                   n_images=2, cycle=CV, **GRID))],
    "hopping_scan": [("SECCM", lambda b: plans.hopping_scan(b.stage, b.potentiostat, technique="SECCM",
                                                            hopper=b.hopper, measure=CV, **GRID)),
                     ("SICM", lambda b: plans.hopping_scan(b.stage, b.potentiostat, technique="SICM", mode="plan",
                                                           **GRID))],
    "combinatorial_sweep": [("SECCM", lambda b: plans.combinatorial_sweep(
        b.stage, b.potentiostat, seed=1, x_range=(40, 60, 2), y_range=(40, 60, 2),
        parameters={"scan_rate": [0.1, 1.0]})),
                            ("SECCM", lambda b: plans.combinatorial_sweep(
        b.stage, b.potentiostat, seed=1, x_range=(40, 60, 2), y_range=(40, 60, 2),
        parameters={"scan_rate": [0.1, 1.0]}, mode="device", hopper=b.hopper))],
    "adaptive_hopping_scan": [("SICM", lambda b: plans.adaptive_hopping_scan(
        b.stage, b.potentiostat, technique="SICM", hopper=b.hopper, x_range=(40, 60), y_range=(40, 60),
        max_hops=7, min_separation=2.0))],
    "sgtc": [("SECM", lambda b: plans.sgtc(b.stage, b.potentiostat, tip_potential=0.1, steps=[0.1, 0.2],
                                           locations=[(50, 50)], height=5.0, plane=0.0))],
}
STUBS = {"approach_stub", "hop_stub"}  # run inside an open run, not on their own


def _state(bench) -> dict:
    """Every signal of every device (readings, configuration, omitted) and the bench's true position and clock."""
    out = {}
    for dev in (bench.stage, bench.potentiostat, bench.probe, bench.afm, bench.hopper):
        if dev is None:
            continue
        for walk in dev.walk_signals():
            v = walk.item.get()
            out[walk.item.name] = np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
    out["true position"] = bench.model.position.tolist()
    out["clock"] = bench.model.clock
    return out


def test_every_plan_has_a_preview_case():
    found = {n for n in plans.__all__ if is_plan(getattr(plans, n))} - STUBS  # generator functions or checked_plan
    assert found == set(CASES), "add a summarize_plan case for every new plan"


@pytest.mark.parametrize("name,i", [(n, i) for n, cases in CASES.items() for i in range(len(cases))])
def test_preview_changes_no_device(RE, name, i):  # RE: check_limits needs the bluesky event loop
    technique, make = CASES[name][i]
    bench = make_sim_bench(technique, "patterned")
    before = _state(bench)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summarize_plan(make(bench))
    check_limits(make(bench))
    text = out.getvalue()
    assert "Open Run" in text and "Close Run" in text
    assert " -> " in text  # the moves are shown
    after = _state(bench)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {}
    assert RE.collector.docs == []
