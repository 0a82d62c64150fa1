"""On the simulated bench: an SECCM screen with XRF in the same run, a beamline XRF map in another frame,
fiducial registration recovering the known transform, Ni/Mn vs the true phase, and a region -> hopping_scan."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plans as bp
import bluesky.plan_stubs as bps

from espt_bluesky.correlate import joint, registration as reg, resample
from espt_bluesky.correlate.frames import AffineTransform, with_transform
from espt_bluesky.correlate.regions import region_points, threshold_polygon
from espt_bluesky.devices.sim_bench import make_sim_bench
from espt_bluesky.devices.xrf import SimXRFDetector
from espt_bluesky.plans import hopping_scan
from espt_bluesky.storage.maps import read_map

pytestmark = pytest.mark.slow

#: how the sample sits on the beamline's stage: beamline stage -> sample µm (rotation, scale, offset)
TRUTH = AffineTransform.from_params(scale=1.02, rotation_deg=3.0, translation=(12.0, -6.0), source="beamline:stage",
                                    target="seccm:stage")
CV = dict(technique="CV", e_start=3.7, e_vertex1=3.0, e_vertex2=4.2, scan_rate=1.0, n_samples=100)


def _run(RE, plan):
    n0 = len(RE.collector.docs)
    RE(plan)
    return RE.collector.docs[n0:]


def _framed(ds, frame):
    ds.attrs["frame"] = frame
    return ds


def _ni_mn_co(ds):
    ds["NiMnCo"] = ds.xrf_rois_roi0_count + ds.xrf_rois_roi1_count + ds.xrf_rois_roi2_count
    ds["NiMnCo"].attrs["units"] = "counts"
    return ds


@pytest.fixture(scope="module")
def screen():
    from bluesky import RunEngine

    from conftest import DocumentCollector

    RE = RunEngine({}, call_returns_result=True)
    RE.collector = DocumentCollector()
    RE.subscribe(RE.collector)
    bench = make_sim_bench("SECCM", "composite_cathode", seed=0, meniscus_height=3.0)
    xrf = SimXRFDetector(name="xrf", beam_fwhm=1.0)
    xrf.attach(bench.model)
    assert [getattr(xrf.rois, f"roi{i}").label.get() for i in range(3)] == ["Ni Ka", "Mn Ka", "Co Ka"]
    RE(bps.mv(bench.stage.z, 8.0))
    docs = _run(RE, hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(8, 92, 10),
                                 y_range=(8, 92, 10), hop_height=7.0, hopper=bench.hopper, measure=CV,
                                 detectors=[xrf]))
    seccm = _ni_mn_co(_framed(read_map(docs), "seccm:stage"))
    return RE, bench, xrf, seccm


def test_seccm_screen_holds_a_cv_and_a_spectrum_per_spot(screen):
    RE, bench, xrf, seccm = screen
    assert seccm.sizes["y"] == seccm.sizes["x"] == 10
    assert seccm.pstat_wf_current.dims == ("y", "x", "sample") and seccm.sizes["sample"] == 100
    assert seccm.xrf_spectrum.dims == ("y", "x", "channel") and seccm.sizes["channel"] == 2048
    # the Ni Kα ROI is the Ni Kα line of the spectrum, counted in the same event
    e = xrf.energy_axis()
    lo, hi = (getattr(xrf.rois.roi0, k).get() for k in ("lo_chan", "hi_chan"))
    assert np.allclose(seccm.xrf_spectrum[..., lo:hi + 1].sum("channel"), seccm.xrf_rois_roi0_count)
    assert 7.3 < e[lo] < 7.48 < e[hi] < 7.7
    assert float(seccm.xrf_dead_time.max()) > 0.01  # dead time is modelled


def test_ni_mn_ratio_follows_the_true_phase(screen):
    RE, bench, xrf, seccm = screen
    s = bench.model.sample
    xs, ys = seccm.x_measured.values.ravel(), seccm.y_measured.values.ravel()
    phase = s.phase[np.clip(np.rint((ys - s.y[0]) / s.pixel_size).astype(int), 0, s.y.size - 1),
                    np.clip(np.rint((xs - s.x[0]) / s.pixel_size).astype(int), 0, s.x.size - 1)]
    ni, mn = seccm.xrf_rois_roi0_count.values.ravel(), seccm.xrf_rois_roi1_count.values.ravel()
    on = (phase > 0) & (mn > 20)  # spots on a particle (the matrix has no Ni or Mn)
    ratio = ni[on] / mn[on]
    c = joint.correlation(ratio, (phase[on] == 1).astype(float))
    print(f"\nNi/Mn vs true phase (NMC811 = 1, NMC111 = 0): r = {c['r']:.3f} [{c['ci_low']:.3f}, "
          f"{c['ci_high']:.3f}], n = {c['n']}; Ni/Mn 811 {np.median(ratio[phase[on] == 1]):.1f}, "
          f"111 {np.median(ratio[phase[on] == 2]):.1f}")
    assert c["n"] >= 10 and c["r"] > 0.8 and c["ci_low"] > 0.5
    # the stoichiometry sets the ratio: Ni/Mn (mass) is 8·58.69/(1·54.94) for 811 and 58.69/54.94 for 111, times
    # the ratio of the lines' sensitivities, so r811/r111 must be 8 within counting noise and ROI overlap
    assert np.median(ratio[phase[on] == 1]) / np.median(ratio[phase[on] == 2]) == pytest.approx(8.0, rel=0.25)


def test_beamline_map_registered_by_fiducials(screen, tmp_path):
    RE, bench, xrf, seccm = screen
    beam = make_sim_bench("SECM", "composite_cathode", seed=0)  # the same sample, now at the beamline
    bxrf = SimXRFDetector(name="xrf", beam_fwhm=1.0)
    bxrf.attach(beam.model, mount=TRUTH.matrix)
    RE(bps.mv(beam.stage.z, 40.0))
    docs = _run(RE, bp.grid_scan([bxrf], beam.stage.y, -2, 98, 41, beam.stage.x, -8, 92, 41, snake_axes=True))
    bl = _ni_mn_co(_framed(read_map(docs), "beamline:stage"))
    # coarse: particles found in both maps and matched (no prior knowledge of the transform)
    fa = reg.find_features(bl, "NiMnCo", sigma=3.0, threshold=0.1, max_features=20)
    fb = reg.find_features(seccm, "NiMnCo", sigma=4.0, threshold=0.1, max_features=20)
    ia, ib, _ = reg.match_features(fa, fb, tolerance=6.0, allow_reflection=False, scale_range=(0.8, 1.25))
    coarse = reg.fit_fiducials(fa.xy[ia], fb.xy[ib], source="beamline:stage", target="seccm:stage", reflect=False)
    assert len(ia) >= 3
    # fiducials: the matched particles' centroids, refined by a fine local XRF scan of each on the SECCM stage
    # (lifted pipette) and in the beamline map.  9x9 points over 14 µm (1.75 µm pitch) place the centroids as well
    # as 15x15 did (measured: offset error 0.034 vs 0.032 µm, rotation error 0.005 vs 0.001°) at a third of the cost
    RE(bps.mv(bench.stage.z, 40.0))
    fine = []
    for cx, cy in coarse.apply(fa.xy[ia]):
        d = _run(RE, bp.grid_scan([xrf], bench.stage.y, cy - 7, cy + 7, 9, bench.stage.x, cx - 7, cx + 7, 9,
                                  snake_axes=True))
        local = _ni_mn_co(_framed(read_map(d), "seccm:stage"))
        fine.append(reg.refine_centroids(local, "NiMnCo", [[cx, cy]], radius=6.0)[0])
    src = reg.refine_centroids(bl, "NiMnCo", fa.xy[ia], radius=6.0)
    t = reg.fit_fiducials(src, np.asarray(fine), source="beamline:stage", target="seccm:stage", reflect=False)
    pitch = max(float(np.diff(seccm.x.values).mean()), float(np.diff(bl.x.values).mean()))
    centre = np.array([[42.0, 48.0]])
    offset_err = float(np.hypot(*(t.apply(centre) - TRUTH.apply(centre))[0]))
    rot_err = abs(t.rotation_deg - TRUTH.rotation_deg)
    print(f"\nrecovered {t}\ntruth     {TRUTH}\n{t.provenance['n_inliers']} fiducials: offset error "
          f"{offset_err:.3f} µm (coarser pixel {pitch:.2f} µm), rotation error {rot_err:.3f}°, scale error "
          f"{100 * abs(t.scale / 1.02 - 1):.2f} %")
    assert t.provenance["n_inliers"] >= 3
    assert offset_err < pitch / 4 and rot_err < 0.2
    # footprint-aware resampling of the beamline map onto the SECCM spots (droplet disc) with uncertainty
    bl_reg = with_transform(bl, t)
    spots = np.stack([seccm.x_measured.values.ravel(), seccm.y_measured.values.ravel()], 1)
    mean, err = resample.spot_average(bl_reg, "NiMnCo", t, spots, radius=bench.model.meniscus_radius())
    c = joint.correlation(mean, seccm.NiMnCo.values.ravel())
    print(f"beamline Ni+Mn+Co averaged over each droplet vs the in-run XRF: r = {c['r']:.3f}")
    assert c["r"] > 0.9 and np.all(err[np.isfinite(err)] > 0)


def test_region_on_an_xrf_map_becomes_a_hopping_scan(screen):
    RE, bench, xrf, seccm = screen
    bl = seccm  # the in-run XRF map is registered to the stage by construction (identity)
    level = 0.5 * float(bl.NiMnCo.max())
    poly = threshold_polygon(bl, "NiMnCo", level)
    region = region_points(poly, spacing=3.0, transform=AffineTransform.identity("seccm:stage"), margin=1.0,
                           source=bl)
    RE(bps.mv(bench.stage.z, 8.0))
    docs = _run(RE, hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", order="points",
                                 points=region.points.tolist(), hop_height=7.0, hopper=bench.hopper,
                                 detectors=[xrf], md=region.metadata))
    run = read_map(docs)
    from matplotlib.path import Path

    inside = Path(poly).contains_points(np.stack([run.x.values, run.y.values], 1))
    start = [d for n, d in docs if n == "start"][0]
    print(f"\n{len(region.points)} points inside the region (threshold {level:.0f} counts); all inside: "
          f"{inside.all()}")
    assert len(region.points) >= 3 and inside.all()
    assert start["region"]["transform"]["source"] == "seccm:stage" and start["region"]["n_points"] == run.sizes["spot"]
    # the points land where the region is rich in Ni, Mn and Co
    assert float(run.xrf_rois_roi0_count.min() + run.xrf_rois_roi1_count.min()) > 0


def test_xrf_spectra_are_external_assets(tmp_path, RE):
    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter

    bench = make_sim_bench("SECCM", "composite_cathode", seed=0, meniscus_height=3.0)
    xrf = SimXRFDetector(name="xrf")
    xrf.attach(bench.model)
    xrf.asset_writer = HDF5WaveformWriter(tmp_path)
    RE(bps.mv(bench.stage.z, 8.0))
    docs = _run(RE, hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(30, 60, 3),
                                 y_range=(30, 60, 3), hop_height=7.0, hopper=bench.hopper, detectors=[xrf]))
    resources = [d for n, d in docs if n == "stream_resource"]
    assert [r["data_key"] for r in resources] == ["xrf_spectrum"]
    assert sum(1 for n, _ in docs if n == "stream_datum") == 9
    events = [d for n, d in docs if n == "event"]
    assert all("xrf_spectrum" not in e["data"] and "xrf_rois_roi0_count" in e["data"] for e in events)
    m = read_map(docs)  # spectra read back from the HDF5 file
    assert m.xrf_spectrum.dims == ("y", "x", "channel")
    lo, hi = xrf.rois.roi0.lo_chan.get(), xrf.rois.roi0.hi_chan.get()
    # the file's spectra and the events' ROI counts are two records of the same measurement
    assert np.allclose(m.xrf_spectrum[..., lo:hi + 1].sum("channel"), m.xrf_rois_roi0_count)
    assert float(m.xrf_rois_roi0_count.sum()) > 0
