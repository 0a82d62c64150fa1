"""The same fly plans over a caproto bench IOC through the ophyd-async EPICS fly devices give the in-process
bench's image and hop heights (noise off: identical), and a failed HDF5 write fails an EPICS fly run,
keeping what was written.  Runs tests/fly_epics_child.py once, in its own process (the Channel Access environment
of a process is fixed by its first channel, and other test modules set theirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def child_result(tmp_path_factory):
    """The JSON summary of one run of tests/fly_epics_child.py."""
    child = Path(__file__).with_name("fly_epics_child.py")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(child), str(tmp_path_factory.mktemp("fly_epics"))],
                          capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_fly_over_epics_matches_the_in_process_bench(child_result):
    out = child_result
    img = out["image"]
    assert img["exit"] == ["success", "success"]
    assert img["shape"] == [3, 21] and img["n_samples"] == 6 * 400  # 3 rows × 2 passes × 400 samples
    assert img["max_rel_diff"] < 1e-12
    assert "fly_current" in img["keys"] and img["file"].endswith(".h5") and Path(img["file"]).exists()
    hops = out["hops"]
    assert hops["exit"] == ["success", "success"] and hops["n"] == 21
    assert hops["max_abs_diff_um"] < 1e-9


@pytest.mark.slow
def test_a_failed_file_write_over_epics_ends_the_run_and_keeps_what_was_written(child_result):
    """Over a paced bench IOC, the detector's write fails (disk full) on every write after its first batch of
    passes (however many that batch held): fly_image raises the detector's FlyWriteError naming the file and the
    cause, the run closes with exit_status "fail", the file is cut back to the passes written before (as many as
    the message says, every dataset alike, the same data as a good run's first passes), the IOC's controller is not
    left busy, and a following fly_image over the same IOC succeeds.

    The failed run aborts the IOC's controller (the stage's unstage puts ``Abort``) instead of letting it fly on:
    of a flight of 24 passes in steps of 7 (STEP_SAMPLES), the controller stopped at the end of the step it was in
    when the write failed (NDone a whole number of steps, fewer than NTotal), while the good run flies all 24."""
    r = child_result["write_failure"]
    msg = r["error"]
    assert r["error_type"] == "FlyWriteError" and r["error_is_fly_write_error"], msg
    assert r["file"] in msg and "No space left on device" in msg, msg
    assert r["stop"] == {"exit_status": "fail", "reason": msg}
    lengths = r["lengths"]
    assert set(lengths) == {"current", "pass", "position", "time"}
    kept = r["kept_in_message"]
    assert kept is not None and kept >= 1, msg
    assert set(lengths.values()) == {kept}, (lengths, msg)  # cut back: no half-written pass in any dataset
    assert f"writing passes {kept}.." in msg, msg  # the failed write was the one after the kept passes
    # one good write (every dataset once), then the first dataset of the next write failed and nothing after it
    assert r["appends"] == {"ok": len(lengths), "failed": 1}
    assert r["kept_equal_next_run"]  # the kept rows are whole passes: a good run's first passes
    assert r["busy_after"] == 0
    # the controller was aborted at the end of a step, not run to the end of the programme (steps end at passes 7,
    # 14, 21, 24)
    assert r["n_total"] == 24 and r["n_done_after"] in (7, 14, 21), (r["n_done_after"], r["n_total"])
    assert kept <= r["n_done_after"]
    nxt = r["next"]
    assert nxt["exit"] == "success" and nxt["busy_after"] == 0
    assert nxt["n_done_after"] == nxt["n_total"] == 24
    assert nxt["n_samples"] == 24 * 10_000 and set(nxt["lengths"].values()) == {24}


@pytest.mark.slow
def test_a_user_stop_mid_flight_over_epics_aborts_the_controller(child_result):
    """A RunEngine stop in the middle of a fly scan over EPICS (what Ctrl-C leads to) ends the run with the IOC's
    controller aborted at the end of the step it was in, not flown to the end of the programme.

    On the run's first ``stream_datum`` (passes are in the file) a thread calls ``RE.request_pause(defer=False)``
    and the paused RunEngine is aborted (``RE.abort``): the stop document says "abort".  A second flight is stopped
    with ``RE.stop()`` from such a thread: bluesky 1.15 closes that run with exit_status "success".  Each time the
    stage's unstage put ``Abort``: of 24 passes in steps of 7, the controller stopped at 7, 14 or 21 (a completed
    flight is 24), ``Busy`` is 0, the file holds whole passes only (every dataset the same length, at least one)
    and the run's documents register every one of them.  A following normal fly_image over the same IOC flies all
    24 passes."""
    r = child_result["user_stop"]
    for mode, exit_status in (("abort", "abort"), ("stop", "success")):
        s = r[mode]
        assert s["saw_stream_datum"] and s["error"] is None, (mode, s)
        assert s["re_state"] == "idle", (mode, s)
        assert s["stop"] is not None and s["stop"]["exit_status"] == exit_status, (mode, s)
        assert s["busy_after"] == 0, (mode, s)
        assert s["n_total"] == 24 and s["n_done_after"] in (7, 14, 21), (mode, s)  # aborted, not flown to 24
        lengths = s["lengths"]
        assert set(lengths) == {"current", "pass", "position", "time"}, (mode, s)
        assert len(set(lengths.values())) == 1 and lengths["current"] >= 1, (mode, s)  # whole passes only
        assert lengths["current"] <= s["n_done_after"], (mode, s)
        # the documents point at every pass in the file: the plan halts the flight and lets the detector write
        # what was done before its last collect (none in the file without an event)
        assert set(s["registered"].values()) == {lengths["current"]}, (mode, s)
    assert r["abort"]["log"] == ["pause requested"] and r["abort"]["state_interrupted"] == "paused", r["abort"]
    assert r["stop"]["log"] == ["stop requested"], r["stop"]
    nxt = r["next"]
    assert nxt["exit"] == "success" and nxt["busy_after"] == 0, nxt
    assert nxt["n_done_after"] == nxt["n_total"] == 24 and set(nxt["lengths"].values()) == {24}, nxt
