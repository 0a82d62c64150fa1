"""The local Tiled catalog: one data directory, one API key, a server on 127.0.0.1.

Layout of a data directory (``ESPT_DATA_DIR``, default the per-user data directory)::

    DATA_DIR/
      api_key          the single-user API key (generated once, mode 0600) unless ESPT_TILED_API_KEY is set
      catalog.db       the Tiled catalog (SQLite) -- or a PostgreSQL URI given as ``catalog_uri``
      data/            writable array storage (zarr), written by TiledWriter
      tables.duckdb    writable table storage (event tables) -- or the PostgreSQL database
      assets/          readable asset directory: HDF5 waveform files written by devices live here
      backup/          journals of runs Tiled does not hold completely yet (``espt replay`` sends them)
      config.yml       the ``tiled serve config`` file (generated, mode 0600: it holds the key)
      server.json      URI and process ids of the running ``espt serve`` server (mode 0600)
      server.lock      held (``flock``) by the process that runs that server, for as long as it runs
      logs/            server logs (API keys and database passwords redacted)

The directory and everything in it is private to the user (0700 directories, 0600 files) unless it already
existed with other permissions (then a warning says so).  Secrets are never printed or logged: the key is in
``api_key``; ``espt serve`` prints where it is, not the key.

The same directory serves both ways: :meth:`LocalCatalog.start` runs ``tiled serve config`` as its own process
(``espt serve``), :meth:`LocalCatalog.in_process` runs the same configuration in a thread of this process (tests,
the demo).  :meth:`LocalCatalog.connect` attaches to a server that is already running (a facility deployment).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

from ..child_process import dying_with_parent, pid_alive
from ..errors import EsptError, InvalidArgument

ENV_DATA_DIR = "ESPT_DATA_DIR"
ENV_API_KEY = "ESPT_TILED_API_KEY"
ENV_URI = "ESPT_TILED_URI"

JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"
BROWSE_ROUTER = "espt_bluesky.storage.browse:router"


class ServerError(EsptError, RuntimeError):
    """The Tiled server could not be started or reached."""


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    import logging

    if msg not in _warned:
        _warned.add(msg)
        logging.getLogger(__name__).warning(msg)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the user only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_data_dir_default() -> Path:
    """The per-user data directory (``~/.local/share/espt_bluesky``), whatever ``ESPT_DATA_DIR`` says."""
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir("espt_bluesky", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs ships with tiled's dependencies
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "espt_bluesky"


def default_data_dir() -> Path:
    """The data directory: ``$ESPT_DATA_DIR``, else the per-user data directory (``~/.local/share/espt_bluesky``)."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().resolve()
    return default_data_dir_default()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DataDir:
    """The paths of one data directory (see the module docstring)."""

    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.db"

    @property
    def arrays(self) -> Path:
        return self.root / "data"

    @property
    def tables(self) -> Path:
        return self.root / "tables.duckdb"

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def config(self) -> Path:
        return self.root / "config.yml"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.root / "api_key"

    @property
    def lock(self) -> Path:
        return self.root / "server.lock"

    def create(self) -> "DataDir":
        """Create the directories, private to the user (0700); idempotent.

        A data directory that already exists with group or other permissions keeps them (a facility may share it
        on purpose), with a warning -- except the per-user default directory, which is made private.
        """
        fresh = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        mode = self.root.stat().st_mode & 0o777
        if mode & 0o077:
            if fresh or self.root == default_data_dir_default():
                os.chmod(self.root, PRIVATE_DIR)
            else:
                _warn_once(f"the data directory {self.root} is readable by other users (mode {mode:o}): "
                           f"its catalog and tables are not protected by the API key (chmod 700 makes it private)")
        for p in (self.arrays, self.assets, self.backup, self.logs):
            p.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        return self

    def api_key(self) -> str:
        """``$ESPT_TILED_API_KEY``, else the key stored in the data directory (generated on first use)."""
        env = os.environ.get(ENV_API_KEY)
        if env:
            return env
        f = self.api_key_file
        if f.exists():
            key = f.read_text().strip()
            if key:
                return key
        key = secrets.token_hex(16)
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        write_private(f, key + "\n")
        return key

    def running_server(self, *, lock: bool = True) -> dict | None:
        """The ``server.json`` record of a server that is running on this directory now, else None.

        A server is running while its owner (the process that started it, e.g. ``espt serve``) holds
        ``server.lock``; a ``server.json`` without that is stale (its owner died).  ``lock=False`` skips that
        check (for the owner itself) and looks only for an orphan server.
        """
        if not self.state.exists():
            return None
        try:
            info = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return None
        if lock and _lock_is_held(self.lock):
            return info
        # the owner is gone; a tiled process of an older version (no parent-death signal) may live on
        pid = int(info.get("pid") or 0)
        if pid_alive(pid) and probe_server(info.get("uri", ""), timeout=1.0) != "down":  # slow is still there
            return dict(info, orphan=True)
        return None


