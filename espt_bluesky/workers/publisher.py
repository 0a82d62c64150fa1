"""RunEngine side of the bus: publish every document to JetStream; the local journal when JetStream cannot take it.

:class:`BusPublisher` is a RunEngine subscriber.  Per document it packs the document (msgpack, as ``bluesky-nats``
does) and writes it to a pipe read by a process of its own (:mod:`.publisher_child`), which publishes it with
``js.publish_async`` and waits for JetStream's acknowledgements.  The network I/O and nats-py's asyncio loop (a few ms
of CPU per spot) thus never hold the RunEngine's GIL: the RunEngine pays a pack and a pipe write per document
(~0.1 ms/spot measured, see docs/bus.md).  It waits for one acknowledgement per run, the start's (which proves
JetStream takes the run, and whose stream sequence every later document of the run carries in its
``Espt-Start-Seq`` header), and at the stop, for the rest of the run -- each wait at most ``publish_timeout``.  A
full pipe (the publishing process more than a megabyte behind) makes the RunEngine wait, at most about twice
``publish_timeout``; the publishing process itself gives a run up after ``publish_timeout`` without acknowledgement.

Backup: with ``journal="on_failure"`` (default) the run's documents are kept in memory (references, no copy) until
JetStream acknowledged them all, and written to ``<backup>/<start uid>.journal`` (:mod:`espt_bluesky.storage.journal`,
the format ``espt replay`` reads) only if the bus fails the run -- the whole run, so that the journal holds strictly
more than the partial copy a worker wrote.  With ``journal="always"`` every document is appended to the journal
before it is published (write-ahead: not even the death of this process loses a document in flight), at the price of
a JSON encoding, a write and a wake-up of the journal's fsync thread per document (about 1 ms for a document carrying
a 2000-sample CV, see benchmarks/bench_bus.py).  A run whose documents JetStream acknowledged completely has its
journal removed (``keep_journals`` keeps it).  Documents already written to the pipe are published even when this
process dies (the publishing process reads the pipe to its end).

When JetStream is unreachable at a run's start, fails during the run (an error, or no acknowledgement within
``publish_timeout``), or the publishing process dies or hangs, the run goes to its journal -- say so loudly (ERROR
log, :attr:`BusPublisher.runs`) -- and ``espt replay`` delivers it later (it replaces a partial copy a worker wrote,
the journal holding strictly more).  The next run tries the bus again (a new publishing process if the old one died).
Nothing here raises into the RunEngine.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, check_choice
from ..storage.routing import RunRouter
from .bus import BUS_DEFAULTS, JOURNAL_MODES, BusConfig, doc_id, pack
from .publisher_child import frame, split_frames

logger = logging.getLogger(__name__)

#: bytes of the pipe to the publishing process (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default)
PIPE_BYTES = 2**20
#: seconds the publishing process may take to start (an interpreter and nats-py imported on a loaded machine)
STARTUP_TIMEOUT = 30.0


@dataclass
class BusRun:
    """What became of one run: ``state`` ``"publishing"``, ``"published"`` (JetStream acknowledged every
    document) or ``"backup"`` (the run is in its journal: send it with ``espt replay``)."""

    uid: str
    state: str = "publishing"
    start_seq: int | None = None
    journal: Path | None = None
    error: str | None = None
    sent: int = 0
    acked: int = 0
    n_docs: int = 0
    done: bool = False  # the publishing process reported every document acknowledged
    _journal: Any = field(default=None, repr=False)
    _docs: list | None = field(default=None, repr=False)


class _ChildGone(Exception):
    """The publishing process died or stopped reading its pipe."""


class BusPublisher:
    """Publish the RunEngine's documents to JetStream (see the module docstring).  ``RE.subscribe(publisher)``.

    Parameters
    ----------
    config : BusConfig or dict
        The ``[bus]`` settings (servers, stream, subject, timeouts, limits).
    backup_directory : path
        Where journals go (the catalog's ``backup/``, which ``espt replay`` reads).
    journal : {"on_failure", "always"}, optional
        Journal only the runs the bus fails, or every document first (default: ``config.journal``).
    """

    def __init__(self, config: BusConfig | dict, backup_directory: str | os.PathLike, *,
                 journal: str | None = None):
        self.cfg = config if isinstance(config, BusConfig) else BusConfig.from_mapping(config)
        if backup_directory is None:
            raise InvalidArgument("backup_directory=None: the bus publisher needs a local backup directory")
        self.backup_directory = Path(backup_directory)
        self.journal_mode = check_choice("journal", journal or self.cfg.journal, JOURNAL_MODES)
        self.runs: dict[str, BusRun] = {}
        self._router: RunRouter[BusRun] = RunRouter()
        self._proc: subprocess.Popen | None = None
        self._wfd: int | None = None  # docs pipe (write end, non-blocking)
        self._rfd: int | None = None  # replies pipe (read end, non-blocking)
        self._rbuf = bytearray()
        self._child_connected = False
        self.last_error: str | None = None
        self._closing = False
        self._spawn()

    # ------------------------------------------------------------------ the publishing process
    def _spawn(self) -> bool:
        """Start the publishing process and wait for its first connection attempt; True if it is connected."""
        import fcntl

        import espt_bluesky

        self._reap()
        docs_r, docs_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            fcntl.fcntl(docs_w, 1031, PIPE_BYTES)  # F_SETPIPE_SZ: room for a few hundred waveform events
        except OSError:
            pass
        env = dict(os.environ)
        root = str(Path(espt_bluesky.__file__).resolve().parent.parent)  # this package, not another install
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "espt_bluesky.workers.publisher_child", str(docs_r), str(rep_w)],
                pass_fds=(docs_r, rep_w), stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as exc:
            for fd in (docs_r, docs_w, rep_r, rep_w):
                os.close(fd)
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("bus: cannot start the publishing process (%s): runs go to the local backup %s",
                         self.last_error, self.backup_directory)
            return False
        os.close(docs_r)
        os.close(rep_w)
        os.set_blocking(docs_w, False)
        os.set_blocking(rep_r, False)
        self._wfd, self._rfd, self._rbuf = docs_w, rep_r, bytearray()
        self._child_connected = False
        cfg = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
               for k, v in ((k, getattr(self.cfg, k)) for k in BUS_DEFAULTS)}
        got: dict[str, Any] = {}
        try:
            self._send(frame(["cfg", cfg]), STARTUP_TIMEOUT)
            self._wait(lambda: "conn" in got, self.cfg.connect_timeout + STARTUP_TIMEOUT, got)
        except _ChildGone as exc:
            self.last_error = str(exc)
        if not self._child_connected:
            logger.error("bus: cannot reach NATS JetStream at %s (%s): runs go to the local backup %s until it "
                         "answers", ", ".join(self.cfg.servers), self.last_error or "no answer",
                         self.backup_directory)
        return self._child_connected

    def _reap(self, kill: bool = False) -> None:
        """Forget the publishing process (killed if ``kill``: it hangs), closing our ends of its pipes."""
        for fd in (self._wfd, self._rfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wfd = self._rfd = None
        p, self._proc = self._proc, None
        if p is not None and kill and p.poll() is None:
            p.kill()
            p.wait(5)
        self._child_connected = False

    def _child_alive(self) -> bool:
        return self._proc is not None and self._wfd is not None and self._proc.poll() is None

    def _send(self, bufs: list[bytes], timeout: float) -> None:
        """Write a frame to the publishing process; waits while the pipe is full, at most ``timeout``."""
        if self._wfd is None:
            raise _ChildGone("the publishing process is not running")
        deadline = None
        while bufs:
            try:
                n = os.writev(self._wfd, bufs)
            except BlockingIOError:
                n = 0
            except OSError as exc:  # BrokenPipeError: it died
                raise _ChildGone(f"the publishing process died ({type(exc).__name__})") from None
            while n and bufs:
                if n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs = bufs[1:]
                else:
                    bufs[0] = memoryview(bufs[0])[n:]
                    n = 0
            if bufs:
                now = time.monotonic()
                deadline = deadline or now + timeout
                if now >= deadline:
                    raise _ChildGone(f"the publishing process read nothing for {timeout:.1f} s (hung)")
                self._read_replies(None)  # (it may be waiting for us to read its replies)
                select.select([], [self._wfd], [], min(deadline - now, 0.05))

    def _read_replies(self, got: dict | None) -> bool:
        """Read what the publishing process said (without waiting); False when its pipe closed."""
        if self._rfd is None:
            return False
        alive = True
        while True:
            try:
                data = os.read(self._rfd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                alive = False
                break
            self._rbuf += data
        for meta, _ in split_frames(self._rbuf):
            self._on_reply(meta, got)
        return alive

    def _on_reply(self, meta: list, got: dict | None) -> None:
        kind = meta[0]
        if got is not None:
            got[kind] = meta
        if kind in ("conn", "state"):
            self._child_connected, err = bool(meta[1]), meta[2]
            if err:
                self.last_error = err
            if kind == "state" and not meta[1] and not self._closing:
                logger.warning("bus: disconnected from NATS %s", self.cfg.servers)
            return
        run = self.runs.get(meta[1])
        if run is None:
            return
        if kind == "started":
            run.start_seq = int(meta[2])
        elif kind == "done":
            run.acked, run.done = int(meta[2]), True
        elif kind == "failed" and run.error is None:
            run.error = str(meta[2])

    def _wait(self, ready, timeout: float, got: dict | None = None) -> bool:
        """Read replies until ``ready()`` or ``timeout`` s; raises :class:`_ChildGone` if the process died."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self._read_replies(got)
            if ready():
                return True
            if not alive:
                raise _ChildGone(f"the publishing process died (exit code {self._proc.poll() if self._proc else None})")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self._rfd], [], [], left)

    def _child_failed(self, exc: _ChildGone) -> None:
        """The publishing process is gone or hangs: every open run goes to its journal; the next run starts a new
        process."""
        self.last_error = str(exc)
        self._reap(kill=True)
        for run in list(self._router.runs.values()):
            self._fail_over(run, str(exc))

    @property
    def connected(self) -> bool:
        if self._child_alive():
            self._read_replies(None)
        return self._child_alive() and self._child_connected

    # ------------------------------------------------------------------ RunEngine thread
    def __call__(self, name: str, doc: dict) -> None:
        try:
            self._handle(name, doc)
        except Exception:  # noqa: BLE001 - never into the RunEngine
            logger.exception("bus: handling a %s document failed", name)

    def _handle(self, name: str, doc: dict) -> None:
        if name == "start":
            run = BusRun(doc["uid"])
            self.runs[run.uid] = run
            self._router.open(run.uid, run)
        else:
            run = self._router.find(name, doc)
        if run is None:
            logger.warning("bus: %s document outside any run (uid %s): not published", name, doc.get("uid"))
            return
        run.n_docs += 1
        if run._journal is not None:
            self._journal_append(run, name, doc)
        elif run._docs is not None:
            run._docs.append((name, doc))
        if name == "start":
            self._start(run, doc)
        elif run.state == "publishing":
            if self._rfd is not None:
                self._read_replies(None)  # a failure the publishing process reported
            if run.error is not None:
                self._fail_over(run, run.error)
            else:
                self._publish(run, name, doc)
        if name == "stop":
            self._stop(run)

    def _publish(self, run: BusRun, name: str, doc: dict) -> None:
        msg_id = doc_id(run.uid, name, doc, run.n_docs)
        bufs = frame(["start", run.uid, msg_id] if name == "start" else ["doc", run.uid, name, msg_id], pack(doc))
        try:
            self._send(bufs, 2 * self.cfg.publish_timeout + 1.0)
        except _ChildGone as exc:
            self._child_failed(exc)
            return
        run.sent += 1

    def _start(self, run: BusRun, doc: dict) -> None:
        if self.journal_mode == "always":
            self._open_journal(run)
            if run._journal is not None:
                self._journal_append(run, "start", doc)
        else:
            run._docs = [("start", doc)]
        if not self._child_alive():
            self._spawn()
        if not self._child_alive():
            self._fail_over(run, f"the publishing process could not be started ({self.last_error})")
            return
        self._publish(run, "start", doc)
        if run.state != "publishing":
            return
        try:
            self._wait(lambda: run.start_seq is not None or run.error is not None,
                       self.cfg.publish_timeout + 1.0)
        except _ChildGone as exc:
            self._child_failed(exc)
            return
        if run.start_seq is None:
            self._fail_over(run, run.error or f"the start document was not acknowledged within publish_timeout="
                                              f"{self.cfg.publish_timeout} s")

    def _stop(self, run: BusRun) -> None:
        self._router.close(run)
        if run.state == "publishing":
            try:
                self._wait(lambda: run.done or run.error is not None, self.cfg.publish_timeout + 1.0)
            except _ChildGone as exc:
                self._child_failed(exc)
            if run.state == "publishing":
                if run.done and run.error is None:
                    run.state = "published"
                else:
                    self._fail_over(run, run.error or f"documents unacknowledged {self.cfg.publish_timeout} s "
                                                      "after the stop")
        run._docs = None
        j, run._journal = run._journal, None
        if j is not None:
            try:
                j.close()
            except Exception as exc:  # noqa: BLE001
                logger.error("bus: closing the journal of run %s failed: %s", run.uid, exc)
            if run.state == "published" and not self.cfg.keep_journals:
                j.path.unlink(missing_ok=True)
                run.journal = None

    # ------------------------------------------------------------------ backup
    def _open_journal(self, run: BusRun) -> None:
        from ..storage.journal import open_journal

        try:
            run._journal = open_journal(self.backup_directory, run.uid)
            run.journal = run._journal.path
        except Exception as exc:  # noqa: BLE001
            logger.critical("bus: run %s: cannot open its journal in %s (%s): its documents exist only on the bus",
                            run.uid, self.backup_directory, exc)

    def _journal_append(self, run: BusRun, name: str, doc: dict) -> None:
        try:
            run._journal.append(name, doc)
        except Exception as exc:  # noqa: BLE001
            logger.critical("bus: run %s: writing its journal %s failed (%s)", run.uid, run.journal, exc)
            run._journal = None

    def _fail_over(self, run: BusRun, why: str) -> None:
        """The rest of ``run`` goes to (and the whole run is in) its journal; say so loudly."""
        if run.state == "backup":
            return
        run.state, run.error = "backup", why
        if run._journal is None and run.journal is None:
            self._open_journal(run)
            for n, d in run._docs or ():
                if run._journal is not None:
                    self._journal_append(run, n, d)
            run._docs = None
        if run._journal is not None or run.journal is not None:
            logger.error("BUS DOWN -- run %s: %s. The run is kept in the local backup %s; deliver it with "
                         "`espt replay %s` once Tiled is reachable", run.uid, why, run.journal, self.backup_directory)
        else:
            logger.critical("run %s: NOT SAVED: %s, and its local journal could not be written", run.uid, why)

    # ------------------------------------------------------------------ use
    @property
    def pending(self) -> list[Path]:
        """Journals of runs the bus did not take completely (send them with ``espt replay``)."""
        return [r.journal for r in self.runs.values() if r.state == "backup" and r.journal is not None]

    def health(self) -> dict[str, Any]:
        """Connected, documents of open runs not yet known acknowledged, runs per state, last error."""
        states = [r.state for r in self.runs.values()]
        return {"connected": self.connected, "servers": self.cfg.servers, "stream": self.cfg.stream,
                "subject": self.cfg.subject, "unacknowledged": sum(r.sent - r.acked for r in self.runs.values()
                                                                   if r.state == "publishing"),
                "runs": {s: states.count(s) for s in ("publishing", "published", "backup")},
                "last_error": self.last_error}

    def close(self, timeout: float = 10.0) -> None:
        """Close open runs' journals; let the publishing process publish what it has read and exit (idempotent)."""
        for run in list(self._router.runs.values()):
            j, run._journal = run._journal, None
            if j is not None:
                j.close()
        self._router.clear()
        self._closing = True
        p = self._proc
        if self._wfd is not None:
            os.close(self._wfd)  # end of the documents: it finishes and exits
            self._wfd = None
        if p is not None:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("bus: the publishing process did not finish within %.0f s: killed", timeout)
        self._reap(kill=True)

    def __repr__(self) -> str:
        h = self.health()
        return f"<BusPublisher {self.cfg.subject} -> {self.cfg.stream} connected={h['connected']} runs={h['runs']}>"
