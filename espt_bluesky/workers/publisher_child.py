"""The bus publisher's own process: reads packed documents from a pipe and publishes them to JetStream.

:class:`~.publisher.BusPublisher` (in the RunEngine's process) packs each document and writes it to a pipe; this
process (``python -m espt_bluesky.workers.publisher_child <docs fd> <replies fd>``) holds the NATS connection,
publishes every document with ``js.publish_async`` in order, and answers on the replies pipe:

* ``["conn", connected, error]`` once, after its first connection attempt; ``["state", connected, error]`` when the
  connection drops or comes back;
* ``["started", uid, stream seq]`` when JetStream acknowledged a run's start (or ``["failed", uid, why]``: not
  connected, or no acknowledgement within ``publish_timeout``).  Every later document of the run carries that
  sequence in its ``Espt-Start-Seq`` header;
* ``["done", uid, n]`` when every document of a run up to its stop was acknowledged, or ``["failed", uid, why]`` as
  soon as one was not (an error, or no acknowledgement within ``publish_timeout``); the rest of that run is dropped
  here (the RunEngine's process journals the whole run).

Why a process: the network I/O and the asyncio loop of nats-py cost milliseconds of CPU per spot; in a thread of the
RunEngine's process they hold its GIL for that long.  Here they run beside it, and the RunEngine pays only a pack and
a pipe write per document.

When the docs pipe closes (the session closed the publisher, or the RunEngine's process died -- even by SIGKILL), it
publishes what it has read, waits for the acknowledgements (at most ``publish_timeout`` after the last), drains the
connection and exits: documents already in the pipe are not lost with the RunEngine's process.  It ignores SIGINT
(a Ctrl-C in the session's terminal is for the RunEngine).

Wire between the processes: frames of ``<u32 meta length><u32 payload length><meta: msgpack list><payload>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import sys
from typing import Any

logger = logging.getLogger("espt_bluesky.workers.publisher")

HEADER = struct.Struct("<II")


def frame(meta: list, payload: bytes = b"") -> list[bytes]:
    """The buffers of one frame (for ``os.writev``)."""
    import ormsgpack

    m = ormsgpack.packb(meta)
    return [HEADER.pack(len(m), len(payload)), m, payload] if payload else [HEADER.pack(len(m), 0), m]


def split_frames(buf: bytearray) -> list[tuple[list, bytes]]:
    """Take the complete frames off the front of ``buf`` (the rest stays for the next read)."""
    import ormsgpack

    out = []
    while len(buf) >= HEADER.size:
        nm, np_ = HEADER.unpack_from(buf)
        end = HEADER.size + nm + np_
        if len(buf) < end:
            break
        meta = ormsgpack.unpackb(bytes(buf[HEADER.size:HEADER.size + nm]))
        out.append((meta, bytes(buf[HEADER.size + nm:end])))
        del buf[:end]
    return out


class _Run:
    __slots__ = ("uid", "start_seq", "sent", "acked", "stopped", "failed")

    def __init__(self, uid: str) -> None:
        self.uid, self.start_seq, self.sent, self.acked = uid, None, 0, 0
        self.stopped = self.failed = False


class ChildPublisher:
    """The publishing side (runs in this process's asyncio loop)."""

    def __init__(self, cfg: Any, reply_fd: int) -> None:
        self.cfg = cfg
        self.reply_fd = reply_fd
        self.nc: Any = None
        self.js: Any = None
        self.runs: dict[str, _Run] = {}
        self.pending: set[asyncio.Task] = set()
        self._connecting: asyncio.Task | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ replies
    def reply(self, *meta: Any) -> None:
        data = b"".join(frame(list(meta)))
        try:
            while data:
                n = os.write(self.reply_fd, data)
                data = data[n:]
        except OSError:  # the RunEngine's process is gone: publish what we have anyway
            pass

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected and self.js is not None

    # ------------------------------------------------------------------ connection
    async def connect(self) -> bool:
        import nats

        from .bus import ensure_stream

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        async def on_disconnect() -> None:
            self.reply("state", False, self.last_error)

        async def on_reconnect() -> None:
            self.reply("state", True, None)

        try:
            opts = self.cfg.connect_options()
            opts["max_reconnect_attempts"] = -1
            nc = await asyncio.wait_for(nats.connect(**opts, error_cb=on_error, disconnected_cb=on_disconnect,
                                                     reconnected_cb=on_reconnect),
                                        self.cfg.connect_timeout + 5)
            js = nc.jetstream(publish_async_max_pending=self.cfg.max_pending + 16)
            try:
                await asyncio.wait_for(ensure_stream(js, self.cfg), self.cfg.connect_timeout + 5)
            except BaseException:
                await nc.close()
                raise
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.nc, self.js = nc, js
        return True

    def _connect_in_background(self) -> None:
        if self.nc is None and (self._connecting is None or self._connecting.done()):
            async def attempt() -> None:
                if await self.connect():
                    self.reply("state", True, None)

            self._connecting = asyncio.ensure_future(attempt())

    # ------------------------------------------------------------------ documents
    def _headers(self, run: _Run, msg_id: str) -> dict[str, str]:
        from .bus import H_MSG_ID, H_RUN, H_START_SEQ

        h = {H_RUN: run.uid, H_MSG_ID: msg_id}
        if run.start_seq is not None:
            h[H_START_SEQ] = str(run.start_seq)
        return h

    def fail(self, run: _Run, why: str) -> None:
        if not run.failed:
            run.failed = True
            self.reply("failed", run.uid, why)
        self.runs.pop(run.uid, None)

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"JetStream did not acknowledge within publish_timeout={self.cfg.publish_timeout} s"
        return f"publishing failed ({type(exc).__name__}: {exc})"

    async def start(self, uid: str, msg_id: str, payload: bytes) -> None:
        run = _Run(uid)
        if not self.connected:
            self._connect_in_background()
            run.failed = True
            servers = ", ".join(self.cfg.servers)
            self.reply("failed", uid, f"NATS JetStream at {servers} is unreachable"
                                      + (f" ({self.last_error})" if self.last_error else ""))
            return
        self.runs[uid] = run
        try:
            fut = await self.js.publish_async(self.cfg.subject_of("start"), payload,
                                              headers=self._headers(run, msg_id), wait_stall=self.cfg.publish_timeout)
            ack = await asyncio.wait_for(fut, timeout=self.cfg.publish_timeout)
        except BaseException as exc:  # noqa: BLE001
            self.fail(run, f"the start document was not acknowledged: {self._why(exc)}")
            return
        run.start_seq = int(ack.seq)
        self.reply("started", uid, run.start_seq)

    async def doc(self, uid: str, name: str, msg_id: str, payload: bytes) -> None:
        run = self.runs.get(uid)
        if run is None or run.failed:
            return  # a run that failed: the RunEngine's process journals it
        try:
            fut = await self.js.publish_async(self.cfg.subject_of(name), payload,
                                              headers=self._headers(run, msg_id), wait_stall=self.cfg.publish_timeout)
        except BaseException as exc:  # noqa: BLE001
            self.fail(run, self._why(exc))
            return
        run.sent += 1
        if name == "stop":
            run.stopped = True
        t = asyncio.ensure_future(self._await_ack(run, fut))
        self.pending.add(t)
        t.add_done_callback(self.pending.discard)

    async def _await_ack(self, run: _Run, fut: Any) -> None:
        try:
            await asyncio.wait_for(fut, timeout=self.cfg.publish_timeout)
        except BaseException as exc:  # noqa: BLE001 - TimeoutError, APIError, NoStreamResponseError, cancelled
            self.fail(run, self._why(exc))
            return
        run.acked += 1
        if run.stopped and run.acked == run.sent and not run.failed:
            self.runs.pop(run.uid, None)
            self.reply("done", run.uid, run.acked)

    async def finish(self) -> None:
        """The docs pipe closed: wait for the acknowledgements in flight, then close the connection."""
        from .bus import _drain_and_cancel

        if self.pending:
            await asyncio.wait(list(self.pending), timeout=self.cfg.publish_timeout + 1.0)
        await _drain_and_cancel(self.nc)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[list, bytes]:
    import ormsgpack

    nm, np_ = HEADER.unpack(await reader.readexactly(HEADER.size))
    meta = ormsgpack.unpackb(await reader.readexactly(nm))
    payload = await reader.readexactly(np_) if np_ else b""
    return meta, payload


async def serve(docs_fd: int, reply_fd: int) -> None:
    """Publish the frames read from ``docs_fd`` until it closes (see the module docstring)."""
    from .bus import BusConfig

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**27)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(docs_fd, "rb", buffering=0))
    (kind, cfg_map), _ = await _read_frame(reader)
    assert kind == "cfg", kind
    pub = ChildPublisher(BusConfig.from_mapping(cfg_map), reply_fd)
    ok = await pub.connect()
    pub.reply("conn", ok, pub.last_error)
    while True:
        try:
            meta, payload = await _read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            break  # closed: the session closed the publisher, or the RunEngine's process died
        op = meta[0]
        if op == "start":
            await pub.start(meta[1], meta[2], payload)
        elif op == "doc":
            await pub.doc(meta[1], meta[2], meta[3], payload)
    await pub.finish()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the session's terminal is for the RunEngine
    logging.basicConfig(level=logging.WARNING, format="espt bus publisher: %(levelname)s %(message)s")
    docs_fd, reply_fd = int(argv[0]), int(argv[1])
    asyncio.run(serve(docs_fd, reply_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
