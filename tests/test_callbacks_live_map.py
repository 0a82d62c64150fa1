"""LiveFeedbackMap: pixels placed by position (not by order), normalisation, PNGs headless, clear bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plans as bp
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from espt_bluesky.callbacks.live_map import LiveFeedbackMap
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument


def test_grid_scan_fills_image_by_position(RE, tmp_path):
    bench = make_sim_bench("SECM", "patterned", seed=3)
    RE(bps.mv(bench.stage.z, 5.1))
    live = LiveFeedbackMap(directory=tmp_path, redraw_every=20)
    RE.subscribe(live)
    md = {"technique": "SECM", **bench.metadata()}
    # snake scan: event order differs from raster order; the callback must place by x/y
    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 10, 90, 9, bench.stage.x, 10, 90, 11, snake_axes=True,
                    md=md))
    ev = RE.collector.events()
    assert live.image.shape == (9, 11) and np.isfinite(live.image).all()
    i_inf = bench.model.i_tip_inf()  # from the start document's probe + mediator metadata
    for e in ev[:30]:
        x, y = e["data"]["stage_x"], e["data"]["stage_y"]
        iy, ix = int(np.argmin(abs(live.y - y))), int(np.argmin(abs(live.x - x)))
        assert live.image[iy, ix] == pytest.approx(e["data"]["pstat_tip_current"] / i_inf)
    # disc centres (Au) show positive feedback in the live image, matching the sample's truth
    lab = bench.model.sample.at("label", *np.meshgrid(live.x, live.y))
    assert np.nanmean(live.image[lab == 1]) > 1.0 > np.nanmean(live.image[lab == 0])
    assert live.saved and live.saved[-1].stat().st_size > 5_000
    assert live.i_inf == pytest.approx(i_inf)


def test_points_without_grid_and_explicit_i_inf(RE, tmp_path):
    bench = make_sim_bench("SECM", "patterned", seed=1)
    RE(bps.mv(bench.stage.z, 5.1))
    pts = [(50.0, 50.0), (20.0, 80.0), (35.0, 35.0)]
    live = LiveFeedbackMap(directory=tmp_path, i_inf=2e-9)
    RE.subscribe(live)

    @bpp.run_decorator(md={"technique": "SECM", "map": {"x": "stage_x", "y": "stage_y", "order": "points"},
                           "probe": bench.metadata()["probe"], "height": 5.0})
    def hop():
        for x, y in pts:
            yield from bps.mv(bench.stage.x, x, bench.stage.y, y)
            yield from bps.trigger_and_read([bench.potentiostat, bench.stage.x, bench.stage.y])

    RE(hop())
    assert live.image.size == 0 and len(live._pts) == 3
    assert live._pts[0][2] == pytest.approx(RE.collector.events()[0]["data"]["pstat_tip_current"] / 2e-9)
    assert live.saved


def test_runs_it_cannot_draw_are_skipped_not_aborted(RE):
    """A live view never aborts a run: wrong technique, no positions, no i_T,inf -> the run completes."""
    bench = make_sim_bench("SECM", "patterned")
    live = LiveFeedbackMap()
    tok = RE.subscribe(live)
    uid, = RE(bp.count([bench.potentiostat], md={"technique": "SICM"})).run_start_uids
    assert "technique='SICM'" in live.skipped
    RE.unsubscribe(tok)
    live2 = LiveFeedbackMap(technique=None)
    RE.subscribe(live2)
    RE(bp.count([bench.potentiostat]))
    assert "no map position keys" in live2.skipped
    stops = RE.collector.of("stop")
    assert [d["exit_status"] for d in stops] == ["success", "success"]
    # a later map run is drawn again
    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 40, 60, 3, bench.stage.x, 40, 60, 3,
                    md={"i_inf": 1e-9}))
    assert live2.skipped is None and np.isfinite(live2.image).all()


def test_bad_constructor_arguments_raise():
    with pytest.raises(InvalidArgument, match="i_inf"):
        LiveFeedbackMap(i_inf=float("nan"))
    with pytest.raises(InvalidArgument, match="redraw_every"):
        LiveFeedbackMap(redraw_every=0)


def test_missing_metadata_and_field_skip_the_run():
    live = LiveFeedbackMap(technique=None)
    start = {"uid": "abcdef0123", "time": 0, "map": {"x": "sx", "y": "sy", "order": "points"}}
    live("start", start)
    assert "no i_T,inf" in live.skipped
    live = LiveFeedbackMap(technique=None, i_inf=1e-9, field="tip")
    live("start", start)
    assert live.skipped is None
    live("descriptor", {"uid": "d1", "run_start": "abcdef0123", "name": "primary", "time": 0,
                        "data_keys": {"sx": {}, "sy": {}}})
    assert "lacks ['tip']" in live.skipped
    live("event", {"uid": "e1", "descriptor": "d1", "seq_num": 1, "time": 0, "data": {"sx": 1, "sy": 2},
                   "timestamps": {}})
    assert live.n == 0
