"""``espt worker analysis``: the products of every finished run (κ maps, screening tables, modulus maps), written back
to Tiled next to the run -- by the existing :class:`~espt_bluesky.callbacks.products.ProductCallback`, fed from the
bus instead of the RunEngine.

A durable consumer of the stop documents (``<subject>.stop``).  For each stop it waits until the run is complete in
Tiled (written by ``espt worker tiled``): not yet there, the message is asked for again later; there, the run's start
(from Tiled) and the stop go through ``ProductCallback``, and the message is acknowledged once the product is
written.  Idempotent: a product already in Tiled and readable is not written again (a restarted worker, a
redelivered stop); one left half-written by a worker killed while writing it is replaced.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .bus import BusConfig
from .consumer import DurableWorker, Message

logger = logging.getLogger(__name__)

#: the product each technique gets, and its name (the ``write_*`` functions' defaults)
PRODUCT_NAMES = {"SECM": "kappa_map", "SECCM": "screening", "EC-AFM": "modulus_map"}


class NotInTiledYet(RuntimeError):
    """The run of a stop document is not (completely) in Tiled yet."""


def product_complete(run: Any, name: str) -> bool:
    """True if ``run`` has a product ``name`` that reads back whole (every x/y dimension with its coordinate)."""
    from ..storage.maps import products_node, read_product

    node = products_node(run, create=False)
    if node is None or name not in node:
        return False
    try:
        ds = read_product(run, name)
    except Exception:  # noqa: BLE001 - half-written
        return False
    if not hasattr(ds, "data_vars"):
        return True
    dims = {d for v in ds.data_vars for d in ds[v].dims if d in ("x", "y")}
    return bool(ds.data_vars) and all(d in ds.coords for d in dims)


class AnalysisWorker(DurableWorker):
    """Durable consumer ``durable`` of stop documents writing products with ``ProductCallback``.

    Parameters
    ----------
    config : BusConfig
    client_factory : callable
        A writable Tiled client of the catalog the Tiled worker writes.
    techniques : sequence of str
        Techniques whose runs get a product (default: all of :data:`PRODUCT_NAMES`).
    run_timeout : float, s
        How long after a run's stop to keep waiting for it to be complete in Tiled before giving up (logged).
    **product_kwargs
        Passed to ``ProductCallback`` (e.g. ``plan_names``).

    Attributes
    ----------
    written, skipped, errors : list
        ``(uid, product)`` written by this process; ``(uid, why)`` not written (already there, no product for the
        technique); ``(uid, message)`` that could not be computed.
    """

    kind = "analysis worker"

    def __init__(self, config: BusConfig, client_factory: Callable[[], Any], *, durable: str = "espt-analysis",
                 techniques: Any = None, run_timeout: float = 600.0, ack_wait: float = 120.0, batch: int = 10,
                 fetch_timeout: float = 1.0, **product_kwargs: Any):
        super().__init__(config, durable, filter_subject=config.subject_of("stop"), batch=batch, ack_wait=ack_wait,
                         fetch_timeout=fetch_timeout)
        self._client_factory = client_factory
        self._client: Any = None
        self.techniques = set(techniques or PRODUCT_NAMES)
        self.run_timeout = float(run_timeout)
        self.product_kwargs = product_kwargs
        self.written: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def handle(self, batch: list[Message]) -> None:
        for m in batch:
            self._one(m)

    def failed(self, batch: list[Message], exc: Exception) -> None:
        if not isinstance(exc, NotInTiledYet):
            self._client = None

    def _one(self, m: Message) -> None:
        from ..callbacks.products import ProductCallback

        stop = m.doc
        uid = stop.get("run_start")
        client = self.client
        run = client[uid] if uid in client else None
        if run is None or not run.metadata.get("stop"):
            age = time.time() - float(stop.get("time", time.time()))
            if age < self.run_timeout:
                raise NotInTiledYet(f"run {uid} is not complete in Tiled yet")
            self.errors.append((uid, f"not complete in Tiled {self.run_timeout:g} s after its stop: no product"))
            logger.error("analysis worker: run %s not complete in Tiled %g s after its stop: no product", uid,
                         self.run_timeout)
            return
        start = dict(run.metadata["start"])
        technique = str(start.get("technique", "")).upper()
        if technique not in self.techniques or technique not in PRODUCT_NAMES:
            self.skipped.append((uid, f"no product for technique {start.get('technique')!r}"))
            return
        name = self.product_kwargs.get("name", PRODUCT_NAMES[technique])
        if product_complete(run, name):
            self.skipped.append((uid, f"product {name!r} already written"))
            return
        kwargs = dict(self.product_kwargs)
        from ..storage.maps import products_node

        node = products_node(run, create=False)
        if node is not None and name in node:  # half-written by a worker killed while writing it
            logger.warning("analysis worker: run %s: product %r is incomplete: replacing it", uid, name)
            kwargs["overwrite"] = True
        cb = ProductCallback(client, technique, timeout=5.0, from_stop=False, **kwargs)
        cb.start(start)
        cb.stop(stop)
        if cb.written:
            self.written.append((uid, name))
            logger.info("analysis worker: run %s: product %r written", uid, name)
        for u, msg in cb.errors:
            if "not found in Tiled" in msg:
                raise NotInTiledYet(msg)
            self.errors.append((u, msg))


def make_analysis_worker(cfg: BusConfig, *, uri: str | None = None, api_key: str | None = None,
                         data_dir: str | None = None, **kwargs: Any) -> AnalysisWorker:
    """An :class:`AnalysisWorker` for the catalog at ``uri`` (default: as ``espt replay`` finds it)."""
    from ..storage.server import LocalCatalog

    cat = LocalCatalog.connect(uri, api_key, data_dir)
    return AnalysisWorker(cfg, cat.client, **kwargs)
