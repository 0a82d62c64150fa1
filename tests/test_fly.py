"""Fly scanning end to end on the simulated bench: fly_image / fly_hops through the RunEngine with the ophyd-async
fly stage and detector, read back with read_map (documents, and Tiled for the asset test).

What must hold (issue 15): a slow fly SECM image of ``patterned`` equals the step image within the noise; at
Pe ≫ 1 the blur and the forward/backward shift are those of the model's time constants; the lag correction
restores the edges within a stated tolerance; every sample lands in Tiled as external HDF5 and reads back in µm;
bad input fails before anything moves.  Tiled: tests/test_fly_profile.py (the profile's session and catalog);
EPICS: tests/test_fly_epics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bluesky import RunEngine

from espt_bluesky.analysis.fly import edge_width, fly_speed_check, lag_correct_lines
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.fly import make_fly_devices
from espt_bluesky.devices.probes import UME
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.physics import scan_dynamics as sd
from espt_bluesky.plans import constant_height_image
from espt_bluesky.plans.fly import fly_hops, fly_image
from espt_bluesky.storage import read_map
from espt_bluesky.storage.maps import RunData, fly_channels


@pytest.fixture(scope="module")
def engine():
    from conftest import DocumentCollector

    RE = RunEngine({}, call_returns_result=True)
    RE.collector = DocumentCollector()
    RE.subscribe(RE.collector)
    yield RE


def run_docs(RE, plan):
    """Run a plan and return (result, its documents)."""
    docs = []
    res = RE(plan, lambda n, d: docs.append((n, d)))
    return res, docs


# ------------------------------------------------------------------------------------------ slow fly == step image
@pytest.fixture(scope="module")
def slow_and_step(engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("fly_slow")
    grid = dict(x_range=(30.0, 70.0, 21), y_range=(45.0, 55.0, 3))
    fly_bench = make_sim_bench("SECM", "patterned", seed=11)
    fs, fd = make_fly_devices(fly_bench, d)
    res, docs = run_docs(engine, fly_image(fs, fd, fly_bench.stage, fly_bench.potentiostat, speed=2.0,
                                           sample_rate=20.0, height=5.0, plane=0.0, **grid))
    step_bench = make_sim_bench("SECM", "patterned", seed=12)
    _, sdocs = run_docs(engine, constant_height_image(step_bench.stage, step_bench.potentiostat, height=5.0,
                                                      plane=0.0, **grid))
    return read_map(docs), read_map(sdocs), fly_bench, res


def _pixel_jitter(model, ds, pixel):
    """The bench's own variation of the stationary signal within each pixel (A, rms over pixels): the SECM footprint
    is a finite point set, so the noise-free signal jitters by a few % as its points cross the discs' sharp edges.
    A step image reads one position per pixel, a fly image averages the pixel: they differ by this much even
    without noise."""
    off = np.linspace(-0.5, 0.5, 11) * pixel
    X, Y = np.meshgrid(ds.x.values, ds.y.values)
    x = (X.ravel()[:, None] + off[None, :]).ravel()
    y = np.repeat(Y.ravel(), off.size)
    i = sd.stationary_along_path(model, x, y, np.full(x.size, 5.0), e_tip=0.6)["current"].reshape(-1, off.size)
    return float(np.sqrt(np.mean(np.var(i, axis=1))))


def test_slow_fly_image_equals_step_image_within_noise(slow_and_step):
    """Equal within the noise: the step image's amplifier noise σ and the bench's sub-pixel jitter (above)."""
    fly, step, bench, res = slow_and_step
    assert res.exit_status == "success"
    i_step = step["pstat_tip_current"].values
    sigma = bench.model.options.noise * bench.model.i_tip_inf()  # the bench's additive tip-current noise (1 σ)
    jitter = _pixel_jitter(bench.model, step, 2.0)
    noise = math.hypot(sigma, jitter)
    np.testing.assert_allclose(fly.x.values, step.x.values)
    np.testing.assert_allclose(fly.y.values, step.y.values)
    contrast = np.ptp(i_step)
    assert contrast > 15 * noise  # the image has features (the Au discs), not only noise
    for var in ("fly_current_forward", "fly_current_backward"):
        diff = fly[var].values - i_step
        assert np.sqrt(np.mean(diff ** 2)) < 1.3 * noise, var
        assert abs(np.mean(diff)) < 0.3 * noise, var  # no bias
        assert np.max(np.abs(diff)) < 4.5 * noise, var


# ------------------------------------------------------------------------------------------ Pe >> 1
@pytest.fixture(scope="module")
def pe_runs(engine, tmp_path_factory):
    """One line across the three Au discs of row y = 50 with a 1 µm tip at L = 1: slowly, and at Pe = 10."""
    d = tmp_path_factory.mktemp("fly_pe")
    out = {}
    for label, v, rate in (("slow", 10.0, 200.0), ("fast", 7800.0, 1e5)):
        bench = make_sim_bench("SECM", "patterned", seed=3, probe=UME(1.0, 10.0))
        fs, fd = make_fly_devices(bench, d)
        res, docs = run_docs(engine, fly_image(fs, fd, bench.stage, bench.potentiostat, x_range=(-15.0, 118.0, 267),
                                               y_range=(50.0, 50.0, 1), speed=v, sample_rate=rate, height=1.0,
                                               plane=0.0, max_lag=math.inf))
        out[label] = dict(rd=fly_channels(RunData.from_documents(docs)), ds=read_map(docs), res=res, bench=bench,
                          v=v, dt=1.0 / rate)
    return out


def _centroid(x, i, base):
    w = i - base
    return float(np.sum(x * w) / np.sum(w))


def test_fast_line_shift_and_blur_follow_the_model(pe_runs):
    slow, fast = pe_runs["slow"], pe_runs["fast"]
    taus = fast["res"].plan_result["time_constants"]
    bench = fast["bench"]
    D = bench.model.environment["mediator"]["D"]
    assert taus == pytest.approx([1e-12 / (2 * D)] * 2)  # a²/2D and d²/2D with a = d = 1 µm
    assert float(sd.peclet(fast["v"], 1.0, D)) == pytest.approx(10.0, rel=1e-3)
    xs, i_s = slow["rd"].arrays["fly_x"], slow["rd"].arrays["fly_current"]
    xf, i_f = fast["rd"].arrays["fly_x"], fast["rd"].arrays["fly_current"]
    base = float(np.median(np.r_[i_s[0][xs[0] < 8], i_s[0][xs[0] > 100]]))
    # the response shifts the centroid of the signal by v·Στ forward, −v·Στ backward: 2·v·Στ = 20 µm between them
    shift = _centroid(xf[0], i_f[0], base) - _centroid(xf[1], i_f[1], base)
    assert shift == pytest.approx(2 * fast["v"] * sum(taus), rel=0.03)
    slow_shift = _centroid(xs[0], i_s[0], base) - _centroid(xs[1], i_s[1], base)
    assert abs(slow_shift) < 0.05
    # the blur: the fast line is the slow (stationary) line seen through the model's response, within the noise
    sigma = bench.model.options.noise * bench.model.i_tip_inf()
    for p in (0, 1):
        stationary = np.interp(xf[p], xs[0], i_s[0])
        predicted = sd.apply_lag(stationary, fast["dt"], taus)
        assert np.sqrt(np.mean((i_f[p] - predicted) ** 2)) < 1.3 * sigma
        assert np.sqrt(np.mean((i_f[p] - stationary) ** 2)) > 30 * sigma  # and it is far from the stationary one
    # the forward/backward comparison tells the user: too fast, with about the right response time
    ds = fast["ds"]
    chk = fly_speed_check(ds.fly_current_forward.values, ds.fly_current_backward.values, pixel=0.5, speed=fast["v"])
    assert chk["too_fast"] and "too fast" in chk["message"]
    assert chk["tau"] == pytest.approx(sum(taus), rel=0.15)
    ok = fly_speed_check(slow["ds"].fly_current_forward.values, slow["ds"].fly_current_backward.values, pixel=0.5,
                         speed=slow["v"])
    assert not ok["too_fast"]


def _edge_position(x, i, lo, hi):
    """x where the profile crosses halfway between its values at x = lo and x = hi (first crossing)."""
    sel = (x >= lo) & (x <= hi)
    xx, ii = x[sel], i[sel]
    order = np.argsort(xx)
    xx, ii = xx[order], ii[order]
    half = 0.5 * (ii[:20].mean() + ii[-20:].mean())
    k = int(np.flatnonzero(np.diff(np.sign(ii - half)) != 0)[0])
    return float(xx[k] + (half - ii[k]) * (xx[k + 1] - xx[k]) / (ii[k + 1] - ii[k]))


def test_lag_correction_restores_the_edges(pe_runs):
    """Tolerance: after correction the edges of the middle disc (x = 42 and 58 µm) are within 0.5 µm of the slow
    scan's and no wider than 2.5× (they were 10 µm off and ~8× wider), and the fwd/bwd shift is gone."""
    slow, fast = pe_runs["slow"], pe_runs["fast"]
    taus = fast["res"].plan_result["time_constants"]
    xs, i_s = slow["rd"].arrays["fly_x"][0], slow["rd"].arrays["fly_current"][0]
    xf, i_f = fast["rd"].arrays["fly_x"], fast["rd"].arrays["fly_current"]
    corr = lag_correct_lines(i_f, fast["dt"], taus)
    base = float(np.median(np.r_[i_s[xs < 8], i_s[xs > 100]]))
    before = _centroid(xf[0], i_f[0], base) - _centroid(xf[1], i_f[1], base)
    after = _centroid(xf[0], corr[0], base) - _centroid(xf[1], corr[1], base)
    assert abs(after) < 0.02 * abs(before)
    for lo, hi in ((32.0, 49.0), (51.0, 68.0)):  # rising and falling edge of the middle disc
        ref = _edge_position(xs, i_s, lo, hi)
        w_ref = edge_width(xs[(xs >= lo) & (xs <= hi)], i_s[(xs >= lo) & (xs <= hi)])
        for p in (0, 1):
            sel = (xf[p] >= lo) & (xf[p] <= hi)
            raw_shift = abs(_edge_position(xf[p], i_f[p], lo - 12, hi + 12) - ref) if p == 0 else None
            got = _edge_position(xf[p], corr[p], lo, hi)
            assert abs(got - ref) < 0.5, (lo, p, got, ref)
            assert edge_width(xf[p][sel], corr[p][sel]) < 2.5 * w_ref
            if raw_shift is not None:
                assert raw_shift > 5.0  # the uncorrected edge was far off


