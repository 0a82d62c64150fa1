"""The one place that wires ``bluesky_tiled_plugins.TiledWriter``: journal first, Tiled off the RunEngine's thread.

:class:`ResilientTiledWriter` (what :func:`make_writer` returns for a catalog with a data directory) does, for every
document the RunEngine emits:

1. **journal** it (write-ahead): the document is appended to ``backup/<start uid>.journal`` (see :mod:`.journal`)
   on the RunEngine's thread, before anything else sees it;
2. **queue** it for a writer thread that sends it to Tiled through a ``TiledWriter``.

The RunEngine waits for the server only when the writer thread falls behind (more than ``max_queue`` documents
or ``max_queue_bytes`` queued: a slow but working server sets the pace, as a synchronous writer would) and at a
``stop`` (so that a run is in Tiled when ``RE(...)`` returns) -- and only while the writer makes progress (a
document written, or one HTTP request of it answered: the stop of a large run is some twenty requests, which a
loaded server may take longer than ``max_wait`` to answer in all): after ``max_wait`` seconds in which not one
document was written and not one request answered, or as soon as a health probe (tried every
``probe_timeout`` without progress) finds the server *unreachable* (connection refused, no route, reset), the
RunEngine goes on.  A probe that merely times out is a slow server (a loaded machine), not a gone one: the RunEngine
keeps waiting for it, up to ``max_wait`` without progress.  So a storage failure holds the experiment about
``probe_timeout`` (server gone) or at most ``max_wait`` (server hung or too slow) seconds, once per run.  When Tiled
is unreachable at the start of a run, fails during a run, or makes no progress for ``max_wait``, the run is left to
its journal (it is already all there) and ``espt replay`` sends it later; the next run tries the server again.  A
run written completely has its journal removed (``keep_journals=True`` keeps it).

Nothing here raises into the RunEngine: a failure is logged (ERROR when the journal cannot be written, CRITICAL when
neither the journal nor Tiled holds a run's documents) and shown in :attr:`ResilientTiledWriter.runs`.

Requests per run.  ``TiledWriter`` makes a fixed number of sequential HTTP requests per run, whatever its size, each
costing the server tens of ms of CPU (far more than writing the rows): the run and stream containers, one node
registration and one data-source update per data key (more updates only every ``batch_size`` rows), the stop
metadata, and a ``close_stream`` per node.  ``close_stream`` only feeds a streaming cache or webhooks; a server
started here (:meth:`LocalCatalog.start`, :meth:`LocalCatalog.in_process`) has neither
(:attr:`LocalCatalog.streams_need_closing` is False) and answers it by doing nothing.  For such a server
:func:`make_writer` writes through the *lean* writer (:func:`tiled_writer`; a subclass of bluesky-tiled-plugins'
private ``_RunWriter``, 2.0.x only, else the stock writer): each data node is registered with its first rows in
one request as soon as they come (not a registration and an update after ``batch_size`` rows), later rows are sent
at most every ``live_interval`` (1 s) per node, and nothing is closed: a fly image of K data keys is 2 + K + 1
requests when its passes come in one collect, plus K per later update.  Its data-node client classes also send no
``close_stream`` (Tiled's public ``structure_clients`` option, :class:`SkipStreamClose`), which is what remains on
the stock writer.  A server reached with :meth:`LocalCatalog.connect` or a client gets the stock writer and every
request.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bluesky_tiled_plugins import TiledWriter

from ..errors import InvalidArgument
from .journal import Journal, open_journal
from .routing import RunRouter
from .server import LocalCatalog, probe_server

logger = logging.getLogger(__name__)

#: Rows (events, or waveform frames of a stream resource) buffered before they are sent: small enough that a
#: reader sees a running map fill in, large enough not to cost one HTTP request per point.
LIVE_BATCH_SIZE = 25
#: Seconds between two requests that write rows of one data node (lean writer, see :func:`tiled_writer`): what a
#: Tiled reader of a running fly scan lags behind at most, besides ``batch_size``
LIVE_INTERVAL = 1.0
#: Seconds the RunEngine waits on a writer that makes no progress (see the module docstring).
MAX_WAIT = 10.0
#: Documents, and bytes (as journaled), waiting for the writer thread before the RunEngine waits for it.
MAX_QUEUE = 200
MAX_QUEUE_BYTES = 64 * 2**20
#: Seconds a health probe of the server may take.
PROBE_TIMEOUT = 1.0


@dataclass
class RunRecord:
    """What became of one run.

    ``state`` is ``"writing"`` (documents still going to Tiled), ``"written"`` (complete in Tiled) or ``"backup"``
    (Tiled does not have it all: its journal does; ``espt replay`` sends it).
    """

    uid: str
    journal: Path | None = None
    state: str = "writing"
    error: str | None = None
    journal_error: str | None = None
    n_docs: int = 0
    finished: bool = False  # its stop document is journaled
    active: bool = False  # the writer thread is sending one of its documents
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    _journal: Journal | None = field(default=None, repr=False)
    _tw: Any = field(default=None, repr=False)


_LIVE: "weakref.WeakSet[ResilientTiledWriter]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Give each writer up to its ``max_wait`` to send what is queued before the interpreter (and an in-process
    server, stopped by an earlier-registered, later-run exit handler) goes; the journals hold the rest."""
    for w in list(_LIVE):
        w.flush(w.max_wait)


