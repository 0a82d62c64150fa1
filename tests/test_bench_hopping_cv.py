"""A hopping-style loop of CVs over HOPG: edge planes passivate more strongly than the basal plane."""

import numpy as np
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from espt_bluesky.analysis.voltammetry import passivation_ratio
from espt_bluesky.devices import make_sim_bench


def hop_cv_loop(bench, points, hop_height=2.0, step=0.1):
    """Minimal stock-stub hopping: descend until the droplet lands, run a CV, retract, move on."""
    stage, pstat = bench.stage, bench.potentiostat

    @bpp.run_decorator(md={"plan_name": "hop_cv_loop"})
    def inner():
        for x, y in points:
            yield from bps.mv(stage.z, stage.z.position + hop_height)
            yield from bps.mv(stage.x, x, stage.y, y)
            # landing: a jump of the surface current at the hold potential
            pstat.technique.put("READ")
            for _ in range(400):
                yield from bps.mv(stage.z, stage.z.position - step)
                yield from bps.trigger(pstat, wait=True)
                if abs(pstat.substrate.current.get()) > 5e-13:
                    break
            pstat.configure_technique("CV", "substrate", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0,
                                      scan_rate=1.0, n_cycles=2, n_samples=1500)
            yield from bps.trigger_and_read([pstat, stage], name="hop")
            pstat.technique.put("READ")
        yield from bps.mv(stage.z, stage.z.position + hop_height)

    return (yield from inner())


def test_edge_planes_passivate_more_than_basal(RE):
    bench = make_sim_bench("SECCM", "hopg", seed=4)
    sample = bench.model.sample
    rng = np.random.default_rng(0)
    # pick spots whose whole meniscus footprint is on one kind of plane (ground truth from the sample)
    cand = rng.uniform(5, 95, size=(400, 2))
    lab = sample.at("label", cand[:, 0], cand[:, 1])
    pure = []
    for (x, y), l in zip(cand, lab):
        ring = sample.at("label", x + 1.2 * np.cos(np.arange(8)), y + 1.2 * np.sin(np.arange(8)))
        if np.all(ring == l):
            pure.append((x, y, int(l)))
    edges = [p for p in pure if p[2] == 1][:5]
    basal = [p for p in pure if p[2] == 0][:5]
    assert len(edges) == 5 and len(basal) == 5
    pts = [(x, y) for x, y, _ in edges + basal]
    RE(hop_cv_loop(bench, pts))
    hops = RE.collector.events("hop")
    assert len(hops) == 10
    ratios = []
    for ev in hops:
        d = ev["data"]
        ratios.append(passivation_ratio(d["pstat_wf_time"], d["pstat_wf_potential"], d["pstat_wf_current"]))
    ratios = np.array(ratios)
    r_edge, r_basal = ratios[:5], ratios[5:]
    assert np.all(ratios < 1.0)  # later cycles pass less cathodic charge
    assert r_edge.max() < r_basal.min(), (r_edge, r_basal)
