"""Send backed-up runs to Tiled: ``espt replay DIR``.

A backup directory holds one file per run: ``<start uid>.journal`` written by
:class:`~espt_bluesky.storage.writer.ResilientTiledWriter` (see :mod:`.journal`), or ``<uid prefix>.jsonl`` written
by older versions (TiledWriter's JSON-lines backup).  For each run :func:`replay`

* reads every intact document and reports the damage it finds (a cut-off tail, corrupted stretches, records
  missing; for ``.jsonl``, lines that are not whole documents) -- it never guesses what a damaged part held;
* leaves alone a journal that a live writer still holds (a run in progress);
* writes the run if Tiled does not have it;
* skips it if Tiled has it with a ``stop`` document (complete);
* if Tiled has a partial copy (no ``stop``), replaces it only if the backup holds strictly more: every event
  (``seq_num``) and array frame of Tiled's copy and at least one more, or the stop document.  Otherwise Tiled's
  copy is kept untouched (a damaged backup may lack events Tiled has; the report names them) and, if the backup has
  the stop document, only the stop is added to the run's metadata;
* never synthesises a stop: a run whose backup has none (the acquisition process died, or the stop was damaged) is
  written without one, its end recorded as unknown (``metadata["espt_replay"]["end"] == "unknown"``);
* records in each run it writes where it came from (``metadata["espt_replay"]``: file, damage, end);
* never deletes or changes a backup file.

Replaying twice writes nothing the second time.  External asset files (HDF5 waveforms) are referenced, never
copied, so they must still be where the documents say.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import InvalidArgument
from .journal import SUFFIX as JOURNAL_SUFFIX
from .journal import Damage, JournalContents, journal_in_use, read_journal

logger = logging.getLogger(__name__)

LEGACY_SUFFIX = ".jsonl"


# ------------------------------------------------------------------------------------------------ reading
def _complete_record_at_end(line: str) -> dict | None:
    """The one whole ``{"name": ..., "doc": ...}`` object that ends a damaged JSON-lines line, if any.

    TiledWriter's JSON-lines backup appends each document with ``json.dump``; a dump that fails half-way (numpy in
    the document) leaves its start on the line and the next document is appended to it.  Only the last object of
    such a line can be whole; it is accepted only if it decodes completely up to the end of the line.
    """
    decoder = json.JSONDecoder()
    start = line.find('{"name"')
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(line, start)
        except (ValueError, RecursionError):
            obj, end = None, -1
        if end == len(line) and isinstance(obj, dict) and set(obj) == {"name", "doc"}:
            return obj
        start = line.find('{"name"', start + 1)
    return None


def read_jsonl(path: str | os.PathLike) -> JournalContents:
    """Every whole document of a JSON-lines backup (``{"name": ..., "doc": ...}`` per line), and its damage."""
    p = Path(path)
    out = JournalContents(p)
    with open(p, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().split("\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and "name" in rec and "doc" in rec
        except (ValueError, RecursionError):  # RecursionError: many half-written documents nested on one line
            rec, ok = None, False
        if not ok:
            kind = "truncated" if i == last else "corrupt"  # the file ends without a newline inside a document
            out.damage.append(Damage(kind, i, 1, unit="lines"))
            rec = _complete_record_at_end(line) if i != last else None
            if rec is None:
                continue
        out.records.append((rec["name"], rec["doc"]))
    return out


def read_backup_file(path: str | os.PathLike) -> JournalContents:
    """The intact documents of a backup file (journal or JSON lines) and a report of its damage."""
    p = Path(path)
    return read_jsonl(p) if p.suffix == LEGACY_SUFFIX else read_journal(p)


def backup_files(directory: str | os.PathLike) -> list[Path]:
    """Backup files (journals and JSON lines) of a directory, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        raise InvalidArgument(f"directory={str(directory)!r} is not a directory")
    files = [*d.glob(f"*{JOURNAL_SUFFIX}"), *d.glob(f"*{LEGACY_SUFFIX}")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


# ------------------------------------------------------------------------------------------------ one run
def _uid_key(name: str, doc: dict) -> tuple[str, str] | None:
    uid = doc.get("uid")
    if isinstance(uid, list):  # event_page / datum_page
        uid = "|".join(map(str, uid))
    return (name, uid) if isinstance(uid, str) else None


@dataclass
class Holdings:
    """What a copy of a run holds: the event ``seq_num``s of each stream, the rows of each array
    (``(stream, data key)``: events carrying the key, or frames registered by stream datums), and its stop."""

    seqs: dict[str, set[int]] = field(default_factory=dict)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    stop: bool = False

    @property
    def events(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.seqs.items()}

    def covers(self, other: "Holdings") -> bool:
        """Everything ``other`` holds is here too."""
        return all(self.seqs.get(s, set()) >= v for s, v in other.seqs.items()) and \
            all(self.rows.get(k, 0) >= n for k, n in other.rows.items()) and (self.stop or not other.stop)

    def strictly_more(self, other: "Holdings") -> bool:
        """Everything ``other`` holds and something more (an event, a frame, or the stop)."""
        return self.covers(other) and not other.covers(self)


def _ranges(seqs: Iterable[int]) -> str:
    out: list[str] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in out)


