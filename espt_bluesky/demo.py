"""``espt demo``: a complete simulated experiment into the local Tiled catalog, with figures.

1. SECCM over ``hopg``: land the droplet (``approach``), then a hopping screen with a two-cycle CV per spot
   into the SEI region (``hopping_scan``); per-spot passivation ratio Q_p2/Q_p1 and clusters of spots.
2. SECM over ``patterned``: approach over the insulator, then a constant-height image of the Au discs.

Every run lands in Tiled as it happens; the figures are saved as PNGs and the derived products (screening table,
clusters) are written back next to their source run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class DemoResult:
    """What the demo produced: run uids, figure paths, and the catalog's browse URL."""

    runs: dict[str, str] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    browse_url: str = ""
    data_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[espt demo] {msg}", flush=True)


def run_demo(data_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike = "espt_output", *,
             seed: int = 0, time_scale: float = 0.0, n_side: int = 8, image_side: int = 31,
             catalog: Any = None) -> DemoResult:
    """Run the demo experiment.

    Parameters
    ----------
    data_dir : path, optional
        Data directory of the local catalog (default: ``$ESPT_DATA_DIR`` or the per-user data directory).
    output_dir : path
        Where the PNG figures go.
    seed : int
        Seeds both simulated benches.
    time_scale : float
        0 runs instantly; 1 in instrument time (the SECCM screen then takes minutes).
    n_side : int
        The SECCM screen is an ``n_side`` × ``n_side`` grid of spots.
    image_side : int
        The SECM image is ``image_side`` × ``image_side`` pixels.
    catalog : LocalCatalog, optional
        Write into this catalog instead of starting one in-process.
    """
    import matplotlib

    matplotlib.use("Agg")
    from bluesky import RunEngine
    import bluesky.plan_stubs as bps

    from .devices import make_sim_bench
    from .plans import approach, constant_height_image, hopping_scan
    from .storage import LocalCatalog, make_writer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = catalog is None
    if own:
        _say("starting the local Tiled catalog (in-process) ...")
        catalog = LocalCatalog.in_process(data_dir)
    result = DemoResult(browse_url=catalog.browse_url,
                        data_dir=getattr(getattr(catalog, "data_dir", None), "root", None))
    if result.data_dir is not None:
        _say(f"data directory: {result.data_dir} (catalog, arrays, waveform assets; --data-dir or $ESPT_DATA_DIR "
             f"to change)")
    _say(f"serving the catalog at {catalog.uri}" + (" for the length of the demo" if own else ""))
    try:
        RE = RunEngine({}, call_returns_result=True)
        writer = make_writer(catalog)
        RE.subscribe(writer)
        client = catalog.client()

        # ------------------------------------------------------------------ SECCM screen over HOPG
        _say("SECCM over HOPG: landing the droplet ...")
        seccm = make_sim_bench("SECCM", "hopg", seed=seed, time_scale=time_scale, start=(10.0, 10.0))
        ctx = seccm.metadata()
        res = RE(approach(seccm.stage, seccm.potentiostat, technique="SECCM", working_distance=1.0,
                          context=ctx))
        result.runs["seccm_approach"] = res.run_start_uids[0]
        _say(f"  landed at z = {res.plan_result:.3f} µm")
        measure = dict(technique="CV", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=1.0, n_cycles=2,
                       n_samples=600)
        _say(f"SECCM screen: {n_side}x{n_side} spots, a 2-cycle CV 3.0 -> 0.0 V vs Li+/Li per spot ...")
        t0 = time.perf_counter()
        res = RE(hopping_scan(seccm.stage, seccm.potentiostat, technique="SECCM", x_range=(8, 92, n_side),
                              y_range=(8, 92, n_side), hop_height=2.0, measure=measure, mode="device",
                              hopper=seccm.hopper, context=ctx))
        uid = res.run_start_uids[0]
        result.runs["seccm_screen"] = uid
        _say(f"  {n_side * n_side} spots in {time.perf_counter() - t0:.1f} s; run {uid}")
        result.figures += _seccm_products(client[uid], seccm, out, result.summary)

        # ------------------------------------------------------------------ SECM image over patterned Au/SiO2
        _say("SECM over patterned Au/SiO2: approach over SiO2 ...")
        secm = make_sim_bench("SECM", "patterned", seed=seed, time_scale=time_scale, start=(35.0, 35.0))
        ctx = secm.metadata()
        RE(bps.mv(secm.stage.z, 60.0))
        res = RE(approach(secm.stage, secm.potentiostat, technique="SECM", feedback="negative", threshold=0.5,
                          working_distance=1.0, context=ctx))
        result.runs["secm_approach"] = res.run_start_uids[0]
        z_surface = float(res.plan_result)
        _say(f"  surface at z = {z_surface:.3f} µm")
        _say(f"SECM constant-height image {image_side}x{image_side} at 5 µm (L = 1) ...")
        res = RE(constant_height_image(secm.stage, secm.potentiostat, x_range=(2, 98, image_side),
                                       y_range=(2, 98, image_side), height=5.0, plane=z_surface, context=ctx))
        uid = res.run_start_uids[0]
        result.runs["secm_image"] = uid
        result.figures += _secm_products(client[uid], secm, out, result.summary)
    finally:
        if own:
            catalog.stop()
    _say("done.")
    for name, uid in result.runs.items():
        _say(f"  {name:15s} {uid}")
    for f in result.figures:
        _say(f"  figure: {f}")
    if own:  # the in-process server ended with the demo: a persistent one serves the same directory
        dd = f" --data-dir {result.data_dir}" if result.data_dir is not None else ""
        _say(f"browse the runs: run `espt serve{dd}` (or `espt demo --serve`) and open the Browse address it "
             f"prints (once with ?api_key=<the key in {catalog.key_hint}>)")
    else:
        _say(f"browse the runs: {result.browse_url} (once with ?api_key=<the key in {catalog.key_hint}>)")
    return result


