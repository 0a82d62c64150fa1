"""How much shorter is the steered SECM approach than the fixed coarse/fine one, to the same working distance?

Runs ``approach(technique="SECM", ...)`` from the same start height over the same surfaces with
``strategy="fit"`` (the default: the exact feedback theory fitted as the curve comes in, any κ) and
``strategy="threshold"`` (the classical programme: coarse steps, fine steps below the threshold, stop at a fixed
I_T, park), counting motor steps, readings and RunEngine messages.  The classical programme is run with the
fine step a careful user picks for the same final accuracy (0.05 a, the default).  Prints each pair and the
ratios (threshold / fit; > 1: the steered approach is shorter; wall time at time_scale=0 is pure computing, where
the fit's per-step estimate costs more than the motion it saves), plus where each parked (only the fit parks right
over a partly active surface; the threshold run there is shown for its cost only).

Then the HOPG edge band with κ unknown (the lateral probes find a mixed footprint, the surface is located at a
neighbouring point and transferred) against a direct approach over the basal plane from the same 15 a.

    python benchmarks/bench_approach.py [--start 250] [--seeds 2] [--no-band | --band-only]
"""

from __future__ import annotations

import argparse
import math
import time

import bluesky.plan_stubs as bps
from bluesky import RunEngine

from espt_bluesky.devices import make_sim_bench
from espt_bluesky.physics.sample import uniform_kinetics
from espt_bluesky.plans import approach

A = 5.0


def run(sample, strategy: str, start: float, seed: int, target: float, xy=None) -> dict:
    bench = make_sim_bench("SECM", sample, seed=seed)
    RE = RunEngine({})
    msgs: list = []
    if xy is not None:
        RE(bps.mv(bench.stage.x, xy[0], bench.stage.y, xy[1]))
    RE(bps.mv(bench.stage.z, start + (float(bench.model.surface_z(*xy)) if xy is not None else 0.0)))
    RE.msg_hook = msgs.append
    feedback = "negative"
    if strategy == "threshold" and bench.model.secm_feedback(50, 50, 0.5 * A) > 1:
        feedback = "positive"
    steps = []
    RE.subscribe(lambda n, d: steps.append(d["data"]["stage_z"]) if n == "event" and "stage_z" in d["data"] else None)
    t0 = time.perf_counter()
    crashed = ""
    try:
        RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback=feedback, strategy=strategy,
                    working_distance=target))
    except Exception as exc:  # noqa: BLE001 - a crash or a clear stop is a result here
        crashed = type(exc).__name__
    dt = time.perf_counter() - t0
    moves = sum(1 for m in msgs if m.command == "set" and getattr(m.obj, "name", "") in ("stage_z", "stage_x",
                                                                                          "stage_y"))
    return dict(messages=len(msgs), moves=moves, readings=len(steps), seconds=dt,
                error=(bench.model.distance() - target * A) / A, failed=crashed or bench.model.crashed)


def band_y(sample_name: str, seed: int) -> float:
    """y (µm) of the centre of the second HOPG edge band at x = 50 µm (ground-truth labels)."""
    import numpy as np

    from espt_bluesky.physics.sample import make_sample

    s = make_sample(sample_name, seed=seed)
    ys = np.arange(0.0, 100.0, 0.05)
    lab = s.at("label", np.full(ys.size, 50.0), ys)
    d = np.diff(np.r_[0, lab, 0])
    return float(0.5 * (ys[np.flatnonzero(d == 1)[1]] + ys[np.flatnonzero(d == -1)[1] - 1]))


def detour(seeds: int, start_a: float = 15.0) -> None:
    """The HOPG edge band (κ unknown) against a direct approach on the basal plane, same start distance."""
    print(f"\nHOPG, start {start_a:g} a above the surface, working distance 1 a, strategy='fit'")
    print(f"{'where':22s} {'msgs':>6s} {'moves':>6s} {'reads':>6s} {'s':>6s} {'park err/a':>10s}")
    tot = {"band": [0, 0, 0.0], "basal": [0, 0, 0.0]}
    for seed in range(1, seeds + 1):
        for name, xy in (("basal plane (50, 25)", (50.0, 25.0)), ("edge band (detour)", (50.0, band_y("hopg", seed)))):
            r = run("hopg", "fit", start_a * A, seed, 1.0, xy=xy)
            key = "band" if "band" in name else "basal"
            tot[key][0] += r["messages"]
            tot[key][1] += r["moves"]
            tot[key][2] += r["seconds"]
            print(f"{name:22s} {r['messages']:6d} {r['moves']:6d} {r['readings']:6d} {r['seconds']:6.2f} "
                  f"{r['error']:+10.3f} {r['failed'] or ''}")
    b, p = tot["band"], tot["basal"]
    print(f"ratio edge band / basal plane: RunEngine messages {b[0] / p[0]:.2f}, moves {b[1] / p[1]:.2f}, wall time "
          f"{b[2] / p[2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=float, default=250.0, help="start height (µm; 50 a)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--no-band", action="store_true", help="skip the HOPG edge-band detour case")
    ap.add_argument("--band-only", action="store_true", help="only the HOPG edge-band detour case")
    args = ap.parse_args()
    if args.band_only:
        detour(args.seeds)
        return
    cases = [("insulator (κ=0)", uniform_kinetics(0.0)), ("conductor (κ=∞)", uniform_kinetics(math.inf)),
             ("κ=0.1 (HOPG basal)", uniform_kinetics(0.1))]
    tot = {"fit": dict(messages=0, moves=0, seconds=0.0), "threshold": dict(messages=0, moves=0, seconds=0.0)}
    print(f"{'surface':22s} {'strategy':10s} {'msgs':>6s} {'moves':>6s} {'reads':>6s} {'s':>6s} {'park err/a':>10s}")
    for name, sample in cases:
        for seed in range(args.seeds):
            for strategy in ("fit", "threshold"):
                r = run(sample, strategy, args.start, seed, 1.0)
                print(f"{name:22s} {strategy:10s} {r['messages']:6d} {r['moves']:6d} {r['readings']:6d} "
                      f"{r['seconds']:6.2f} {r['error']:+10.3f}")
                tot[strategy]["messages"] += r["messages"]
                tot[strategy]["moves"] += r["moves"]
                tot[strategy]["seconds"] += r["seconds"]
    print(f"\nratio threshold/fit: RunEngine messages {tot['threshold']['messages'] / tot['fit']['messages']:.2f}, "
          f"motor steps {tot['threshold']['moves'] / tot['fit']['moves']:.2f}; wall time at time_scale=0 (the fit's "
          f"computing, no instrument time) {tot['threshold']['seconds'] / tot['fit']['seconds']:.2f}")
    if not args.no_band:
        detour(args.seeds)


if __name__ == "__main__":
    main()