# ------------------------------------------------------------------------------------------ other techniques, hops
def _check_named_keys(docs):
    """Every data key the start document (``map``, ``hints``, ``valid_key``, ``fly.signal``) and the descriptor's
    object hints name is a data key of the stream it names; map components are named by the key's ``axes``."""
    start = docs[0][1]
    descs = {d["name"]: d for n, d in docs if n == "descriptor"}
    keys = descs["primary"]["data_keys"]
    m = start["map"]
    for ax in ("x", "y"):
        assert m[ax] in keys, (ax, m[ax], sorted(keys))
        assert m[f"{ax}_axis"] in keys[m[ax]]["axes"]
    named = [(f, stream) for fields, stream in start["hints"]["dimensions"] for f in fields]
    assert named
    for f, stream in named:
        assert f in descs[stream]["data_keys"], (f, stream)
    hinted = [f for obj in descs["primary"].get("hints", {}).values() for f in obj.get("fields", [])]
    assert hinted and all(f in keys for f in hinted), hinted
    for k in (start.get("valid_key"), start.get("fly", {}).get("signal")):
        assert k is None or k in keys, k
    return keys


def test_ec_afm_and_sicm_fly(engine, tmp_path):
    bench = make_sim_bench("EC-AFM", "patterned", seed=2)
    fs, fd = make_fly_devices(bench, tmp_path)
    res, docs = run_docs(engine, fly_image(fs, fd, bench.stage, bench.potentiostat, technique="EC-AFM",
                                           x_range=(35.0, 65.0, 31), y_range=(50.0, 50.0, 1), speed=50.0,
                                           sample_rate=2000.0))
    assert res.exit_status == "success"
    _check_named_keys(docs)
    ds = read_map(docs)
    truth = bench.model.surface_z(ds.x.values, np.full(ds.x.size, 50.0))
    # 50 µm/s with a 500 Hz loop lags 0.016 µm: the height image is the topography (100 nm disc) within ~noise
    for var in ("fly_height_forward", "fly_height_backward"):
        err = ds[var].values[0] - truth
        assert np.sqrt(np.mean(err[np.abs(np.gradient(truth)) < 1e-3] ** 2)) < 3e-3, var
    assert np.ptp(ds.fly_height_forward.values) == pytest.approx(0.1, abs=0.01)

    bench = make_sim_bench("SICM", "patterned", seed=2)
    fs, fd = make_fly_devices(bench, tmp_path)
    res, docs = run_docs(engine, fly_image(fs, fd, bench.stage, bench.potentiostat, technique="SICM",
                                           x_range=(35.0, 65.0, 31), y_range=(50.0, 50.0, 1), speed=20.0,
                                           sample_rate=500.0, height=0.2, plane=0.0))
    assert res.exit_status == "success"
    ds = read_map(docs)
    i = ds.fly_current_forward.values[0]
    over_disc = np.abs(ds.x.values - 50) < 6
    assert i[over_disc].mean() < i[~over_disc].mean()  # the 100 nm disc narrows the gap: less ion current