def describe_difference(backup: Holdings, tiled: Holdings) -> str:
    """Which events each copy holds that the other lacks (seq_num ranges per stream)."""
    parts = []
    for s in sorted(set(backup.seqs) | set(tiled.seqs)):
        b, t = backup.seqs.get(s, set()), tiled.seqs.get(s, set())
        if t - b:
            parts.append(f"{s}: only Tiled has seq {_ranges(t - b)}")
        if b - t:
            parts.append(f"{s}: only the backup has seq {_ranges(b - t)}")
    return "; ".join(parts)


@dataclass
class BackedUpRun:
    """The documents of one run from a backup file, made consistent for writing.

    Documents whose descriptor or resource was lost to damage cannot be written and are counted in ``dropped``.
    """

    uid: str
    docs: list[tuple[str, dict]]
    holdings: Holdings
    stop: dict | None
    dropped: int = 0

    @property
    def events(self) -> dict[str, int]:
        return self.holdings.events

    @classmethod
    def from_documents(cls, docs: Iterable[tuple[str, Any]]) -> "BackedUpRun":
        seen: set = set()
        starts: list[dict] = []
        kept: list[tuple[str, dict]] = []
        stream_of: dict[str, str] = {}  # descriptor uid -> stream name
        resources: dict[str, str] = {}  # (stream) resource uid -> data key
        held = Holdings()
        stops: list[dict] = []
        dropped = 0
        for name, doc in docs:
            if not isinstance(doc, dict):
                dropped += 1
                continue
            key = _uid_key(name, doc)
            if key is not None:
                if key in seen:
                    continue  # a repeated document (the same uid): written once
                seen.add(key)
            if name == "start":
                starts.append(doc)
            elif name == "descriptor":
                stream_of[doc["uid"]] = doc.get("name", "primary")
                held.seqs.setdefault(stream_of[doc["uid"]], set())
            elif name in ("resource", "stream_resource"):
                resources[doc["uid"]] = doc.get("data_key", "")
            elif name in ("event", "event_page"):
                stream = stream_of.get(doc.get("descriptor"))
                if stream is None:
                    dropped += 1
                    continue
                seqs = doc["seq_num"] if name == "event_page" else [doc["seq_num"]]
                held.seqs[stream].update(int(q) for q in seqs)
                for k in doc.get("data", {}):
                    held.rows[(stream, k)] = held.rows.get((stream, k), 0) + len(seqs)
            elif name == "stream_datum":
                stream = stream_of.get(doc.get("descriptor"))
                if doc.get("stream_resource") not in resources or stream is None:
                    dropped += 1
                    continue
                k = (stream, resources[doc["stream_resource"]])
                held.rows[k] = max(held.rows.get(k, 0), int(doc["indices"]["stop"]))
            elif name in ("datum", "datum_page"):
                if doc.get("resource") not in resources:
                    dropped += 1
                    continue
            elif name == "stop":
                stops.append(doc)
                continue  # written last
            kept.append((name, doc))
        uids = {d["uid"] for d in starts}
        if len(uids) != 1:
            raise InvalidArgument(f"expected the start document of one run, found {len(uids)} "
                                  + ("(it was lost to damage)" if not uids else str(sorted(uids))))
        stop = stops[-1] if stops else None
        if stop is not None:
            kept.append(("stop", stop))
            held.stop = True
        return cls(uids.pop(), kept, held, stop, dropped)


