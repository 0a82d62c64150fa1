"""A durable JetStream consumer driven from a plain thread: fetch a batch, handle it, acknowledge it.

The base of every ``espt worker``: a pull consumer named ``durable`` on the document stream (filtered to one
subject), explicit acknowledgement, sent only after :meth:`DurableWorker.handle` returned -- i.e. after the work was
committed.  A batch whose handling fails is not acknowledged: the worker waits (:meth:`DurableWorker.wait_ready`,
e.g. until Tiled answers again) and asks JetStream to deliver it again (``nak``), so nothing is skipped.  Killed at
any moment, a worker restarted with the same ``durable`` name gets every message it had not acknowledged; making
that idempotent is the subclass's job.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from .bus import BusConfig, doc_name, ensure_stream, unpack

logger = logging.getLogger(__name__)


@dataclass
class Message:
    """One message of a batch: stream sequence, document name, headers, the document, and the NATS message."""

    seq: int
    name: str
    headers: dict
    doc: Any
    delivered: int
    raw: Any


class DurableWorker:
    """Fetch, handle, acknowledge (see the module docstring).  Subclasses implement :meth:`handle`.

    Parameters
    ----------
    config : BusConfig
    durable : str
        Name of the durable consumer (one per service; two processes with one name share the work).
    filter_subject : str, optional
        Default: every document of the instrument (``<subject>.>``).
    batch : int
        Messages fetched at once (and committed together).
    ack_wait : float, s
        JetStream redelivers a message not acknowledged within this time.
    """

    #: what the worker does, for logs and ``espt status``
    kind = "worker"

    def __init__(self, config: BusConfig, durable: str, *, filter_subject: str | None = None, batch: int = 200,
                 ack_wait: float = 60.0, fetch_timeout: float = 1.0):
        from bluesky_nats.nats_runtime import NatsRuntime

        self.cfg = config
        self.durable = durable
        self.filter_subject = filter_subject or config.filter_subject
        self.batch = int(batch)
        self.ack_wait = float(ack_wait)
        self.fetch_timeout = float(fetch_timeout)
        self.stop_event = threading.Event()
        #: a new consumer starts with the documents published from now on (default: the whole stream)
        self.deliver_new = False
        self.handled = 0  # messages acknowledged
        self.batches = 0
        self._rt = NatsRuntime(name=f"espt-worker-{durable}", owns_client=False)
        self._nc: Any = None
        self.js: Any = None
        self._psub: Any = None

    # ------------------------------------------------------------------ NATS (I/O thread)
    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the NATS I/O thread and return its result."""
        return self._rt.setup(coro, timeout=timeout)

    def connect(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        opts = self.cfg.connect_options()
        self._nc = self._rt.connect(nats.connect(**opts), timeout=self.cfg.connect_timeout + 5)
        self.js = self._nc.jetstream()
        self.call(ensure_stream(self.js, self.cfg))
        cc = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
                            filter_subject=self.filter_subject,
                            max_ack_pending=max(4 * self.batch, 1000), max_deliver=-1)
        self._psub = self.call(self.js.pull_subscribe(self.filter_subject, durable=self.durable,
                                                      stream=self.cfg.stream, config=cc))

    # ------------------------------------------------------------------ loop
    def fetch(self) -> list[Message]:
        import nats.errors

        try:
            raw = self.call(self._psub.fetch(self.batch, timeout=self.fetch_timeout),
                            timeout=self.fetch_timeout + 30)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        out = []
        for m in raw:
            md = m.metadata
            out.append(Message(md.sequence.stream, doc_name(m.subject), dict(m.headers or {}), unpack(m.data),
                               md.num_delivered, m))
        return out

    def handle(self, batch: list[Message]) -> None:  # pragma: no cover - abstract
        """Do the work of a batch and commit it; raise if it could not be committed."""
        raise NotImplementedError

    def wait_ready(self) -> None:
        """After a failed batch: wait until the work can be done again (default: a pause)."""
        self.stop_event.wait(1.0)

    def idle(self) -> None:
        """Called when a fetch found nothing."""

    def run_once(self) -> int:
        """Fetch and handle one batch; return the number of messages acknowledged."""
        batch = self.fetch()
        if not batch:
            self.idle()
            return 0
        try:
            self.handle(batch)
        except Exception as exc:  # noqa: BLE001 - not committed: deliver again once ready
            logger.error("%s %s: a batch of %d (seq %d-%d) failed: %s: %s; it will be delivered again",
                         self.kind, self.durable, len(batch), batch[0].seq, batch[-1].seq, type(exc).__name__, exc)
            self.failed(batch, exc)
            self.wait_ready()
            self.call(self._nak(batch))
            return 0
        self.call(self._ack(batch))
        self.handled += len(batch)
        self.batches += 1
        return len(batch)

    def failed(self, batch: list[Message], exc: Exception) -> None:
        """Forget whatever state the failed batch may have left half-done (subclasses)."""

    @staticmethod
    async def _ack(batch: list[Message]) -> None:
        for m in batch:
            await m.raw.ack()

    @staticmethod
    async def _nak(batch: list[Message]) -> None:
        for m in batch:
            try:
                await m.raw.nak()
            except Exception:  # noqa: BLE001 - then it comes back after ack_wait
                pass

    def run(self, *, until_idle: float | None = None) -> None:
        """Work until :attr:`stop_event` is set (SIGTERM/SIGINT set it), or ``until_idle`` seconds without a
        message."""
        if self._psub is None:
            self.connect()
        last = time.monotonic()
        while not self.stop_event.is_set():
            if self.run_once():
                last = time.monotonic()
            elif until_idle is not None and time.monotonic() - last > until_idle:
                break

    def install_signal_handlers(self) -> None:
        def _stop(signum, frame):  # noqa: ARG001
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def close(self) -> None:
        from .bus import close_runtime

        close_runtime(self._rt, self._nc)


async def consumer_lag(js: Any, cfg: BusConfig) -> list[dict]:
    """Per durable consumer of the stream: messages not yet delivered (``pending``), delivered but not acknowledged
    (``unacknowledged``), redelivered, and the last stream sequence acknowledged."""
    out = []
    for ci in await js.consumers_info(cfg.stream):
        out.append({"consumer": ci.name, "filter": ci.config.filter_subject, "pending": ci.num_pending,
                    "unacknowledged": ci.num_ack_pending, "redelivered": ci.num_redelivered,
                    "acknowledged_up_to": ci.ack_floor.stream_seq if ci.ack_floor else None})
    return out
