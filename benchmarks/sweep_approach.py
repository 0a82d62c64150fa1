"""Where does the SECM approach park, over which surfaces, and does it ever touch?  (issue 16)

Runs ``approach(technique="SECM", working_distance=t)`` with κ unknown (the default) from 15 a above the surface
over: HOPG edge bands (2 seeds × 2 bands × band centre/edge), the Au discs and SiO2 of ``patterned`` (2 seeds,
``feedback`` given as a user would), flat surfaces of κ = 0 … ∞ and 3 (``uniform_kinetics``), and the profile session's
case (Au disc from 12 a); targets t = 0.5, 1 and 2 a.  Prints one line per case (parked distance and closest
reading in a, RunEngine readings, wall time) and the count within 0.1 a, touching, or ending with an error.

    python benchmarks/sweep_approach.py [band,disc,kappa,profile]
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import bluesky.plan_stubs as bps
from bluesky import RunEngine

from espt_bluesky.devices.sim_bench import make_sim_bench
from espt_bluesky.physics.sample import uniform_kinetics
from espt_bluesky.plans.approach import approach

A = 5.0  # µm, the SECM bench's UME radius
TARGETS = (0.5, 1.0, 2.0)


def hopg_band(seed: int, band: int, where: str) -> tuple[float, float]:
    """(x, y) on an edge band of ``hopg(seed)`` at x = 50 µm: its centre line or its lower edge."""
    rng = np.random.default_rng(seed + 101)  # the preset's own draws (physics.sample.hopg)
    offs = np.array([12.0, 38.0, 62.0, 88.0]) + rng.uniform(-3, 3, 4)
    angs = np.deg2rad(rng.uniform(-12, 12, 4))
    return 50.0, float(offs[band] + (0.0 if where == "centre" else 1.5 / math.cos(angs[band])))


def cases(which: str):
    out = []
    if "band" in which:
        out += [("hopg", s, hopg_band(s, b, w), t, {}, f"hopg s{s} band{b} {w}")
                for s in (0, 3) for b in (0, 2) for w in ("centre", "edge") for t in TARGETS]
    if "profile" in which:
        out.append(("patterned", 0, (50.0, 50.0), 1.0, dict(feedback="positive"), "profile Au (12 a)", 12.0))
    if "disc" in which:
        for s in (0, 4):
            for t in TARGETS:
                out.append(("patterned", s, (50.0, 50.0), t, dict(feedback="positive"), f"Au s{s}"))
                out.append(("patterned", s, (35.0, 35.0), t, dict(feedback="negative"), f"SiO2 s{s}"))
    if "kappa" in which:
        out += [(uniform_kinetics(k), i, (50.0, 50.0), t, {}, f"kappa={k:g}")
                # κ = 3 last (added later: the earlier cases keep their seeds)
                for i, k in enumerate([0.0, 0.01, 0.1, 1.0, 10.0, math.inf, 3.0]) for t in TARGETS]
    return out


def main(which: str = "band,disc,kappa,profile") -> None:
    logging.disable(logging.WARNING)
    rows = []
    for sample, seed, xy, t, kw, name, *start in cases(which):
        bench = make_sim_bench("SECM", sample, seed=seed, start=xy)
        RE = RunEngine({})
        docs: list = []
        RE.subscribe(lambda n, d: docs.append((n, d)))
        surf = float(bench.model.surface_z(*xy))
        RE(bps.mv(bench.stage.z, surf + (start[0] if start else 15.0) * A))
        docs.clear()
        t0 = time.perf_counter()
        err = ""
        try:
            RE(approach(bench.stage, bench.potentiostat, technique="SECM", working_distance=t, **kw))
        except Exception as exc:  # noqa: BLE001 - a sweep reports every outcome
            err = f"{type(exc).__name__}: {str(exc)[:90]}"
        descs = {d["uid"] for n, d in docs if n == "descriptor" and d.get("name") == "approach"}
        z = np.array([d["data"]["stage_z"] for n, d in docs if n == "event" and d["descriptor"] in descs])
        d = bench.model.distance() / A
        ok = not bench.model.crashed and not err and abs(d - t) < 0.1
        tag = "ok" if ok else "TOUCH" if bench.model.crashed else "error" if err else "off"
        print(f"{tag:5s} {name:20s} t={t:3.1f} a  parked {d:6.3f} a  closest {(z.min() - surf) / A:6.3f} a  "
              f"{z.size:3d} readings {time.perf_counter() - t0:5.1f} s {err}", flush=True)
        rows.append((ok, bench.model.crashed, bool(err)))
    ok, touch, err = (sum(r[i] for r in rows) for i in range(3))
    print(f"{which}: {ok}/{len(rows)} within 0.1 a, {touch} touched, {err} ended with an error")


if __name__ == "__main__":
    main(*sys.argv[1:2])
