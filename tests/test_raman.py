"""Simulated Raman spectrometer: the physics against published forms and counting statistics, the band analysis
against spectra of known band areas, and on the bench an SECCM screen of HOPG with a CV and a spectrum per spot
(one run, spectra as HDF5 assets read back from Tiled) whose D/G and carbonate/G follow the bench's truth."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.analysis import raman as ana
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import raman as phys

NU = phys.shift_axis(1024, 150.0, 3.0)


def _local(la_nm=2000.0, sei_um=0.0, n=1):
    one = np.ones(n)
    return dict(graphite_G=one, graphite_D=one * phys.d_over_g(la_nm), graphite_2D=one * phys.two_d_over_g(la_nm),
                sei_um=one * sei_um, nmc=0 * one, si=0 * one, lithiation=0 * one)


# ------------------------------------------------------------------------------------------------ physics
def test_band_shapes_and_tuinstra_koenig():
    # a unit-area Lorentzian integrates to 1 (analytic tails beyond ±1e5 cm⁻¹ add 2·Γ/(2π·1e5))
    nu = np.linspace(-1e5, 1e5, 2_000_001)
    assert np.trapezoid(phys.lorentzian(nu, 0.0, 20.0), nu) == pytest.approx(1 - 20 / (np.pi * 1e5), rel=1e-6)
    # Cançado 2006 in its two published forms: 2.4e-10·λ⁴/L_a (λ in nm) and 560/(E_L⁴·L_a) (E_L in eV)
    for lam in (457.0, 532.0, 633.0):
        e_l = 1239.84 / lam
        assert phys.d_over_g(40.0, lam) == pytest.approx(560.0 / (e_l**4 * 40.0), rel=0.02)
    assert phys.d_over_g(2000.0) < 0.02 < 0.3 < phys.d_over_g(40.0)  # basal HOPG vs edge-plane bands


def test_footprint_average_and_shot_noise():
    x = np.arange(-10, 10.01, 0.25)
    field = np.where(x[None, :] >= 0, 1.0, 0.0) * np.ones((x.size, 1))  # a step along x at 0
    avg = phys.footprint_average(field, x[0], x[0], 0.25, [-0.125, -5.0, 5.0], [0.0, 0.0, 0.0], fwhm=1.0)
    assert avg[0] == pytest.approx(0.5, abs=1e-4)  # symmetric spot on the step (pixel boundary)
    assert avg[1] == pytest.approx(0.0, abs=1e-9) and avg[2] == pytest.approx(1.0, abs=1e-9)
    # detector: mean = expected, variance = expected + read noise² (Poisson shot noise), clip at the full well
    rng = np.random.default_rng(1)
    exp = np.full((4000, 3), [50.0, 500.0, 5000.0])
    counts, nsat = phys.detect(exp, rng, read_noise=4.0)
    assert nsat == 0
    assert np.allclose(counts.mean(0), exp[0], rtol=0.01)
    assert np.allclose(counts.var(0), exp[0] + 16.0, rtol=0.08)
    _, nsat = phys.detect(np.full(10, 1e6), rng)
    assert nsat == 10


# ------------------------------------------------------------------------------------------------ analysis
def test_band_analysis_recovers_known_areas_under_fluorescence():
    """Noise-free spectra built from bands of known area on a fluorescence hump as strong as the bands: the
    background-free window sums, over the analytic window fraction of each Lorentzian, give the areas back."""
    power, t = 5.0, 1.0
    for la, sei in ((40.0, 0.0), (40.0, 0.04), (2000.0, 0.04)):
        truth = phys.band_intensities(_local(la, sei))
        spec = phys.expected_spectrum(truth, NU, power_mw=power, exposure_s=t)
        got = ana.band_intensities(NU, spec)
        for band in ("G", "carbonate") + (("D",) if la < 100 else ()):
            area = got[band][0] / ana.window_fraction(ana.DEFAULT_WINDOWS[band], *phys.BANDS[band]) / (power * t)
            assert area == pytest.approx(float(truth[band][0]), rel=0.02, abs=0.01 * float(truth["G"][0]))
    # ratios of shot-noisy spectra: unbiased within their scatter; D/G of an edge 30x that of the basal plane
    rng = np.random.default_rng(3)
    edge = phys.detect(phys.expected_spectrum(phys.band_intensities(_local(40.0, 0.0, 20)), NU, power_mw=power,
                                              exposure_s=t), rng)[0]
    basal = phys.detect(phys.expected_spectrum(phys.band_intensities(_local(2000.0, 0.0, 20)), NU,
                                               power_mw=power, exposure_s=t), rng)[0]
    frac = ana.window_fraction(ana.DEFAULT_WINDOWS["D"], *phys.BANDS["D"]) / ana.window_fraction(
        ana.DEFAULT_WINDOWS["G"], *phys.BANDS["G"])
    r_edge, r_basal = ana.band_ratio(NU, edge, "D", "G") / frac, ana.band_ratio(NU, basal, "D", "G") / frac
    assert np.mean(r_edge) == pytest.approx(float(phys.d_over_g(40.0)), rel=0.03)
    assert r_edge.min() > 10 * r_basal.max()
    with pytest.raises(InvalidArgument, match="band 'X' has no window"):
        ana.band_ratio(NU, edge, "X", "G")
    with pytest.raises(InvalidArgument, match="last axis must match"):
        ana.band_intensities(NU, edge[:, :100])


# ------------------------------------------------------------------------------------------------ bench
def _band_spots(sample, xs=(30.0, 70.0)):
    """Spot centres on every edge band and midway between bands, along the columns ``xs`` (from the label)."""
    edge, basal = [], []
    for x in xs:
        col = sample.label[:, int(np.searchsorted(sample.x, x))]
        y = sample.y
        ok = (y > 3) & (y < 97)
        runs = np.flatnonzero(np.diff(np.r_[0, col * ok, 0]) != 0).reshape(-1, 2)
        centres = [float(y[a:b].mean()) for a, b in runs]
        edge += [(x, c) for c in centres]
        basal += [(x, 0.5 * (a + b)) for a, b in zip(centres[:-1], centres[1:])]
    return edge, basal


@pytest.fixture(scope="module")
def hopg_screen(tmp_path_factory):
    from bluesky import RunEngine

    from espt_bluesky.devices.raman import SimRamanSpectrometer
    from espt_bluesky.devices.sim_bench import make_sim_bench
    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
    from espt_bluesky.plans import hopping_scan
    from espt_bluesky.storage import LocalCatalog, make_writer

    catalog = LocalCatalog.in_process(tmp_path_factory.mktemp("tiled"))
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(make_writer(catalog))
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = make_sim_bench("SECCM", "hopg", seed=1, meniscus_height=3.0)
    raman = SimRamanSpectrometer(name="raman", spot_fwhm=1.0)
    raman.attach(bench.model)
    edge, basal = _band_spots(bench.model.sample)
    # before any CV: a spectrum on an edge band (no SEI yet)
    RE(bps.mv(bench.stage.z, 8.0, bench.stage.x, edge[0][0], bench.stage.y, edge[0][1]))
    raman.trigger()
    fresh = raman.spectrum.get().copy()
    raman.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
    pts = edge + basal
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", order="points", points=pts,
                          hop_height=5.0, hopper=bench.hopper, detectors=[raman],
                          measure=dict(technique="CV", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=2.0,
                                       n_cycles=2, n_samples=400),
                          context=bench.metadata()))
    uid = res.run_start_uids[0]
    yield dict(bench=bench, raman=raman, client=catalog.client(), uid=uid, docs=docs, n_edge=len(edge),
               n_basal=len(basal), fresh=fresh, pts=np.array(pts))
    catalog.stop()


@pytest.mark.slow
def test_screen_holds_a_cv_and_a_spectrum_per_spot_in_tiled(hopg_screen):
    from espt_bluesky.storage import read_map

    s = hopg_screen
    names = [n for n, _ in s["docs"]]
    assert names.count("stream_resource") == 1 and names.count("stream_datum") == len(s["pts"])
    events = [d for n, d in s["docs"] if n == "event" and "raman_rois_roi0_count" in d["data"]]
    assert len(events) == len(s["pts"]) and all("raman_spectrum" not in e["data"] for e in events)
    m = read_map(s["client"][s["uid"]])  # spectra from the HDF5 asset, served by Tiled
    assert m.raman_spectrum.dims == ("spot", "raman_pixel") and m.sizes["raman_pixel"] == 1024
    assert m.pstat_wf_current.dims == ("spot", "sample") and m.sizes["spot"] == len(s["pts"])
    # the file's spectra and the events' ROI sums are two records of the same measurement
    g = [i for i in range(8) if getattr(s["raman"].rois, f"roi{i}").label.get() == "G"][0]
    lo, hi = (getattr(getattr(s["raman"].rois, f"roi{g}"), k).get() for k in ("lo_chan", "hi_chan"))
    assert np.allclose(m.raman_spectrum[:, lo:hi + 1].sum("raman_pixel"), m[f"raman_rois_roi{g}_count"])
    # the shift axis comes back from the run's own configuration
    config = s["client"][s["uid"]]["primary"].metadata["configuration"]
    assert np.allclose(ana.shift_from_configuration(config["raman"]), s["raman"].shift_axis())


@pytest.mark.slow
def test_band_ratios_follow_the_bench_truth(hopg_screen):
    from espt_bluesky.analysis.screening import screen_spots
    from espt_bluesky.correlate import joint
    from espt_bluesky.storage import read_map

    s = hopg_screen
    m = read_map(s["client"][s["uid"]])
    nu = ana.shift_from_configuration(s["client"][s["uid"]]["primary"].metadata["configuration"]["raman"])
    m["D_G"] = joint.band_ratio_map(m, "D", "G", shift=nu)
    m["carbonate_G"] = joint.band_ratio_map(m, "carbonate", "G", shift=nu)
    sample = s["bench"].model.sample
    x, y = m.x.values, m.y.values
    is_edge = sample.at("label", x, y).astype(bool)
    dg, cg = m.D_G.values, m.carbonate_G.values
    # the truth: SEI thickness under each laser spot, from the bench's own state after the run
    sei = phys.footprint_average(sample.sei_thickness_max * sample.sei_coverage(), sample.x[0], sample.y[0],
                                 sample.pixel_size, x, y, fwhm=s["raman"].spot_fwhm)
    c = joint.correlation(cg, sei)
    print(f"\nD/G: edges {np.median(dg[is_edge]):.3f} (n={is_edge.sum()}), basal {np.median(dg[~is_edge]):.4f} "
          f"(n={(~is_edge).sum()}); carbonate/G vs true SEI thickness: r = {c['r']:.3f} [{c['ci_low']:.3f}, "
          f"{c['ci_high']:.3f}]; SEI {1e3 * sei[is_edge].mean():.1f} nm on edges, {1e3 * sei[~is_edge].mean():.1f} "
          "nm on basal")
    assert is_edge.sum() == s["n_edge"] and (~is_edge).sum() == s["n_basal"]
    assert dg[is_edge].min() > 5 * dg[~is_edge].max()
    assert c["r"] > 0.95 and c["ci_low"] > 0.8
    # the carbonate band was absent before the CV and grew with the SEI that CV formed at that spot
    fresh = ana.band_ratio(nu, s["fresh"], "carbonate", "G")
    assert abs(float(fresh)) < 0.01 < 0.05 < cg[0]
    # joint analysis: edges passivate more (smaller Q_p2/Q_p1) where D/G is high
    scr = screen_spots(m.pstat_wf_time.values, m.pstat_wf_potential.values, m.pstat_wf_current.values)
    cq = joint.correlation(dg, scr.passivation_ratio)
    print(f"D/G vs Q_p2/Q_p1: r = {cq['r']:.3f}")
    assert cq["r"] < -0.8
    stacked = joint.stack({"D_G": (dg, None, ""), "carbonate_G": (cg, None, ""),
                           "passivation_ratio": (scr.passivation_ratio, None, "")},
                          coords={"x": ("spot", x), "y": ("spot", y)})
    labels = joint.cluster(stacked, ["D_G", "carbonate_G", "passivation_ratio"], n_clusters=2)
    agree = max(np.mean(labels == is_edge), np.mean(labels == ~is_edge))
    assert agree == 1.0
    # the joint product goes back to Tiled, linked to its source run
    from espt_bluesky.correlate.store import write_correlation_product
    from espt_bluesky.storage import read_map as read_node

    stacked["cluster"] = ("spot", labels)
    write_correlation_product(s["client"], "raman_vs_cv", stacked, sources=[m],
                              metadata={"windows_cm-1": m.D_G.attrs["windows_cm-1"], "correlation": cq})
    node = s["client"]["correlations"]["raman_vs_cv"]
    assert node.metadata["sources"][0]["uid"] == s["uid"]
    assert np.allclose(read_node(node)["D_G"].values, dg)


def test_bad_configuration_is_named():
    from espt_bluesky.devices.raman import SimRamanSpectrometer

    with pytest.raises(InvalidArgument, match="spot_fwhm"):
        SimRamanSpectrometer(name="raman", spot_fwhm=0.0)
    r = SimRamanSpectrometer(name="raman")
    with pytest.raises(InvalidArgument, match="within the spectrometer's range"):
        r.set_band_rois({"G": (1545.0, 9000.0)})
    with pytest.raises(InvalidArgument, match="not attached"):
        st = r.trigger()
        st.wait(1)
    with pytest.raises(InvalidArgument, match="no 'raman_n_pixels'"):
        ana.shift_from_configuration({"data": {}})


@pytest.mark.slow
def test_combinatorial_sweep_and_image_hold_spectra(RE):
    """The other map plans take the spectrometer too: a sweep of the lower CV vertex on basal HOPG (the deeper
    vertex drives more SEI, so more carbonate) and an SECM image with a spectrum per pixel."""
    from espt_bluesky.devices.raman import SimRamanSpectrometer
    from espt_bluesky.devices.sim_bench import make_sim_bench
    from espt_bluesky.plans.combinatorial import combinatorial_sweep
    from espt_bluesky.plans.imaging import constant_height_image
    from espt_bluesky.storage import read_map

    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    bench = make_sim_bench("SECCM", "hopg", seed=2, meniscus_height=3.0)
    raman = SimRamanSpectrometer(name="raman")
    raman.cam.acquire_time.put(4.0)  # the basal plane's SEI is thin: count longer
    raman.attach(bench.model)
    _, basal = _band_spots(bench.model.sample, xs=(25.0, 50.0, 75.0))
    RE(bps.mv(bench.stage.z, 8.0))
    RE(combinatorial_sweep(bench.stage, bench.potentiostat, seed=3, points=basal[:8], repeats=4,
                                   parameters={"e_vertex1": [0.0, 0.6]}, detectors=[raman],
                                   fixed=dict(e_start=3.0, e_vertex2=3.0, scan_rate=2.0, n_cycles=1, n_samples=200),
                                   mode="device", hopper=bench.hopper, context=bench.metadata()))
    m = read_map(docs)
    assert m.raman_spectrum.dims == ("spot", "raman_pixel") and m.pstat_wf_current.dims == ("spot", "sample")
    cg = ana.band_ratio(raman.shift_axis(), m.raman_spectrum.values, "carbonate", "G")
    deep = m.param_e_vertex1.values == 0.0
    print(f"\ncarbonate/G after a CV to 0.0 V: {cg[deep].mean():.4f}, to 0.6 V: {cg[~deep].mean():.4f}")
    se = np.hypot(cg[deep].std(ddof=1), cg[~deep].std(ddof=1)) / 2.0
    assert deep.sum() == 4 and cg[deep].mean() - cg[~deep].mean() > 4 * se
    # SECM image of the same sample: one spectrum per pixel on the (y, x) grid
    docs.clear()
    secm = make_sim_bench("SECM", "hopg", seed=2)
    raman.attach(secm.model)
    RE(bps.mv(secm.stage.z, 30.0))
    RE(constant_height_image(secm.stage, secm.potentiostat, x_range=(40, 60, 3), y_range=(30, 40, 3), height=10.0,
                             plane=0.0, detectors=[raman], context=secm.metadata()))
    img = read_map(docs)
    assert img.raman_spectrum.dims == ("y", "x", "raman_pixel") and img.sizes["y"] == img.sizes["x"] == 3


def test_other_samples_nmc_particles_and_lithiated_silicon(RE):
    """Layered-oxide bands on the composite's particles, not in its carbon matrix (which shows disordered carbon,
    D/G ≈ 1); crystalline Si (520 cm⁻¹) on the Si pads turns into the broad a-LixSi band when lithiated."""
    from espt_bluesky.devices.raman import SimRamanSpectrometer
    from espt_bluesky.devices.sim_bench import make_sim_bench

    def spectrum_at(bench, raman, x, y):
        RE(bps.mv(bench.stage.x, x, bench.stage.y, y))
        raman.trigger()
        return raman.spectrum.get().copy()

    cc = make_sim_bench("SECM", "composite_cathode", seed=0)
    raman = SimRamanSpectrometer(name="raman")
    raman.attach(cc.model)
    nu = raman.shift_axis()
    RE(bps.mv(cc.stage.z, 40.0))
    xc, yc, _ = cc.model.sample.features[0]
    s = cc.model.sample
    iy, ix = np.argwhere(s.label == 0)[np.argmin(np.hypot(*(np.argwhere(s.label == 0) - [s.y.size // 2,
                                                                                        s.x.size // 2]).T))]
    part, matrix = spectrum_at(cc, raman, xc, yc), spectrum_at(cc, raman, s.x[ix], s.y[iy])
    w = {"NMC": (540.0, 650.0), "D": ana.DEFAULT_WINDOWS["D"], "G": ana.DEFAULT_WINDOWS["G"]}
    bp_, bm = ana.band_intensities(nu, part, w), ana.band_intensities(nu, matrix, w)
    assert bp_["NMC"] > 20 * max(bm["NMC"], 1.0) and bm["G"] > 5 * bp_["G"]
    frac = ana.window_fraction(w["D"], *phys.BANDS["D"]) / ana.window_fraction(w["G"], *phys.BANDS["G"])
    assert bm["D"] / bm["G"] / frac == pytest.approx(float(phys.d_over_g(20.0)), rel=0.1)

    si = make_sim_bench("SECM", "si_film", seed=0)
    raman.attach(si.model)
    RE(bps.mv(si.stage.z, 40.0))
    w = {"Si": (505.0, 535.0), "aSi": (400.0, 470.0)}
    before = ana.band_intensities(nu, spectrum_at(si, raman, 27.5, 27.5), w)
    si.model.sample.lithiate(1.0)
    after = ana.band_intensities(nu, spectrum_at(si, raman, 27.5, 27.5), w)
    assert after["Si"] < 0.1 * before["Si"] and after["aSi"] > 5 * abs(before["aSi"])  # (a-Si tail in the Si window)


def test_mark_not_measured_reads_nan_and_keeps_the_asset_rows(tmp_path):
    """A point skipped after a fault must not repeat the previous spot's spectrum, nor lose its asset row."""
    from espt_bluesky.devices.raman import SimRamanSpectrometer
    from espt_bluesky.devices.sim_bench import make_sim_bench
    from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter

    bench = make_sim_bench("SECM", "hopg", seed=0)
    r = SimRamanSpectrometer(name="raman")
    r.attach(bench.model)
    r.asset_writer = HDF5WaveformWriter(tmp_path)
    r.describe()
    r.trigger()
    ok = r.read()
    docs = list(r.collect_asset_docs())
    r.mark_not_measured()
    skipped = r.read()
    docs += list(r.collect_asset_docs())
    assert ok["raman_rois_roi1_count"]["value"] > 0 and np.isnan(skipped["raman_rois_roi1_count"]["value"])
    assert [n for n, _ in docs].count("stream_datum") == 2
    import h5py

    with h5py.File(r.asset_writer.path, "r") as f:
        rows = f["/raman_spectrum"][()]
    assert rows.shape == (2, 1024) and np.all(np.isfinite(rows[0])) and np.all(np.isnan(rows[1]))
    # the XRF detector says the same of a skipped point
    from espt_bluesky.devices.xrf import SimXRFDetector

    xrf = SimXRFDetector(name="xrf")
    xrf.attach(make_sim_bench("SECCM", "composite_cathode", seed=0).model)  # element ROIs Ni, Mn, Co
    xrf.mark_not_measured()
    reading = xrf.read()
    assert np.isnan(reading["xrf_rois_roi0_count"]["value"]) and np.isnan(reading["xrf_dead_time"]["value"])
    assert np.isnan(reading["xrf_spectrum"]["value"]).all() and reading["xrf_spectrum"]["value"].size == 2048


