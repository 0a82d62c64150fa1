"""SECCM passivation screening over HOPG, judged against the bench's ground truth.

* the clusters of the screen match the edge/basal label of the sample at each spot (≥ 90 %);
* Q_p2/Q_p1 of each spot matches the true passivation within the noise: the truth is the same screen run on a
  noise-free bench (same sample, same spots), integrated here independently of the analysis code, and the
  tolerance is propagated from the bench's noise model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from espt_bluesky.analysis.screening import (
    cluster_spots, feature_matrix, group_statistics, screen_spots, spot_features,
)
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument

CV = dict(e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=1.0, n_cycles=2, n_samples=1500)


def spread_points(n, rng, min_sep=3.0):
    """Random spots over 5-95 µm at least ``min_sep`` µm apart, so no droplet lands on an earlier one's SEI."""
    pts: list[tuple[float, float]] = []
    while len(pts) < n:
        p = rng.uniform(5, 95, 2)
        if all(math.hypot(p[0] - q[0], p[1] - q[1]) >= min_sep for q in pts):
            pts.append((float(p[0]), float(p[1])))
    return pts


def _run_screen(pts, **options):
    """The plans' hopping_scan over HOPG (device-mode hopper), a 2-cycle CV per spot; waveforms per spot."""
    from bluesky import RunEngine

    from espt_bluesky.plans.hopping import hopping_scan

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = make_sim_bench("SECCM", "hopg", seed=4, **options)
    RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", points=pts, order="points",
                    hop_height=2.0, measure=dict(technique="CV", **CV), mode="device", hopper=bench.hopper,
                    context=bench.metadata()))
    start = next(d for n, d in docs if n == "start")
    xk, yk = start["map"]["x"], start["map"]["y"]
    descs = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    ev = [d["data"] for n, d in docs if n == "event" and d["descriptor"] in descs]
    out = {k: np.array([e[k] for e in ev]) for k in ("pstat_wf_time", "pstat_wf_potential", "pstat_wf_current")}
    out["stage_x"] = np.array([e[xk] for e in ev])
    out["stage_y"] = np.array([e[yk] for e in ev])
    return bench, out


@pytest.fixture(scope="module")
def hopg_screen():
    pts = spread_points(64, np.random.default_rng(11))
    bench, arr = _run_screen(pts)
    _, clean = _run_screen(pts, noise=0.0)  # the same screen on a noise-free bench: the truth
    arr["truth_current"] = clean["pstat_wf_current"]
    return bench, arr


def _true_ratio(bench, t, i_true):
    """Q_p2/Q_p1 of a noise-free CV (integrated here, independently of the analysis code) and its 1-sigma noise
    propagated from the bench's noise model (relative noise and floor per sample)."""
    dt = np.diff(t)
    i = i_true[1:]  # sample n carries the current of (t[n-1], t[n]]
    first = t[1:] <= 0.5 * t[-1]
    qc = np.maximum(-i, 0.0) * dt
    q1, q2 = qc[first].sum(), qc[~first].sum()
    o = bench.model.options
    sig = (o.noise * np.abs(i) + o.current_noise_floor) * dt
    s1, s2 = math.sqrt((sig[first] ** 2).sum()), math.sqrt((sig[~first] ** 2).sum())
    r = q2 / q1
    return r, r * math.hypot(s1 / q1, s2 / q2)


