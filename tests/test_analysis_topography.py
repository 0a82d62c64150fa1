"""SICM topography on the bench: robust levelling of a tilted Si-pad sample, and the swelling rate of the Si pads
on lithiation, both against the sample's true heights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from espt_bluesky.analysis.topography import deformation_rate, level, register_shift
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument

XS = np.linspace(5.0, 95.0, 13)  # pixel centres off the pad edges (pads span 15-40 and 60-85 µm)


def sicm_hopping_image(bench, xs, ys, hop=0.9, step=0.04, drop=0.03):
    """Hopping SICM: at every pixel descend until the ion current drops by ``drop``, refine by bisection."""
    st, ps = bench.stage, bench.potentiostat

    def current(z):
        st.z.set(z).wait()
        ps.trigger().wait()
        return ps.tip.current.get()

    z = st.z.position
    i_far = current(z + 5.0)
    img = np.empty((len(ys), len(xs)))
    t0 = bench.model.clock
    z_surf = None
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            z = (z_surf if z_surf is not None else z) + hop
            st.z.set(z).wait()
            st.x.set(float(x)).wait()
            st.y.set(float(y)).wait()
            while current(z) > (1 - drop) * i_far:
                z -= step
            lo, hi = z, z + step
            for _ in range(6):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if current(mid) > (1 - drop) * i_far else (mid, hi)
            z_surf = 0.5 * (lo + hi)
            img[r, c] = z_surf
    return img, 0.5 * (t0 + bench.model.clock)


@pytest.fixture(scope="module")
def si_images():
    # ion-current noise 0.1 % (a filtered SICM reading) against a 3 % setpoint drop: ~3 nm height noise
    bench = make_sim_bench("SICM", "si_film", seed=1, tilt=(0.4, -0.25), noise=0.001)
    bench.stage.z.set(bench.model.surface_z(5.0, 5.0) + 2.0).wait()
    X, Y = np.meshgrid(XS, XS)
    h0 = bench.model.surface_z(X, Y)
    img0, t0 = sicm_hopping_image(bench, XS, XS)
    # lithiate: hold the substrate at 0.1 V vs Li+/Li for 200 s (Si swells, SEI grows everywhere)
    bench.potentiostat.configure_technique("CA", "substrate", e_hold=0.1, duration=200.0, n_samples=200)
    bench.potentiostat.trigger().wait()
    bench.potentiostat.technique.put("READ")  # back to steady readings for imaging
    h1 = bench.model.surface_z(X, Y)
    img1, t1 = sicm_hopping_image(bench, XS, XS)
    return bench, X, Y, img0, img1, t0, t1, h0, h1


def test_levelled_topography_matches_true_heights(si_images):
    bench, X, Y, img0, *_ = si_images
    lev = level(img0, XS, XS, order=1)
    truth = bench.model.sample.at("topography", X, Y)  # before any SEI/swelling, no tilt
    err = lev.levelled - truth
    print(f"\nlevelled SICM topography: max |error| {1e3 * np.abs(err).max():.1f} nm, pads "
          f"{1e3 * np.median(lev.levelled[truth > 0.1]):.1f} nm (true 200 nm), "
          f"raw tilt range {1e3 * np.ptp(img0[truth < 0.1]):.0f} nm")
    assert np.ptp(img0[truth < 0.1]) > 0.3  # the tilt is there to remove
    # a constant offset (the setpoint distance) remains only if the Cu plane were not found: it is
    assert np.all(np.abs(err) < 0.01)
    # plain least squares is pulled by the pads: the robust fit is what gets the Cu plane right
    plain = level(img0, XS, XS, order=1, robust=False)
    assert np.abs(plain.levelled - truth).max() > 2 * np.abs(err).max()


def test_swelling_rate_matches_truth(si_images):
    bench, X, Y, img0, img1, t0, t1, h0, h1 = si_images
    res = deformation_rate(img0, img1, t0, t1)
    true_rate = (h1 - h0) / (t1 - t0)
    pads = bench.model.sample.at("film_thickness", X, Y) > 0
    print(f"\nswelling rate: Si pads {1e3 * np.median(res.rate[pads]):.3f} nm/s (true "
          f"{1e3 * np.median(true_rate[pads]):.3f}), Cu {1e3 * np.median(res.rate[~pads]):.4f} nm/s (true "
          f"{1e3 * np.median(true_rate[~pads]):.4f}); max |error| {1e3 * np.abs(res.rate - true_rate).max():.4f} nm/s")
    tol = 4 * 0.004 / res.dt  # height noise ~3 nm per image (current noise over the slope at the setpoint)
    assert np.all(np.abs(res.rate - true_rate) < 0.02 * np.abs(true_rate).max() + tol)
    assert np.median(res.rate[pads]) > 10 * abs(np.median(res.rate[~pads]))


def test_registration_recovers_a_lateral_shift(si_images):
    _, _, _, img0, *_ = si_images
    lev = level(img0, XS, XS).levelled
    moved = ndimage.shift(lev, (1.0, -2.0), order=1, mode="nearest")
    dy, dx = register_shift(lev, moved)
    assert abs(dy + 1.0) < 0.3 and abs(dx - 2.0) < 0.3


def test_bad_input():
    with pytest.raises(InvalidArgument, match="2-D height map"):
        level(np.zeros(5))
    with pytest.raises(InvalidArgument, match="order=7"):
        level(np.zeros((4, 4)), order=7)
    with pytest.raises(InvalidArgument, match="t2=1.0 s must be later"):
        deformation_rate(np.zeros((3, 3)), np.zeros((3, 3)), 2.0, 1.0)
    z = np.zeros((6, 6))
    z[2, 2] = np.nan
    out = level(z)
    assert np.isnan(out.levelled[2, 2]) and np.isfinite(out.levelled[0, 0])
