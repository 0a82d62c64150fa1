"""Registration on real images: the SECM/SEM pair of the same Al sample, and a known transform of the SEM image."""

from __future__ import annotations

import numpy as np
import pytest

from espt_bluesky.correlate import registration as reg
from espt_bluesky.correlate.frames import AffineTransform
from espt_bluesky.correlate.importers import read_file


@pytest.fixture(scope="module")
def pair(shared_data):
    secm = read_file(shared_data / "secm" / "AlAr_data.txt")
    sem = read_file(shared_data / "secm" / "Al-AR_SEM.tif")
    sem_c = sem.coarsen(x=4, y=4, boundary="trim").mean()  # 0.248 µm pixels: still 10x finer than the SECM
    sem_c.attrs = sem.attrs
    secm_i = secm.interp(y=np.arange(0.0, 96.01, 1.0))  # 4 µm rows onto 1 µm, for blob finding
    secm_i.attrs = secm.attrs
    return secm, secm_i, sem, sem_c


def test_fiducials_ransac_rejects_an_outlier():
    rng = np.random.default_rng(3)
    truth = AffineTransform.from_params(scale=1.07, rotation_deg=12.0, translation=(30.0, -8.0), source="a",
                                        target="b")
    src = rng.uniform(0, 100, (8, 2))
    dst = truth.apply(src) + rng.normal(0, 0.05, src.shape)
    dst[3] += (15.0, -9.0)  # a mismatched fiducial
    t = reg.fit_fiducials(src, dst, source="a", target="b")
    assert t.provenance["inliers"][3] is False and t.provenance["n_inliers"] == 7
    assert t.rotation_deg == pytest.approx(12.0, abs=0.1) and t.scale == pytest.approx(1.07, rel=2e-3)
    assert t.residual_rms < 0.15


def test_secm_map_registered_onto_sem_image(pair, tmp_path):
    secm, secm_i, sem, sem_c = pair
    # features: SECM current maxima (active particles) and SEM bright blobs at the SECM's resolution
    fa = reg.find_features(secm_i, "current", sigma=2.5, threshold=0.003, max_features=20)
    fb = reg.find_features(sem_c, "intensity", sigma=2.5, threshold=0.02, max_features=80)
    ia, ib, _ = reg.match_features(fa, fb, tolerance=3.0)
    t = reg.fit_fiducials(fa.xy[ia], fb.xy[ib], source="secm:stage", target="sem:image")
    p = t.params()
    n = t.provenance["n_inliers"]
    print(f"\nSECM -> SEM: {t}\n  {n} features, residuals "
          f"{np.round(np.asarray(t.provenance['residuals']), 2).tolist()} µm")
    assert n >= 6
    assert t.residual_rms < 2.0  # below the SECM tip's footprint (several µm)
    # both instruments are calibrated in µm: the fitted scale must be ~1 (it is not constrained to be)
    assert t.scale == pytest.approx(1.0, abs=0.03)
    # an independent method: mutual information over the whole images, started from the fiducial fit
    mi = reg.register_mutual_information(sem_c, secm_i, fixed_variable="intensity", moving_variable="current",
                                         initial=t, fixed_sigma=2.0)
    corners = np.array([[0, 0], [99.5, 0], [0, 96], [99.5, 96.0]])
    gap = np.hypot(*(mi.apply(corners) - t.apply(corners)).T)
    print(f"  mutual information: {mi}; corners differ by {np.round(gap, 2).tolist()} µm")
    assert gap.max() < 3.0
    assert p["reflect"] == mi.is_reflection
    from espt_bluesky.correlate.figures import overlay_figure

    fig = overlay_figure(sem_c, "intensity", secm, "current", t, points=[
        (fb.xy[ib], dict(marker="+", color="lime", ms=9), "SEM features"),
        (t.apply(fa.xy[ia]), dict(marker="x", color="red", ms=7), "SECM features (registered)")])
    out = tmp_path / "secm_on_sem.png"
    fig.savefig(out, dpi=80)
    assert out.stat().st_size > 20000


def test_known_transform_of_the_sem_image_is_recovered(pair):
    _, _, sem, sem_c = pair
    truth = AffineTransform.from_params(scale=1.1, rotation_deg=7.0, translation=(18.0, -5.0), source="warped",
                                        target="sem:image")
    # the "moving" image: a 70 x 60 µm view of the SEM through the known transform, at 0.5 µm pixels
    x = np.arange(0.0, 70.0, 0.5)
    y = np.arange(0.0, 60.0, 0.5)
    img = reg.resample_to_grid(sem_c, "intensity", truth.inverse(), x, y)
    import xarray as xr

    moving = xr.Dataset({"intensity": (("y", "x"), img, {"units": "counts"})}, coords={"x": x, "y": y},
                        attrs={"frame": "warped"})
    fa = reg.find_features(moving, "intensity", sigma=1.5, threshold=0.05, max_features=30, exclude_border=3)
    fb = reg.find_features(sem_c, "intensity", sigma=1.5, threshold=0.05, max_features=120)
    ia, ib, _ = reg.match_features(fa, fb, tolerance=1.5, allow_reflection=False, n_strongest=8)
    t = reg.fit_fiducials(fa.xy[ia], fb.xy[ib], source="warped", target="sem:image", reflect=False)
    mi = reg.register_mutual_information(sem_c, moving, fixed_variable="intensity", moving_variable="intensity",
                                         initial=t)
    for name, est in (("fiducials", t), ("mutual information", mi)):
        centre = np.array([35.0, 30.0])
        offset_err = float(np.hypot(*(est.apply(centre) - truth.apply(centre))))
        rot_err = abs(est.rotation_deg - 7.0)
        scale_err = abs(est.scale / 1.1 - 1)
        print(f"\n{name}: offset error {offset_err:.3f} µm, rotation error {rot_err:.3f}°, scale error "
              f"{100 * scale_err:.2f} % ({est.provenance.get('n_inliers', '-')} features)")
        assert offset_err < 0.5 and rot_err < 0.3 and scale_err < 0.005