def test_fly_hops_line_matches_the_surface(engine, tmp_path):
    bench = make_sim_bench("SICM", "patterned", seed=4)
    fs, fd = make_fly_devices(bench, tmp_path)
    res, docs = run_docs(engine, fly_hops(fs, fd, bench.stage, bench.potentiostat, x_range=(30.0, 70.0, 41),
                                          y_range=(50.0, 50.0, 1), hop_height=1.0, drop=0.01))
    assert res.exit_status == "success"
    keys = _check_named_keys(docs)
    # grouped like a raster's: the lateral position and the two currents one key each
    assert sorted(keys) == ["fly_currents", "fly_position", "fly_surface_z", "fly_time", "fly_valid"]
    assert keys["fly_currents"]["fields"] == ["current_ref", "current"] and keys["fly_currents"]["units"] == "A"
    ds = read_map(docs)
    assert {"fly_surface_z", "fly_current", "fly_current_ref", "fly_time"} <= set(ds.data_vars)
    assert ds.attrs["x_key"] == "fly_x" and ds.x.attrs["units"] == "µm"
    z = ds["fly_surface_z"].values.ravel()
    x = ds.x.values
    assert z.size == 41 and np.all(np.isfinite(z))
    from espt_bluesky.physics.sicm import distance_for_current_drop

    p = bench.model.probe
    d_set = float(distance_for_current_drop(0.01, p.radius, p.outer_radius, p.half_angle))
    truth = bench.model.surface_z(x, np.full(x.size, 50.0)) + d_set
    dz = 10.0 / fs.controller.max_sample_rate  # approach speed / sampling: the controller's height resolution
    assert np.all(np.abs(z - truth) <= dz + 1e-12)


