"""The one place that wires ``bluesky_tiled_plugins.TiledWriter``: a backup directory and a small batch size.

``TiledWriter`` keeps every document of a run in memory until the run ends; if the server cannot be reached
mid-run, the whole run (the documents seen so far and the rest) goes to JSON-lines files in ``backup_directory``
and nothing more of that run is sent to the server.  :class:`ResilientTiledWriter` adds the case TiledWriter cannot
handle itself: a server that is already down when a run starts (TiledWriter cannot even be built then) -- that
run goes straight to the same backup directory, in the same format.  :func:`espt_bluesky.storage.replay.replay`
sends backups later.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from bluesky_tiled_plugins import TiledWriter

from .server import LocalCatalog

logger = logging.getLogger(__name__)

#: Rows (events, or waveform frames of a stream resource) buffered before they are sent: small enough that a
#: reader sees a running map fill in, large enough not to cost one HTTP request per point.
LIVE_BATCH_SIZE = 25


class _JSONLinesBackup:
    """One run's documents as JSON lines ``{"name": ..., "doc": ...}`` in ``<uid prefix>.jsonl`` (TiledWriter's
    backup format)."""

    def __init__(self, directory: Path, uid: str):
        self.path = Path(directory) / f"{uid.split('-')[0]}.jsonl"

    def __call__(self, name: str, doc: dict) -> None:
        with open(self.path, "a") as fh:
            json.dump({"name": name, "doc": doc}, fh)
            fh.write("\n")


class ResilientTiledWriter:
    """A TiledWriter that is (re)built at the start of a run, with every run backed up if Tiled fails.

    Subscribe it to a RunEngine.  Runs are assumed not to interleave (one open run at a time, as the
    RunEngine emits them).

    Parameters
    ----------
    client_factory : callable
        Returns a Tiled client of the catalog (called when no working writer exists).
    backup_directory : path or None
        Where the documents of runs that could not be written go.
    batch_size : int
        See :func:`make_writer`.
    """

    def __init__(self, client_factory: Callable[[], Any], backup_directory: str | os.PathLike | None,
                 batch_size: int = LIVE_BATCH_SIZE):
        self._client_factory = client_factory
        self.backup_directory = Path(backup_directory) if backup_directory is not None else None
        self.batch_size = int(batch_size)
        self.tiled_writer: TiledWriter | None = None
        self._route: Callable[[str, dict], None] | None = None

    def _build(self) -> TiledWriter:
        return TiledWriter(self._client_factory(),
                           backup_directory=str(self.backup_directory) if self.backup_directory else None,
                           batch_size=self.batch_size)

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._route = None
            if self.tiled_writer is None:
                try:
                    self.tiled_writer = self._build()
                except Exception:  # noqa: BLE001 - server unreachable: back the run up instead
                    if self.backup_directory is None:
                        raise
                    logger.exception("Tiled is unreachable at the start of run %s; the run is written to the "
                                     "backup directory %s (send it later with `espt replay`)",
                                     doc.get("uid"), self.backup_directory)
            if self.tiled_writer is not None:
                self._route = self.tiled_writer
            else:
                self.backup_directory.mkdir(parents=True, exist_ok=True)
                self._route = _JSONLinesBackup(self.backup_directory, doc["uid"])
        route = self._route
        if route is None:  # documents outside a run (none in practice)
            return
        route(name, doc)
        if name == "stop":
            self._route = None
            if route is not self.tiled_writer:
                self.tiled_writer = None  # try the server again next run


def make_writer(target: Any, *, backup_directory: str | os.PathLike | None = None,
                batch_size: int = LIVE_BATCH_SIZE) -> ResilientTiledWriter | TiledWriter:
    """The writer for a catalog, with a backup directory.

    Parameters
    ----------
    target : LocalCatalog or tiled client
        Where runs are written.
    backup_directory : path, optional
        Where documents go when the server fails (default: the catalog's ``backup/`` directory).  Without one
        (and no catalog directory), a plain ``TiledWriter`` is returned and errors propagate.
    batch_size : int
        Events (or stream-datum rows) per write; 1 shows every point at once, TiledWriter's own default
        (10,000) shows nothing until the end of most runs.

    Returns
    -------
    ResilientTiledWriter or TiledWriter
        Subscribe it to a RunEngine: ``RE.subscribe(writer)``.
    """
    if isinstance(target, LocalCatalog):
        factory = target.client
        if backup_directory is None and target.backup_dir is not None:
            backup_directory = target.backup_dir
    else:
        factory = lambda: target  # noqa: E731
    if backup_directory is None:
        return TiledWriter(factory(), batch_size=int(batch_size))
    Path(backup_directory).mkdir(parents=True, exist_ok=True)
    return ResilientTiledWriter(factory, backup_directory, batch_size)
