"""The bus's Tiled worker when Tiled fails while a run begins (no NATS needed: batches are handed in directly).

Found in a full-suite run under load (the 2000-hop bus test, a Tiled server killed at the wrong moment): a run
remembered before Tiled answered stayed known without a working writer, and every later delivery of it was
acknowledged unwritten."""

from __future__ import annotations

import pytest

from espt_bluesky.storage import writer as storage_writer
from espt_bluesky.workers.bus import H_RUN, BusConfig
from espt_bluesky.workers.consumer import Message
from espt_bluesky.workers.tiled_worker import TiledWorker

UID = "run-1"


class _Recorder:
    """Stands in for a TiledWriter: records the documents; the first call of all raises, as a killed server does."""

    calls = 0

    def __init__(self):
        self.docs: list[str] = []

    def __call__(self, name, doc):
        type(self).calls += 1
        if type(self).calls == 1:
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