# ------------------------------------------------------------------------------------------ safety
def test_bad_input_fails_before_anything_moves(engine, tmp_path):
    bench = make_sim_bench("SECM", "patterned", seed=5)
    fs, fd = make_fly_devices(bench, tmp_path)
    n0 = len(engine.collector.docs)
    pos0 = bench.model.position.copy()
    base = dict(x_range=(30.0, 70.0, 21), y_range=(40.0, 60.0, 3), speed=2.0, sample_rate=20.0, height=5.0,
                plane=0.0)
    cases = [
        (dict(speed=500.0, sample_rate=1000.0), "lags by"),  # 500 µm/s lags 16 µm: more than half a 2 µm pixel
        (dict(speed=2e5), "speed"),
        (dict(sample_rate=0.5), "fewer than the 21 pixels"),
        (dict(x_range=(-30.0, 70.0, 21)), "x_range"),
        (dict(x_range=(70.0, 30.0, 21)), "start must be below stop"),
        (dict(height=-1.0), "height"),
        (dict(height=None), "constant height"),
        (dict(technique="EC-AFM", height=None, plane=None), "EC-AFM"),
        (dict(sample_rate=1e9), "sample_rate"),
    ]
    for change, match in cases:
        with pytest.raises(InvalidArgument, match=match):
            fly_image(fs, fd, bench.stage, bench.potentiostat, **{**base, **change})
    with pytest.raises(InvalidArgument, match="SICM"):
        fly_hops(fs, fd, bench.stage, bench.potentiostat, technique="SECM", x_range=(30, 70, 5), y_range=(50, 50, 1))
    assert len(engine.collector.docs) == n0
    np.testing.assert_array_equal(bench.model.position, pos0)


def test_crash_keeps_completed_passes_and_retracts(engine, tmp_path):
    """A tip flown too low over the 100 nm discs: the controller stops at contact, the passes flown before stay
    readable, the run fails with the crash and the tip is retracted."""
    bench = make_sim_bench("SECM", "patterned", seed=6, probe=UME(1.0, 2.0))
    fs, fd = make_fly_devices(bench, tmp_path)
    docs = []
    with pytest.raises(Exception, match="tip crash"):
        engine(fly_image(fs, fd, bench.stage, bench.potentiostat, x_range=(30.0, 70.0, 21), y_range=(35.0, 50.0, 2),
                         speed=20.0, sample_rate=100.0, height=0.05, plane=0.0, retract=20.0),
               lambda n, d: docs.append((n, d)))
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "fail" and "crash" in stop["reason"]
    rd = fly_channels(RunData.from_documents(docs))
    assert list(rd.arrays["fly_row"]) == [0, 0]  # row y = 35 (clear of the discs) flown both ways, kept
    assert bench.model.position[2] > 19.0  # retracted by 20 µm from 0.05 µm


def test_live_map_draws_fly_data_while_the_scan_runs(tmp_path):
    from espt_bluesky.callbacks.live_map import LiveFlyMap

    RE = RunEngine({})
    live = LiveFlyMap(directory=tmp_path / "png")
    RE.subscribe(live)
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    # time_scale 1: the 6 passes of 0.2 s each are released over ~1.2 s, so the plan's collect (every 0.5 s) sees
    # them arrive in more than one batch
    bench = make_sim_bench("SECM", "patterned", seed=8, time_scale=1.0)
    fs, fd = make_fly_devices(bench, tmp_path)
    RE(fly_image(fs, fd, bench.stage, bench.potentiostat, x_range=(30.0, 70.0, 21), y_range=(45.0, 55.0, 3),
                 speed=200.0, sample_rate=2000.0, height=5.0, plane=0.0, max_lag=math.inf))
    assert len(live.updates) >= 2 and live.updates[0] < 6 and live.updates[-1] == 6
    ds = read_map(docs)
    np.testing.assert_allclose(live.forward, ds.fly_current_forward.values)
    np.testing.assert_allclose(live.backward, ds.fly_current_backward.values)
    assert live.saved and live.saved[0].stat().st_size > 0


