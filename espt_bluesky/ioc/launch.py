"""Start bench IOCs as child processes on loopback, with the Channel Access environment that makes them findable.

pyepics's libca reads ``EPICS_CA_*`` when it initialises (the first PV created in the process), so call
:func:`configure_client_env` before anything creates a PV.

Examples
--------
>>> ports = free_ports(3)
>>> env = ca_environment(server_ports=ports[:2], repeater_port=ports[2])
>>> configure_client_env(env)
>>> stage = IOCProcess("stage", prefix="T:stage:", port=ports[0], env=env, seed=1).start()
>>> pstat = IOCProcess("potentiostat", prefix="T:pstat:", port=ports[1], env=env, seed=1,
...                    stage_prefix="T:stage:").start()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from ..child_process import dying_with_parent
from ..errors import EsptError


class IOCStartError(EsptError, RuntimeError):
    """An IOC process exited or did not open its port in time."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` now, chosen by the OS (random, not guessed)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            port = s.getsockname()[1]
            # CA also uses UDP on the server port: make sure that is free as well
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind((host, port))
            except OSError:
                s.close()
                continue
            finally:
                u.close()
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def ca_environment(server_ports: Sequence[int], repeater_port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The ``EPICS_CA_*`` variables for clients and servers of IOCs on ``host`` at ``server_ports``."""
    return {"EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_ADDR_LIST": " ".join(f"{host}:{p}" for p in server_ports),
            "EPICS_CA_REPEATER_PORT": str(repeater_port),
            "EPICS_CAS_INTF_ADDR_LIST": host}


def configure_client_env(env: Mapping[str, str]) -> None:
    """Put ``env`` into ``os.environ`` for this process's Channel Access client.

    libca reads the address list when the first channel is created; refuse if channels already exist and the
    environment would change (the change would silently not apply).
    """
    try:
        import epics.ca as ca

        channels = any(bool(v) for v in getattr(ca, "_cache", {}).values())
    except Exception:  # pragma: no cover - pyepics not importable
        channels = False
    if channels and any(os.environ.get(k) != v for k, v in env.items() if k != "EPICS_CAS_INTF_ADDR_LIST"):
        raise EsptError("pyepics already created channels with a different EPICS_CA_* environment; set the "
                        "environment before the first PV is created (e.g. run EPICS code in its own process)")
    os.environ.update(env)


class IOCProcess:
    """One bench IOC as a child process.

    Parameters
    ----------
    role : {"bench", "stage", "potentiostat"}
    prefix : str
    port : int
        ``EPICS_CA_SERVER_PORT`` of this IOC (distinct per process).
    env : mapping
        CA environment (see :func:`ca_environment`).
    technique, sample, seed, options, probe, start, time_scale
        The bench model served (the same for every IOC of one bench).
    stage_prefix : str, optional
        For the potentiostat role.
    """

    def __init__(self, role: str, prefix: str, port: int, env: Mapping[str, str], *, technique: str = "SECM",
                 sample: str = "patterned", seed: int = 0, options: Mapping[str, Any] | None = None,
                 probe: Mapping[str, Any] | None = None, start: tuple[float, float] = (50.0, 50.0),
                 time_scale: float = 0.0, stage_prefix: str | None = None, log_path: str | None = None):
        self.role, self.prefix, self.port = role, prefix, int(port)
        self.env = dict(os.environ)
        self.env.update(env)
        self.env["EPICS_CA_SERVER_PORT"] = str(self.port)
        self.args = [sys.executable, "-m", "espt_bluesky.ioc", role, "--prefix", prefix,
                     "--technique", technique, "--sample", sample, "--seed", str(seed),
                     "--options", json.dumps(dict(options or {})), "--start", str(start[0]), str(start[1]),
                     "--time-scale", str(time_scale), "--interfaces", "127.0.0.1", "--quiet"]
        if probe:
            self.args += ["--probe", json.dumps(dict(probe))]
        if stage_prefix:
            self.args += ["--stage-prefix", stage_prefix]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 30.0) -> "IOCProcess":
        """Start the process and wait until its TCP port accepts connections."""
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        # SIGTERM the IOC when this process dies (a killed test run leaves no IOC behind)
        self.proc = subprocess.Popen(dying_with_parent(self.args), env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise IOCStartError(f"IOC {self.role} ({self.prefix}) exited with code {self.proc.returncode}"
                                    + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise IOCStartError(f"IOC {self.role} ({self.prefix}) did not open 127.0.0.1:{self.port} in {timeout} s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a crashed IOC: no clean shutdown)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL)."""
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "IOCProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
