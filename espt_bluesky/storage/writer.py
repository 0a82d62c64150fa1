"""The one place that wires ``bluesky_tiled_plugins.TiledWriter``: a backup directory and a small batch size.

``TiledWriter`` keeps every document of a run in memory until the run ends; if the server cannot be reached, the
whole run (the documents seen so far and the rest) goes to JSON-lines files in ``backup_directory`` and nothing
more of that run is sent to the server.  :func:`espt_bluesky.storage.replay.replay` sends those files later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bluesky_tiled_plugins import TiledWriter

from .server import LocalCatalog

#: Rows (events, or waveform frames of a stream resource) buffered before they are sent: small enough that a
#: reader sees a running map fill in, large enough not to cost one HTTP request per point.
LIVE_BATCH_SIZE = 25


def make_writer(target: Any, *, backup_directory: str | os.PathLike | None = None,
                batch_size: int = LIVE_BATCH_SIZE) -> TiledWriter:
    """A ``TiledWriter`` for a catalog, with a backup directory.

    Parameters
    ----------
    target : LocalCatalog or tiled client
        Where runs are written.
    backup_directory : path, optional
        Where documents go when the server fails (default: the catalog's ``backup/`` directory).
    batch_size : int
        Events (or stream-datum rows) per write; 1 shows every point at once, TiledWriter's own default
        (10,000) shows nothing until the end of most runs.

    Returns
    -------
    TiledWriter
        Subscribe it to a RunEngine: ``RE.subscribe(writer)``.
    """
    if isinstance(target, LocalCatalog):
        client = target.client()
        if backup_directory is None and target.backup_dir is not None:
            backup_directory = target.backup_dir
    else:
        client = target
    if backup_directory is not None:
        Path(backup_directory).mkdir(parents=True, exist_ok=True)
        backup_directory = str(backup_directory)
    return TiledWriter(client, backup_directory=backup_directory, batch_size=int(batch_size))
