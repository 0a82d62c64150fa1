"""``espt worker livemap``: the map of the running scan, published for remote displays.

:class:`LiveMapPublisher` reads the documents of the instrument from the bus (a durable consumer that starts with
new documents) and publishes on the core NATS subject ``<live_subject>.map`` (not stored in the stream) a snapshot of
the present map run at most every ``interval`` seconds and at its stop: msgpack ``{"uid", "technique", "x_key",
"y_key", "order", "shape", "extents", "x", "y", "fields": {key: values}, "n", "final"}`` -- the positions (µm) and
scalar readings of every point so far.  Positions come from the start document (``map``, else ``motors``, through
:func:`espt_bluesky.callbacks.live_map.map_layout`).

A remote display subscribes with :class:`LiveMapView` (``view.image(key)`` puts a grid run on its (ny, nx) grid)
or with any NATS client.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from .bus import BusConfig, pack, unpack
from .consumer import DurableWorker, Message

logger = logging.getLogger(__name__)


def live_map_subject(cfg: BusConfig) -> str:
    return f"{cfg.live_subject}.map"


class LiveMapPublisher(DurableWorker):
    """Publish map snapshots of the runs on the bus (see the module docstring).

    Parameters
    ----------
    config : BusConfig
    fields : sequence of str, optional
        Data keys to publish (default: every scalar number of the primary stream).
    interval : float, s
        Least time between two snapshots of a run (the stop's is always sent).
    """

    kind = "live-map publisher"

    def __init__(self, config: BusConfig, *, durable: str = "espt-livemap", fields: Any = None,
                 interval: float = 0.5, batch: int = 200, fetch_timeout: float = 0.5):
        super().__init__(config, durable, batch=batch, ack_wait=30.0, fetch_timeout=fetch_timeout)
        self.deliver_new = True
        self.fields = list(fields) if fields else None
        self.interval = float(interval)
        self.published = 0
        self._run: dict | None = None
        self._last_pub = -math.inf

    def handle(self, batch: list[Message]) -> None:
        for m in batch:
            getattr(self, f"_{m.name}", lambda doc: None)(m.doc)
        run = self._run
        if run is not None and run["n"] and time.monotonic() - self._last_pub >= self.interval:
            self._publish(final=False)

    def _start(self, doc: dict) -> None:
        from ..callbacks.live_map import map_layout

        try:
            lay = map_layout(doc)
        except InvalidArgument as exc:
            logger.info("livemap: run %s is not a map (%s)", doc.get("uid"), exc)
            self._run = None
            return
        self._run = {"uid": doc["uid"], "technique": doc.get("technique"), "x_key": lay["x"], "y_key": lay["y"],
                     "order": lay["order"], "shape": lay["shape"], "extents": lay["extents"], "x": [], "y": [],
                     "fields": {}, "n": 0, "final": False, "_desc": set()}

    def _descriptor(self, doc: dict) -> None:
        run = self._run
        if run is None or doc.get("name", "primary") != "primary":
            return
        keys = doc.get("data_keys", {})
        if run["x_key"] not in keys or run["y_key"] not in keys:
            return
        run["_desc"].add(doc["uid"])
        if not run["fields"]:
            names = self.fields or [k for k, v in keys.items() if v.get("dtype") in ("number", "integer")
                                    and not v.get("shape") and k not in (run["x_key"], run["y_key"])]
            run["fields"] = {k: [] for k in names if k in keys}

    def _event(self, doc: dict) -> None:
        run = self._run
        if run is None or doc.get("descriptor") not in run["_desc"]:
            return
        data = doc["data"]
        try:
            x, y = float(data[run["x_key"]]), float(data[run["y_key"]])
        except (KeyError, TypeError, ValueError):
            return
        run["x"].append(x)
        run["y"].append(y)
        for k, vals in run["fields"].items():
            v = data.get(k)
            vals.append(float(v) if isinstance(v, (int, float)) else math.nan)
        run["n"] += 1

    def _stop(self, doc: dict) -> None:
        if self._run is not None and self._run["uid"] == doc.get("run_start"):
            self._run["final"] = True
            self._run["exit_status"] = doc.get("exit_status")
            self._publish(final=True)
            self._run = None

    def _publish(self, final: bool) -> None:
        snap = {k: v for k, v in self._run.items() if not k.startswith("_")}
        snap["final"] = final
        self.call(self._nc.publish(live_map_subject(self.cfg), pack(snap)))
        self._last_pub = time.monotonic()
        self.published += 1


class LiveMapView:
    """A remote display's side: the latest snapshot of each run published by ``espt worker livemap``.

    >>> view = LiveMapView(BusConfig.from_mapping({...}))   # doctest: +SKIP
    >>> view.latest["n"], view.image("pstat_tip_current")  # doctest: +SKIP
    """

    def __init__(self, config: BusConfig):
        import asyncio
        import threading

        import nats
        from bluesky_nats.nats_runtime import NatsRuntime

        self.cfg = config
        self.snapshots: dict[str, dict] = {}
        self.latest: dict | None = None
        self.updated = threading.Event()
        self._rt = NatsRuntime(name="espt-livemap-view", owns_client=False)
        nc = self._nc = self._rt.connect(nats.connect(**config.connect_options()), timeout=config.connect_timeout + 5)

        async def on_msg(msg: Any) -> None:
            snap = unpack(msg.data)
            self.snapshots[snap["uid"]] = self.latest = snap
            self.updated.set()

        async def sub() -> None:
            await nc.subscribe(live_map_subject(config), cb=on_msg)
            await nc.flush()

        self._rt.setup(sub())
        self._asyncio = asyncio

    def wait(self, timeout: float) -> dict | None:
        """Wait for the next snapshot (None after ``timeout``)."""
        self.updated.clear()
        return self.latest if self.updated.wait(timeout) else None

    def image(self, key: str, uid: str | None = None) -> np.ndarray:
        """The (ny, nx) image of ``key`` of a grid run (NaN where not measured yet)."""
        snap = self.snapshots[uid] if uid else self.latest
        if snap is None or not snap.get("shape"):
            raise InvalidArgument(f"uid={uid!r}: no grid run received (a hopping run has points, not a grid)")
        (y0, y1), (x0, x1) = snap["extents"]
        ny, nx = snap["shape"]
        img = np.full((ny, nx), np.nan)
        dx = (x1 - x0) / (nx - 1) if nx > 1 else 1.0
        dy = (y1 - y0) / (ny - 1) if ny > 1 else 1.0
        ix = np.rint((np.asarray(snap["x"]) - x0) / dx).astype(int)
        iy = np.rint((np.asarray(snap["y"]) - y0) / dy).astype(int)
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        img[iy[ok], ix[ok]] = np.asarray(snap["fields"][key], dtype=float)[ok]
        return img

    def close(self) -> None:
        from .bus import close_runtime

        close_runtime(self._rt, self._nc)
