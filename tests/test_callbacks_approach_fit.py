"""ApproachFitCallback on the plans' SECM approach: κ, k and the contact offset against the bench's truth."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.callbacks.approach_fit import ApproachFitCallback, split_approaches
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument


def _basal_point(sample, a_plus_d):
    """A point whose whole footprint lies on the HOPG basal plane (ground truth label 0)."""
    g = np.arange(-a_plus_d, a_plus_d + 0.1, 0.5)
    gx, gy = np.meshgrid(g, g)
    disc = np.hypot(gx, gy) <= a_plus_d
    for y in np.arange(20.0, 80.0, 1.0):
        if np.all(sample.at("label", 50.0 + gx[disc], y + gy[disc]) == 0):
            return 50.0, float(y)
    raise AssertionError("no basal point")


def test_fit_of_each_approach_recovers_kappa_and_offset(RE):
    from espt_bluesky.plans.approach import approach

    bench = make_sim_bench("SECM", "hopg", seed=7)
    a = bench.model.probe.radius
    x, y = _basal_point(bench.model.sample, 2 * a)
    RE(bps.mv(bench.stage.x, x, bench.stage.y, y))
    RE(bps.mv(bench.stage.z, 12 * a))
    cb = ApproachFitCallback(substrate="kinetic")
    RE.subscribe(cb)
    RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback="negative", threshold=0.45,
                context=bench.metadata()))
    assert len(cb.results) == 1 and "fit" in cb.results[0], cb.results
    f = cb.results[0]["fit"]
    D = bench.model.environment["mediator"]["D"]
    k_true = float(bench.model.sample.at("k_feedback", x, y))
    kappa_true = k_true * a * 1e-6 / D
    z_surf = float(bench.model.surface_z(x, y))
    print(f"\napproach fit: kappa {f.kappa:.4f} ± {f.kappa_err:.4f} (true {kappa_true:.4f}), k {f.k:.3g} m/s "
          f"(true {k_true:.3g}), z0 {f.z0:.3f} ± {f.z0_err:.3f} µm (true surface {z_surf:.3f} µm)")
    assert f.kappa == pytest.approx(kappa_true, rel=0.2)
    assert f.k == pytest.approx(k_true, rel=0.2)
    assert abs(f.z0 - z_surf) < 0.06 * a


def test_split_and_bad_input():
    z = np.r_[np.linspace(50, 10, 20), np.linspace(40, 5, 30), [60, 59]]
    sl = split_approaches(z, 5)
    assert [(s.start, s.stop) for s in sl] == [(0, 20), (20, 50)]
    cb = ApproachFitCallback()
    with pytest.raises(InvalidArgument, match="no probe radius"):
        cb.fit_run({"uid": "abcdef12", "technique": "SECM"}, np.linspace(50, 5, 20), np.ones(20))
    cb("start", {"uid": "u1", "time": 0, "technique": "SECM", "probe": {"radius": 5.0}})
    with pytest.raises(InvalidArgument, match="lacks \\['pstat_tip_current'\\]"):
        cb("descriptor", {"uid": "d1", "run_start": "u1", "time": 0, "name": "approach",
                          "data_keys": {"stage_z": {}}})
