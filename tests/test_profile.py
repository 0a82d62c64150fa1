"""The session a Bluesky user lives in: live views that never abort a run, progress bars, a persistent RE.md, a
baseline stream and suspenders (the IPython profile as IPython starts it: test_profile_session.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import bluesky.plan_stubs as bps

from espt_bluesky.plans import approach, constant_height_image, hopping_scan, sgtc
from espt_bluesky.profile import start_session
from espt_bluesky.session import build_session

NO_STORAGE = {"storage": {"mode": "none"}, "session": {"md_dir": ""}}


def _cfg(technique: str, **extra) -> dict:
    return {"bench": {"technique": technique}, **NO_STORAGE, **extra}


def test_live_views_leave_approach_sgtc_and_maps_succeeding(capsys):
    s = start_session(_cfg("SECM"), plots=False)
    RE, stage, pstat, ctx = s.RE, s.stage, s.pstat, s.bench.metadata()
    RE(bps.mv(stage.z, 60.0))
    r1 = RE(approach(stage, pstat, technique="SECM", feedback="positive", context=ctx))
    assert s.live_map.skipped is not None  # an approach has no map: not drawn, not aborted
    r2 = RE(constant_height_image(stage, pstat, x_range=(30, 70, 5), y_range=(30, 70, 5), height=10.0,
                                  plane=r1.plan_result, context=ctx))
    assert s.live_map.skipped is None and np.isfinite(s.live_map.image).all() and s.live_map.image.shape == (5, 5)
    assert (s.map_progress.total, s.map_progress.done) == (25, 25)
    r3 = RE(sgtc(stage, pstat, tip_potential=0.1, steps=[0.1, 0.2], context=ctx))
    assert [r.exit_status for r in (r1, r2, r3)] == ["success"] * 3
    s2 = start_session(_cfg("SECCM"), plots=False)
    r4 = s2.RE(hopping_scan(s2.stage, s2.pstat, technique="SECCM", x_range=(40, 60, 3), y_range=(40, 60, 3),
                            hopper=s2.hopper, context=s2.bench.metadata()))
    assert r4.exit_status == "success" and (s2.map_progress.total, s2.map_progress.done) == (9, 9)
    out = capsys.readouterr()
    assert "simulated SECCM bench" in out.out and "hopping_scan" in out.err  # banner; the map's progress bar


def test_scan_id_survives_a_restart_and_baseline_is_recorded(tmp_path):
    cfg = {"bench": {"technique": "SECM"}, "storage": {"mode": "none"}, "session": {"md_dir": str(tmp_path)}}
    s = build_session(cfg)
    docs = []
    s.RE.subscribe(lambda name, doc: docs.append((name, doc)))
    s.RE(bps.mv(s.stage.z, 60.0))  # no run
    r = s.RE(approach(s.stage, s.pstat, technique="SECM", feedback="positive"))
    first = [d for n, d in docs if n == "start"][0]["scan_id"]
    s.close()
    s2 = build_session(cfg)
    assert s2.RE.md["scan_id"] == first
    docs2 = []
    s2.RE.subscribe(lambda name, doc: docs2.append((name, doc)))
    import bluesky.plans as bp

    s2.RE(bp.count([s2.pstat]))
    assert [d for n, d in docs2 if n == "start"][0]["scan_id"] == first + 1
    base = [d for n, d in docs if n == "descriptor" and d["name"] == "baseline"][0]
    keys = set(base["data_keys"])
    assert {"stage_x", "stage_y", "stage_z", "pstat_tip_potential", "pstat_substrate_potential",
            "pstat_tip_current_range", "pstat_cell_on", "probe_radius"} <= keys
    assert sum(1 for n, d in docs if n == "event" and d["descriptor"] == base["uid"]) == 2  # start and end
    assert r.exit_status == "success"


@pytest.mark.parametrize("fault", ["overload", "offline"])
def test_suspenders_pause_and_resume(fault):
    s = build_session(_cfg("SECM"))
    RE, pstat = s.RE, s.pstat
    docs, said = [], []

    def fix():
        time.sleep(0.5)
        if fault == "overload":
            pstat.tip.current_range.put(1e-6)  # the operator picks a range: clears the latched flag
        else:
            pstat.online.put(1)

    def inject(name, doc):
        docs.append((name, doc))
        if name == "event" and doc["seq_num"] == 3 and not said:
            said.append(doc["descriptor"])
            if fault == "overload":
                pstat.overload.put(1)
            else:
                pstat.online.put(0)
            threading.Thread(target=fix, daemon=True).start()

    for sus in s.suspenders:
        sus._sleep = 0.1
    RE.subscribe(inject)
    cell_states = []
    pstat.cell_on.subscribe(lambda value, **kw: cell_states.append(value), run=False)
    r = RE(constant_height_image(s.stage, pstat, x_range=(40, 60, 3), y_range=(40, 60, 3), height=5.0, plane=0.0))
    assert r.exit_status == "success"
    events = [d for n, d in docs if n == "event" and d["descriptor"] == said[0]]
    assert [e["seq_num"] for e in events] == list(range(1, 10))  # paused, resumed, nothing lost or repeated
    if fault == "overload":
        # opened while paused, reconnected to resume (then opened by the plan's cleanup)
        assert any(a == 0 and b == 1 for a, b in zip(cell_states, cell_states[1:])), cell_states
    assert pstat.overload.get() == 0 and pstat.online.get() == 1
