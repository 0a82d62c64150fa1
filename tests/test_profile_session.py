"""The user's path: an IPython session started from ``profile_collection/`` runs an SECCM hopping screen with a CV
per spot (device and plan mode); afterwards every CV is read back from Tiled and is the CV the bench drew.

The session is driven as a person would drive it: lines typed at IPython's prompt (piped to ``--simple-prompt``),
ending with the end of input -- the session must then exit by itself.  ``timeout=`` only bounds a hang.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from test_session_exit import HANG, profile_copy, session_env

TYPED = """\
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


@pytest.mark.slow
def test_profile_hopping_screen_cvs_reach_tiled(tmp_path):
    from espt_bluesky.storage import LocalCatalog, read_map

    data = tmp_path / "data"
    profile = profile_copy(tmp_path)
    cmd = [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner", "--colors=NoColor",
           "--simple-prompt"]
    proc = subprocess.run(cmd, input=TYPED, env=session_env(data), cwd=tmp_path, capture_output=True, text=True,
                          timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if "RUNS" in ln]
    uid_device, uid_plan, n_device, n_all = line.split("RUNS", 1)[1].split()
    drawn = np.load(tmp_path / "drawn.npy")
    assert (int(n_device), int(n_all)) == (6, 12) and drawn.shape == (12, 100)
    assert np.all(np.abs(drawn).max(axis=1) > 1e-13)  # every spot's droplet was in contact

    cat = LocalCatalog.in_process(data)  # the session's server ended with it: serve its data directory again
    try:
        client = cat.client()
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
    finally:
        cat.stop()
