"""EC-AFM on the bench: force-curve modulus map vs the sample's set moduli; SEI height growth edge vs basal."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plans as bp

from espt_bluesky.analysis.ec_afm import force_map, height_change
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument


def _events(RE):
    return [e["data"] for e in RE.collector.events()]


def force_volume(bench, xs, ys, lift=0.3, start_gap=0.02):
    """Force-volume map: lift, move, find the surface with the contact-mode height, start each curve just above."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    stage, afm = bench.stage, bench.afm

    @bpp.run_decorator(md={"technique": "EC-AFM", "plan_name": "force_volume"})
    def inner():
        for y in ys:
            for x in xs:
                yield from bps.mv(stage.z, stage.z.position + lift)
                yield from bps.mv(stage.x, float(x), stage.y, float(y))
                yield from bps.trigger(afm, wait=True)
                yield from bps.mv(stage.z, afm.height.get() + start_gap)
                yield from bps.trigger_and_read([afm, stage])

    return (yield from inner())


def test_modulus_map_within_10_percent_of_set_values(RE):
    bench = make_sim_bench("EC-AFM", "hopg", seed=2)  # default noise
    bench.afm.configure_force_curve(travel=0.01, n_points=400)
    RE(force_volume(bench, np.linspace(20, 80, 5), np.linspace(20, 80, 5)))
    ev = _events(RE)
    fm = force_map([e["stage_x"] for e in ev], [e["stage_y"] for e in ev], [e["afm_fc_z"] for e in ev],
                   [e["afm_fc_deflection"] for e in ev], spring_constant=bench.probe.spring_constant.get(),
                   tip_radius=bench.probe.tip_radius.get(), poisson=0.3)
    X, Y = np.meshgrid(fm.x, fm.y)
    truth = bench.model.sample.at("modulus", X, Y)
    err = fm.modulus / truth - 1
    print(f"\nmodulus map 5x5: max |error| {100 * np.abs(err).max():.1f} %, rms {100 * np.sqrt(np.mean(err**2)):.1f} %"
          f" (set values {sorted(set(np.round(truth.ravel() / 1e9, 2)))} GPa)")
    assert fm.modulus.shape == (5, 5) and not fm.problems
    assert np.all(np.abs(err) < 0.10)


def test_sei_grows_thicker_on_edges(RE):
    bench = make_sim_bench("EC-AFM", "hopg", seed=2)
    bench.stage.z.set(0.3).wait()
    scan = bp.grid_scan([bench.afm], bench.stage.y, 5, 95, 19, bench.stage.x, 5, 95, 19, snake_axes=False)
    RE(scan)
    h0 = np.array([e["afm_height"] for e in _events(RE)]).reshape(19, 19)
    xy = np.array([(e["stage_x"], e["stage_y"]) for e in _events(RE)])
    n0 = len(RE.collector.events())
    # a CV of the whole substrate down to 0 V vs Li+/Li forms SEI everywhere
    pstat = bench.potentiostat
    pstat.configure_technique("CV", "substrate", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=0.01,
                              n_cycles=1, n_samples=600)
    pstat.trigger().wait()
    RE(bp.grid_scan([bench.afm], bench.stage.y, 5, 95, 19, bench.stage.x, 5, 95, 19, snake_axes=False))
    h1 = np.array([e["data"]["afm_height"] for e in RE.collector.events()[n0:]]).reshape(19, 19)
    s = bench.model.sample
    X, Y = xy[:, 0].reshape(19, 19), xy[:, 1].reshape(19, 19)
    labels = s.at("label", X, Y).astype(int)
    hc = height_change(h0, h1, labels=labels)
    # truth: SEI thickness = thickness_max · coverage (sample state after the CV)
    true = s.at("sei_thickness_max", X, Y) * (1 - np.exp(-s.at("sei_charge", X, Y) / s.at("sei_capacity", X, Y)))
    noise = np.sqrt(2) * bench.model.options.height_noise
    print(f"\nSEI growth: edge {1e3 * hc.regions[1]['mean']:.1f} nm, basal {1e3 * hc.regions[0]['mean']:.1f} nm; "
          f"max |dh - truth| {1e3 * np.abs(hc.delta - true).max():.2f} nm (noise {1e3 * noise:.2f} nm)")
    assert hc.regions[1]["mean"] > 2 * hc.regions[0]["mean"] > 0
    assert np.all(np.abs(hc.delta - true) < 5 * noise)


def test_bad_input():
    with pytest.raises(InvalidArgument, match="n_curves, n_points"):
        force_map([0], [0], np.arange(5.0), np.ones(5), spring_constant=1.0, tip_radius=0.02)
    with pytest.raises(InvalidArgument, match="spring_constant=-1"):
        force_map([0], [0], np.arange(5.0), np.ones((1, 5)), spring_constant=-1.0, tip_radius=0.02)
    fm = force_map([0, 1], [0, 0], np.linspace(0, 0.01, 50), np.vstack([np.full(50, np.nan), np.zeros(50)]),
                   spring_constant=1.0, tip_radius=0.02)
    assert "NaN" in fm.problems[0] and np.isnan(fm.modulus).all()
    with pytest.raises(InvalidArgument, match="same shape"):
        height_change(np.zeros((2, 2)), np.zeros((3, 3)))
