"""Approach curves measured on the bench (1 % noise) give back the substrate's κ and the contact offset."""

import numpy as np
import pytest

from espt_bluesky.analysis.approach_fit import fit_approach_curve
from espt_bluesky.devices import make_sim_bench


def _uniform_kappa_bench(kappa: float, seed: int):
    """A flat substrate of uniform first-order rate constant k = κ·D/a under the default UME (a = 5 µm, RG 10)."""
    bench = make_sim_bench("SECM", "patterned", seed=seed, noise=0.01)
    s, m = bench.model.sample, bench.model
    a_m = m.probe.radius * 1e-6
    s.topography[:] = 0.0
    s.k_feedback[:] = kappa * m.environment["mediator"]["D"] / a_m
    s._bounded.clear()  # the static-field cache (k_feedback changed under it)
    m.invalidate()
    return bench


def _measure_curve(bench, L):
    a = bench.model.probe.radius
    z, i = [], []
    for zz in np.sort(L * a)[::-1]:  # approach: from far to near
        bench.stage.z.set(float(zz)).wait()
        bench.potentiostat.trigger().wait()
        z.append(bench.stage.z.position)
        i.append(bench.potentiostat.tip.current.get())
    return np.array(z), np.array(i)


@pytest.mark.parametrize("kappa", [0.01, 0.1, 1.0, 10.0])
def test_fit_recovers_kappa_from_bench_approach(kappa):
    bench = _uniform_kappa_bench(kappa, seed=int(kappa * 100) + 3)
    a = bench.model.probe.radius
    # 1000 points (a real approach records about as many); the 1σ of κ is then ≈ 1.6 % at κ = 0.01 and 10
    L = np.geomspace(0.05, 10.0, 1000)
    z, i = _measure_curve(bench, L)
    i_inf = bench.model.i_tip_inf()  # measured far away in practice; the bench's true value here
    fit = fit_approach_curve(z, i, a=a, rg=bench.model.probe.rg, i_inf=i_inf,
                             D=bench.model.environment["mediator"]["D"])
    assert fit.kappa == pytest.approx(kappa, rel=0.05)
    assert abs(fit.z0 - 0.0) < 0.05 * a  # the true surface is at z = 0
    assert fit.k == pytest.approx(kappa * bench.model.environment["mediator"]["D"] / (a * 1e-6), rel=0.05)
