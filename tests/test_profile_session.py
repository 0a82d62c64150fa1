"""The user's path: an IPython session started from ``profile_collection/`` finds the surface, previews and runs a
hopping map, shows the motors, then runs an SECCM hopping screen with a CV per spot (device and plan mode);
afterwards every run is read back from Tiled and every CV is the CV the bench drew.

The session is driven as a person would drive it: lines typed at IPython's prompt (piped to ``--simple-prompt``),
ending with the end of input -- the session must then exit by itself.  ``timeout=`` only bounds a hang.  One
session serves both tests (an IPython start with the profile is one of the suite's dearest steps).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from test_session_exit import HANG, profile_copy, session_env

TYPED = """\
z = RE(approach(stage, pstat, technique="SECCM", context=bench.metadata())).plan_result
print("SURFACE", z)
summarize_plan(hopping_scan(stage, pstat, technique="SECCM", x_range=(40, 60, 3), y_range=(40, 60, 3), hopper=hopper))
r = RE(hopping_scan(stage, pstat, technique="SECCM", x_range=(40, 60, 3), y_range=(40, 60, 3), hopper=hopper, context=bench.metadata()))
print("TOPO", len(r.plan_result), RE.md["scan_id"], r.run_start_uids[0])
wh_pos()
%wa motors
import numpy as np
uids = []
RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)
drawn = []
pstat.wf.current.subscribe(lambda value, **kw: drawn.append(np.array(value)), run=False)
RE(bps.mv(stage.z, stage.z.position + 1.0))
cv = dict(technique="CV", e_start=0.0, e_vertex1=0.5, e_vertex2=-0.1, scan_rate=1.0, n_samples=100)
RE(hopping_scan(stage, pstat, technique="SECCM", x_range=(40, 60, 3), y_range=(40, 60, 2), measure=cv, mode="device", hopper=bench.hopper))
n_device = len(drawn)
RE(hopping_scan(stage, pstat, technique="SECCM", x_range=(40, 60, 3), y_range=(40, 60, 2), measure=cv, mode="plan"))
np.save("drawn.npy", np.array(drawn))
print("RUNS", uids[-2], uids[-1], n_device, len(drawn))
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The session's process, its working directory and a Tiled server on its data directory afterwards."""
    from espt_bluesky.storage import LocalCatalog

    tmp_path = tmp_path_factory.mktemp("session")
    data = tmp_path / "data"
    profile = profile_copy(tmp_path)
    cmd = [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner", "--colors=NoColor",
           "--simple-prompt"]
    proc = subprocess.run(cmd, input=TYPED, env=session_env(data, ESPT_BENCH="SECCM:patterned:0"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    cat = LocalCatalog.in_process(data)  # the session's server ended with it: serve its data directory again
    try:
        yield proc, tmp_path, cat.client()
    finally:
        cat.stop()


@pytest.mark.slow
def test_ipython_profile_runs_an_approach_and_a_map_and_exits(session):
    """The profile as IPython starts it: banner, approach, hopping map, preview, plan results; then it exits."""
    proc, _, runs = session
    out = proc.stdout
    assert "instrument: simulated SECCM bench, sample 'patterned'" in out and "catalog:    http://127.0.0.1:" in out
    assert "SURFACE" in out and "Open Run" in out and "hopper -> (40.0, 40.0)" in out
    (line,) = [ln for ln in out.splitlines() if "TOPO" in ln]
    n_topo, scan_id, uid_topo = line.split("TOPO", 1)[1].split()
    assert (n_topo, scan_id) == ("9", "2")  # the approach was scan 1
    assert "stage_z" in out and "Positioner" in out  # wh_pos and %wa
    starts = {uid: runs[uid].metadata["start"] for uid in runs}
    assert {s["plan_name"] for s in starts.values()} == {"approach", "hopping_scan"}
    (uid_approach,) = [uid for uid, s in starts.items() if s["plan_name"] == "approach"]
    approach_run, hop = runs[uid_approach], runs[uid_topo]
    assert starts[uid_approach]["scan_id"] == 1 and starts[uid_topo]["plan_name"] == "hopping_scan"
    assert hop.metadata["stop"]["exit_status"] == "success"
    assert hop["primary"].read()["hopper_surface_z"].size == 9
    assert {"approach", "surface", "baseline"} <= set(approach_run)


@pytest.mark.slow
def test_profile_hopping_screen_cvs_reach_tiled(session):
    from espt_bluesky.storage import read_map

    proc, tmp_path, client = session
    (line,) = [ln for ln in proc.stdout.splitlines() if "RUNS" in ln]
    uid_device, uid_plan, n_device, n_all = line.split("RUNS", 1)[1].split()
    drawn = np.load(tmp_path / "drawn.npy")
    assert (int(n_device), int(n_all)) == (6, 12) and drawn.shape == (12, 100)
    assert np.all(np.abs(drawn).max(axis=1) > 1e-13)  # every spot's droplet was in contact

    for uid, mine in ((uid_device, drawn[:6]), (uid_plan, drawn[6:])):
        run = client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        ds = read_map(run)
        seq = ds.seq_num.values.ravel()
        cvs = ds["pstat_wf_current"].values.reshape(seq.size, 100)[np.argsort(seq)]
        np.testing.assert_array_equal(cvs, mine)
        assert ds["pstat_wf_current"].attrs["units"] == "A" and ds.sizes["sample"] == 100
        (source,) = run["primary"]["pstat_wf_current"].data_sources()
        assert source.mimetype == "application/x-hdf5"