def test_band_analysis_on_real_polystyrene_from_two_instruments(shared_data):
    """Real spectra no one here made: polystyrene on a WITec (532 nm) and a Horiba (785 nm), read by the importer.
    The fluorescence-free spectrum is flat where polystyrene has no band, its strongest fingerprint band is the
    ring breathing mode (1001.4 cm⁻¹, ASTM E1840; the raw axes are uncalibrated by a few cm⁻¹), and the ratio of
    two neighbouring bands (1031/1001, where the instruments' responses hardly differ) agrees between the two."""
    from espt_bluesky.correlate import joint
    from espt_bluesky.correlate.importers import read_file

    windows = {"1001": (990.0, 1012.0), "1031": (1020.0, 1042.0)}
    ratios = []
    for name in ("PST_WiICV532_Z050OP02_075_800msx10.txt", "PST10_iR785_OP01_8000msx8.txt"):
        ds = read_file(shared_data / "raman" / name)
        ds = ds.sel(raman_shift=slice(150.0, 3300.0))
        nu, y = ds.raman_shift.values, ds.spectrum.values[0]
        corr, _ = ana.remove_background(nu, y)
        fp = (nu > 400) & (nu < 1800)
        peak = corr[fp].max()
        assert abs(nu[fp][np.argmax(corr[fp])] - 1001.4) < 6.0
        assert abs(np.median(corr[(nu > 1700) & (nu < 2750)])) < 0.01 * peak
        r = joint.band_ratio_map(ds, "1031", "1001", spectrum="spectrum", windows=windows)  # shift: the coordinate
        assert r.dims == ("spot",)
        ratios.append(float(r[0]))
    print(f"\npolystyrene I(1031)/I(1001): WITec 532 nm {ratios[0]:.3f}, Horiba 785 nm {ratios[1]:.3f}")
    assert ratios[0] == pytest.approx(ratios[1], rel=0.15) and 0.2 < ratios[0] < 0.5
