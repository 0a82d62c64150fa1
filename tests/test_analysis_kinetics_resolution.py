"""κ maps and deconvolution of SECM images of the `patterned` bench, judged against the sample's ground truth
(Au discs of r = 8 µm at ``sample.features``, label 1 = Au conductor, 0 = SiO2 insulator)."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plans as bp
import bluesky.plan_stubs as bps
from bluesky import RunEngine

from espt_bluesky.analysis.approach_criteria import secm_distance
from espt_bluesky.analysis.kinetic_maps import classify_kappa, kinetic_map, tilt_corrected_distance
from espt_bluesky.analysis.plane import fit_plane
from espt_bluesky.analysis.resolution import (
    deconvolve_image, disc_edge, fit_edge, footprint_psf, richardson_lucy,
)
from espt_bluesky.devices import UME, make_sim_bench
from espt_bluesky.errors import InvalidArgument


def _grid_image(bench, x0, x1, nx, y0, y1, ny):
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(bp.grid_scan([bench.potentiostat, bench.stage.z], bench.stage.y, y0, y1, ny, bench.stage.x, x0, x1, nx,
                    snake_axes=True))
    ev = [d["data"] for n, d in docs if n == "event"]
    x = np.array([e["stage_x"] for e in ev])
    y = np.array([e["stage_y"] for e in ev])
    xs, ys = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    img = np.full((ny, nx), np.nan)
    img[np.rint((y - y0) / (ys[1] - ys[0])).astype(int), np.rint((x - x0) / (xs[1] - xs[0])).astype(int)] = \
        [e["pstat_tip_current"] for e in ev]
    return xs, ys, img, np.array([e["stage_z"] for e in ev]).mean()


def _surface_by_approach(bench, x, y, a, rg, i_inf):
    """Measure the surface height over SiO2 as an experimenter would: approach until I_T < 0.6, invert."""
    bench.stage.z.set(40.0).wait()
    bench.stage.x.set(x).wait()
    bench.stage.y.set(y).wait()
    z = 40.0
    while True:
        bench.potentiostat.trigger().wait()
        I = bench.potentiostat.tip.current.get() / i_inf
        if I < 0.6:
            return z - a * float(secm_distance(I, rg, "insulator"))
        z -= 0.25
        bench.stage.z.set(z).wait()


def test_kappa_map_recovers_conductor_and_insulator_regions():
    a, rg, d = 2.0, 10.0, 2.0
    bench = make_sim_bench("SECM", "patterned", seed=5, probe=UME(radius=a, rg=rg), tilt=(0.3, -0.2))
    i_inf = bench.model.i_tip_inf()  # the reading far away (checked against the bench in test_bench_stock_plans)
    pts = [(35.0, 35.0), (65.0, 35.0), (35.0, 65.0), (65.0, 65.0), (50.0, 5.0)]  # all on SiO2
    plane = fit_plane(*np.array([(x, y, _surface_by_approach(bench, x, y, a, rg, i_inf)) for x, y in pts]).T)
    # tilted sample, constant stage height: the distance varies across the image and must be corrected
    bench.stage.z.set(plane.z_at(35.0, 35.0) + d).wait()
    xs, ys, img, z_tip = _grid_image(bench, 5, 65, 31, 5, 65, 31)
    X, Y = np.meshgrid(xs, ys)
    dist = tilt_corrected_distance(X, Y, z_tip, plane)
    km = kinetic_map(img / i_inf, dist, a=a, D=bench.model.environment["mediator"]["D"], rg=rg)
    cls = classify_kappa(km.kappa)
    truth = bench.model.sample.at("label", X, Y).astype(int)
    # pixels whose whole footprint (a + d) lies on one material
    r_disc = np.min([np.hypot(X - fx, Y - fy) for fx, fy, _ in bench.model.sample.features], axis=0)
    pure = np.abs(r_disc - 8.0) > a + d + 0.5
    agree_pure = np.mean(cls[pure] == truth[pure])
    agree_all = np.mean(cls == truth)
    print(f"\nkappa map: agreement with Au/SiO2 truth {100 * agree_all:.1f} % of all pixels, "
          f"{100 * agree_pure:.1f} % of pixels whose footprint is on one material "
          f"(median kappa Au {np.median(km.kappa[pure & (truth == 1)]):.3g}, "
          f"SiO2 {np.median(km.kappa[pure & (truth == 0)]):.3g}); tilt {plane.tilt_x_deg:.2f}/{plane.tilt_y_deg:.2f} deg")
    assert (pure & (truth == 1)).sum() >= 8 and (pure & (truth == 0)).sum() >= 100
    assert agree_pure >= 0.98
    assert agree_all >= 0.85
    # k = kappa·D/a: Au is (close to) diffusion limited, SiO2 inert
    assert np.median(km.k[pure & (truth == 1)]) > 10 * bench.model.environment["mediator"]["D"] / (a * 1e-6)
    assert np.median(km.kappa[pure & (truth == 0)]) < 0.1
    # without the tilt correction (a single plane height) the distance is wrong by up to ~0.3 µm (15 % of d)
    assert np.ptp(dist) > 0.3


@pytest.fixture(scope="module")
def disc_image():
    a, d = 5.0, 5.0
    bench = make_sim_bench("SECM", "patterned", seed=3, probe=UME(radius=a, rg=10.0))
    RunEngine({})(bps.mv(bench.stage.z, d))  # flat sample, SiO2 at z = 0: d = 5 µm (4.9 over the Au)
    xs, ys, img, _ = _grid_image(bench, 30, 70, 41, 30, 70, 41)
    return bench, a, d, xs, ys, img / bench.model.i_tip_inf()


def test_deconvolution_narrows_the_disc_edge(disc_image):
    bench, a, d, xs, ys, img = disc_image
    (cx, cy, r_true) = bench.model.sample.features[4]  # the disc at (50, 50)
    before = disc_edge(img, xs, ys, (cx, cy), 14.0)
    dec, psf = deconvolve_image(img, xs, ys, radius=a, distance=d, n_iter=200)
    after = disc_edge(dec, xs, ys, (cx, cy), 14.0)
    # the true edge: the sample's Au field across the disc edge (a 0.05 µm tanh)
    r = np.linspace(r_true - 2, r_true + 2, 801)
    au = bench.model.sample.at("topography", cx + r, np.full_like(r, cy)) / 0.1
    true = fit_edge(r, au)
    print(f"\nAu disc edge (10-90 %): measured {before.width:.2f} µm at r = {before.position:.2f} µm; "
          f"after Richardson-Lucy (200 it.) {after.width:.2f} µm at r = {after.position:.2f} µm; "
          f"true {true.width:.2f} µm at r = {true.position:.2f} µm (pixel 1 µm)")
    assert after.width < 0.6 * before.width
    assert abs(after.width - true.width) < abs(before.width - true.width)
    assert abs(before.position - r_true) < 1.5 and abs(after.position - r_true) < 1.5
    # the deconvolved image, blurred again with the PSF, reproduces the measurement (within noise + model)
    from scipy.signal import fftconvolve

    h = psf.shape[0] // 2
    reblur = fftconvolve(np.pad(dec, h, mode="reflect"), psf, mode="same")[h:-h, h:-h]
    resid = reblur[10:-10, 10:-10] - img[10:-10, 10:-10]
    assert np.sqrt(np.mean(resid**2)) < 0.05


def test_psf_and_bad_input():
    k = footprint_psf(5.0, 5.0, 1.0)
    assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-12 and k[10, 10] == k.max()
    with pytest.raises(InvalidArgument, match="radius=-1"):
        footprint_psf(-1.0, 5.0, 1.0)
    with pytest.raises(InvalidArgument, match="negative values"):
        richardson_lucy(-np.ones((5, 5)), k)
    with pytest.raises(InvalidArgument, match="distance has values <= 0"):
        kinetic_map(np.ones((3, 3)), np.zeros((3, 3)), a=5.0, D=1e-9)
    with pytest.raises(InvalidArgument, match="flat"):
        fit_edge(np.arange(10.0), np.ones(10))
    with pytest.raises(InvalidArgument, match="plane="):
        tilt_corrected_distance(1.0, 1.0, 5.0, {"slope_x": 0.1})
    # NaN pixels stay NaN; they do not poison the rest
    img = np.full((9, 9), 0.5)
    img[4, 4] = np.nan
    km = kinetic_map(img, np.full((9, 9), 5.0), a=5.0, D=1e-9)
    assert np.isnan(km.kappa[4, 4]) and np.isfinite(km.kappa[0, 0])
