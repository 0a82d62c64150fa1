"""Storage speed: a hopping run with HDF5 waveform assets against bluesky's grid_scan with an array detector.

Everything goes to one ``tiled serve`` process started here (its own data directory in a temporary folder).
Prints times and ratios measured in this one run (the machine is shared and noisy: compare ratios, not seconds).
No assertions.

1. Hopping, N spots (with the live batch size, and with one batch per run), a 2000-sample CV per spot (simulated SECCM bench), waveforms written by the potentiostat to
   HDF5 and registered in Tiled (StreamResource/StreamDatum); then ``read_map``.
2. Baseline: ``bp.grid_scan`` over the same number of points with an ophyd array detector of 4 × 2000 samples
   (the same bytes per point) written as event data by TiledWriter; then ``run["primary"].read()``.
3. Each of the above without any subscriber (what the RunEngine and the simulation cost alone).
4. ``read_map`` of a 10,000-spot hopping run (scalars, written from synthesized event pages).

Usage: ``python benchmarks/bench_storage.py [--spots 1000] [--samples 2000] [--big 10000]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

import numpy as np


def hopping(bench, points):
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    st, ps, model = bench.stage, bench.potentiostat, bench.model
    r = model.probe.radius
    md = dict(bench.metadata(), map={"x": "stage_x", "y": "stage_y", "order": "hopping"}, plan_name="bench_hop")

    @bpp.stage_decorator([ps])
    @bpp.run_decorator(md=md)
    def inner():
        for x, y in points:
            yield from bps.mv(st.z, st.z.position + 5.0)
            yield from bps.mv(st.x, float(x), st.y, float(y))
            yield from bps.mv(st.z, float(model.surface_z(x, y)) + 0.25 * r)
            yield from bps.trigger_and_read([ps, st.x, st.y])

    return (yield from inner())


def make_array_detector(n_samples: int):
    """An ophyd detector reading four arrays of ``n_samples`` (like the potentiostat's waveform keys)."""
    from ophyd import Component as Cpt
    from ophyd import Device
    from ophyd.sim import SynSignal

    rng = np.random.default_rng(0)

    def wave():
        return rng.normal(size=n_samples)

    class ArrayDet(Device):
        wf_time = Cpt(SynSignal, func=wave, kind="normal")
        wf_potential = Cpt(SynSignal, func=wave, kind="normal")
        wf_current = Cpt(SynSignal, func=wave, kind="normal")
        wf_collector_current = Cpt(SynSignal, func=wave, kind="normal")

        def describe(self):
            d = super().describe()
            for k in d:
                d[k].update(dtype="array", shape=[n_samples], dtype_numpy="<f8", dims=["sample"])
            return d

        def trigger(self):
            for s in (self.wf_time, self.wf_potential, self.wf_current, self.wf_collector_current):
                s.trigger()
            return super().trigger()

    return ArrayDet(name="adet")


class TimedCallback:
    """Wraps a subscriber or an asset writer method and adds up the time spent in it (s)."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def synth_big_run(n: int):
    """Documents of an n-spot hopping run with scalar readings, as one event page per 1000 spots."""
    from event_model import compose_run

    rng = np.random.default_rng(1)
    bundle = compose_run(metadata={"technique": "SECCM", "plan_name": "synthetic",
                                   "map": {"x": "stage_x", "y": "stage_y", "order": "hopping"}})
    yield "start", bundle.start_doc
    keys = {k: {"source": "synthetic", "dtype": "number", "shape": [], "dtype_numpy": "<f8", "units": u}
            for k, u in (("stage_x", "um"), ("stage_y", "um"), ("pstat_substrate_current", "A"),
                         ("pstat_tip_current", "A"))}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    yield "descriptor", desc.descriptor_doc
    for i0 in range(0, n, 1000):
        m = min(1000, n - i0)
        data = {k: rng.uniform(0, 100, m).tolist() for k in keys}
        ts = {k: [time.time()] * m for k in keys}
        page = desc.compose_event_page(data=data, timestamps=ts, seq_num=list(range(i0 + 1, i0 + m + 1)),
                                       time=[time.time()] * m, uid=[str(uuid.uuid4()) for _ in range(m)])
        yield "event_page", page
    yield "stop", bundle.compose_stop()


def main() -> None:
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import SynAxis

    from espt_bluesky.devices.sim_bench import make_sim_bench
    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
    from espt_bluesky.storage import LocalCatalog, make_writer, read_map

    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--big", type=int, default=10_000)
    args = ap.parse_args()
    n, ns = args.spots, args.samples
    side = int(round(np.sqrt(n)))
    n_grid = side * side

    tmp = tempfile.mkdtemp(prefix="espt-bench-")
    cat = LocalCatalog.start(tmp)
    print(f"tiled serve process at {cat.uri}; data in {tmp}")
    try:
        pts = np.random.default_rng(0).uniform(10, 90, size=(n, 2))

        def new_bench(assets: bool):
            bench = make_sim_bench("SECCM", "patterned", seed=1)
            e0 = bench.model.environment["e_ocp"]
            bench.potentiostat.configure_technique("CV", e_start=e0, e_vertex1=e0 - 0.3, e_vertex2=e0 + 0.3,
                                                   scan_rate=0.5, n_samples=ns)
            if assets:
                w = HDF5WaveformWriter(cat.asset_dir)
                w.write = TimedCallback(w.write)
                bench.potentiostat.asset_writer = w
            return bench

        # --- hopping, no subscriber
        RE0 = RunEngine({})
        t_hop0, _ = timed(lambda: RE0(hopping(new_bench(False), pts)))
        # --- hopping into Tiled with HDF5 assets
        RE = RunEngine({})
        live_writer = TimedCallback(make_writer(cat))
        RE.subscribe(live_writer)
        hop_bench = new_bench(True)
        t_hop, (uid_hop,) = timed(lambda: RE(hopping(hop_bench, pts)))
        w_hop = live_writer.seconds
        h5_hop = hop_bench.potentiostat.asset_writer.write.seconds
        RE_b = RunEngine({})
        RE_b.subscribe(make_writer(cat, batch_size=max(n, 1)))
        t_hop_batch, _ = timed(lambda: RE_b(hopping(new_bench(True), pts)))
        client = cat.client()
        t_read_hop, ds = timed(lambda: read_map(client[uid_hop]))
        assert ds.sizes["spot"] == n

        # --- grid_scan with an array detector of the same size
        mx, my = SynAxis(name="gx"), SynAxis(name="gy")
        det = make_array_detector(ns)
        t_grid0, _ = timed(lambda: RE0(bp.grid_scan([det], my, 0, 1, side, mx, 0, 1, side, snake_axes=True)))
        live_writer.seconds = 0.0
        t_grid, (uid_grid,) = timed(lambda: RE(bp.grid_scan([det], my, 0, 1, side, mx, 0, 1, side,
                                                            snake_axes=True)))
        w_grid = live_writer.seconds
        t_read_grid, raw = timed(lambda: client[uid_grid]["primary"].read())
        t_read_grid_map, _ = timed(lambda: read_map(client[uid_grid]))

        # --- 10,000 spots: read_map
        docs = list(synth_big_run(args.big))
        w = make_writer(cat, batch_size=10_000)
        t_write_big, _ = timed(lambda: [w(nm, d) for nm, d in docs])
        uid_big = docs[0][1]["uid"]
        t_raw_big, _ = timed(lambda: client[uid_big]["primary"].read())
        t_map_big, big = timed(lambda: read_map(client[uid_big]))
        t_map_big_offline, _ = timed(lambda: read_map(docs))
        assert big.sizes["spot"] == args.big
    finally:
        cat.stop()

    mb = n * 4 * ns * 8 / 1e6
    print(f"\n{n} hopping spots × {ns}-sample CV ({mb:.0f} MB of waveforms); grid_scan {side}×{side} = {n_grid} "
          f"points × 4 arrays of {ns}")
    print(f"{'':48s}{'time (s)':>10s}{'points/s':>10s}")
    rows = [("hopping, no subscriber (RE + simulation)", t_hop0, n),
            ("hopping -> Tiled, HDF5 assets (live batch)", t_hop, n),
            ("hopping -> Tiled, HDF5 assets (one batch/run)", t_hop_batch, n),
            ("grid_scan array det, no subscriber", t_grid0, n_grid),
            ("grid_scan array det -> Tiled (event arrays)", t_grid, n_grid),
            ("read_map(hopping run)", t_read_hop, n),
            ("grid run: primary.read()", t_read_grid, n_grid),
            ("read_map(grid run)", t_read_grid_map, n_grid),
            (f"write {args.big} scalar spots (event pages)", t_write_big, args.big),
            (f"primary.read() of {args.big} spots", t_raw_big, args.big),
            (f"read_map of {args.big} spots (Tiled)", t_map_big, args.big),
            (f"read_map of {args.big} spots (documents)", t_map_big_offline, args.big)]
    for name, t, k in rows:
        print(f"{name:48s}{t:10.2f}{k / t:10.0f}")
    print("\ntime inside the writer callback (TiledWriter: documents -> HTTP), load-independent of the simulation")
    print(f"  hopping, HDF5 assets : {w_hop / n * 1e3:7.2f} ms/spot  (+ {h5_hop / n * 1e3:.2f} ms/spot writing HDF5 "
          "in the device)")
    print(f"  grid_scan, event arrays: {w_grid / n_grid * 1e3:7.2f} ms/point")
    print(f"  ratio event arrays / (HDF5 assets incl. file writing): "
          f"{(w_grid / n_grid) / ((w_hop + h5_hop) / n):.2f}")
    print("\nratios (same run; wall clock, sensitive to machine load)")
    print(f"  storage overhead, hopping with HDF5 assets : {(t_hop - t_hop0) / n * 1e3:7.2f} ms/spot "
          f"(total ×{t_hop / t_hop0:.2f} of no-subscriber)")
    over_live, over_batch = t_hop - t_hop0, t_hop_batch - t_hop0
    cost = f"live batch costs ×{over_live / over_batch:.2f}" if over_batch > 0 and over_live > 0 else \
        "difference within the noise of this run"
    print(f"  same, written once at the end of the run   : {over_batch / n * 1e3:7.2f} ms/spot ({cost})")
    print(f"  storage overhead, grid_scan event arrays   : {(t_grid - t_grid0) / n_grid * 1e3:7.2f} ms/point "
          f"(total ×{t_grid / t_grid0:.2f} of no-subscriber)")
    print(f"  overhead ratio  event arrays / HDF5 assets : "
          f"{((t_grid - t_grid0) / n_grid) / max((t_hop - t_hop0) / n, 1e-9):7.2f}")
    print(f"  read: read_map(hopping) / grid primary.read: {(t_read_hop / n) / (t_read_grid / n_grid):7.2f} "
          "(per point)")
    print(f"  read_map {args.big} / primary.read {args.big}      : {t_map_big / t_raw_big:7.2f}")


if __name__ == "__main__":
    main()