def _seccm_products(run: Any, bench: Any, out: Path, summary: dict) -> list[Path]:
    """Screen features, clusters, the screening figure; products written back to the run."""
    import matplotlib.pyplot as plt

    from .analysis.figures import screening_figure
    from .analysis.screening import cluster_spots, screen_spots
    from .storage import read_map, write_product

    ds = read_map(run)
    t = ds["pstat_wf_time"].values
    E = ds["pstat_wf_potential"].values
    i = ds["pstat_wf_current"].values
    x = np.broadcast_to(ds["x"].values, ds["pstat_wf_current"].shape[:-1]) if "spot" not in ds.dims else \
        ds["x"].values
    y = np.broadcast_to(ds["y"].values, ds["pstat_wf_current"].shape[:-1]) if "spot" not in ds.dims else \
        ds["y"].values
    if "spot" not in ds.dims:  # a grid: flatten to spots
        xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
        x, y = xx.ravel(), yy.ravel()
        n = x.size
        t, E, i = t.reshape(n, -1), E.reshape(n, -1), i.reshape(n, -1)
    visited = np.all(np.isfinite(i), axis=1)
    screen = screen_spots(t[visited], E[visited], i[visited], x=x[visited], y=y[visited], e_window=(0.0, 1.2))
    clusters = cluster_spots(screen, k_max=4, seed=0)
    truth = bench.model.sample.at("label", screen.x, screen.y).astype(int)
    agree = _cluster_agreement(clusters.labels, truth)
    summary.update(n_spots=int(screen.n_spots), n_clusters=int(clusters.k), cluster_truth_agreement=agree)
    _say(f"  Q_p2/Q_p1: median {np.nanmedian(screen.passivation_ratio):.2f}; {clusters.k} clusters "
         f"(agree with the true edge/basal planes on {100 * agree:.0f} % of spots)")
    fig = screening_figure(screen, clusters)
    path = out / "seccm_screen_hopg.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    table = {k: np.asarray(v) for k, v in screen.as_dict().items()}
    table["cluster"] = np.asarray(clusters.labels)
    try:
        import pandas as pd

        write_product(run, "screening", pd.DataFrame(table),
                      {"e_window": [0.0, 1.2], "clustering": "gmm", "k": int(clusters.k)})
    except Exception as exc:  # a product failing must not lose the figure
        _say(f"  (could not write the screening product: {exc})")
    return [path]


def _cluster_agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of spots whose cluster's majority truth label equals their own truth label."""
    labels = np.asarray(labels)
    good = 0
    for c in np.unique(labels):
        sel = labels == c
        majority = np.bincount(truth[sel]).argmax()
        good += int(np.sum(truth[sel] == majority))
    return good / max(labels.size, 1)


def _secm_products(run: Any, bench: Any, out: Path, summary: dict) -> list[Path]:
    """The normalised feedback image of the constant-height run."""
    import matplotlib.pyplot as plt

    from .storage import read_map

    ds = read_map(run)
    i_inf = bench.model.i_tip_inf()
    img = ds["pstat_tip_current"].values / i_inf
    fig, ax = plt.subplots(figsize=(5.5, 4.6), layout="constrained")
    x, y = ds["x"].values, ds["y"].values
    dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2  # extent runs over pixel edges, not centres
    m = ax.imshow(img, origin="lower", extent=(x[0] - dx, x[-1] + dx, y[0] - dy, y[-1] + dy), cmap="viridis")
    fig.colorbar(m, ax=ax, label="i$_T$ / i$_{T,\\infty}$")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title("SECM feedback, Au discs on SiO$_2$ (L = 1)")
    path = out / "secm_image_patterned.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    summary.update(secm_max=float(np.nanmax(img)), secm_min=float(np.nanmin(img)))
    _say(f"  normalised feedback from {np.nanmin(img):.2f} (SiO2) to {np.nanmax(img):.2f} (Au)")
    return [path]
