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

import importlib
from typing import Any

# Names are imported on first use (PEP 562), so that the server process (:mod:`.tiled_process`) and the journal
# do not pay for the Tiled client, xarray and the writer they never use.
_WHERE = {"RunData": "maps", "map_keys": "maps", "read_map": "maps", "read_product": "maps",
          "write_product": "maps", "DataDir": "server", "LocalCatalog": "server",
          "ServerError": "server", "default_data_dir": "server", "LIVE_BATCH_SIZE": "writer",
          "make_writer": "writer"}

# ``replay`` is both a function and the submodule that holds it: imported here, at once (it needs only the
# standard library and the journal), so that importing the submodule first (``storage.replay``) cannot leave the
# package attribute bound to the module instead of the function
from .replay import replay  # noqa: E402

__all__ = sorted([*_WHERE, "replay"])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