def test_tilt_corrected_fly_image(engine, tmp_path):
    """On a sample tilted by (0.5°, −0.3°), flying along the measured plane gives the flat sample's image; flying
    at a constant z does not (the gap changes by ±0.3 µm across the image)."""
    tilt = (0.5, -0.3)
    plane = dict(z0=0.0, slope_x=math.tan(math.radians(tilt[0])), slope_y=math.tan(math.radians(tilt[1])),
                 x0=50.0, y0=50.0)  # the bench tilts about its tilt_centre (50, 50)
    grid = dict(x_range=(20.0, 80.0, 31), y_range=(30.0, 70.0, 3), speed=10.0, sample_rate=100.0, height=3.0)
    images = {}
    for label, kw, pl in (("flat", {}, 0.0), ("corrected", dict(tilt=tilt), plane), ("uncorrected", dict(tilt=tilt), 0.0)):
        bench = make_sim_bench("SECM", "patterned", seed=9, **kw)  # same seed: the same noise draws
        fs, fd = make_fly_devices(bench, tmp_path)
        res, docs = run_docs(engine, fly_image(fs, fd, bench.stage, bench.potentiostat, plane=pl, **grid))
        assert res.exit_status == "success"
        images[label] = read_map(docs).fly_current_forward.values
        sigma = bench.model.options.noise * bench.model.i_tip_inf()
    good = np.sqrt(np.mean((images["corrected"] - images["flat"]) ** 2))
    bad = np.sqrt(np.mean((images["uncorrected"] - images["flat"]) ** 2))
    # corrected: within the amplifier noise σ (measured 0.5 σ: the tilt across the 8 µm footprint itself);
    # uncorrected: 6.5 σ off
    assert good < 1.0 * sigma
    assert bad > 5 * good


def test_controller_streams_whole_passes_equal_to_one_shot(tmp_path, monkeypatch):
    """The simulated controller hands out whole passes step by step (the detector writes them while the rest is
    computed); the streamed passes are those of the whole path computed at once (the lag filter's state and the
    noise stream carry over from step to step)."""
    from espt_bluesky.devices.fly import controller as fc
    from espt_bluesky.devices.fly.trajectory import FlyRaster

    raster = FlyRaster(30.0, 70.0, (45.0, 50.0, 55.0), 200.0, 500.0, acceleration=5e6, plane=(5.0, 0, 0, 0, 0))

    def run(step_samples):
        monkeypatch.setattr(fc, "STEP_SAMPLES", step_samples)
        # SICM: its stationary current is analytic per point (SECM's feedback tables interpolate per call, ~1e-6)
        bench = make_sim_bench("SICM", "patterned", seed=4)
        ctl = fc.SimFlyController(bench, path_resolution=1e-9)  # every sample evaluated: no interpolation nodes
        ctl.load(raster)
        res = ctl.start()
        done = [res.n_done]
        while not ctl.advance():
            done.append(res.n_done)
        return res, done

    whole, _ = run(10**9)
    streamed, done = run(100)  # one pass (100 samples) per step
    assert done[:4] == [0, 1, 2, 3] and streamed.n_done == whole.n_done == 6
    for k in whole.data:
        np.testing.assert_allclose(streamed.data[k], whole.data[k], rtol=1e-12, atol=0, err_msg=k)
    assert streamed.duration == whole.duration and streamed.finished
    # stopped from another thread (the stage's stop): at the end of the current step, the passes done kept, the tip
    # where the path was executed to
    monkeypatch.setattr(fc, "STEP_SAMPLES", 100)
    bench = make_sim_bench("SICM", "patterned", seed=4)
    ctl = fc.SimFlyController(bench, path_resolution=1e-9)
    ctl.load(raster)
    res = ctl.start()
    ctl.advance(), ctl.advance()
    ctl.abort()
    assert ctl.advance() and res.finished and res.n_done == 2 and res.error is None
    np.testing.assert_allclose(res.data["current"], whole.data["current"][:2], rtol=1e-12)
    # at the end of the backward pass of row 1 (x back at x_start, y = 45): where the executed path ended
    assert bench.model.position[1] == 45.0 and bench.model.position[0] == pytest.approx(30.0, abs=0.5)