def _lock_is_held(path: Path) -> bool:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _take_lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None if another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _make_private(dd: DataDir) -> None:
    """Files a server creates in the data directory (SQLite catalog, DuckDB tables, logs): user-only."""
    for p in (dd.catalog, dd.tables, dd.logs / "server.log", dd.config):
        try:
            if p.exists() and p.stat().st_mode & 0o077:
                os.chmod(p, PRIVATE_FILE)
        except OSError:
            pass


def _resolve_dir(data_dir: str | os.PathLike | None) -> DataDir:
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir()
    return DataDir(root).create()


def _plain_postgres(uri: str) -> str:
    """Tiled's table store accepts only ``postgresql://`` (not ``postgresql+asyncpg://``)."""
    if uri.startswith("postgresql+"):
        return "postgresql://" + uri.split("://", 1)[1]
    return uri


def tiled_config(dd: DataDir, api_key: str, *, host: str = "127.0.0.1", port: int = 8000,
                 catalog_uri: str | None = None, table_uri: str | None = None,
                 readable: list[str | os.PathLike] | None = None, public: bool = False) -> dict[str, Any]:
    """The ``tiled serve config`` configuration of a data directory.

    Parameters
    ----------
    dd : DataDir
    api_key : str
        Single-user API key (letters and digits).
    host, port : str, int
        Where the server listens (127.0.0.1 by default: only this machine).
    catalog_uri : str, optional
        ``sqlite:///...`` (default: ``catalog.db`` in the data directory) or ``postgresql://user@host:port/db``.
    table_uri : str, optional
        Writable table store; default ``duckdb:///DATA_DIR/tables.duckdb`` for SQLite catalogs, the catalog's
        own database (plain ``postgresql://``) for PostgreSQL catalogs.
    readable : list of paths, optional
        Extra readable asset directories besides ``DATA_DIR/assets``.
    public : bool
        Serve reads without the API key (writes still need it).
    """
    if catalog_uri is None:
        catalog_uri = f"sqlite:///{dd.catalog}"
    if table_uri is None:
        table_uri = _plain_postgres(catalog_uri) if catalog_uri.startswith("postgresql") else \
            f"duckdb:///{dd.tables}"
    readable_storage = [str(dd.assets)] + [str(Path(p).resolve()) for p in (readable or [])]
    auth: dict[str, Any] = {"single_user_api_key": api_key}
    if public:
        auth["allow_anonymous_access"] = True
    return {
        "authentication": auth,
        "catalog": {
            "uri": catalog_uri,
            "writable_storage": [str(dd.arrays), table_uri],
            "readable_storage": readable_storage,
            "init_if_not_exists": True,
        },
        "media_types": {"BlueskyRun": {"application/json-seq": JSON_SEQ_EXPORTER}},
        "routers": [BROWSE_ROUTER],  # our run-browsing page at /custom/espt/ (storage/browse.py)
        "uvicorn": {"host": host, "port": int(port)},
    }


