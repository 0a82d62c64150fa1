"""``espt worker tiled``: write the documents on the bus to Tiled, every event exactly once.

The same writer as in-process (``TiledWriter`` from :mod:`espt_bluesky.storage.writer`, one per run), fed from a
durable JetStream consumer instead of the RunEngine.  A batch of messages is fed to the runs' writers, their batches
are written (:func:`~espt_bluesky.storage.writer.flush_tiled_writer`), and only then is the batch acknowledged.

Exactly once, whatever happens (worker killed, Tiled down, acknowledgements lost):

* a message of a run this process writes is fed once: one whose stream sequence is not above the run's last one fed
  is a redelivery, acknowledged and dropped;
* a run this process does not hold (it was restarted, or a failure made its state uncertain) is rebuilt from the
  stream: if Tiled has it complete (its stop), its messages are dropped; otherwise a partial copy in Tiled is
  deleted and the run is written again from its start document (the ``Espt-Start-Seq`` header) up to the last of
  its documents the stream holds, read with an ephemeral consumer (not only up to the message at hand: an older
  message left unacknowledged by a killed worker comes again after newer ones were acknowledged).  The stream
  holds every document for its retention time (``bus.max_age_days``); a run whose start is gone from it is left
  as it is in Tiled, with an error, and its journal on the acquisition host (``espt replay``) still has it;
* a batch that Tiled refuses is not acknowledged; the worker waits until Tiled answers its health probe, forgets the
  runs of the batch (their writers' state is uncertain) and asks for the batch again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from .bus import H_RUN, H_START_SEQ, ArrayRestorer, BusConfig, run_documents
from .consumer import DurableWorker, Message

logger = logging.getLogger(__name__)

#: messages fetched, written and acknowledged together: a fetch takes what the stream has up to this many, so live
#: batches stay small (latency) while a worker catching up writes ~200 spots per Tiled request (HDF5 asset runs: an
#: event and four stream datums per spot); Tiled's requests per batch, not the documents, set its pace
BATCH = 1000
#: finished runs remembered (to drop their redelivered messages without asking Tiled)
DONE_MEMORY = 1000


@dataclass
class _Run:
    uid: str
    tw: Any = None  # None: the run's messages are dropped (complete in Tiled, or cannot be rebuilt)
    last_seq: int = 0
    reason: str = ""
    rebuilt: bool = False
    arrays: ArrayRestorer | None = None

    def feed(self, name: str, doc: dict) -> None:
        if self.arrays is None:
            self.arrays = ArrayRestorer()
        self.tw(name, self.arrays(name, doc))


class TiledWorker(DurableWorker):
    """Durable consumer ``durable`` writing runs to the Tiled catalog of ``client_factory()``.

    Parameters
    ----------
    config : BusConfig
    client_factory : callable
        Returns a (writable) Tiled client of the catalog.
    health_url : str, optional
        ``http://host:port/healthz`` of the Tiled server, probed after a failed batch.
    durable : str
        Consumer name (default ``espt-tiled``).
    batch, ack_wait
        See :class:`~espt_bluesky.workers.consumer.DurableWorker` (default batch :data:`BATCH`).

    Attributes
    ----------
    written : list of str
        Start uids of runs written completely (stop included) by this process.
    rebuilt : list of str
        Runs met in the middle and rewritten from the stream.
    """

    kind = "tiled worker"

    def __init__(self, config: BusConfig, client_factory: Callable[[], Any], *, health_url: str | None = None,
                 durable: str = "espt-tiled", batch: int = BATCH, ack_wait: float = 60.0, fetch_timeout: float = 1.0):
        super().__init__(config, durable, batch=batch, ack_wait=ack_wait, fetch_timeout=fetch_timeout)
        self._client_factory = client_factory
        self._client: Any = None
        self.health_url = health_url
        self.runs: "OrderedDict[str, _Run]" = OrderedDict()
        self.written: list[str] = []
        self.rebuilt: list[str] = []
        self.errors: list[str] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def connect(self) -> None:
        """Connect to the bus, and to Tiled (the writer's imports done now, not at the first document)."""
        from ..storage import writer  # noqa: F401

        super().connect()
        try:
            self.client  # noqa: B018
        except Exception as exc:  # noqa: BLE001 - documents wait in the stream; the first batch waits for Tiled
            logger.warning("tiled worker: Tiled does not answer yet (%s: %s); waiting for it", type(exc).__name__, exc)
            self._client = None

    # ------------------------------------------------------------------ batch
    def handle(self, batch: list[Message]) -> None:
        from ..storage.writer import flush_tiled_writer

        touched: dict[str, _Run] = {}
        self._touched = touched
        for m in batch:
            uid = m.headers.get(H_RUN) or (m.doc.get("uid") if m.name == "start" else None)
            if not uid:
                logger.warning("tiled worker: message %d (%s) has no run_id header: dropped", m.seq, m.name)
                continue
            run = self._feed(uid, m)
            if run is not None:
                touched[uid] = run
        for run in touched.values():
            if run.tw is not None:
                flush_tiled_writer(run.tw)
        for run in touched.values():
            if run.tw is not None and run.reason == "stopped":
                run.tw = run.arrays = None
        self._forget_old()

    def failed(self, batch: list[Message], exc: Exception) -> None:
        self._client = None
        for uid in getattr(self, "_touched", {}):
            self.runs.pop(uid, None)  # uncertain: rebuilt from the stream when next met

    def wait_ready(self) -> None:
        from ..storage.server import server_alive

        delay = 0.2
        while not self.stop_event.is_set():
            if self.health_url is None or server_alive(self.health_url, timeout=1.0):
                return
            self.stop_event.wait(delay)
            delay = min(2 * delay, 5.0)

    # ------------------------------------------------------------------ one message
    def _feed(self, uid: str, m: Message) -> _Run | None:
        run = self.runs.get(uid)
        if run is None:
            if m.name == "start":
                run = self._begin(uid, m.doc, m.seq)
                return run
            run = self._rebuild(uid, m)
            if run is None:
                return None
        if m.seq <= run.last_seq:
            return run  # a redelivery of a message already written
        run.last_seq = m.seq
        if run.tw is None:
            return run
        run.feed(m.name, m.doc)
        if m.name == "stop":
            run.reason = "stopped"
            self.written.append(uid)
        return run

    def _begin(self, uid: str, start: dict, seq: int) -> _Run:
        """Start writing a run (from its start document): drop it if Tiled has it complete, replace a partial copy."""
        from ..storage.writer import new_tiled_writer

        # remembered only once Tiled has answered: a run known here half-begun (Tiled gone mid-way) would have every
        # later delivery acknowledged unwritten; if Tiled fails, the batch fails and the run begins again when met
        run = _Run(uid, last_seq=seq)
        client = self.client
        if uid in client:
            node = client[uid]
            if node.metadata.get("stop") is not None:
                run.reason = "complete in Tiled"
                self.runs[uid] = run
                return run
            logger.warning("tiled worker: run %s is partial in Tiled: rewriting it from the stream", uid)
            node.delete(recursive=True, external_only=False)
        run.tw = new_tiled_writer(client)
        run.feed("start", start)
        self.runs[uid] = run
        return run

    def _rebuild(self, uid: str, m: Message) -> _Run | None:
        """A message of a run met in the middle: write the run from its start in the stream up to ``m``."""
        import asyncio

        start_seq = m.headers.get(H_START_SEQ)
        if start_seq is None:
            logger.error("tiled worker: %s document of run %s without its start's sequence: dropped", m.name, uid)
            self.errors.append(f"{uid}: no {H_START_SEQ} header")
            return None
        start_seq = int(start_seq)
        client = self.client
        if uid in client and client[uid].metadata.get("stop") is not None:
            run = _Run(uid, last_seq=m.seq, reason="complete in Tiled")
            self.runs[uid] = run
            return run
        try:
            # the whole run as the stream holds it now, not only up to m: deliveries need not come in order (an
            # older message unacknowledged by a killed worker comes again after newer ones were acknowledged), and
            # the partial copy in Tiled is replaced, so every document after m already acknowledged must be in it
            docs = self.call(run_documents(self.js, self.cfg, uid, start_seq), timeout=600)
        except (LookupError, asyncio.TimeoutError) as exc:
            msg = f"run {uid} cannot be rebuilt from the stream ({exc}); Tiled's copy is left as it is -- " \
                  f"the acquisition host's journal has the run (`espt replay`)"
            logger.error("tiled worker: %s", msg)
            self.errors.append(msg)
            run = _Run(uid, last_seq=m.seq, reason="not rebuildable")
            self.runs[uid] = run
            return run
        if not docs or docs[0][1] != "start":
            msg = f"run {uid}: its start (seq {start_seq}) is not in the stream"
            logger.error("tiled worker: %s", msg)
            self.errors.append(msg)
            run = _Run(uid, last_seq=m.seq, reason="not rebuildable")
            self.runs[uid] = run
            return run
        logger.warning("tiled worker: run %s met at seq %d (delivered %d times): rewriting it from seq %d to %d",
                       uid, m.seq, m.delivered, start_seq, docs[-1][0])
        run = self._begin(uid, docs[0][2], docs[0][0])
        self._touched[uid] = run
        if run.tw is not None:
            run.rebuilt = True
            self.rebuilt.append(uid)
            for seq, name, doc in docs[1:]:
                run.feed(name, doc)
                run.last_seq = seq
                if name == "stop":
                    run.reason = "stopped"
                    self.written.append(uid)
        return run

    def _forget_old(self) -> None:
        while len(self.runs) > DONE_MEMORY:
            uid, run = next(iter(self.runs.items()))
            if run.tw is not None and run.reason != "stopped":
                break  # an open run: keep it
            self.runs.pop(uid)


def make_tiled_worker(cfg: BusConfig, *, uri: str | None = None, api_key: str | None = None,
                      data_dir: str | None = None, **kwargs: Any) -> TiledWorker:
    """A :class:`TiledWorker` for the catalog at ``uri`` (default: as ``espt replay`` finds it)."""
    from ..storage.server import LocalCatalog

    cat = LocalCatalog.connect(uri, api_key, data_dir)
    return TiledWorker(cfg, cat.client, health_url=f"{cat.base_url}/healthz", **kwargs)
