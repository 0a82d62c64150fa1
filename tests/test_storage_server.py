"""Nothing is lost when the Tiled server dies mid-run: backup, restart, replay (twice), via `espt replay`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from espt_bluesky.cli import main as espt_main
from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
from espt_bluesky.storage import LocalCatalog, make_writer, read_map, replay

from test_storage_helpers import hopping_plan, random_points, seccm_bench


@pytest.fixture
def fast_client_retries(monkeypatch):
    """The Tiled client retries a dead server for up to 45 s by default; two attempts are enough here."""
    import tiled.client.utils as tcu

    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 2.0)


def test_server_killed_mid_run_nothing_lost(tmp_path, fast_client_retries, capsys):
    from bluesky import RunEngine

    data = tmp_path / "data"
    cat = LocalCatalog.start(data)
    serve = None
    try:
        bench = seccm_bench(200)
        bench.potentiostat.asset_writer = HDF5WaveformWriter(cat.asset_dir)
        RE = RunEngine({})
        RE.subscribe(make_writer(cat, batch_size=5))
        docs: list = []
        RE.subscribe(lambda n, d: docs.append((n, d)))
        pts = random_points(60, seed=11)
        record: list = []

        def kill(i):
            if i == 30:
                cat.kill()  # SIGKILL the `tiled serve` process

        (uid,) = RE(hopping_plan(bench, pts, record=record, on_spot=kill))
        assert RE.state == "idle" and docs[-1][1]["exit_status"] == "success"
        backups = list(cat.backup_dir.glob("*.journal"))
        assert len(backups) == 1

        # restart on the same catalog with `espt serve`: the run is there, partial (no stop)
        serve = subprocess.Popen([sys.executable, "-m", "espt_bluesky.cli", "serve", "--data-dir", str(data),
                                  "--port", "0"], stdout=subprocess.PIPE, text=True)
        lines = []
        while not any(line.lstrip().startswith("URI:") for line in lines):
            line = serve.stdout.readline()
            assert line, f"espt serve exited: {lines}"
            lines.append(line)
        cat = LocalCatalog.connect(data_dir=data)  # finds the server through DATA_DIR/server.json
        tiled_pid = json.loads((data / "server.json").read_text())["pid"]
        client = cat.client()
        assert uid not in client or client[uid].metadata.get("stop") is None  # absent or partial

        # replay through the command line (server and key found from the data directory)
        code = espt_main(["replay", str(data / "backup"), "--data-dir", str(data)])
        assert code == 0
        assert "written 1 run(s)" in capsys.readouterr().out

        run = client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run.metadata["stop"]["num_events"]["primary"] == 60
        ds = read_map(run)
        assert ds.sizes["spot"] == 60
        np.testing.assert_allclose(np.c_[ds.x, ds.y], pts, atol=1e-9)
        np.testing.assert_array_equal(ds["pstat_wf_current"].values, np.array([w for *_, w in record]))

        # the replayed run's documents match what the RunEngine emitted (json-seq exporter configured)
        got = [(n, d.get("uid")) for n, d in run.documents() if n in ("start", "descriptor", "stop")]
        want = [(n, d.get("uid")) for n, d in docs if n in ("start", "descriptor", "stop")]
        assert got == want

        # replaying again adds nothing
        report = replay(cat.backup_dir, client)
        assert report.skipped == [uid] and not report.written and not report.failed
        assert list(client) == [uid]
        assert len(read_map(client[uid], waveforms=False).spot) == 60

        # Ctrl-C stops `espt serve` and its tiled process
        serve.send_signal(signal.SIGINT)
        assert serve.wait(60) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(tiled_pid, 0)
        serve = None
    finally:
        cat.stop()
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
