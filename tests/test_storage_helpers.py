"""Shared pieces of the storage tests (no tests here): a hopping plan over the simulated SECCM bench."""

from __future__ import annotations

import numpy as np
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from espt_bluesky.devices import make_sim_bench


def seccm_bench(n_samples: int = 2000, seed: int = 1):
    """A SECCM bench whose potentiostat runs a CV of ``n_samples`` points on every trigger."""
    bench = make_sim_bench("SECCM", "patterned", seed=seed)
    e0 = bench.model.environment["e_ocp"]
    bench.potentiostat.configure_technique("CV", e_start=e0, e_vertex1=e0 - 0.3, e_vertex2=e0 + 0.3,
                                           scan_rate=0.5, n_samples=n_samples)
    return bench


def hopping_plan(bench, points, *, order: str = "hopping", record: list | None = None, md: dict | None = None,
                 on_spot=None):
    """Hop to each (x, y): retract 5 µm, move, land the droplet (pipette r_i/4 above the surface), run the CV.

    ``record`` receives (x, y, current waveform) per spot, read from the device after each trigger;
    ``on_spot(i)`` is called before spot ``i`` (fault injection).
    """
    st, ps, model = bench.stage, bench.potentiostat, bench.model
    r = model.probe.radius
    start_md = dict(bench.metadata(), map={"x": "stage_x", "y": "stage_y", "order": order},
                    plan_name="test_hopping", plan_args={"n_spots": len(points)})
    start_md.update(md or {})

    @bpp.stage_decorator([ps])
    @bpp.run_decorator(md=start_md)
    def inner():
        for i, (x, y) in enumerate(points):
            if on_spot is not None:
                on_spot(i)
            yield from bps.mv(st.z, st.z.position + 5.0)
            yield from bps.mv(st.x, float(x), st.y, float(y))
            yield from bps.mv(st.z, float(model.surface_z(x, y)) + 0.25 * r)
            yield from bps.trigger_and_read([ps, st.x, st.y])
            if record is not None:
                record.append((st.x.position, st.y.position, np.array(ps.wf.current.get())))

    return (yield from inner())


def random_points(n: int, seed: int = 0, lo: float = 10.0, hi: float = 90.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, 2))


def position_detector(stage, name: str = "spot_value"):
    """A detector reading 1000·y + x (µm) of the stage: a map whose every cell is known exactly."""
    from ophyd.sim import SynSignal

    return SynSignal(func=lambda: 1000.0 * stage.y.position + stage.x.position, name=name)