def test_grouped_and_per_channel_layouts_read_the_same():
    """Runs recorded with one data key per channel (before the detector grouped positions and pass fields) and runs
    with the grouped ``position``/``pass`` keys give the same map; ``fly_channels`` splits the groups back."""
    rng = np.random.default_rng(0)
    n = 50
    x = np.vstack([np.linspace(0.0, 4.0, n), np.linspace(4.0, 0.0, n)])  # one forward, one backward pass
    y, z = np.full_like(x, 50.0), rng.normal(5.0, 0.1, x.shape)
    current, t = np.sin(x) + rng.normal(0, 0.01, x.shape), np.tile(np.arange(n) * 1e-3, (2, 1))
    start = dict(uid="u", mode="fly", fly=dict(detector="fly"), shape=[1, 5], extents=[[50.0, 50.0], [0.0, 4.0]])
    arr = dict(source="f", dtype="array", shape=[n], dims=["sample"])
    scalar = dict(source="f", dtype="integer", shape=[])
    old_keys = {"fly_current": dict(arr, units="A"), "fly_time": dict(arr, units="s"),
                **{f"fly_{a}": dict(arr, units="um") for a in "xyz"}, "fly_direction": scalar, "fly_row": scalar}
    old = RunData(start, old_keys, {"fly_current": current, "fly_x": x, "fly_y": y, "fly_z": z, "fly_time": t,
                                    "fly_direction": np.array([1, -1]), "fly_row": np.array([0, 0])}, np.array([1, 2]))
    new_keys = {"fly_current": old_keys["fly_current"], "fly_time": old_keys["fly_time"],
                "fly_position": dict(source="f", dtype="array", shape=[3, n], dims=["axis", "sample"], units="um",
                                     axes=["x", "y", "z"]),
                "fly_pass": dict(source="f", dtype="array", shape=[2], dims=["field"], fields=["row", "direction"])}
    new = RunData(start, new_keys, {"fly_current": current, "fly_time": t, "fly_position": np.stack([x, y, z], axis=1),
                                    "fly_pass": np.array([[0, 1], [0, -1]])}, np.array([1, 2]))
    a, b = read_map(old), read_map(new)
    assert sorted(a.data_vars) == sorted(b.data_vars) and "fly_z_forward" in a.data_vars
    for var in a.data_vars:
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
        assert a[var].attrs == b[var].attrs, var
    split = fly_channels(new)
    np.testing.assert_array_equal(split.arrays["fly_y"], y)
    assert list(split.arrays["fly_direction"]) == [1, -1] and split.data_keys["fly_z"]["units"] == "um"
    assert fly_channels(old) is old


def test_grouped_and_per_channel_hop_layouts_read_the_same():
    """fly_hops runs recorded with one key per channel (and ``map`` naming ``fly_x``/``fly_y``) and runs with the
    grouped ``position``/``currents`` keys (``map`` naming ``fly_position`` with ``x_axis``/``y_axis``) give the
    same map."""
    rng = np.random.default_rng(1)
    x, y = np.tile(np.linspace(0.0, 4.0, 5), 2), np.repeat([10.0, 12.0], 5)
    surf, iref, icur = rng.normal(1.0, 0.1, 10), rng.normal(2e-9, 1e-11, 10), rng.normal(1.9e-9, 1e-11, 10)
    t, valid = np.arange(10) * 0.01, np.r_[np.ones(9, int), 0]
    grid = dict(uid="u", mode="fly_hopping", valid_key="fly_valid", shape=[2, 5], extents=[[10.0, 12.0], [0.0, 4.0]],
                snaking=[False, False])
    scalar = dict(source="f", dtype="number", shape=[])
    common = {"fly_surface_z": (dict(scalar, units="um"), surf), "fly_time": (dict(scalar, units="s"), t),
              "fly_valid": (dict(scalar, dtype="integer"), valid)}
    old = {**common, "fly_x": (dict(scalar, units="um"), x), "fly_y": (dict(scalar, units="um"), y),
           "fly_current_ref": (dict(scalar, units="A"), iref), "fly_current": (dict(scalar, units="A"), icur)}
    new = {**common,
           "fly_position": (dict(source="f", dtype="array", shape=[2], dims=["axis"], units="um", axes=["x", "y"]),
                            np.stack([x, y], axis=1)),
           "fly_currents": (dict(source="f", dtype="array", shape=[2], dims=["field"], units="A",
                                 fields=["current_ref", "current"]), np.stack([iref, icur], axis=1))}
    seq = np.arange(1, 11)
    a = read_map(RunData(dict(grid, map=dict(x="fly_x", y="fly_y", order="raster")),
                         {k: v[0] for k, v in old.items()}, {k: v[1] for k, v in old.items()}, seq))
    b = read_map(RunData(dict(grid, map=dict(x="fly_position", x_axis="x", y="fly_position", y_axis="y",
                                             order="raster")),
                         {k: v[0] for k, v in new.items()}, {k: v[1] for k, v in new.items()}, seq))
    assert sorted(a.data_vars) == sorted(b.data_vars) and "fly_current_ref" in a.data_vars
    assert a.attrs["n_invalid"] == b.attrs["n_invalid"] == 1 and a.attrs["x_key"] == b.attrs["x_key"] == "fly_x"
    for var in [*a.data_vars, *a.coords]:
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
        assert a[var].attrs == b[var].attrs, var


