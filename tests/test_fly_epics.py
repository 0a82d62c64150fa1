"""The same fly plans over a caproto bench IOC through the ophyd-async EPICS fly devices give the in-process
bench's image and hop heights (noise off: identical).  Runs tests/fly_epics_child.py in its own process (the
Channel Access environment of a process is fixed by its first channel, and other test modules set theirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_fly_over_epics_matches_the_in_process_bench(tmp_path):
    child = Path(__file__).with_name("fly_epics_child.py")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(child), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    img = out["image"]
    assert img["exit"] == ["success", "success"]
    assert img["shape"] == [3, 21] and img["n_samples"] == 6 * 400  # 3 rows × 2 passes × 400 samples
    assert img["max_rel_diff"] < 1e-12
    assert "fly_current" in img["keys"] and img["file"].endswith(".h5") and Path(img["file"]).exists()
    hops = out["hops"]
    assert hops["exit"] == ["success", "success"] and hops["n"] == 21
    assert hops["max_abs_diff_um"] < 1e-9