def tiled_holdings(run_node: Any) -> Holdings:
    """What a run in Tiled holds (see :class:`Holdings`)."""
    held = Holdings(stop=run_node.metadata.get("stop") is not None)
    for stream in run_node:
        node = run_node[stream]
        node = getattr(node, "base", node)
        held.seqs[stream] = set()
        for key in node:
            child = node[key]
            family = str(getattr(child, "structure_family", ""))
            if family.endswith("table"):
                table = child.read()
                if "seq_num" in table:
                    held.seqs[stream].update(int(q) for q in table["seq_num"])
                for col in table.columns:
                    if col not in ("seq_num", "time") and not col.startswith("ts_"):
                        held.rows[(stream, col)] = max(held.rows.get((stream, col), 0), len(table))
            elif family.endswith("array"):
                shape = child.shape
                held.rows[(stream, key)] = int(shape[0]) if shape else 0
    return held


def tiled_events(run_node: Any) -> dict[str, int]:
    """Events per stream that a run in Tiled holds."""
    return tiled_holdings(run_node).events


# ------------------------------------------------------------------------------------------------ report
@dataclass
class RunReplay:
    """What :func:`replay` did with one backup file.

    ``action``: ``"written"`` (Tiled did not have the run), ``"replaced"`` (a partial copy replaced by the backup,
    which holds strictly more), ``"stop_added"`` (Tiled's partial copy kept, the backup's stop added),
    ``"kept"`` (Tiled's partial copy holds as much as the backup: untouched), ``"skipped"`` (complete in Tiled),
    ``"in_use"`` (a live writer holds the journal), ``"failed"``.
    """

    file: str
    uid: str | None
    action: str
    events: dict[str, int] = field(default_factory=dict)  # events per stream written to Tiled
    exit_status: str | None = None  # the run's stop document's, or "unknown"
    damage: list[str] = field(default_factory=list)
    dropped: int = 0
    detail: str = ""

    def __str__(self) -> str:
        ev = ", ".join(f"{s}: {n}" for s, n in sorted(self.events.items())) or "none"
        out = f"{self.action:<10} {self.uid or '?'}  events written ({ev})"
        if self.exit_status:
            out += f"  exit_status={self.exit_status}"
        if self.damage:
            out += f"  DAMAGE in {Path(self.file).name}: " + "; ".join(self.damage)
        if self.dropped:
            out += f"  ({self.dropped} documents without their descriptor/resource dropped)"
        if self.detail:
            out += f"  [{self.detail}]"
        return out


@dataclass
class ReplayReport:
    """What :func:`replay` did, one :class:`RunReplay` per backup file."""

    runs: list[RunReplay] = field(default_factory=list)

    def _with(self, *actions: str) -> list[str]:
        return [r.uid for r in self.runs if r.action in actions and r.uid]

    @property
    def written(self) -> list[str]:
        """Start uids written (new, or replacing a partial copy)."""
        return self._with("written", "replaced")

    @property
    def replaced_partial(self) -> list[str]:
        return self._with("replaced")

    @property
    def skipped(self) -> list[str]:
        """Start uids already complete in Tiled, or whose partial copy holds as much as the backup."""
        return self._with("skipped", "kept")

    @property
    def failed(self) -> dict[str, str]:
        return {r.file: r.detail for r in self.runs if r.action == "failed"}

    @property
    def damaged(self) -> list[RunReplay]:
        return [r for r in self.runs if r.damage or r.dropped]

    def __str__(self) -> str:
        n_stop = len(self._with("stop_added"))
        n_busy = len([r for r in self.runs if r.action == "in_use"])
        out = (f"written {len(self.written)} run(s) ({len(self.replaced_partial)} completing a partial copy), "
               f"skipped {len(self.skipped)} already complete, failed {len(self.failed)}")
        if n_stop:
            out += f", stop added to {n_stop}"
        if n_busy:
            out += f", {n_busy} still being written (left alone)"
        if self.damaged:
            out += f"; DAMAGE in {len(self.damaged)} file(s)"
        return out