def test_clusters_match_edge_basal_truth(hopg_screen):
    bench, a = hopg_screen
    res = screen_spots(a["pstat_wf_time"], a["pstat_wf_potential"], a["pstat_wf_current"],
                       x=a["stage_x"], y=a["stage_y"])
    assert res.valid.all()
    truth = bench.model.sample.at("label", res.x, res.y).astype(int)
    assert 3 <= truth.sum() <= 20  # both materials are present among the random spots
    cl = cluster_spots(res)  # Gaussian mixture, number of clusters by BIC
    agree = max(np.mean(cl.labels == truth), np.mean(cl.labels == 1 - truth)) if cl.k == 2 else 0.0
    print(f"\nclusters: k={cl.k} (BIC {cl.scores}); agreement with edge/basal truth {100 * agree:.1f} %")
    assert cl.k == 2
    assert agree >= 0.90
    # k-means with the silhouette criterion agrees as well
    km = cluster_spots(res, method="kmeans")
    agree_km = max(np.mean(km.labels == truth), np.mean(km.labels == 1 - truth)) if km.k == 2 else 0.0
    print(f"k-means/silhouette: k={km.k}; agreement {100 * agree_km:.1f} %")
    assert agree_km >= 0.90


def test_passivation_ratio_matches_truth_within_noise(hopg_screen):
    bench, a = hopg_screen
    res = screen_spots(a["pstat_wf_time"], a["pstat_wf_potential"], a["pstat_wf_current"])
    truth = np.array([_true_ratio(bench, t, it) for t, it in zip(a["pstat_wf_time"], a["truth_current"])])
    z = (res.passivation_ratio - truth[:, 0]) / truth[:, 1]
    print(f"\nQp2/Qp1 - truth: max |z| = {np.abs(z).max():.2f} sigma, rms z = {np.sqrt(np.mean(z**2)):.2f}, "
          f"max |diff| = {np.abs(res.passivation_ratio - truth[:, 0]).max():.4f}")
    assert np.all(np.abs(z) < 4.5)
    assert 0.4 < np.sqrt(np.mean(z**2)) < 2.0  # the scatter is the noise, neither hidden nor inflated
    # the edge planes passivate more (smaller ratio), as the sample was built
    lab = bench.model.sample.at("label", a["stage_x"], a["stage_y"]).astype(int)
    assert res.passivation_ratio[lab == 1].max() < res.passivation_ratio[lab == 0].min()


def test_group_statistics_and_figure(hopg_screen, tmp_path):
    from espt_bluesky.analysis.figures import screening_figure

    bench, a = hopg_screen
    res = screen_spots(a["pstat_wf_time"], a["pstat_wf_potential"], a["pstat_wf_current"],
                       x=a["stage_x"], y=a["stage_y"])
    groups = np.where(bench.model.sample.at("label", res.x, res.y) > 0, "edge", "basal")
    st = group_statistics(res.passivation_ratio, groups)
    assert st.test == "welch" and st.p_value < 1e-6
    assert st.groups["edge"]["mean"] < st.groups["basal"]["mean"]
    # three groups: Kruskal-Wallis; two groups drawn from the same material do not differ
    g3 = np.where(groups == "edge", "edge", np.where(res.x < 50, "basal-left", "basal-right"))
    st3 = group_statistics(res.passivation_ratio, g3)
    assert st3.test == "kruskal" and st3.p_value < 1e-3
    assert st3.pairwise[("basal-left", "basal-right")][1] > 1e-3 or \
        st3.pairwise.get(("basal-right", "basal-left"), (0, 1))[1] > 1e-3
    fig = screening_figure(res, cluster_spots(res), groups=groups)
    out = tmp_path / "screen.png"
    fig.savefig(out)
    assert out.stat().st_size > 10_000


def test_bad_input_is_named():
    t = np.linspace(0, 1, 100)
    E = np.r_[np.linspace(1, 0, 50), np.linspace(0, 1, 50)]
    i = -np.ones(100) * 1e-9
    i[10] = np.nan
    with pytest.raises(InvalidArgument, match="i=.*NaN"):
        spot_features(t, E, i)
    with pytest.raises(InvalidArgument, match="same length"):
        spot_features(t, E, np.ones(50))
    with pytest.raises(InvalidArgument, match="shape \\(n_spots, n_samples\\)"):
        screen_spots(t, E, np.ones(100))
    # a screen keeps going past a bad spot and says which one and why
    good = -1e-9 * (1.0 - E)
    res = screen_spots(t, E, np.vstack([good, i, good, good]))
    assert list(res.problems) == [1] and not res.valid[1] and "NaN" in res.problems[1]
    with pytest.raises(InvalidArgument, match="k_max"):
        cluster_spots(np.random.default_rng(0).normal(size=(10, 2)), k_max=0)
    with pytest.raises(InvalidArgument, match="at least 2"):
        group_statistics([1.0, 2.0, 3.0], ["a", "a", "a"])
    with pytest.raises(InvalidArgument, match="unknown feature"):
        feature_matrix(res, ["colour"])