def _needs_stream_close(cfg: dict[str, Any]) -> bool:
    """Whether a server of configuration ``cfg`` does anything on ``close_stream``: in Tiled 0.2 only a streaming
    cache or webhook secret keys make it (from the file or from ``TILED_STREAMING_CACHE_*`` / ``TILED_WEBHOOKS_*``
    environment variables, read here as the server reads them); without them the request is answered by doing
    nothing.  When in doubt (a configuration Tiled's own model cannot read): True."""
    try:
        from tiled.config import Config

        c = Config.model_validate(cfg)
    except Exception:  # noqa: BLE001 - the server will say what is wrong; keep the requests
        return True
    return c.streaming_cache is not None or bool(c.webhooks is not None and c.webhooks.secret_keys)


def probe_server(uri: str, timeout: float = 1.0) -> str:
    """Ask the Tiled server at ``uri`` (``http://host:port``, ``.../api/v1`` or ``.../healthz``) whether it is up.

    Returns
    -------
    str
        ``"up"``: it answered its health check; ``"down"``: nothing can answer (connection refused, no route,
        unknown host, connection reset) or it answered that it is not healthy; ``"slow"``: no answer within
        ``timeout`` s (connect or read timeout).  A slow server may be a loaded but working one: only ``"down"``
        means that waiting longer cannot help.
    """
    import httpx

    base = uri.split("?", 1)[0].split("/api/v1")[0].rstrip("/")
    url = base if base.endswith("/healthz") else f"{base}/healthz"
    try:
        with httpx.Client(trust_env=False, verify=_verify_for(url)) as http:
            return "up" if http.get(url, timeout=timeout).status_code == 200 else "down"
    except httpx.TimeoutException:
        return "slow"
    except httpx.HTTPError:  # ConnectError (refused, no route, DNS), ReadError / RemoteProtocolError (reset)
        return "down"


def _verify_for(url: str) -> bool:
    """httpx's ``verify`` for ``url``: no certificate store for plain ``http://`` (no TLS happens there, and
    loading the store costs ~30-50 ms of CPU per client: once per run start and per health probe), the default
    verification for anything else."""
    return not url.lower().startswith("http://")


def server_alive(uri: str, timeout: float = 1.0) -> bool:
    """True if the Tiled server at ``uri`` (``http://host:port``, ``.../api/v1`` or ``.../healthz``) answers its
    health check within ``timeout`` s (see :func:`probe_server` to tell a slow server from a gone one)."""
    return probe_server(uri, timeout) == "up"


def _wait_healthy(base_url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, verify=_verify_for(base_url)) as http:
        while True:
            if proc is not None and proc.poll() is not None:
                raise ServerError(f"the Tiled server exited with code {proc.returncode} before answering; "
                                  "see its log in the data directory's logs/")
            try:
                if http.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the Tiled server at {base_url} did not answer within {timeout} s")
            time.sleep(0.1)


def init_catalog(uri: str) -> bool:
    """Create the tables of a new catalog database (or check an existing one), in this process.

    What Tiled's ``init_if_not_exists`` does, without its cost: Tiled runs ``python -m tiled catalog init
    --if-not-exists URI`` as a subprocess at every server start, a second import of Tiled that takes seconds.
    This runs the same steps (Tiled's ``check_database`` / ``initialize_database``, then alembic ``stamp head``)
    in a short-lived thread of this process (their ``asyncio.run`` needs a thread without a running event loop).

    Returns
    -------
    bool
        True if the database is ready; False if this Tiled version lacks those functions (the caller then leaves
        ``init_if_not_exists`` to Tiled).  Errors while creating the database are raised as :class:`ServerError`
        (the password in the URI redacted).
    """
    try:
        import asyncio

        from sqlalchemy.ext.asyncio import create_async_engine
        from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
        from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
        from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
        from tiled.utils import ensure_specified_sql_driver
    except ImportError:  # another Tiled version: let Tiled initialise the database its own way
        return False
    uri = ensure_specified_sql_driver(uri)

    async def setup() -> None:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    failed: list[BaseException] = []

    def work() -> None:
        import warnings

        try:
            asyncio.run(setup())
            with warnings.catch_warnings():  # alembic's note on Tiled's ini template (Tiled's subprocess hid it)
                warnings.filterwarnings("ignore", message="No path_separator found", category=DeprecationWarning)
                stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=work, name="espt-catalog-init")
    thread.start()
    thread.join()
    if failed:
        from .redact import redact

        raise ServerError(f"could not initialise the catalog database {redact(uri)}: "
                          f"{redact(str(failed[0]))}") from None
    return True


