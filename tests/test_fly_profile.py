"""The user's path for fly scanning: the IPython profile on a SECM bench has ``fly_stage``/``fly_det``; a fly image
typed at the prompt lands in the session's catalog as HDF5 assets and reads back as forward/backward images."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h5py
import numpy as np
import pytest

from test_session_exit import HANG, profile_copy, session_env


@pytest.mark.slow
def test_ipython_profile_flies_an_image_into_the_catalog(tmp_path):
    profile = profile_copy(tmp_path)
    code = textwrap.dedent("""
        r = RE(fly_image(fly_stage, fly_det, stage, pstat, x_range=(30, 70, 21), y_range=(45, 55, 3), speed=20.0,
                         sample_rate=200.0, height=5.0, plane=0.0))
        print("FLY", r.plan_result["lag"] if hasattr(r, "plan_result") else r)
    """)
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner",
                           "--colors=NoColor", "-c", code], env=session_env(data, ESPT_BENCH="SECM:patterned:0"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FLY" in proc.stdout
    from espt_bluesky.storage import read_map
    from espt_bluesky.storage.server import LocalCatalog

    with LocalCatalog.in_process(data) as cat:
        runs = cat.client()
        fly = [runs[u] for u in runs if runs[u].metadata["start"]["plan_name"] == "fly_image"]
        assert len(fly) == 1 and fly[0].metadata["stop"]["exit_status"] == "success"
        prim = fly[0]["primary"]
        n_pass, n = 6, 400  # 3 rows × 2 directions; 40 µm at 20 µm/s sampled at 200 Hz
        shapes = {"fly_current": (n_pass, n), "fly_position": (n_pass, 3, n), "fly_time": (n_pass, n),
                  "fly_pass": (n_pass, 2)}  # the detector's grouped layout: few data keys, few Tiled nodes
        assert set(prim) == set(shapes), sorted(prim)
        for key, shape in shapes.items():
            node = prim[key]
            assert node.shape == shape, key
            src = node.data_sources()[0]
            assert src.mimetype == "application/x-hdf5", key  # an external asset, registered, not copied
        # what Tiled serves is what the detector wrote into its file (under the catalog's readable asset dir)
        uri = prim["fly_current"].data_sources()[0].assets[0].data_uri
        path = Path(unquote(urlsplit(uri).path))
        assert str(path).startswith(str(data / "assets"))
        with h5py.File(path, "r", swmr=True) as f:  # the in-process server holds it open in SWMR mode
            np.testing.assert_array_equal(prim["fly_current"].read(), f["/current"][()])
            np.testing.assert_array_equal(prim["fly_position"].read(), f["/position"][()])
        assert prim.metadata["data_keys"]["fly_position"]["axes"] == ["x", "y", "z"]
        ds = read_map(fly[0])  # positions in µm from the recorded encoder
        assert ds.x.attrs["units"] == "µm" and ds.attrs["map_order"] == "fly"
        assert ds.fly_current_forward.shape == (3, 21)
        assert int(ds.n_forward.sum() + ds.n_backward.sum()) == n_pass * n  # every sample is in the image
