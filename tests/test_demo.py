"""`espt demo` end to end (small): runs land in Tiled, figures are saved, the screen finds the edge planes."""

from espt_bluesky.demo import run_demo
from espt_bluesky.storage import LocalCatalog, read_map


def test_demo_small(tmp_path):
    res = run_demo(tmp_path / "data", tmp_path / "figs", seed=1, n_side=6, image_side=11)
    assert set(res.runs) == {"seccm_approach", "seccm_screen", "secm_approach", "secm_image"}
    for f in res.figures:
        assert f.exists() and f.stat().st_size > 10_000
    # the edge/basal ground truth of the bench is recovered by the clustering of Q_p2/Q_p1 & co.
    assert res.summary["cluster_truth_agreement"] >= 0.9
    assert res.summary["secm_max"] > 1.2 and res.summary["secm_min"] < 0.7
    # the runs are really in the persistent catalog: reopen it and read the image back as a µm map
    with LocalCatalog.in_process(tmp_path / "data") as cat:
        client = cat.client()
        ds = read_map(client[res.runs["secm_image"]])
        assert ds.sizes["x"] == 11 and ds.sizes["y"] == 11
        assert client[res.runs["seccm_screen"]].metadata["start"]["technique"] == "SECCM"
