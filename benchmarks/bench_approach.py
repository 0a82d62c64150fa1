"""How much shorter is the steered SECM approach than the fixed coarse/fine one, to the same working distance?

Runs ``approach(technique="SECM", ...)`` from the same start height over the same surfaces with
``strategy="fit"`` (the default: the exact feedback theory fitted as the curve comes in, any κ) and
``strategy="threshold"`` (the classical programme: coarse steps, fine steps below the threshold, stop at a fixed
I_T, park), counting motor steps, readings and RunEngine messages.  The classical programme is run with the
fine step a careful user picks for the same final accuracy (0.05 a, the default).  Prints each pair and the
ratios (threshold / fit; > 1: the steered approach is shorter; wall time at time_scale=0 is pure computing, where
the fit's per-step estimate costs more than the motion it saves), plus where each parked (only the fit parks right
over a partly active surface; the threshold run there is shown for its cost only).

    python benchmarks/bench_approach.py [--start 250] [--seeds 2]
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


def run(sample, strategy: str, start: float, seed: int, target: float) -> dict:
    bench = make_sim_bench("SECM", sample, seed=seed)
    RE = RunEngine({})
    msgs: list = []
    RE(bps.mv(bench.stage.z, start))
    RE.msg_hook = msgs.append
    feedback = "negative"
    if strategy == "threshold" and bench.model.secm_feedback(50, 50, 0.5 * A) > 1:
        feedback = "positive"
    steps = []
    RE.subscribe(lambda n, d: steps.append(d["data"]["stage_z"]) if n == "event" and "stage_z" in d["data"] else None)
    t0 = time.perf_counter()
    RE(approach(bench.stage, bench.potentiostat, technique="SECM", feedback=feedback, strategy=strategy,
                working_distance=target))
    dt = time.perf_counter() - t0
    moves = sum(1 for m in msgs if m.command == "set" and getattr(m.obj, "name", "") == "stage_z")
    return dict(messages=len(msgs), moves=moves, readings=len(steps), seconds=dt,
                error=(bench.model.distance() - target * A) / A)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=float, default=250.0, help="start height (µm; 50 a)")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