# ------------------------------------------------------------------------------------------------ replay
def _write_run(client: Any, run: BackedUpRun, batch_size: int) -> None:
    from .writer import make_writer

    # without a stop TiledWriter would keep its last batch: write each row as it comes instead
    writer = make_writer(client, backup_directory=None, batch_size=batch_size if run.stop else 1)
    for name, doc in run.docs:
        writer(name, doc)


def _provenance(path: Path, run: BackedUpRun, damage: list[str]) -> dict:
    return {"file": path.name, "replayed": time.time(), "end": "stop document" if run.stop else "unknown",
            "damage": damage, "dropped_documents": run.dropped, "events": run.events}


def replay(directory: str | os.PathLike, client: Any, *, batch_size: int = 1000) -> ReplayReport:
    """Send the runs backed up in ``directory`` to a Tiled catalog; safe to run any number of times.

    Parameters
    ----------
    directory : path
        A backup directory (``LocalCatalog.backup_dir``): ``*.journal`` and older ``*.jsonl`` files.
    client : LocalCatalog or tiled container client
        The catalog the runs belong in.
    batch_size : int
        Rows per write while replaying.

    Returns
    -------
    ReplayReport
        One entry per file: what was written (events per stream), the run's exit status, the damage found.
    """
    from .server import LocalCatalog

    if isinstance(client, LocalCatalog):
        client = client.client()
    report = ReplayReport()
    for path in backup_files(directory):
        entry = RunReplay(str(path), None, "failed")
        report.runs.append(entry)
        try:
            if path.suffix == JOURNAL_SUFFIX and journal_in_use(path):
                entry.action, entry.detail = "in_use", "a running writer holds this journal"
                continue
            contents = read_backup_file(path)
            entry.damage = [str(d) for d in contents.damage]
            run = BackedUpRun.from_documents(contents.records)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other files
            entry.detail = f"unreadable: {type(exc).__name__}: {exc}"
            continue
        entry.uid, entry.dropped = run.uid, run.dropped
        entry.exit_status = run.stop.get("exit_status") if run.stop else "unknown"
        if entry.damage or run.dropped:
            logger.warning("%s: damaged (%s); writing the %d intact documents", path,
                           "; ".join(entry.damage) or f"{run.dropped} documents dropped", len(run.docs))
        try:
            if run.uid in client:
                node = client[run.uid]
                tiled_stop = node.metadata.get("stop")
                if tiled_stop is not None:
                    entry.action, entry.exit_status = "skipped", tiled_stop.get("exit_status")
                    continue
                have = tiled_holdings(node)
                if not run.holdings.strictly_more(have):
                    diff = describe_difference(run.holdings, have)
                    if run.stop is not None:
                        node.update_metadata(metadata={"stop": run.stop,
                                                       "espt_replay": _provenance(path, run, entry.damage)})
                        entry.action = "stop_added"
                    else:
                        entry.action = "kept"
                    entry.detail = f"Tiled holds {have.events} events, the backup {run.events}" + \
                        (f" ({diff}; both kept, not merged)" if diff else "")
                    continue
                node.delete(recursive=True, external_only=False)
                entry.action = "replaced"
                entry.detail = f"Tiled held {have.events} events"
            _write_run(client, run, batch_size)
            client[run.uid].update_metadata(metadata={"espt_replay": _provenance(path, run, entry.damage)})
            if entry.action != "replaced":
                entry.action = "written"
            entry.events = dict(run.events)
        except Exception as exc:  # noqa: BLE001
            logger.exception("replaying %s failed", path)
            removed = " (the partial copy in Tiled was removed; the backup, which holds more, is kept: replay " \
                      "again)" if entry.action == "replaced" else ""
            entry.action, entry.detail = "failed", f"{type(exc).__name__}: {exc}{removed}"
    return report