def _basal_points(sample, n, rng, r=2.0):
    """Spots whose droplet footprint lies wholly on the basal plane (ground truth), 3 µm apart."""
    pts = []
    th = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    while len(pts) < n:
        x, y = rng.uniform(5, 95, 2)
        ok = np.all(sample.at("label", np.r_[x, x + r * np.cos(th)], np.r_[y, y + r * np.sin(th)]) == 0)
        if ok and all(math.hypot(x - p[0], y - p[1]) >= 3.0 for p in pts):
            pts.append((float(x), float(y)))
    return pts


def _sweep(pts, **options):
    from bluesky import RunEngine

    from espt_bluesky.plans.combinatorial import combinatorial_sweep

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = make_sim_bench("SECCM", "hopg", seed=4, **options)
    RE(combinatorial_sweep(bench.stage, bench.potentiostat, seed=3, points=pts, repeats=len(pts) // 2,
                           parameters={"e_vertex1": [0.0, 0.6]},
                           fixed=dict(e_start=3.0, e_vertex2=3.0, scan_rate=1.0, n_cycles=2, n_samples=600),
                           mode="device", hopper=bench.hopper, context=bench.metadata()))
    descs = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    ev = [d["data"] for n, d in docs if n == "event" and d["descriptor"] in descs]
    return {k: np.array([e[k] for e in ev]) for k in ("pstat_wf_time", "pstat_wf_potential", "pstat_wf_current",
                                                     "param_e_vertex1")}


def test_combinatorial_sweep_group_statistics_match_truth():
    """A sweep of the lower vertex (0.0 vs 0.6 V vs Li+/Li) on basal-plane spots: the deeper sweep drives more SEI
    in cycle 1, so it passivates more (smaller Q_p2/Q_p1).  Group means agree with the noise-free sweep."""
    bench = make_sim_bench("SECCM", "hopg", seed=4)
    pts = _basal_points(bench.model.sample, 20, np.random.default_rng(5))
    a = _sweep(pts)
    clean = _sweep(pts, noise=0.0)
    assert np.array_equal(a["param_e_vertex1"], clean["param_e_vertex1"])  # same seeded assignment
    res = screen_spots(a["pstat_wf_time"], a["pstat_wf_potential"], a["pstat_wf_current"])
    st = group_statistics(res.passivation_ratio, a["param_e_vertex1"])
    truth = {}
    for g in (0.0, 0.6):
        m = clean["param_e_vertex1"] == g
        truth[g] = np.mean([_true_ratio(bench, t, i)[0] for t, i in zip(clean["pstat_wf_time"][m],
                                                                      clean["pstat_wf_current"][m])])
    print(f"\nsweep: Qp2/Qp1 mean (sd) at E_v1 = 0.0 V: {st.groups[0.0]['mean']:.4f} ({st.groups[0.0]['std']:.4f}),"
          f" truth {truth[0.0]:.4f}; at 0.6 V: {st.groups[0.6]['mean']:.4f} ({st.groups[0.6]['std']:.4f}), truth "
          f"{truth[0.6]:.4f}; Welch p = {st.p_value:.2g}")
    assert st.test == "welch" and st.p_value < 1e-3
    assert st.groups[0.0]["mean"] < st.groups[0.6]["mean"]
    for g in (0.0, 0.6):
        assert abs(st.groups[g]["mean"] - truth[g]) < 4 * st.groups[g]["sem"] + 1e-3
