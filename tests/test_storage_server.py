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


# ------------------------------------------------------------------------ orphans, a second server, secrets
def _espt_serve(data, *extra):
    """`espt serve --port 0` on ``data`` as a process of its own; returns (process, lines printed until URI)."""
    proc = subprocess.Popen([sys.executable, "-m", "espt_bluesky.cli", "serve", "--data-dir", str(data),
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any(line.lstrip().startswith("Ctrl-C") for line in lines):
        line = proc.stdout.readline()
        assert line, f"espt serve exited: {lines} {proc.stderr.read()}"
        lines.append(line)
    return proc, lines


def _port_of(uri: str) -> int:
    return int(uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def _gone(pid: int, timeout: float = 60.0) -> bool:
    import time

    from espt_bluesky.child_process import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_a_second_serve_refuses_and_sigkill_leaves_no_server(tmp_path):
    import socket

    data = tmp_path / "data"
    first, lines = _espt_serve(data)
    try:
        info = json.loads((data / "server.json").read_text())
        before = (data / "server.json").read_bytes()
        key = (data / "api_key").read_text().strip()
        assert not any(key in line for line in lines)  # the key is never printed
        assert any(str(data / "api_key") in line for line in lines)  # ... but where it is, is

        # a second server on the same data directory: refused, naming the running one; server.json untouched
        second = subprocess.run([sys.executable, "-m", "espt_bluesky.cli", "serve", "--data-dir", str(data),
                                 "--port", "0"], capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert "already running" in second.stderr and str(info["pid"]) in second.stderr
        assert info["uri"] in second.stderr
        assert (data / "server.json").read_bytes() == before

        # SIGKILL `espt serve`: its Tiled process follows it and the port is free again
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert _gone(info["pid"]), "the Tiled server outlived `espt serve`"
        port = _port_of(info["uri"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nobody holds it

        # the server.json left behind is stale: connect says so, a new server replaces it
        with pytest.raises(Exception, match="stale"):
            LocalCatalog.connect(data_dir=data)
        cat = LocalCatalog.start(data)
        try:
            assert json.loads((data / "server.json").read_text())["pid"] == cat.process.pid != info["pid"]
        finally:
            cat.stop()
        assert not (data / "server.json").exists()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@pytest.mark.slow
def test_secrets_stay_secret_after_a_browser_session(tmp_path):
    """Modes of everything in the data directory, and no key in any log, after the browser URL was opened."""
    import httpx
    from bluesky import RunEngine

    import bluesky.plans as bp

    from espt_bluesky.devices import make_sim_bench

    data = tmp_path / "data"
    cat = LocalCatalog.start(data)
    try:
        RE = RunEngine({})
        writer = make_writer(cat)
        RE.subscribe(writer)
        bench = make_sim_bench("SECCM", "patterned", seed=1)
        (uid,) = RE(bp.count([bench.potentiostat], 3))
        # what a browser does: open the login URL (key in the query: the server sets a cookie), then browse
        with httpx.Client(trust_env=False, follow_redirects=True) as browser:
            assert browser.get(cat.login_url(), timeout=30).status_code == 200
            assert "tiled_api_key" in browser.cookies or browser.cookies
            r = browser.get(f"{cat.uri}/search/", timeout=30)
            assert r.status_code == 200 and uid in r.text
        assert uid in cat.client()
    finally:
        cat.stop()
    key = cat.api_key
    log = (data / "logs" / "server.log").read_text()
    assert "/ui/browse/?api_key=***" in log  # the request was logged, the key was not
    for p in [data, *data.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{p} is mode {mode:o}"
        if p.is_file() and p.name not in ("api_key", "config.yml"):
            assert key.encode() not in p.read_bytes(), f"the API key is in {p}"
    assert (data / "api_key").stat().st_mode & 0o777 == 0o600


def test_in_process_server_logs_are_redacted(tmp_path):
    """The in-process server's uvicorn access logger redacts the key, whatever handler a user attaches."""
    import logging

    class Keep(logging.Handler):
        lines: list = []

        def emit(self, record):
            self.lines.append(self.format(record))

    cat = LocalCatalog.in_process(tmp_path / "data")
    access = logging.getLogger("uvicorn.access")
    handler, level = Keep(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/ui/browse/?api_key={cat.api_key}",
                    "1.1", 200)
        (line,) = handler.lines
        assert "api_key=***" in line and cat.api_key not in line
        assert cat.api_key not in cat.browse_url and cat.api_key in cat.login_url()
        for p in (tmp_path / "data", tmp_path / "data" / "catalog.db", tmp_path / "data" / "api_key"):
            assert p.stat().st_mode & 0o077 == 0, p
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
        cat.stop()