def _copy_doc(o: Any) -> Any:
    """Copy the containers of a document (its arrays are shared): the writer thread reads it later, and
    TiledWriter edits some documents in place."""
    if isinstance(o, dict):
        return {k: _copy_doc(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_copy_doc(v) for v in o]
    return o


class ResilientTiledWriter:
    """Journal every document, then write it to Tiled from a background thread (see the module docstring).

    Subscribe it to a RunEngine: ``RE.subscribe(writer)``.

    Parameters
    ----------
    client_factory : callable
        Returns a Tiled client of the catalog (called in the writer thread when it has none).
    backup_directory : path
        Where journals go (``espt replay`` reads them).
    batch_size : int
        See :func:`make_writer`.
    max_wait : float, s
        The longest the RunEngine waits on this callback while it writes nothing (see the module docstring).
    max_queue, max_queue_bytes : int
        Documents, and journaled bytes, waiting for the writer thread before the RunEngine waits (at most
        ``max_wait``, then the rest of that run stays in its journal only).
    health_url : str, optional
        ``http://host:port/healthz`` of the server, probed before each run and every ``probe_timeout`` while the
        RunEngine waits without progress: an unreachable server sends the run to its journal at once; a slow one
        (no answer within ``probe_timeout``) is waited for, up to ``max_wait``.  Without one, the writer finds out
        by trying (and the RunEngine waits up to ``max_wait``).
    probe_timeout : float, s
        How long a health probe may take, and how long the RunEngine waits without progress between probes.
    fsync : {"group", "always", "close"}
        When journal records reach the disk (see :func:`~espt_bluesky.storage.journal.open_journal`).
    keep_journals : bool
        Keep the journal of runs written completely (default: remove it).
    lean : bool
        Write through :func:`tiled_writer` with ``lean=True`` (each data node registered with its first rows, no
        ``close_stream``): only for a server without a streaming cache and webhooks (see the module docstring).
    live_interval : float, s
        With ``lean``: the shortest time between two requests writing rows of one data node.
    """

    def __init__(self, client_factory: Callable[[], Any], backup_directory: str | os.PathLike,
                 batch_size: int = LIVE_BATCH_SIZE, *, max_wait: float = MAX_WAIT,
                 max_queue: int = MAX_QUEUE, max_queue_bytes: int = MAX_QUEUE_BYTES,
                 health_url: str | None = None, probe_timeout: float = PROBE_TIMEOUT, fsync: str = "group",
                 keep_journals: bool = False, lean: bool = False, live_interval: float = LIVE_INTERVAL):
        if not max_wait >= 0:
            raise InvalidArgument(f"max_wait={max_wait!r}; a number of seconds >= 0 is required")
        self._client_factory = client_factory
        self.backup_directory = Path(backup_directory)
        self.batch_size = int(batch_size)
        self.max_wait = float(max_wait)
        self.max_queue = max(int(max_queue), 1)
        self.max_queue_bytes = int(max_queue_bytes)
        self.health_url = health_url
        self.probe_timeout = float(probe_timeout)
        self.fsync = fsync
        self.keep_journals = bool(keep_journals)
        self.lean = bool(lean)
        self.live_interval = float(live_interval)
        #: start uid -> :class:`RunRecord`, every run this writer saw
        self.runs: dict[str, RunRecord] = {}
        #: True / False after the last probe or write, None before any
        self.server_up: bool | None = None
        #: HTTP requests to Tiled answered so far (any status) on the writer's client: what the runs cost in
        #: requests (health probes and the client's own set-up requests not counted)
        self.requests_answered = 0
        self._router: RunRouter[RunRecord] = RunRouter()  # the runs between start and stop
        self._client: Any = None
        self._queue: queue.Queue = queue.Queue()
        self._queued_bytes = 0
        self._queued_docs = 0
        self._handled = 0  # documents the writer thread finished
        self._progress = 0  # documents finished + HTTP answers received by the writer thread (what _hold watches)
        self._space = threading.Condition()
        self._idle = threading.Condition()
        self._busy = 0  # items queued or being written
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _LIVE.add(self)

    # ------------------------------------------------------------------ RunEngine thread
    def __call__(self, name: str, doc: dict) -> None:
        run = self._run_of(name, doc)
        if run is None:
            logger.warning("%s document outside any run (uid %s): not written", name, doc.get("uid"))
            return
        nbytes = self._journal(run, name, doc)
        if run.state == "writing":
            self._enqueue(run, name, doc, nbytes)
        if name == "stop":
            self._router.close(run)
            self._wait_stop(run)

    def _run_of(self, name: str, doc: dict) -> RunRecord | None:
        if name != "start":
            return self._router.find(name, doc)
        run = RunRecord(doc["uid"])
        self.runs[run.uid] = run
        self._router.open(run.uid, run)
        try:
            run._journal = open_journal(self.backup_directory, run.uid, fsync=self.fsync)
            run.journal = run._journal.path
        except Exception as exc:  # noqa: BLE001 - the run goes on; say loudly that it has no backup
            run.journal_error = f"{type(exc).__name__}: {exc}"
            logger.error("run %s: cannot open its backup journal in %s (%s): its documents exist only in "
                         "Tiled", run.uid, self.backup_directory, run.journal_error)
        return run

    def _journal(self, run: RunRecord, name: str, doc: dict) -> int:
        run.n_docs += 1
        j = run._journal
        if j is None:
            return 1024
        try:
            n = j.append(name, doc)
            if name == "stop":
                j.finish()
                run.finished = True
                self._release(run)
            return n
        except Exception as exc:  # noqa: BLE001
            run.journal_error = f"{type(exc).__name__}: {exc}"
            run._journal = None
            logger.error("run %s: writing its backup journal %s failed (%s): the rest of the run exists only in "
                         "Tiled", run.uid, run.journal, run.journal_error)
            try:
                j.close()
            except Exception:  # noqa: BLE001
                pass
            return 1024

    def _hold(self, run: RunRecord, ready: Callable[[], bool], why: str) -> bool:
        """Wait (RunEngine thread) until ``ready()``, while the writer makes progress; False after giving ``run``
        up: at once if the server is unreachable (probed after ``probe_timeout`` without progress, then every
        ``probe_timeout``), else after ``max_wait`` without progress.  A slow answer is not a dead server: under
        load a working server may take longer than ``probe_timeout`` to answer, so only ``max_wait`` ends that."""
        seen = self._progress
        since = last_probe = time.monotonic()
        step = min(self.probe_timeout, self.max_wait)
        while True:
            with self._space:
                if ready():
                    return True
                self._space.wait(step / 4 or 0.01)
                if ready():
                    return True
            now = time.monotonic()
            if self._progress != seen:
                seen, since, last_probe = self._progress, now, now
                continue
            left = self.max_wait - (now - since)
            if left <= 0:
                self._give_up(run, f"the Tiled writer made no progress for max_wait={self.max_wait} s ({why})")
                return False
            if self.health_url is not None and now - last_probe >= step:
                state = probe_server(self.health_url, timeout=max(min(self.probe_timeout, left), 0.01))
                last_probe = time.monotonic()
                if state == "down":
                    self.server_up = False
                    self._give_up(run, "the Tiled server stopped answering during the run (unreachable)")
                    return False

    def _full(self, nbytes: int) -> bool:
        return self._queued_docs > 0 and (self._queued_docs >= self.max_queue
                                          or self._queued_bytes + nbytes > self.max_queue_bytes)

    def _enqueue(self, run: RunRecord, name: str, doc: dict, nbytes: int) -> None:
        with self._space:
            full = self._full(nbytes)
        if full and not self._hold(run, lambda: not self._full(nbytes), "it fell behind"):
            return
        with self._space:
            self._queued_bytes += nbytes
            self._queued_docs += 1
        with self._idle:
            self._busy += 1
        self._ensure_thread()
        self._queue.put((run, name, _copy_doc(doc), nbytes))

    def _wait_stop(self, run: RunRecord) -> None:
        self._hold(run, run.done.is_set, "at the end of the run")  # (giving up says so)

    def _give_up(self, run: RunRecord, why: str) -> None:
        """Leave the rest of ``run`` to its journal (any thread)."""
        with self._lock:
            if run.state != "writing":
                return
            run.state, run.error, run._tw = "backup", why, None
        if run.journal is not None and run.journal_error is None:
            logger.warning("run %s: %s; the run is kept in the backup journal %s -- send it with `espt replay %s`",
                           run.uid, why, run.journal, self.backup_directory)
        else:
            logger.critical("run %s: NOT SAVED COMPLETELY: %s, and its backup journal failed (%s)", run.uid, why,
                            run.journal_error)
        run.done.set()
        self._release(run)

    def _release(self, run: RunRecord) -> None:
        """Close a run's journal once nothing will use it (its stop journaled, its writing over), removing it if
        Tiled has the whole run.  Until then it stays locked: a replay leaves it alone."""
        with self._lock:
            j = run._journal
            if j is None or not (run.finished and run.done.is_set() and not run.active):
                return
            run._journal = None
        if run.state == "written" and not self.keep_journals:
            j.path.unlink(missing_ok=True)
        j.close()

    # ------------------------------------------------------------------ writer thread
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="espt-tiled-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run, name, doc, nbytes = item
            try:
                if run.state == "writing":
                    run.active = True
                    try:
                        self._write(run, name, doc)
                    finally:
                        run.active = False
                self._release(run)
            finally:
                with self._space:
                    self._queued_bytes -= nbytes
                    self._queued_docs -= 1
                    self._handled += 1
                    self._progress += 1
                    self._space.notify_all()
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _write(self, run: RunRecord, name: str, doc: dict) -> None:
        try:
            if name == "start":
                # unreachable: the run goes to its journal at once; slow (a loaded server): try it anyway, the
                # RunEngine's wait on this thread stays bounded by max_wait without progress
                if self.health_url is not None and \
                        probe_server(self.health_url, timeout=self.probe_timeout) == "down":
                    self.server_up = False
                    raise ConnectionError(f"the Tiled server is unreachable at {self.health_url}")
                if self._client is None:
                    self._client = self._client_factory().include_data_sources()
                    hooks = self._client.context.http_client.event_hooks["response"]
                    if self._answered not in hooks:
                        hooks.append(self._answered)
                run._tw = tiled_writer(self._client, self.batch_size, lean=self.lean, min_interval=self.live_interval)
            tw = run._tw
            if tw is None:
                return
            tw(name, doc)
            self.server_up = True
        except Exception as exc:  # noqa: BLE001 - the journal has the run
            self._client = None
            self._give_up(run, f"writing to Tiled failed ({type(exc).__name__}: {exc})")
            return
        if name == "stop":
            with self._lock:
                if run.state != "writing":
                    return
                run.state, run._tw = "written", None
            run.done.set()

    def _answered(self, response: Any) -> None:
        """httpx response hook of the writer's client: an answered request is progress (see :meth:`_hold`)."""
        self.requests_answered += 1
        self._progress += 1  # one writer thread: no lock needed; _hold only compares values

    # ------------------------------------------------------------------ use
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued document was handled (written, or left to its journal); True if so."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    @property
    def pending(self) -> list[Path]:
        """Journals of runs that Tiled does not hold completely (to send with ``espt replay``)."""
        return [r.journal for r in self.runs.values() if r.state == "backup" and r.journal is not None]

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the writer thread (idempotent).  Runs still open keep their journals."""
        self.flush(timeout)
        t = self._thread
        if t is not None and t.is_alive():
            self._queue.put(None)
            t.join(timeout)
        self._thread = None
        for run in self.runs.values():
            j, run._journal = run._journal, None
            if j is not None:
                j.close()

    def __repr__(self) -> str:
        states = [r.state for r in self.runs.values()]
        return (f"<ResilientTiledWriter {self.backup_directory} runs={len(states)} "
                f"written={states.count('written')} backup={states.count('backup')}>")


class _NoStreamClose:
    """Client mixin: ``close_stream`` sends nothing (only for servers where the request does nothing)."""

    def close_stream(self) -> None:
        return None


class SkipStreamClose(Mapping):
    """Tiled ``structure_clients`` whose data-node client classes send no ``close_stream`` request.

    Tiled's public ``from_uri(..., structure_clients=...)`` option picks the client class of every node a client
    creates or opens.  This mapping hands out the classes of ``base`` (default: Tiled's numpy clients, with the
    spec clients plugins register), the plain structure-family ones (array, table, ...) as subclasses whose
    ``close_stream`` does nothing.  ``TiledWriter`` registers each data key of a stream as such a node, so its stop
    leaves out one request per data key.  Spec clients (``BlueskyRun``, ``BlueskyEventStream``: they pick their
    own subclass when made) are handed out unchanged, so the run and stream containers are still closed.  Use it
    only with a server configured without a streaming cache and without webhooks
    (:attr:`~espt_bluesky.storage.server.LocalCatalog.streams_need_closing` False), where the request is answered
    by doing nothing.
    """

    #: Tiled's structure families besides containers (the keys of its default client mapping)
    FAMILIES = frozenset({"array", "awkward", "bytes", "ragged", "sparse", "table", "dataframe",
                          "xarray_dataset"})

    def __init__(self, base: Mapping | None = None):
        if base is None:
            from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH

            base = DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"]
        self._base = base
        self._made: dict[type, type] = {}

    def __getitem__(self, key: str) -> type:
        cls = self._base[key]
        if key not in self.FAMILIES:
            return cls
        made = self._made.get(cls)
        if made is None:
            made = self._made[cls] = type(cls.__name__, (_NoStreamClose, cls), {"__module__": __name__})
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


# ------------------------------------------------------------------------------------ fewer requests per run
#: bluesky-tiled-plugins releases whose private ``_RunWriter`` the lean writer below was written against and tested
#: with (2.0.x: ``get_sres_node``, ``_sres_nodes``, ``_consolidators``, ``_stream_resource_cache``,
#: ``_external_data_cache``, ``_desc_nodes``, ``_close_stream_tree``; ``TiledWriter._factory``)
LEAN_WRITER_VERSIONS = ("2.0", "2.1")


def _lean_supported() -> bool:
    """Whether the installed bluesky-tiled-plugins is one the lean writer was written for (else: the stock one)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        v = Version(version("bluesky-tiled-plugins"))
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return False
    lo, hi = (Version(x) for x in LEAN_WRITER_VERSIONS)
    if not lo <= v < hi:
        return False
    from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter

    return all(hasattr(_RunWriter, a) for a in ("get_sres_node", "stream_datum", "_close_stream_tree")) and \
        hasattr(TiledWriter, "_factory")


_LEAN_CLASSES: tuple[type, type] | None = None


def _lean_classes() -> tuple[type, type]:
    """(TiledWriter subclass, its per-run writer): made on first use, the private base imported only then.

    The one place this package subclasses a private class of bluesky-tiled-plugins (``_RunWriter``, 2.0.x;
    :data:`LEAN_WRITER_VERSIONS`; :func:`tiled_writer` falls back to the stock writer on any other release).  What
    it changes, only for a server without a streaming cache and without webhooks:

    * **a data node is registered with its rows, in one request.**  The stock writer registers a StreamResource's
      node with an empty shape when its first rows are flushed, then sends its data source again with the rows (two
      requests); here the rows are consumed first and the node registered with them.  (With a streaming cache the
      stock order is kept: subscribers are told of rows by the data-source update.)
    * **rows at most every ``min_interval`` seconds per node**: a node is registered once its first rows have
      waited ``min_interval`` (and a later StreamDatum comes) or at the stop, and later rows are sent once
      ``batch_size`` of them wait (as by the stock writer) and not sooner than ``min_interval`` after the node's
      last request; whatever waits is sent at the stop.  A fly scan collects whole passes every half second:
      without this each collect would cost one request per data key, a request costing the server far more than
      writing the rows; a run shorter than ``min_interval`` costs one request per data node in all.
    * **no ``close_stream``** for any node (run, streams, data): such a server answers it by doing nothing.
    """
    global _LEAN_CLASSES
    if _LEAN_CLASSES is not None:
        return _LEAN_CLASSES
    from bluesky_tiled_plugins.writing.consolidators import consolidator_factory
    from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter, concatenate_stream_datums

    class LeanRunWriter(_RunWriter):
        def __init__(self, *args: Any, min_interval: float = 0.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._min_interval = float(min_interval)
            # stream resource uid -> when its node was last written (before: when its first rows came)
            self._last_sent: dict[str, float] = {}

        def _new_node(self, doc: dict) -> bool:
            """Whether ``doc``'s rows belong to a data node not made yet (and one this writer can make: its stream
            resource and descriptor known, no earlier resource of the same data key, which the stock code extends)."""
            sres_uid = doc["stream_resource"]
            desc_node = self._desc_nodes.get(doc["descriptor"])
            sres_doc = self._stream_resource_cache.get(sres_uid)
            return (sres_uid not in self._sres_nodes and sres_doc is not None and desc_node is not None
                    and f"{desc_node.item['id']}_{sres_doc['data_key']}" not in self._sres_nodes)

        def stream_datum(self, doc: dict) -> None:
            sres_uid = doc["stream_resource"]
            new = self._new_node(doc)
            if not new and (sres_uid not in self._sres_nodes or self._batch_size <= 1):
                return super().stream_datum(doc)  # cases the stock code handles (and reports)
            cached = self._external_data_cache.pop(sres_uid, None)
            if cached is not None:
                try:
                    doc = concatenate_stream_datums(cached, doc)
                except ValueError:  # not consecutive: the cached rows go on their own first, as in the stock code
                    self._send(cached)
                    new = False
            now = time.monotonic()
            if new:  # its first rows: the node is registered with them once they have waited min_interval
                first = self._last_sent.setdefault(sres_uid, now)
                if self._batch_size <= 1 or now - first >= self._min_interval:  # batch_size 1: every row at once
                    self._send(doc)
                else:
                    self._external_data_cache[sres_uid] = doc
                return
            rows = doc["indices"]["stop"] - doc["indices"]["start"]
            if rows >= self._batch_size and now - self._last_sent.get(sres_uid, -math.inf) >= self._min_interval:
                self._send(doc)
            else:  # sent with later rows, or at the stop
                self._external_data_cache[sres_uid] = doc

        def _send(self, doc: dict) -> None:
            """Write the rows of ``doc``: register its node with them (one request) if it has none yet."""
            if self._new_node(doc):
                self._register_with_rows(doc, self._desc_nodes[doc["descriptor"]],
                                         self._stream_resource_cache[doc["stream_resource"]])
            else:
                self._write_external_data(doc)
            self._last_sent[doc["stream_resource"]] = time.monotonic()

        def stop(self, doc: dict) -> None:
            # nodes whose first rows still wait are registered with them (one request), not by the stock stop
            # (a registration and an update)
            for sres_uid, cached in list(self._external_data_cache.items()):
                if self._new_node(cached):
                    del self._external_data_cache[sres_uid]
                    self._send(cached)
            super().stop(doc)

        def _register_with_rows(self, doc: dict, desc_node: Any, sres_doc: dict) -> None:
            sres_uid = doc["stream_resource"]
            full_key = f"{desc_node.item['id']}_{sres_doc['data_key']}"
            consolidator = consolidator_factory(sres_doc, desc_node.metadata)
            consolidator.consume_stream_datum(doc)  # the rows first: the node is registered with them
            data_source = consolidator.get_data_source()
            node = desc_node.new(key=consolidator.data_key, structure_family=data_source.structure_family,
                                 data_sources=[data_source], metadata={}, specs=[], access_tags=self.access_tags)
            self._consolidators[sres_uid] = self._consolidators[full_key] = consolidator
            self._sres_nodes[sres_uid] = self._sres_nodes[full_key] = node

        def _close_stream_tree(self) -> None:
            return None  # no streaming cache, no webhooks: the server would do nothing with it

    class LeanTiledWriter(TiledWriter):
        def __init__(self, *args: Any, min_interval: float = 0.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.min_interval = float(min_interval)

        def _factory(self, name: str, doc: dict):
            run_writer = LeanRunWriter(self.client, batch_size=self._batch_size,
                                       max_array_size=self._max_array_size, validate=self._validate,
                                       ignore_errors=self.ignore_errors, min_interval=self.min_interval)
            cb: Any = run_writer
            if self._normalizer:
                cb = self._normalizer(patches=self.patches, spec_to_mimetype=self.spec_to_mimetype)
                cb.subscribe(run_writer)
            return [cb], []

    _LEAN_CLASSES = (LeanTiledWriter, LeanRunWriter)
    return _LEAN_CLASSES


def tiled_writer(client: Any, batch_size: int = LIVE_BATCH_SIZE, *, lean: bool = False,
                 min_interval: float = 0.0) -> TiledWriter:
    """A ``TiledWriter`` of ``client``; with ``lean=True`` (and a bluesky-tiled-plugins release it was written
    for) one that spends fewer requests per run: each data node registered with its first rows in one request, and
    no ``close_stream`` (see :func:`_lean_classes`).  Pass ``lean=True`` only for a server with neither a streaming
    cache nor webhooks (:attr:`~espt_bluesky.storage.server.LocalCatalog.streams_need_closing` False).
    ``min_interval`` (s, lean writer only): the shortest time between two requests writing rows of one data node.
    """
    if lean and _lean_supported():
        return _lean_classes()[0](client, batch_size=int(batch_size), min_interval=min_interval)
    if lean:
        logger.info("bluesky-tiled-plugins is not a release the lean writer knows (%s): the stock TiledWriter "
                    "writes (two requests per data node, close_stream sent)", LEAN_WRITER_VERSIONS)
    return TiledWriter(client, batch_size=int(batch_size))


def make_writer(target: Any, *, backup_directory: str | os.PathLike | None = None,
                batch_size: int = LIVE_BATCH_SIZE, max_wait: float = MAX_WAIT,
                **kwargs: Any) -> ResilientTiledWriter | TiledWriter:
    """The writer for a catalog: every document journaled first, then written to Tiled without stalling the run.

    Parameters
    ----------
    target : LocalCatalog or tiled client
        Where runs are written.
    backup_directory : path, optional
        Where the journals go (default: the catalog's ``backup/`` directory).  Without one (and no catalog
        directory), a plain ``TiledWriter`` is returned: synchronous, and its errors propagate.
    batch_size : int
        Events (or stream-datum rows) per write; 1 shows every point at once, TiledWriter's own default
        (10,000) shows nothing until the end of most runs.
    max_wait : float, s
        The longest the RunEngine waits on the writer for one document (see :class:`ResilientTiledWriter`).
    **kwargs
        ``max_queue``, ``max_queue_bytes``, ``probe_timeout``, ``fsync``, ``keep_journals``, ``live_interval``: see
        :class:`ResilientTiledWriter`.

    Returns
    -------
    ResilientTiledWriter or TiledWriter
        Subscribe it to a RunEngine: ``RE.subscribe(writer)``.
    """
    lean = False
    if isinstance(target, LocalCatalog):
        factory = target.client
        if not target.streams_need_closing:  # our own server: close_stream does nothing there
            factory = lambda: target.client(structure_clients=SkipStreamClose())  # noqa: E731
            lean = True
        health = f"{target.base_url}/healthz"
        if backup_directory is None and target.backup_dir is not None:
            backup_directory = target.backup_dir
    else:
        factory = lambda: target  # noqa: E731
        api = str(getattr(getattr(target, "context", None), "api_uri", "") or "")
        health = api.split("/api/v1")[0] + "/healthz" if "/api/v1" in api else None
    if backup_directory is None:  # the same live interval as the journaled writer's
        return tiled_writer(factory(), batch_size, lean=lean,
                            min_interval=float(kwargs.get("live_interval", LIVE_INTERVAL)))
    return ResilientTiledWriter(factory, backup_directory, batch_size, max_wait=max_wait, health_url=health,
                                lean=lean, **kwargs)


# ---------------------------------------------------------------------------------------------- bus workers
def new_tiled_writer(client: Any, batch_size: int = 10_000) -> TiledWriter:
    """A plain ``TiledWriter`` of ``client`` (the bus's Tiled worker commits batches itself with
    :func:`flush_tiled_writer` before it acknowledges them)."""
    return TiledWriter(client, batch_size=int(batch_size))


def flush_tiled_writer(tw: TiledWriter) -> int:
    """Write every row and stream datum ``tw`` holds in its batches now; return how many batches were written.

    ``TiledWriter`` has no public flush: this reaches into its per-run writers (bluesky-tiled-plugins 2.0) the way
    its own ``stop`` does, so that a caller knows which documents are in Tiled.
    """
    from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter

    n = 0
    for callbacks in list(tw._run_router._factory_cbs_by_start.values()):
        for cb in callbacks:
            writers = [cb] if isinstance(cb, _RunWriter) else \
                [w for w in getattr(cb, "_token_refs", {}).values() if isinstance(w, _RunWriter)]
            for rw in writers:
                for desc_name, cache in rw._internal_data_cache.items():
                    if cache:
                        rw._write_internal_data(cache, desc_node=rw._desc_nodes[desc_name])
                        cache.clear()
                        n += 1
                for sres_uid in list(rw._external_data_cache):
                    rw._write_external_data(rw._external_data_cache[sres_uid])
                    del rw._external_data_cache[sres_uid]
                    n += 1
    return n