def test_a_fast_scan_flushes_its_file_on_a_timer_and_writes_every_sample(engine, tmp_path, monkeypatch):
    """The detector writes each pass as the controller hands it out but flushes (and counts, so Tiled registers)
    at most every ``FLUSH_INTERVAL`` and once at the end -- a flush per pass rewrote every partly filled chunk --
    and what it writes channel by channel (``position``: x, y, z into one array) is the controller's samples."""
    import time

    import h5py

    from espt_bluesky.devices.fly import controller as fc
    from espt_bluesky.devices.fly import devices as fdev

    monkeypatch.setattr(fc, "STEP_SAMPLES", 100)  # one pass per step: 2 × 40 steps
    publish = fdev._publish
    flushes = []

    def spy(st):
        if st.n_appended > st.n_written and st.file is not None:
            flushes.append(time.monotonic())
        publish(st)

    monkeypatch.setattr(fdev, "_publish", spy)
    # the 80 passes (0.6 s each at 50 µm/s) released over ~1.6 s: a pass every 20 ms
    bench = make_sim_bench("EC-AFM", "patterned", seed=3, time_scale=0.03)
    fs, fd = make_fly_devices(bench, tmp_path)
    t0 = time.monotonic()
    res, docs = run_docs(engine, fly_image(fs, fd, bench.stage, bench.potentiostat, technique="EC-AFM",
                                           x_range=(35.0, 65.0, 31), y_range=(40.0, 60.0, 40), speed=50.0,
                                           sample_rate=2000.0))
    elapsed = time.monotonic() - t0
    assert res.exit_status == "success"
    ctl = fs.controller.result
    assert ctl.n_done == 80
    # the flushes are at least FLUSH_INTERVAL apart (the last one, at the end, may come sooner)
    gaps = np.diff(flushes[:-1])
    assert len(flushes) <= 2 + elapsed / fdev.FLUSH_INTERVAL and np.all(gaps >= fdev.FLUSH_INTERVAL - 1e-3), flushes
    assert len(flushes) < 80 / 4, f"{len(flushes)} flushes for 80 passes"
    with h5py.File(fd.file_path, "r") as f:
        assert {k: f[k].shape[0] for k in f} == {k: 80 for k in ("error", "height", "pass", "position", "time")}
        for c, axis in enumerate(("x", "y", "z")):
            np.testing.assert_array_equal(f["position"][:, c, :], ctl.buffers[axis], err_msg=axis)
        for k in ("height", "error", "time"):
            np.testing.assert_array_equal(f[k][()], ctl.buffers[k], err_msg=k)
        np.testing.assert_array_equal(f["pass"][()], np.stack([ctl.buffers["row"], ctl.buffers["direction"]], 1))
    # every pass reached the documents: the stream data cover rows 0..80
    sd = [d for n, d in docs if n == "stream_datum"]
    assert sd and max(d["indices"]["stop"] for d in sd) == 80


def test_epics_stage_stop_aborts_and_names_the_pvs_when_the_controller_does_not_stop():
    """The EPICS fly stage's ``stop`` (unstage after a failure or a RunEngine stop) puts ``Abort`` only while the
    controller is busy, returns once ``Busy`` is 0, and raises naming both PVs if the controller never stops.
    Soft signals stand in for the IOC's PVs (the IOC itself: tests/test_fly_epics.py)."""
    import asyncio
    from types import SimpleNamespace

    from ophyd_async.core import soft_signal_rw

    from espt_bluesky.devices.fly.epics import _EpicsTrajectoryLogic

    class AbortPV:  # records puts; a controller that stops ends its step (Busy 0) a moment after one
        source = "ca://F:Abort"

        def __init__(self, busy, clears):
            self.busy, self.clears, self.puts = busy, clears, []

        async def set(self, value, timeout=None):
            self.puts.append(value)
            if value and self.clears:
                asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(self.busy.set(0)))

    async def scenario(busy_at_start: int, clears: bool):
        busy = soft_signal_rw(int, busy_at_start, name="F:Busy")
        await busy.connect()
        abort = AbortPV(busy, clears)
        dev = SimpleNamespace(busy=busy, abort_pv=abort, controller=SimpleNamespace(loaded="program"))
        logic = _EpicsTrajectoryLogic(dev)
        logic.abort_timeout = 0.3
        error = None
        try:
            await logic.stop()
        except TimeoutError as exc:
            error = exc
        return abort.puts, dev.controller.loaded, error, await busy.get_value()

    # idle: nothing put, nothing waited for
    assert asyncio.run(scenario(0, clears=False)) == ([], None, None, 0)
    # running: Abort put once, returns when Busy is 0
    puts, loaded, error, busy = asyncio.run(scenario(1, clears=True))
    assert puts == [1] and loaded is None and error is None and busy == 0
    # running and never stopping: a TimeoutError naming the two PVs, the program still marked loaded
    puts, loaded, error, busy = asyncio.run(scenario(1, clears=False))
    assert puts == [1] and busy == 1 and loaded == "program"
    assert isinstance(error, TimeoutError) and "Busy" in str(error) and "Abort" in str(error), error


