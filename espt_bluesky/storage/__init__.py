"""Tiled storage: the local catalog, the writer, backup replay, and runs as µm maps.

Public API
----------
LocalCatalog
    ``LocalCatalog.start(data_dir)`` (own process, what ``espt serve`` runs), ``LocalCatalog.in_process(data_dir)``
    (a thread; tests, the demo), ``LocalCatalog.connect(uri, api_key)``; then ``.client()``, ``.uri``,
    ``.api_key``, ``.browse_url``, ``.asset_dir``, ``.backup_dir``, ``.stop()``.
make_writer(catalog_or_client, backup_directory=, batch_size=, max_wait=)
    The writer to subscribe to a RunEngine: every document journaled first (``backup/``), then sent to Tiled from a
    background thread; the RunEngine never waits more than ``max_wait`` s for it.
replay(backup_dir, client)
    Send backed-up runs to Tiled; idempotent, never deletes data Tiled has, reports damage.
journal.open_journal / journal.read_journal
    The durable, checksummed document journal (also the NATS bus's fallback).
read_map(run) / write_product(run, name, data, metadata) / read_product(run, name)
"""

from .maps import RunData, map_keys, read_map, read_product, write_product
from .replay import replay
from .server import DataDir, LocalCatalog, ServerError, default_data_dir
from .writer import LIVE_BATCH_SIZE, make_writer

__all__ = ["DataDir", "LIVE_BATCH_SIZE", "LocalCatalog", "RunData", "ServerError", "default_data_dir",
           "make_writer", "map_keys", "read_map", "read_product", "replay", "write_product"]