def _init_here(catalog_args: dict[str, Any]) -> None:
    """Initialise the catalog of a tree's arguments in this process and turn Tiled's own (subprocess) init off."""
    if catalog_args.get("init_if_not_exists") and catalog_args.get("uri") and init_catalog(catalog_args["uri"]):
        catalog_args["init_if_not_exists"] = False


_IN_PROCESS: list["LocalCatalog"] = []


@contextlib.contextmanager
def _serve_in_daemon_thread(server: Any, timeout: float):
    """Run a uvicorn server (signal handlers off) in a daemon thread; yield its ``http://host:port``.

    Tiled's own ``ThreadedServer.run_in_thread`` uses a non-daemon thread, which keeps the interpreter alive after
    the last line of a script or an IPython ``exit``; a daemon thread plus :func:`_stop_in_process_servers` at
    exit lets the process end while still shutting the server down cleanly.
    """
    thread = threading.Thread(target=server.run, daemon=True, name="espt-tiled-server")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"the in-process Tiled server did not start within {timeout} s")
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)


@atexit.register
def _stop_in_process_servers() -> None:
    """Stop the in-process servers still running when the interpreter exits."""
    for cat in list(_IN_PROCESS):
        cat.stop()


class LocalCatalog:
    """A Tiled server over one data directory, and how to reach it.

    Use the named constructors: :meth:`start` (its own process), :meth:`in_process` (a thread of this process)
    or :meth:`connect` (a server someone else runs).

    Attributes
    ----------
    uri : str
        Base URI of the server's API (``http://127.0.0.1:PORT/api/v1``), without the key.
    api_key : str
    data_dir : DataDir or None
        The data directory (None for :meth:`connect` without one).
    """

    def __init__(self, uri: str, api_key: str, data_dir: DataDir | None = None, *,
                 process: subprocess.Popen | None = None, thread_server: Any = None, cm: Any = None,
                 lock_fd: int | None = None):
        self.uri = uri.split("?", 1)[0].rstrip("/")
        self.api_key = api_key
        self.data_dir = data_dir
        self.process = process
        self._thread_server = thread_server
        self._cm = cm
        self._lock_fd = lock_fd
        #: True when this object started the server (:meth:`start`, :meth:`in_process`) from :func:`tiled_config`,
        #: which configures no streaming cache and no webhooks: the server then answers a ``close_stream``
        #: request by doing nothing, and a writer may leave those requests out (see :mod:`.writer`).
        self.streams_need_closing = True

    # ------------------------------------------------------------------ constructors
    @classmethod
    def start(cls, data_dir: str | os.PathLike | None = None, *, port: int | None = None,
              host: str = "127.0.0.1", catalog_uri: str | None = None, table_uri: str | None = None,
              readable: list[str | os.PathLike] | None = None, public: bool = False,
              timeout: float = 60.0) -> "LocalCatalog":
        """Serve the data directory from a process of its own and wait until it answers.

        The server process (:mod:`.tiled_process`: ``tiled serve config`` without the banner that prints the key,
        with redacted logs) gets SIGTERM when this process dies, so it never outlives its owner.  This process
        holds ``DATA_DIR/server.lock`` while the server runs and records it in ``server.json`` (0600).

        Parameters
        ----------
        data_dir : path, optional
            Default :func:`default_data_dir`.
        port : int, optional
            Default: a free port.
        host : str
            Default 127.0.0.1 (only this machine).
        catalog_uri, table_uri, readable, public
            See :func:`tiled_config`.
        timeout : float, s
            How long to wait for the server to answer.

        Raises
        ------
        ServerError
            A server already runs on this data directory (its pid and URI named; ``server.json`` left as it is),
            the port is taken, or the server did not start.
        """
        dd = _resolve_dir(data_dir)
        lock_fd = _take_lock(dd.lock)
        if lock_fd is None:
            info = dd.running_server() or {}
            raise ServerError(f"a Tiled server is already running on {dd.root} (pid {info.get('pid', '?')}, "
                              f"{info.get('uri', 'URI in server.json')}); connect to it (LocalCatalog.connect, "
                              f"ESPT_TILED_URI) or stop it first")
        try:
            stale = dd.running_server(lock=False)  # only an orphan (of an older version) can answer now
            if stale is not None:
                raise ServerError(f"a Tiled server (pid {stale.get('pid')}, {stale.get('uri')}) still serves "
                                  f"{dd.root} although the process that started it is gone; stop it "
                                  f"(kill {stale.get('pid')}) and start again")
            key = dd.api_key()
            port = free_port(host) if not port else int(port)
            if not _port_free(host, port):
                raise ServerError(f"port={port} on {host} is in use by another program; choose another "
                                  "(port=0 picks a free one)")
            cfg = tiled_config(dd, key, host=host, port=port, catalog_uri=catalog_uri, table_uri=table_uri,
                               readable=readable, public=public)
            write_private(dd.config, json.dumps(cfg, indent=2))  # JSON is YAML
            log_fd = os.open(dd.logs / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
            env = dict(os.environ)
            env.pop("TILED_CONFIG", None)
            cmd = [sys.executable, "-m", "espt_bluesky.storage.tiled_process", str(dd.config)]
            proc = subprocess.Popen(dying_with_parent(cmd), stdout=log_fd, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, umask=0o077)
            os.close(log_fd)
            base = f"http://{host}:{port}"
            try:
                _wait_healthy(base, timeout, proc)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            _make_private(dd)  # files of data directories made by older versions
            self = cls(f"{base}/api/v1", key, dd, process=proc, lock_fd=lock_fd)
            self.streams_need_closing = _needs_stream_close(cfg)
            write_private(dd.state, json.dumps({"uri": self.uri, "pid": proc.pid, "owner_pid": os.getpid(),
                                                "browse": self.browse_url, "data_dir": str(dd.root)}))
            return self
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def in_process(cls, data_dir: str | os.PathLike | None = None, *, port: int = 0,
                   catalog_uri: str | None = None, table_uri: str | None = None,
                   readable: list[str | os.PathLike] | None = None, public: bool = False,
                   timeout: float = 60.0) -> "LocalCatalog":
        """Serve the data directory from a thread of this process (tests, the demo).

        The server shares the GIL with the RunEngine: use :meth:`start` for throughput.
        Parameters as for :meth:`start`; ``port=0`` picks a free port.  Several in-process servers of one process
        share one API key (Tiled keeps its settings per process): the first one's, see :attr:`api_key`.
        """
        import uvicorn
        from tiled.server.app import build_app_from_config
        from tiled.server.simple import ThreadedServer

        dd = _resolve_dir(data_dir)
        from .duckdb_guard import install as guard_duckdb

        guard_duckdb()  # the server's threads share one DuckDB connection: one at a time
        # Tiled keeps its server settings (the API key among them) in one object per process: every in-process
        # server of this process must share one key, or the last one started locks the others out.
        live = [c for c in _IN_PROCESS if c._cm is not None]
        key = dd.api_key()
        key = live[0].api_key if live else key
        cfg = tiled_config(dd, key, port=port, catalog_uri=catalog_uri, table_uri=table_uri,
                           readable=readable, public=public)
        cfg.pop("uvicorn")
        _init_here(cfg["catalog"])
        app = build_app_from_config(cfg)
        server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio",
                                               log_level="warning", access_log=False))
        from .redact import install

        install()  # whatever logging the application sets up later: no API key in uvicorn's or Tiled's logs
        cm = _serve_in_daemon_thread(server, timeout)
        base = cm.__enter__()
        try:
            _wait_healthy(base, timeout)
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        _make_private(dd)  # made with this process's umask
        self = cls(f"{base}/api/v1", key, dd, thread_server=server, cm=cm)
        self.streams_need_closing = _needs_stream_close(cfg)
        _IN_PROCESS.append(self)
        return self

    @classmethod
    def connect(cls, uri: str | None = None, api_key: str | None = None,
                data_dir: str | os.PathLike | None = None) -> "LocalCatalog":
        """Attach to a running server.

        Parameters
        ----------
        uri : str, optional
            ``http://host:port`` or ``.../api/v1`` (an ``?api_key=`` query is understood).  Default:
            ``$ESPT_TILED_URI``, else the ``server.json`` left by ``espt serve`` in the data directory.
        api_key : str, optional
            Default: from the URI, ``$ESPT_TILED_API_KEY``, or the data directory's key.
        data_dir : path, optional
            The data directory (for its backup and asset directories).
        """
        dd = _resolve_dir(data_dir) if (data_dir is not None or uri is None) else None
        uri = uri or os.environ.get(ENV_URI)
        if uri is None and dd is not None and dd.state.exists():
            running = dd.running_server()
            if running is None:
                raise ServerError(f"no Tiled server is running on {dd.root} (its server.json is stale: the "
                                  "process that started it is gone); start one with `espt serve`")
            uri = running["uri"]
        if not uri:
            raise InvalidArgument("uri=None: give a Tiled URI, set ESPT_TILED_URI, or run `espt serve` first")
        parts = urlsplit(uri)
        if api_key is None and "api_key=" in (parts.query or ""):
            from urllib.parse import parse_qs

            api_key = parse_qs(parts.query)["api_key"][0]
        if api_key is None:
            api_key = os.environ.get(ENV_API_KEY) or (dd.api_key() if dd is not None else None)
        base = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        return cls(base, api_key or "", dd)

    # ------------------------------------------------------------------ use
    @property
    def base_url(self) -> str:
        """``http://host:port`` (no API path)."""
        return self.uri[: -len("/api/v1")] if self.uri.endswith("/api/v1") else self.uri

    @property
    def browse_url(self) -> str:
        """The web UI (without the key: see :meth:`login_url` and :attr:`key_hint`)."""
        return f"{self.base_url}/ui/browse/"

    def login_url(self) -> str:
        """The web UI with the key: opening it once in a browser sets a cookie and logs the browser in.

        For a program that opens the browser itself (``webbrowser.open(cat.login_url())``); never print it.
        The server's logs show the key redacted.
        """
        return f"{self.browse_url}?api_key={quote_plus(self.api_key)}"

    @property
    def key_hint(self) -> str:
        """Where the API key is, in words (safe to print)."""
        if os.environ.get(ENV_API_KEY) == self.api_key:
            return f"${ENV_API_KEY}"
        if self.data_dir is not None and self.data_dir.api_key_file.exists():
            return f"the file {self.data_dir.api_key_file} (readable by you only)"
        return "the API key you were given"

    def client(self, **kwargs: Any):
        """A Tiled client of the catalog root (a catalog of BlueskyRuns)."""
        from tiled.client import from_uri

        kwargs.setdefault("verify", _verify_for(self.uri))
        return from_uri(self.uri, api_key=self.api_key, **kwargs)

    @property
    def backup_dir(self) -> Path | None:
        return self.data_dir.backup if self.data_dir is not None else None

    @property
    def asset_dir(self) -> Path | None:
        return self.data_dir.assets if self.data_dir is not None else None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server this object started (nothing for :meth:`connect`)."""
        if self.process is not None:
            pid = self.process.pid
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self._forget(pid)
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None
            if self in _IN_PROCESS:
                _IN_PROCESS.remove(self)

    def kill(self) -> None:
        """SIGKILL the server process (failure testing); its ``server.json`` stays, stale, as after a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _forget(self, pid: int) -> None:
        """Remove ``server.json`` if it records our server, then release the lock."""
        if self.data_dir is not None:
            try:
                if json.loads(self.data_dir.state.read_text()).get("pid") == pid:
                    self.data_dir.state.unlink()
            except (OSError, ValueError):
                pass
        self._release_lock()

    def __enter__(self) -> "LocalCatalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        how = "process" if self.process else ("thread" if self._cm else "remote")
        return f"<LocalCatalog {self.uri} ({how})>"