def test_a_hop_programme_stops_between_steps_with_the_hops_done_kept():
    """A hop programme is planned at once and handed out ``HOP_STEP`` hops per step; stopped (``abort``, from the
    stage's stop or the IOC's Abort) after its first step it keeps those hops, equal to the whole programme's
    first ones, and leaves the tip above the last of them with the clock at its end (not at the programme's)."""
    from espt_bluesky.devices.fly import controller as fc
    from espt_bluesky.devices.fly.trajectory import HopSequence

    xs = np.linspace(30.0, 70.0, 2 * fc.HOP_STEP + 10)
    hops = HopSequence(tuple(xs), (50.0,) * xs.size, hop_height=1.0, approach_speed=10.0, lateral_speed=100.0,
                       setpoint=0.02)

    def start(seed):
        bench = make_sim_bench("SICM", "patterned", seed=seed, noise=0.0)
        ctl = fc.SimFlyController(bench)
        ctl.load(hops)
        return bench, ctl, ctl.start()

    whole_bench, whole_ctl, whole = start(6)
    steps = [whole.n_done]
    while not whole_ctl.advance():
        steps.append(whole.n_done)
    assert steps == [0, fc.HOP_STEP, 2 * fc.HOP_STEP, xs.size] and whole.n_done == xs.size and whole.error is None

    bench, ctl, res = start(6)
    clock0 = bench.model.clock
    ctl.advance()
    ctl.abort()
    assert ctl.advance() and res.finished and res.n_done == fc.HOP_STEP and res.error is None
    k = fc.HOP_STEP - 1
    for ch in ("x", "y", "surface_z", "current", "time"):
        np.testing.assert_array_equal(res.data[ch], whole.data[ch][:fc.HOP_STEP], err_msg=ch)
    assert bench.model.position[0] == xs[k] and bench.model.position[1] == 50.0
    # above the surface found at the last hop by hop_height (within the controller's height resolution)
    dz = 10.0 / ctl.max_sample_rate
    assert abs(bench.model.position[2] - (res.data["surface_z"][k] + 1.0)) <= dz
    assert res.duration == whole.planned_end_times[k] < whole.duration
    assert bench.model.clock == pytest.approx(clock0 + whole.planned_end_times[k])
    assert whole_bench.model.position[0] == xs[-1]


def test_a_user_abort_mid_flight_registers_every_pass_in_the_file(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a fly scan (pause, then ``RE.abort``): the plan halts the stage and lets the detector
    write what was done before its last collect, so the run's documents point at every pass in the file -- passes
    come every 20 ms here and are counted every 0.25 s, so without that the file would hold passes no event
    points to -- and the stage stopped short of the programme's end."""
    import threading

    import h5py
    from bluesky.utils import RunEngineInterrupted

    from espt_bluesky.devices.fly import controller as fc

    monkeypatch.setattr(fc, "STEP_SAMPLES", 100)  # one pass per step
    bench = make_sim_bench("EC-AFM", "patterned", seed=3, time_scale=0.03)  # 80 passes over ~1.5 s
    fs, fd = make_fly_devices(bench, tmp_path)
    RE = RunEngine({})
    docs, asked = [], threading.Event()

    def pause_soon():
        RE.request_pause(defer=False)

    def collect(name, doc):
        docs.append((name, doc))
        if name == "stream_datum" and not asked.is_set():
            asked.set()
            threading.Timer(0.1, pause_soon).start()  # a few passes later, as a user would

    with pytest.raises(RunEngineInterrupted):
        RE(fly_image(fs, fd, bench.stage, bench.potentiostat, technique="EC-AFM", x_range=(35.0, 65.0, 31),
                     y_range=(40.0, 60.0, 40), speed=50.0, sample_rate=2000.0), collect)
    assert RE.state == "paused"
    RE.abort("test: the user stops the scan")
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "abort"
    with h5py.File(fd.file_path, "r") as f:
        lengths = {k: f[k].shape[0] for k in f}
    # halted: the passes flown by then (paced by time_scale), not the programme's 80
    assert len(set(lengths.values())) == 1 and 1 <= lengths["height"] < 80, lengths
    registered = {}
    for n, d in docs:
        if n == "stream_datum":
            registered[d["stream_resource"]] = max(registered.get(d["stream_resource"], 0), d["indices"]["stop"])
    assert set(registered.values()) == {lengths["height"]}, (registered, lengths)
