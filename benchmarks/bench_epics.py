"""Per-point cost of the plans over EPICS (caproto IOC process + pyepics) against the in-process bench.

Plain script: ``python benchmarks/bench_epics.py [--points N]``.  Prints seconds per point and the EPICS/in-process
ratio for

* ``hop loop``: a hop-like loop without the plan machinery — lift z, move x/y, lower z, trigger and read the
  potentiostat (one event per point), the Channel Access round trips a hop costs;
* ``constant_height_image``: the plan, one event per point;
* ``hopping_scan`` (mode "plan", SICM): the plan, whose approach at every hop is many step-and-read events;
  reported per hop and per event.

Both benches run the same model (same technique, sample and seed), in this process or in the IOC process; no
Tiled writer is subscribed (the writer's cost is the same for both).  2 shared cores: compare the ratios, which
are measured in the same run.
"""

from __future__ import annotations

import argparse
import time

from espt_bluesky.ioc.launch import IOCProcess, ca_environment, configure_client_env, free_ports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100, help="points of the hop loop")
    ap.add_argument("--grid", type=int, default=8, help="constant_height_image is grid x grid")
    ap.add_argument("--hops", type=int, default=3, help="hopping_scan is hops x 2 points")
    args = ap.parse_args()

    ports = free_ports(3)
    env = ca_environment(ports[:2], ports[2])
    configure_client_env(env)
    secm = IOCProcess("bench", "BE1:", ports[0], env, technique="SECM", sample="patterned", seed=3).start()
    sicm = IOCProcess("bench", "BE2:", ports[1], env, technique="SICM", sample="composite_cathode", seed=2).start()
    try:
        import bluesky.plan_stubs as bps
        from bluesky import RunEngine

        from espt_bluesky.devices import make_sim_bench
        from espt_bluesky.devices.epics import make_epics_bench
        from espt_bluesky.plans.hopping import hopping_scan
        from espt_bluesky.plans.imaging import constant_height_image

        RE = RunEngine({}, call_returns_result=True)
        counts = {"event": 0}
        RE.subscribe(lambda name, doc: counts.__setitem__("event", counts["event"] + 1) if name == "event" else None)

        def hop_loop(bench, n):
            st, p = bench.stage, bench.potentiostat
            p.configure_technique("READ", channel="tip")

            def plan():
                yield from bps.open_run()
                for k in range(n):
                    x = 40.0 + (k % 10) * 2.0
                    y = 40.0 + (k // 10 % 10) * 2.0
                    yield from bps.mv(st.z, 12.0)
                    yield from bps.mv(st.x, x, st.y, y)
                    yield from bps.mv(st.z, 8.0)
                    yield from bps.trigger_and_read([p, st.x, st.y, st.z])
                yield from bps.close_run()

            RE(bps.mv(st.z, 12.0, p.cell_on, 1))
            t0 = time.perf_counter()
            RE(plan())
            return (time.perf_counter() - t0) / n

        def image(bench, g):
            RE(bps.mv(bench.stage.z, 20.0))
            t0 = time.perf_counter()
            RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(30, 70, g), y_range=(30, 70, g),
                                     height=6.0, plane=0.1))
            return (time.perf_counter() - t0) / (g * g)

        def hopping(bench, n):
            RE(bps.mv(bench.stage.z, 3.0))
            e0 = counts["event"]
            t0 = time.perf_counter()
            RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(20, 24, n),
                            y_range=(20, 22, 2), hop_height=2.0, mode="plan"))
            dt = time.perf_counter() - t0
            return dt / (2 * n), dt / max(counts["event"] - e0, 1)

        rows = []
        sim, epi = make_sim_bench("SECM", "patterned", seed=3), make_epics_bench("BE1:")
        hop_loop(sim, 5), hop_loop(epi, 5)  # warm up (imports, first channel accesses)
        rows.append(("hop loop (4 moves + 1 event)", hop_loop(sim, args.points), hop_loop(epi, args.points)))
        sim, epi = make_sim_bench("SECM", "patterned", seed=3), make_epics_bench("BE1:")
        rows.append(("constant_height_image, per point", image(sim, args.grid), image(epi, args.grid)))
        sim, epi = make_sim_bench("SICM", "composite_cathode", seed=2), make_epics_bench("BE2:")
        (s_hop, s_ev), (e_hop, e_ev) = hopping(sim, args.hops), hopping(epi, args.hops)
        rows.append(("hopping_scan (plan mode), per hop", s_hop, e_hop))
        rows.append(("hopping_scan (plan mode), per event", s_ev, e_ev))

        print(f"{'':40s} {'in-process':>12s} {'EPICS':>12s} {'ratio':>7s} {'EPICS extra':>12s}")
        for name, s, e in rows:
            print(f"{name:40s} {s * 1e3:10.2f}ms {e * 1e3:10.2f}ms {e / s:7.2f} {(e - s) * 1e3:10.2f}ms")
    finally:
        secm.stop()
        sicm.stop()


if __name__ == "__main__":
    main()
