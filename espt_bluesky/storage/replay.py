"""Send backed-up runs to Tiled: ``espt replay DIR``.

``TiledWriter`` (see :mod:`.writer`) writes the whole document stream of a run it could not deliver to
``BACKUP_DIR/<uid prefix>.jsonl``.  :func:`replay` sends each such run again:

* a run whose start uid is in the catalog *with* a stop document is complete: skipped (so replaying twice adds
  nothing);
* a run in the catalog *without* a stop document is the partial copy left when the server went away: it is
  removed and written again in full from the backup (the backup holds every document of the run, including the
  ones the server had already received);
* a run not in the catalog is written;
* a run without a stop document (the acquisition process died) gets one synthesized (``exit_status="abort"``,
  with a reason) so that its data are flushed and the run reads as cut short;
* every file replayed is recorded in ``DIR/.espt_replayed.json`` (name, uid, document count, size) and not written
  again while its run is in the catalog.

External asset files (HDF5 waveforms) are referenced, never copied, so they must still be where the documents say.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidArgument

logger = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    """What :func:`replay` did, by backup file."""

    written: list[str] = field(default_factory=list)  # start uids written (new or completed)
    replaced_partial: list[str] = field(default_factory=list)  # start uids whose partial copy was replaced
    skipped: list[str] = field(default_factory=list)  # start uids already complete in Tiled
    failed: dict[str, str] = field(default_factory=dict)  # file -> error message

    def __str__(self) -> str:
        return (f"written {len(self.written)} run(s) ({len(self.replaced_partial)} completing a partial copy), "
                f"skipped {len(self.skipped)} already complete, failed {len(self.failed)}")


def read_backup_file(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """The ``(name, doc)`` pairs of one backup file (JSON lines ``{"name": ..., "doc": ...}``).

    A truncated last line (the process died while writing it) is ignored.
    """
    out: list[tuple[str, dict]] = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s: ignoring a truncated last line", path)
                continue
            raise InvalidArgument(f"{path}: line {i + 1} is not JSON")
        out.append((rec["name"], rec["doc"]))
    return out


def backup_files(directory: str | os.PathLike) -> list[Path]:
    """Backup files of a directory, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        raise InvalidArgument(f"directory={str(directory)!r} is not a directory")
    return sorted(d.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))


def _dedupe(docs: list[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """Drop repeated documents (same name and uid), keeping the first."""
    seen: set[tuple[str, str]] = set()
    for name, doc in docs:
        uid = doc.get("uid")
        if isinstance(uid, list):  # event_page / datum_page
            uid = "|".join(map(str, uid))
        if isinstance(uid, str):
            if (name, uid) in seen:
                continue
            seen.add((name, uid))
        yield name, doc


MANIFEST = ".espt_replayed.json"


def _load_manifest(directory: str | os.PathLike) -> dict:
    p = Path(directory) / MANIFEST
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _save_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    p = Path(directory) / MANIFEST
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(p)


def synthesize_stop(docs: list[tuple[str, dict]]) -> dict:
    """A stop document for a run whose backup ended without one (the acquisition process died).

    ``exit_status`` is ``"abort"`` with a reason saying so; ``num_events`` counts the events per stream.
    """
    import uuid

    start = next(d for n, d in docs if n == "start")
    stream_of = {d["uid"]: d.get("name", "primary") for n, d in docs if n == "descriptor"}
    counts: dict[str, int] = {}
    last = start["time"]
    for name, doc in docs:
        if name == "event":
            s = stream_of.get(doc["descriptor"])
            counts[s] = counts.get(s, 0) + 1
        elif name == "event_page":
            s = stream_of.get(doc["descriptor"])
            counts[s] = counts.get(s, 0) + len(doc["seq_num"])
        t = doc.get("time")
        if isinstance(t, list):
            t = max(t) if t else None
        if isinstance(t, (int, float)):
            last = max(last, t)
    return {"uid": str(uuid.uuid4()), "time": last, "run_start": start["uid"], "exit_status": "abort",
            "reason": "synthesized by espt replay: the backup ended without a stop document",
            "num_events": {k: v for k, v in counts.items() if k is not None}}


def replay(directory: str | os.PathLike, client: Any, *, batch_size: int = 1000) -> ReplayReport:
    """Send the runs backed up in ``directory`` to a Tiled catalog; safe to run any number of times.

    Parameters
    ----------
    directory : path
        A TiledWriter backup directory (``LocalCatalog.backup_dir``).
    client : LocalCatalog or tiled container client
        The catalog the runs belong in.
    batch_size : int
        Rows per write while replaying.

    Returns
    -------
    ReplayReport
    """
    from .server import LocalCatalog
    from .writer import make_writer

    if isinstance(client, LocalCatalog):
        client = client.client()
    report = ReplayReport()
    manifest = _load_manifest(directory)
    for path in backup_files(directory):
        try:
            docs = list(_dedupe(read_backup_file(path)))
        except Exception as exc:  # noqa: BLE001 - report and go on with the other files
            report.failed[str(path)] = f"unreadable: {exc}"
            continue
        starts = [d for n, d in docs if n == "start"]
        if len(starts) != 1:
            report.failed[str(path)] = f"expected one start document, found {len(starts)}"
            continue
        uid = starts[0]["uid"]
        if not any(n == "stop" for n, _ in docs):
            docs.append(("stop", synthesize_stop(docs)))  # flushes the writer; marks the run as cut short
        stamp = {"uid": uid, "n_docs": len(docs), "size": path.stat().st_size}
        try:
            partial = False
            if uid in client:
                node = client[uid]
                if node.metadata.get("stop") is not None or manifest.get(path.name) == stamp:
                    # complete, or already replayed from this very file (a run that never got a stop)
                    report.skipped.append(uid)
                    continue
                partial = True
                node.delete(recursive=True, external_only=False)
            writer = make_writer(client, backup_directory=None, batch_size=batch_size)
            for name, doc in docs:
                writer(name, doc)
            report.written.append(uid)
            if partial:
                report.replaced_partial.append(uid)
            manifest[path.name] = stamp
            _save_manifest(directory, manifest)
        except Exception as exc:  # noqa: BLE001
            logger.exception("replaying %s failed", path)
            report.failed[str(path)] = f"{type(exc).__name__}: {exc}"
    return report
