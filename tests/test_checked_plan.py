"""Plans check their arguments when called (``plans._common.checked_plan``), keep their signature for the queue
server, and run unchanged; the size caps of ``espt_bluesky.errors.LIMITS`` can be raised."""

from __future__ import annotations

import gc
import inspect
import sys
import warnings

import numpy as np
import pytest
import bluesky.plan_stubs as bps
from bluesky_queueserver.manager.profile_ops import _process_plan, is_plan, plans_from_nspace

import espt_bluesky.plans as plans
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import LIMITS, InvalidArgument

PLANS = ("approach", "measure_tilt", "constant_height_image", "hopping_scan", "combinatorial_sweep", "sgtc",
         "operando_imaging", "adaptive_hopping_scan")


@pytest.mark.parametrize("name", PLANS)
def test_signature_and_docstring_intact_for_the_queue_server(name):
    plan = getattr(plans, name)
    original = plan.__wrapped__
    assert inspect.isgeneratorfunction(original) and not inspect.isgeneratorfunction(plan)
    assert inspect.signature(plan) == inspect.signature(original)
    assert plan.__doc__ == original.__doc__ and plan.__name__ == name
    assert is_plan(plan)  # bluesky.utils.is_plan, through the _is_plan_ mark
    desc = _process_plan(plan, existing_devices={}, existing_plans={})
    assert [p["name"] for p in desc["parameters"]] == list(inspect.signature(original).parameters)
    assert desc["description"].split()[:3] == original.__doc__.split()[:3]
    assert name in plans_from_nspace(vars(plans))


def test_bad_call_fails_in_its_own_line_and_a_good_call_runs(RE):
    bench = make_sim_bench("SECM", "patterned", seed=0)
    s, p = bench.stage, bench.potentiostat
    RE(bps.mv(s.z, 20.0))
    pos = bench.model.position.copy()
    RE.collector.docs.clear()
    with pytest.raises(InvalidArgument, match="height"):
        plans.constant_height_image(s, p, x_range=(40, 60, 3), y_range=(40, 60, 2), height=-1.0, plane=0.0)
    # a good call prepares the plan but moves nothing and emits nothing until the RunEngine runs it
    plan = plans.constant_height_image(s, p, x_range=(40, 60, 3), y_range=(40, 60, 2), height=10.0, plane=0.0,
                                       technique="secm")
    assert np.array_equal(bench.model.position, pos) and RE.collector.docs == []
    uids = RE(plan).run_start_uids
    assert len(uids) == 1
    start = RE.collector.of("start")[0]
    assert start["technique"] == "SECM"  # the decorator hands the plan the canonical spelling
    assert len(RE.collector.events()) == 6
    assert RE.collector.of("stop")[0]["exit_status"] == "success"


def test_composed_plan_gets_replies_and_return_value(RE):
    """``yield from`` a checked plan inside another plan: the RunEngine's replies reach the inner plan (open_run's
    uid, readings) and its return value comes back."""
    bench = make_sim_bench("SECCM", "hopg", seed=0)
    RE(bps.mv(bench.stage.z, bench.stage.z.position + 1.5))

    def outer():
        z = yield from plans.approach(bench.stage, bench.potentiostat, technique="SECCM", context=bench.metadata())
        return z

    res = RE(outer())
    surface = RE.collector.events("surface")[0]["data"]["surface_z"]
    assert res.exit_status == "success" and res.plan_result == pytest.approx(surface)
    assert len(RE.collector.of("start")) == 1 and len(RE.collector.events("approach")) > 3


def test_called_but_never_run_is_discarded_quietly(monkeypatch):
    """The plan suspended at its first message closes cleanly when dropped (no 'generator ignored GeneratorExit')."""
    bench = make_sim_bench("SECM", "patterned", seed=0)
    gc.collect()  # what earlier tests left behind (e.g. unclosed sockets) is not this test's business
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, kw in (("constant_height_image", dict(x_range=(40, 60, 2), y_range=(40, 60, 2), height=10.0,
                                                        plane=0.0)),
                         ("approach", dict(technique="SECM"))):
            plan = getattr(plans, name)(bench.stage, bench.potentiostat, **kw)
            del plan
            gc.collect()
    assert [u for u in unraisable if not issubclass(u.exc_type, ResourceWarning)] == []


def test_point_cap_is_a_setting(monkeypatch):
    bench = make_sim_bench("SECM", "patterned", seed=0)
    call = dict(x_range=(10, 90, 5), y_range=(10, 90, 5), height=10.0, plane=0.0)
    plans.constant_height_image(bench.stage, bench.potentiostat, **call)  # 25 points: fine by default
    monkeypatch.setattr(LIMITS, "max_points", 20)
    with pytest.raises(InvalidArgument, match=r"25 points exceed the cap of 20 .*LIMITS\.max_points"):
        plans.constant_height_image(bench.stage, bench.potentiostat, **call)
    big = dict(call, x_range=(0, 100, 2000), y_range=(0, 100, 1000))  # 2·10^6 points: over the default cap
    monkeypatch.undo()
    with pytest.raises(InvalidArgument, match="2000000 points"):
        plans.constant_height_image(bench.stage, bench.potentiostat, **big)
    monkeypatch.setattr(LIMITS, "max_points", 3 * 10**6)  # raised on purpose: accepted
    plans.constant_height_image(bench.stage, bench.potentiostat, **big)


def test_waveform_cap_is_a_setting(monkeypatch):
    p = make_sim_bench("SECCM", "hopg", seed=0).potentiostat
    with pytest.raises(InvalidArgument, match=r"n_samples=200000 .*LIMITS\.max_waveform_samples"):
        p.configure_technique("CA", e_hold=3.0, n_samples=200_000)
    assert p.params.n_samples.get() != 200_000
    monkeypatch.setattr(LIMITS, "max_waveform_samples", 10**6)
    p.configure_technique("CA", e_hold=3.0, n_samples=200_000)
    assert p.params.n_samples.get() == 200_000
