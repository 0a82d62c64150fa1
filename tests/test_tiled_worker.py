"""The bus's Tiled worker when Tiled fails while a run begins (no NATS needed: batches are handed in directly).

Found in full-suite runs under load (the 2000-hop bus test, a Tiled server killed at the wrong moment): a run
remembered before Tiled answered stayed known without a working writer, and every later delivery of it was
acknowledged unwritten."""

from __future__ import annotations

import pytest

from espt_bluesky.storage import writer as storage_writer
from espt_bluesky.workers.bus import H_RUN, H_START_SEQ, BusConfig
from espt_bluesky.workers.consumer import Message
from espt_bluesky.workers import tiled_worker
from espt_bluesky.workers.tiled_worker import TiledWorker

UID = "run-1"


class _Recorder:
    """Stands in for a TiledWriter: records the documents; the first call of all raises, as a killed server does."""

    calls = 0
    fail_first = True

    def __init__(self):
        self.docs: list[str] = []

    def __call__(self, name, doc):
        type(self).calls += 1
        if type(self).calls == 1 and self.fail_first:
            raise ConnectionError("[Errno 111] Connection refused")
        self.docs.append(name)


class _EmptyCatalog:
    def __contains__(self, uid):
        return False


def _batch():
    start = {"uid": UID, "time": 0.0}
    event = {"uid": "e1", "descriptor": "d1", "seq_num": 1, "data": {}, "timestamps": {}, "time": 1.0}
    return [Message(seq=1, name="start", headers={H_RUN: UID}, doc=start, delivered=1, raw=None),
            Message(seq=2, name="event", headers={H_RUN: UID}, doc=event, delivered=1, raw=None)]


def test_a_run_whose_start_failed_in_tiled_is_begun_again_on_redelivery(monkeypatch):
    writers: list[_Recorder] = []
    monkeypatch.setattr(_Recorder, "calls", 0)
    monkeypatch.setattr(storage_writer, "new_tiled_writer", lambda client: writers.append(_Recorder()) or writers[-1])
    monkeypatch.setattr(storage_writer, "flush_tiled_writer", lambda tw: 0)
    worker = TiledWorker(BusConfig.from_mapping({"mode": "bus"}), _EmptyCatalog)
    batch = _batch()
    with pytest.raises(ConnectionError):
        worker.handle(batch)
    worker.failed(batch, ConnectionError("refused"))  # what DurableWorker does before the batch comes again
    assert UID not in worker.runs
    worker.handle(batch)  # the redelivery
    assert writers[-1].docs == ["start", "event"]  # the start written first, then its event: nothing dropped
    assert worker.runs[UID].last_seq == 2


def _event(seq):
    return Message(seq=seq, name="event", headers={H_RUN: UID, H_START_SEQ: "1"},
                   doc={"uid": f"e{seq}", "descriptor": "d1", "seq_num": seq - 1, "data": {}, "timestamps": {},
                        "time": float(seq)}, delivered=2, raw=None)


def test_an_older_message_delivered_again_rebuilds_the_whole_run(monkeypatch):
    """A killed worker left seq 2-52 unacknowledged; its successor wrote and acknowledged 53-352, then Tiled died
    (the run forgotten, as uncertain).  JetStream now redelivers seq 2 (its ack_wait ran out): the run is rebuilt
    from the stream -- all of it, not only up to seq 1, or the acknowledged 53-352 would be lost (seen: 1700 of 2000
    events in Tiled)."""
    import asyncio

    stream = [(1, "start", {"uid": UID, "time": 0.0})] + [(m.seq, m.name, m.doc) for m in map(_event, range(2, 401))]

    async def run_documents(js, cfg, uid, first, last=None):
        last = stream[-1][0] if last is None else last
        return [d for d in stream if first <= d[0] <= last]

    writers: list[_Recorder] = []
    monkeypatch.setattr(_Recorder, "fail_first", False)
    monkeypatch.setattr(storage_writer, "new_tiled_writer", lambda client: writers.append(_Recorder()) or writers[-1])
    monkeypatch.setattr(storage_writer, "flush_tiled_writer", lambda tw: 0)
    monkeypatch.setattr(tiled_worker, "run_documents", run_documents)
    worker = TiledWorker(BusConfig.from_mapping({"mode": "bus"}), _EmptyCatalog)
    monkeypatch.setattr(worker, "call", lambda coro, timeout=30.0: asyncio.run(coro))
    worker.handle([_event(2)])  # the old message, met by a worker that does not know the run
    assert writers[-1].docs == ["start"] + ["event"] * 399  # the whole run as the stream holds it
    worker.handle([_event(s) for s in range(353, 401)])  # the failed batch comes again: nothing twice
    assert writers[-1].docs == ["start"] + ["event"] * 399 and worker.runs[UID].last_seq == 400
