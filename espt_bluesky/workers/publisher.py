"""RunEngine side of the bus: publish every document to JetStream; the local journal when JetStream cannot take it.

:class:`BusPublisher` is a RunEngine subscriber.  Per document it packs the document (msgpack, as ``bluesky-nats``
does) and hands it to an I/O thread (``bluesky_nats.nats_runtime.NatsRuntime``) that publishes it with
``js.publish_async``: the RunEngine does not wait for JetStream's acknowledgement, only for room among
``max_pending`` unacknowledged publishes.  It waits for one acknowledgement per run, the start's (which proves
JetStream takes the run, and whose stream sequence every later document of the run carries in its
``Espt-Start-Seq`` header), and at the stop, for the rest of the run -- each wait at most ``publish_timeout``.

Backup: with ``journal="on_failure"`` (default) the run's documents are kept in memory (references, no copy) until
JetStream acknowledged them all, and written to ``<backup>/<start uid>.journal`` (:mod:`espt_bluesky.storage.journal`,
the format ``espt replay`` reads) only if the bus fails the run -- the whole run, so that the journal holds strictly
more than the partial copy a worker wrote.  With ``journal="always"`` every document is appended to the journal
before it is published (write-ahead: not even the death of this process loses a document in flight), at the price of
a JSON encoding, a write and a wake-up of the journal's fsync thread per document (about 1 ms for a document carrying
a 2000-sample CV, see benchmarks/bench_bus.py).  A run whose documents JetStream acknowledged completely has its
journal removed (``keep_journals`` keeps it).

When JetStream is unreachable at a run's start, or fails during the run (an error, or no acknowledgement within
``publish_timeout``), the run goes to its journal -- say so loudly (ERROR log, :attr:`BusPublisher.runs`) -- and
``espt replay`` delivers it later (it replaces a partial copy a worker wrote, the journal holding strictly more).
The next run tries the bus again.  Nothing here raises into the RunEngine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, check_choice
from .bus import H_MSG_ID, H_RUN, H_START_SEQ, JOURNAL_MODES, BusConfig, doc_id, ensure_stream, pack

logger = logging.getLogger(__name__)

#: seconds between two looks of the sender at its queue while a run is open
POLL = 0.01


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
    _journal: Any = field(default=None, repr=False)
    _docs: list | None = field(default=None, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)


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
        from bluesky_nats.nats_runtime import NatsRuntime

        self.cfg = config if isinstance(config, BusConfig) else BusConfig.from_mapping(config)
        if backup_directory is None:
            raise InvalidArgument("backup_directory=None: the bus publisher needs a local backup directory")
        self.backup_directory = Path(backup_directory)
        self.journal_mode = check_choice("journal", journal or self.cfg.journal, JOURNAL_MODES)
        self.runs: dict[str, BusRun] = {}
        self._open: dict[str, BusRun] = {}
        self._route: dict[str, BusRun] = {}
        self._slots = threading.BoundedSemaphore(self.cfg.max_pending)
        self._rt = NatsRuntime(name="espt-bus-publisher", owns_client=False)
        self._nc: Any = None
        self._js: Any = None
        self._queue: collections.deque = collections.deque()  # (run, subject, payload, headers, waiter)
        self._sending = False
        self._idle = True  # the sender waits for a wake-up (else it looks at the queue by itself)
        self._wake: asyncio.Event | None = None
        self._connecting: Any = None
        self.last_error: str | None = None
        self._closing = False
        self._connect(wait=True)

    # ------------------------------------------------------------------ connection (I/O thread)
    async def _aconnect(self) -> None:
        import nats

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        async def on_disconnect() -> None:
            if not self._rt.closed and not self._closing:
                logger.warning("bus: disconnected from NATS %s", self.cfg.servers)

        opts = self.cfg.connect_options()
        opts["max_reconnect_attempts"] = -1
        nc = await nats.connect(**opts, error_cb=on_error, disconnected_cb=on_disconnect)
        js = nc.jetstream(publish_async_max_pending=self.cfg.max_pending + 16)
        try:
            await ensure_stream(js, self.cfg)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        if not self._sending:
            self._sending = True
            self._wake = asyncio.Event()
            self._rt.loop.create_task(self._sender())

    def _connect(self, wait: bool) -> bool:
        """Connect (waiting up to ``connect_timeout`` if ``wait``, else in the background); True if connected."""
        if self.connected:
            return True
        if self._nc is not None:  # connected once: the client reconnects by itself
            return False
        if self._connecting is None or self._connecting.done():
            self._connecting = self._rt.spawn(self._aconnect())
        if not wait:
            return False
        try:
            self._connecting.result(timeout=self.cfg.connect_timeout + 1.0)
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("bus: cannot reach NATS JetStream at %s (%s): runs go to the local backup %s until it "
                         "answers", ", ".join(self.cfg.servers), self.last_error, self.backup_directory)
            return False
        return self.connected

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected and self._js is not None

    async def _sender(self) -> None:
        """Publish queued documents in order; each acknowledgement is awaited by a task of its own.

        The RunEngine's thread only appends to a deque and never wakes this loop (a write to its self-pipe hands the
        GIL to this thread at once: the RunEngine would wait for the publish after all, milliseconds on a busy
        machine).  While a run is open the sender looks at the deque every ``POLL`` seconds; between runs it sleeps
        until a start document wakes it.
        """
        q = self._queue
        while True:
            if not q:
                if self._open:
                    await asyncio.sleep(POLL)
                    continue
                self._wake.clear()
                self._idle = True
                if not q and not self._open:
                    await self._wake.wait()
                self._idle = False
                continue
            while q:
                run, subject, payload, headers, waiter = q.popleft()
                try:
                    ack = await self._js.publish_async(subject, payload, headers=headers,
                                                       wait_stall=self.cfg.publish_timeout)
                except Exception as exc:  # noqa: BLE001
                    self._settled(run, None, exc, waiter)
                    continue
                asyncio.ensure_future(self._await_ack(run, ack, waiter))

    async def _await_ack(self, run: BusRun, fut: Any, waiter: Any) -> None:
        try:
            ack = await asyncio.wait_for(fut, timeout=self.cfg.publish_timeout)
        except BaseException as exc:  # noqa: BLE001 - TimeoutError, APIError, NoStreamResponseError, cancelled
            self._settled(run, None, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)), waiter)
            return
        self._settled(run, ack, None, waiter)

    def _settled(self, run: BusRun, ack: Any, exc: Exception | None, waiter: Any) -> None:
        self._slots.release()
        with run._cond:
            if exc is None:
                run.acked += 1
            elif run.error is None:
                run.error = (f"JetStream did not acknowledge within publish_timeout={self.cfg.publish_timeout} s"
                             if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else
                             f"publishing failed ({type(exc).__name__}: {exc})")
            run._cond.notify_all()
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(ack)
            else:
                waiter.set_exception(exc)

    # ------------------------------------------------------------------ RunEngine thread
    def __call__(self, name: str, doc: dict) -> None:
        try:
            self._handle(name, doc)
        except Exception:  # noqa: BLE001 - never into the RunEngine
            logger.exception("bus: handling a %s document failed", name)

    def _handle(self, name: str, doc: dict) -> None:
        run = self._run_of(name, doc)
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
            if run.error is not None:
                self._fail_over(run, run.error)
            elif not self._slots.acquire(timeout=self.cfg.publish_timeout):
                self._fail_over(run, f"{self.cfg.max_pending} documents unacknowledged for publish_timeout="
                                     f"{self.cfg.publish_timeout} s")
            else:
                self._enqueue(run, name, doc, None)
        if name == "stop":
            self._stop(run)

    def _run_of(self, name: str, doc: dict) -> BusRun | None:
        if name == "start":
            run = BusRun(doc["uid"])
            self.runs[run.uid] = self._open[run.uid] = run
            return run
        key = doc.get("run_start")
        if key is None:
            key = doc.get("descriptor") or doc.get("resource") or doc.get("stream_resource")
            run = self._route.get(key) if isinstance(key, str) else None
        else:
            run = self._open.get(key)
        if run is None and len(self._open) == 1:
            run = next(iter(self._open.values()))
        if run is not None and name in ("descriptor", "resource", "stream_resource"):
            self._route[doc["uid"]] = run
        return run

    def _enqueue(self, run: BusRun, name: str, doc: dict, waiter: Any) -> None:
        headers = {H_RUN: run.uid, H_MSG_ID: doc_id(run.uid, name, doc, run.n_docs)}
        if run.start_seq is not None:
            headers[H_START_SEQ] = str(run.start_seq)
        item = (run, self.cfg.subject_of(name), pack(doc), headers, waiter)
        with run._cond:
            run.sent += 1
        self._queue.append(item)
        if self._idle:  # between runs: a start document wakes the sender (once a run)
            self._idle = False
            self._rt.loop.call_soon_threadsafe(self._wake.set)

    def _start(self, run: BusRun, doc: dict) -> None:
        if self.journal_mode == "always":
            self._open_journal(run)
            if run._journal is not None:
                self._journal_append(run, "start", doc)
        else:
            run._docs = [("start", doc)]
        if not self.connected and not self._connect(wait=False):
            # (the connection attempt goes on in the background: the next run tries the bus again)
            self._fail_over(run, f"NATS JetStream at {', '.join(self.cfg.servers)} is unreachable"
                                 + (f" ({self.last_error})" if self.last_error else ""))
            return
        from concurrent.futures import Future

        waiter: Future = Future()
        if not self._slots.acquire(timeout=self.cfg.publish_timeout):
            self._fail_over(run, "the bus is saturated (no acknowledgements)")
            return
        self._enqueue(run, "start", doc, waiter)
        try:
            ack = waiter.result(timeout=self.cfg.publish_timeout + 0.5)
            run.start_seq = int(ack.seq)
        except Exception as exc:  # noqa: BLE001
            self._fail_over(run, run.error or f"the start document was not acknowledged ({type(exc).__name__}: "
                                              f"{exc})")

    def _stop(self, run: BusRun) -> None:
        self._open.pop(run.uid, None)
        self._route = {k: r for k, r in self._route.items() if r is not run}
        if run.state == "publishing":
            deadline = time.monotonic() + self.cfg.publish_timeout
            with run._cond:
                while run.acked < run.sent and run.error is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    run._cond.wait(left)
                done = run.acked == run.sent and run.error is None
            if done:
                run.state = "published"
            else:
                self._fail_over(run, run.error or f"{run.sent - run.acked} documents unacknowledged "
                                                  f"{self.cfg.publish_timeout} s after the stop")
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
        """Connected, unacknowledged documents, runs per state, last error."""
        states = [r.state for r in self.runs.values()]
        return {"connected": self.connected, "servers": self.cfg.servers, "stream": self.cfg.stream,
                "subject": self.cfg.subject, "unacknowledged": sum(r.sent - r.acked for r in self.runs.values()
                                                                   if r.error is None),
                "runs": {s: states.count(s) for s in ("publishing", "published", "backup")},
                "last_error": self.last_error}

    def close(self, timeout: float = 10.0) -> None:
        """Close open runs' journals, drain the connection, stop the I/O thread (idempotent)."""
        for run in list(self._open.values()):
            j, run._journal = run._journal, None
            if j is not None:
                j.close()
        self._open.clear()
        self._closing = True
        from .bus import close_runtime

        close_runtime(self._rt, self._nc)

    def __repr__(self) -> str:
        h = self.health()
        return f"<BusPublisher {self.cfg.subject} -> {self.cfg.stream} connected={h['connected']} runs={h['runs']}>"
