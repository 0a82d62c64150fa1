"""A slow Tiled server is not a dead one: the writer's health probe tells them apart.

* :func:`probe_server` says ``"down"`` only when nothing can answer (connection refused) or the server says it is
  unhealthy, ``"slow"`` when no answer comes within the timeout, ``"up"`` otherwise;
* a working server behind a proxy that delays every answer well beyond ``probe_timeout`` (a loaded machine) still
  gets the whole run: the writer waits for it instead of sending the run to its journal;
* a server that accepts connections but never answers (hung) is given up after ``max_wait`` without progress, so the
  RunEngine is never held for longer than that bound; the run is in its journal.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from espt_bluesky.storage import LocalCatalog, make_writer
from espt_bluesky.storage.journal import read_journal
from espt_bluesky.storage.server import free_port, probe_server


class DelayingProxy:
    """TCP proxy on 127.0.0.1 that forwards to ``port`` and holds every chunk of the server's answers ``delay``
    seconds (every HTTP answer arrives at least ``delay`` late)."""

    def __init__(self, port: int, delay: float):
        self.upstream, self.delay = port, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._closing = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closing:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._conns += [down, up]
            threading.Thread(target=self._pump, args=(down, up, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src, dst, delay):
        try:
            while chunk := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._closing = True
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("slow") / "data")
    yield cat
    cat.stop()


def _answering(status):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_probe_tells_slow_from_gone():
    refused = f"http://127.0.0.1:{free_port()}"
    assert probe_server(refused, timeout=0.2) == "down"
    hung = socket.create_server(("127.0.0.1", 0))  # listens (the kernel completes connections), never answers
    ok, sick = _answering(200), _answering(503)
    try:
        assert probe_server(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout=0.2) == "slow"
        assert probe_server(f"http://127.0.0.1:{ok.server_address[1]}/api/v1?x=1", timeout=5) == "up"
        assert probe_server(f"http://127.0.0.1:{sick.server_address[1]}", timeout=5) == "down"
    finally:
        hung.close()
        for s in (ok, sick):
            s.shutdown()
            s.server_close()


def test_slow_server_still_gets_the_whole_run(catalog, tmp_path):
    """Every answer of a working server comes later than ``probe_timeout``: the run is written, not journaled."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det, motor

    port = int(catalog.base_url.rsplit(":", 1)[1])
    proxy = DelayingProxy(port, delay=0.15)
    try:
        slow = LocalCatalog.connect(f"http://127.0.0.1:{proxy.port}/api/v1", api_key=catalog.api_key)
        probe = 0.03
        assert probe_server(slow.base_url, timeout=probe) == "slow"  # what the writer's probes see
        writer = make_writer(slow, backup_directory=tmp_path / "backup", batch_size=3, probe_timeout=probe,
                             max_wait=120.0)
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(writer)
        uid = RE(bp.scan([det], motor, -1, 1, 3)).run_start_uids[0]
        assert writer.runs[uid].state == "written", writer.runs[uid].error
        assert writer.server_up is True and writer.pending == []
        run = catalog.client()[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run["primary"].read()["det"].shape == (3,)
        writer.close(30)
    finally:
        proxy.close()


def test_hung_server_is_given_up_after_max_wait(tmp_path):
    """A server that never answers: the run ends into its journal once ``max_wait`` passed without progress."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det, motor

    hung = socket.create_server(("127.0.0.1", 0))
    try:
        target = LocalCatalog.connect(f"http://127.0.0.1:{hung.getsockname()[1]}/api/v1", api_key="nobody")
        writer = make_writer(target, backup_directory=tmp_path / "backup", probe_timeout=0.1, max_wait=1.0)
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(writer)
        result = RE(bp.scan([det], motor, -1, 1, 3))
        assert result.exit_status == "success"  # the storage failure did not stop the experiment
        run = writer.runs[result.run_start_uids[0]]
        assert run.state == "backup" and "max_wait=1.0" in run.error, run.error  # slow, so waited for max_wait
        back = read_journal(run.journal)
        assert back.closed and not back.damage
        assert [n for n, _ in back.records].count("event") == 3
    finally:
        hung.close()


def test_session_max_wait_is_configured_and_checked():
    from espt_bluesky.errors import InvalidArgument
    from espt_bluesky.session import load_config

    assert load_config({"storage": {"mode": "none", "max_wait": 2.5}})["storage"]["max_wait"] == 2.5
    assert load_config({"storage": {"mode": "none"}})["storage"]["max_wait"] == 10.0
    for bad in (-1, "soon", float("nan")):
        with pytest.raises(InvalidArgument, match="storage.max_wait"):
            load_config({"storage": {"mode": "none", "max_wait": bad}})
