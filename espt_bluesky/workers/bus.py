"""The document bus: where documents travel (NATS JetStream), how they are packed, and the stream's limits.

One acquisition process publishes every document of its runs to ``<subject>.<document name>`` on a JetStream
stream (``stream``, capturing ``<subject>.>``); consumers (``espt worker ...``) read them with durable consumers.

Wire format, the one ``bluesky-nats`` uses (so its ``NATSDispatcher`` reads our stream too): the document packed with
``ormsgpack`` (numpy arrays as lists), header ``run_id`` (the run's start uid).  We add two headers:

``Nats-Msg-Id``
    ``<start uid>:<document name>:<document uid>``: JetStream drops a second copy of a message within its
    duplicate window, so a re-sent document is stored once.
``Espt-Start-Seq``
    The stream sequence of the run's start document: a consumer that meets a run in the middle (it was restarted,
    or Tiled failed under it) reads the run from there (:func:`run_documents`).

External asset files (HDF5 waveforms) stay on shared storage: only documents travel, their paths unchanged.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidArgument, check_choice, check_int, check_keys, check_number

logger = logging.getLogger(__name__)

H_RUN = "run_id"
H_MSG_ID = "Nats-Msg-Id"
H_START_SEQ = "Espt-Start-Seq"

BUS_MODES = ("off", "bus", "both")

#: The ``[bus]`` section of the session configuration (see :class:`BusConfig`).
BUS_DEFAULTS: dict[str, Any] = {
    "mode": "off", "servers": "nats://127.0.0.1:4222", "stream": "ESPT", "subject": "espt.docs.default",
    "live_subject": "espt.live.default", "creds": None, "connect_timeout": 2.0, "publish_timeout": 2.0,
    "max_pending": 1000, "max_age_days": 30.0, "max_bytes": -1, "duplicate_window": 120.0,
    "backup_dir": None, "keep_journals": False, "journal": "on_failure",
}
JOURNAL_MODES = ("always", "on_failure")


@dataclass
class BusConfig:
    """Where documents go on the bus.

    Attributes
    ----------
    mode : {"off", "bus", "both"}
        ``off``: no bus, the session writes to Tiled in-process; ``bus``: documents are published, the Tiled
        worker writes them; ``both``: published and written in-process.
    servers : str or list of str
        NATS server URLs.
    stream : str
        JetStream stream holding the documents (created with the limits below when missing).
    subject : str
        Subject prefix of this instrument: documents go to ``<subject>.<document name>``.
    live_subject : str
        Core NATS subject of the live map (:mod:`.livemap`); must not lie under ``subject``.
    creds : str, optional
        NATS credentials file (JWT + nkey seed) of the account.
    connect_timeout : float, s
        How long a connection attempt may take (at session start; at a run start after a failure).
    publish_timeout : float, s
        The longest the RunEngine waits for the bus on one document (the start's acknowledgement, or room among
        the ``max_pending`` unacknowledged publishes); after that the run goes to the local backup.
    max_pending : int
        Published documents awaiting JetStream's acknowledgement before the RunEngine waits.
    max_age_days, max_bytes : float, int
        Stream retention: documents older than this, or beyond this many bytes (oldest first), are discarded
        (``max_bytes = -1``: as much as the server's JetStream storage allows).
    duplicate_window : float, s
        JetStream drops a message whose ``Nats-Msg-Id`` it stored within this window.
    backup_dir : str, optional
        The local backup (journals ``espt replay`` reads); default the data directory's ``backup/``.
    keep_journals : bool
        Keep a run's journal after JetStream acknowledged all of it (default: remove it).
    journal : {"on_failure", "always"}
        Journal a run locally only when the bus fails it (default: the run's documents are kept in memory until
        JetStream acknowledged them all), or every document before publishing it (see :mod:`.publisher`).
    """

    mode: str = "off"
    servers: Any = "nats://127.0.0.1:4222"
    stream: str = "ESPT"
    subject: str = "espt.docs.default"
    live_subject: str = "espt.live.default"
    creds: str | None = None
    connect_timeout: float = 2.0
    publish_timeout: float = 2.0
    max_pending: int = 1000
    max_age_days: float = 30.0
    max_bytes: int = -1
    duplicate_window: float = 120.0
    backup_dir: str | None = None
    keep_journals: bool = False
    journal: str = "on_failure"
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "BusConfig":
        """Check a ``[bus]`` section (unknown keys, bad values: :class:`InvalidArgument` naming them)."""
        cfg = dict(check_keys("bus", cfg or {}, optional=BUS_DEFAULTS))
        merged = {**BUS_DEFAULTS, **cfg}
        out = cls(**{f.name: merged[f.name] for f in fields(cls) if f.name in merged})
        out.mode = check_choice("bus.mode", out.mode, BUS_MODES)
        out.journal = check_choice("bus.journal", out.journal, JOURNAL_MODES)
        servers = [out.servers] if isinstance(out.servers, str) else out.servers
        if not isinstance(servers, (list, tuple)) or not servers or \
                not all(isinstance(s, str) and s.startswith(("nats://", "tls://", "ws://", "wss://")) for s in servers):
            raise InvalidArgument(f"bus.servers={out.servers!r} must be a nats:// URL or a list of them")
        out.servers = list(servers)
        for name in ("stream",):
            v = getattr(out, name)
            if not isinstance(v, str) or not v or any(c in v for c in " .*>/\\\t"):
                raise InvalidArgument(f"bus.{name}={v!r} must be a name without spaces, '.', '*', '>' or slashes")
        for name in ("subject", "live_subject"):
            v = getattr(out, name)
            if not isinstance(v, str) or not v or any(c in v for c in " *>\t") or "" in v.split("."):
                raise InvalidArgument(f"bus.{name}={v!r} must be a NATS subject like 'espt.docs.seccm1' "
                                      "(tokens separated by '.', no wildcards)")
        if out.live_subject == out.subject or out.live_subject.startswith(out.subject + "."):
            raise InvalidArgument(f"bus.live_subject={out.live_subject!r} must not lie under bus.subject="
                                  f"{out.subject!r} (the live map is not stored in the stream)")
        out.connect_timeout = check_number("bus.connect_timeout", out.connect_timeout, 0.05, 600)
        out.publish_timeout = check_number("bus.publish_timeout", out.publish_timeout, 0.05, 600)
        out.max_pending = check_int("bus.max_pending", out.max_pending, 1, 1_000_000)
        out.max_age_days = check_number("bus.max_age_days", out.max_age_days, 0, 36500)
        out.max_bytes = check_int("bus.max_bytes", out.max_bytes, -1, 2**62)
        out.duplicate_window = check_number("bus.duplicate_window", out.duplicate_window, 0, 86400)
        for name in ("creds", "backup_dir"):
            v = getattr(out, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise InvalidArgument(f"bus.{name}={v!r} must be a path (or absent)")
        if not isinstance(out.keep_journals, bool):
            raise InvalidArgument(f"bus.keep_journals={out.keep_journals!r} must be true or false")
        return out

    def subject_of(self, name: str) -> str:
        return f"{self.subject}.{name}"

    @property
    def filter_subject(self) -> str:
        return f"{self.subject}.>"

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect``."""
        opts: dict[str, Any] = {"servers": self.servers, "connect_timeout": self.connect_timeout,
                                "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
        if self.creds:
            opts["user_credentials"] = str(self.creds)
        return opts


# ------------------------------------------------------------------------------------------------ codec
def _default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return repr(o)


def pack(doc: Any) -> bytes:
    """A document as ``bluesky-nats`` packs it (msgpack; numpy arrays serialised natively where possible)."""
    import ormsgpack

    opts = ormsgpack.OPT_NAIVE_UTC | ormsgpack.OPT_SERIALIZE_NUMPY | ormsgpack.OPT_NON_STR_KEYS
    try:
        return ormsgpack.packb(doc, option=opts, default=_default)
    except (TypeError, ormsgpack.MsgpackEncodeError):  # e.g. a non-contiguous array inside
        from ..storage.journal import _sanitize

        return ormsgpack.packb(_sanitize(doc), option=opts, default=_default)


def unpack(data: bytes) -> Any:
    import ormsgpack

    return ormsgpack.unpackb(data)


def doc_id(run_uid: str, name: str, doc: Mapping[str, Any], fallback: int) -> str:
    """The ``Nats-Msg-Id`` of a document (unique within the run)."""
    uid = doc.get("uid") or doc.get("datum_id")
    if isinstance(uid, list):
        uid = f"{uid[0]}+{len(uid)}" if uid else None
    return f"{run_uid}:{name}:{uid if uid else fallback}"


def doc_name(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


# ------------------------------------------------------------------------------------------------ stream
def stream_config(cfg: BusConfig):
    """The JetStream ``StreamConfig`` of the document stream: file storage, limits retention."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(name=cfg.stream, subjects=[cfg.filter_subject], storage=StorageType.FILE,
                        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
                        max_age=cfg.max_age_days * 86400 if cfg.max_age_days > 0 else None,
                        max_bytes=cfg.max_bytes, duplicate_window=cfg.duplicate_window)


async def ensure_stream(js: Any, cfg: BusConfig) -> Any:
    """The stream's info, creating the stream if missing (adding our subject to an existing one)."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(cfg.stream)
    except NotFoundError:
        return await js.add_stream(stream_config(cfg))
    subjects = list(info.config.subjects or [])
    if cfg.filter_subject not in subjects:
        info.config.subjects = [*subjects, cfg.filter_subject]
        info = await js.update_stream(info.config)
    return info


async def run_documents(js: Any, cfg: BusConfig, run_uid: str, first: int,
                        last: int | None = None) -> list[tuple[int, str, Any]]:
    """``(stream sequence, name, doc)`` of run ``run_uid`` stored in ``first .. last`` (inclusive; ``last`` None:
    up to the last message the stream holds now), in order.

    Reads with an ephemeral ordered consumer (no state left on the server).  Raises ``LookupError`` when the stream
    no longer holds the first of them (discarded by its limits).
    """
    import asyncio

    from nats.js.api import ConsumerConfig, DeliverPolicy

    out: list[tuple[int, str, Any]] = []
    if last is not None and last < first:
        return out
    info = await js.stream_info(cfg.stream)
    if last is None:
        last = int(info.state.last_seq)
    if info.state.first_seq > first:
        raise LookupError(f"stream {cfg.stream} no longer holds sequence {first} (it starts at "
                          f"{info.state.first_seq}: discarded by the stream's limits)")
    sub = await js.subscribe(cfg.filter_subject, stream=cfg.stream, ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                   opt_start_seq=first))
    try:
        while True:
            msg = await sub.next_msg(timeout=5.0)
            seq = msg.metadata.sequence.stream
            if seq > last:
                break
            if (msg.headers or {}).get(H_RUN) == run_uid:
                out.append((seq, doc_name(msg.subject), unpack(msg.data)))
            if seq >= last:
                break
    except asyncio.TimeoutError:
        raise LookupError(f"stream {cfg.stream}: sequences {first}..{last} could not be read in full") from None
    finally:
        await sub.unsubscribe()
    return out


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


async def _drain_and_cancel(nc: Any) -> None:
    import asyncio

    loop = asyncio.get_running_loop()

    def quiet(lp: Any, ctx: dict) -> None:  # the client's own tasks, cancelled below, report nothing
        if not isinstance(ctx.get("exception"), asyncio.CancelledError):
            lp.default_exception_handler(ctx)

    loop.set_exception_handler(quiet)
    if nc is not None and not nc.is_closed:
        try:
            await asyncio.wait_for(nc.drain(), 5.0)
        except Exception:  # noqa: BLE001 - not connected: close instead
            try:
                await nc.close()
            except Exception:  # noqa: BLE001
                pass
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def close_runtime(rt: Any, nc: Any) -> None:
    """Drain the client (what is published reaches the server), cancel the I/O thread's tasks, stop the thread."""
    if rt.closed:
        return
    try:
        rt.setup(_drain_and_cancel(nc), timeout=15.0)
    except Exception as exc:  # noqa: BLE001
        logger.warning("bus: closing the NATS connection: %s", exc)
    rt.close(timeout=5.0)


class ArrayRestorer:
    """Give documents read from the bus their numpy arrays back (msgpack carries them as lists).

    Event data and stream-datum-free array readings whose descriptor declares ``dtype: "array"`` become numpy
    arrays again (of the descriptor's ``dtype_numpy`` when it gives one), as the RunEngine emitted them: the
    documents a worker hands to ``TiledWriter`` are then the in-process writer's (and validating and copying a
    2000-sample CV as a list costs ~50 times more than as an array).
    """

    def __init__(self) -> None:
        self._keys: dict[str, dict[str, Any]] = {}  # descriptor uid -> {data key: numpy dtype or None}

    def __call__(self, name: str, doc: Any) -> Any:
        if name == "descriptor":
            keys = {}
            for k, v in (doc.get("data_keys") or {}).items():
                if v.get("dtype") == "array" and "external" not in v:
                    try:
                        keys[k] = np.dtype(v["dtype_numpy"]) if v.get("dtype_numpy") else None
                    except TypeError:
                        keys[k] = None
            self._keys[doc["uid"]] = keys
        elif name in ("event", "event_page"):
            keys = self._keys.get(doc.get("descriptor"))
            if keys:
                data = doc.get("data") or {}
                for k, dt in keys.items():
                    v = data.get(k)
                    if isinstance(v, list):
                        try:
                            data[k] = np.asarray(v, dtype=dt) if name == "event" else \
                                [np.asarray(x, dtype=dt) if isinstance(x, list) else x for x in v]
                        except (TypeError, ValueError):  # ragged or mixed: left as it came
                            pass
        return doc

    def forget(self, descriptor_uids: Any) -> None:
        for u in descriptor_uids:
            self._keys.pop(u, None)
