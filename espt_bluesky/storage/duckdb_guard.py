"""One thread at a time on the DuckDB table store of the Tiled servers this package runs.

Tiled 0.2.20 (``tiled.storage.SQLStorage``) hands *one* shared ADBC connection to every request that touches a
DuckDB table store (a ``sqlalchemy.pool.StaticPool``), and its table adapter runs in a pool of worker threads.  ADBC
connections are not thread-safe (``adbc_driver_manager.dbapi.threadsafety == 1``: "connections may not be shared"),
so two requests at once -- the writer appending a run's events while a reader (the browse page, a test, a user's
client) reads another table -- interleave on one connection: one request commits or rolls back the other's
transaction (``INVALID_STATE: No active transaction, cannot commit``: appended rows can be lost) and the process can
abort inside DuckDB.  That crash was seen in the in-process server of the test suite, whose threads share the
process with the RunEngine and the writer.

:func:`install` makes the pool of a DuckDB store a ``QueuePool`` of exactly one connection with no overflow: each
request checks the connection out for itself and the others wait for it (a lock, in the form Tiled already uses),
so the store is used by one thread at a time.  PostgreSQL and SQLite stores keep Tiled's own pools (one connection
per checkout).  Called before a server app is built, in this process (:meth:`LocalCatalog.in_process`) and in the
server process of :meth:`LocalCatalog.start`.
"""

from __future__ import annotations

import functools

#: Seconds a request waits for the DuckDB connection before it fails (HTTP 500; the writer's client retries).
CHECKOUT_TIMEOUT = 300.0

_installed = False


def install() -> None:
    """Serialise the use of DuckDB table stores (idempotent; see the module docstring)."""
    global _installed
    if _installed:
        return
    import sqlalchemy.pool
    from tiled.storage import SQLStorage

    tiled_pool = SQLStorage.__dict__["_connection_pool"]  # a functools.cached_property

    def _connection_pool(self: SQLStorage) -> sqlalchemy.pool.Pool:
        if self.dialect != "duckdb" or ":memory:" in self.uri:
            return tiled_pool.func(self)
        return sqlalchemy.pool.QueuePool(self._adbc_connection.adbc_clone, pool_size=1, max_overflow=0,
                                         timeout=CHECKOUT_TIMEOUT)

    guarded = functools.cached_property(_connection_pool)
    guarded.__set_name__(SQLStorage, "_connection_pool")
    SQLStorage._connection_pool = guarded
    _installed = True
