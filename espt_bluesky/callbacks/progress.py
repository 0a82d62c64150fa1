"""``MapProgress``: a tqdm progress bar over the points (hops, pixels, spots) of a map run.

A run is counted when its start document announces a map (``map`` or a 2-D ``shape``) and how many points it has
(``num_points``, else the product of ``shape``); every event of the ``primary`` stream advances the bar by one.
Other runs (an approach, a count) are left alone.  Moves get their own bars from bluesky's
``ProgressBarManager`` (``RE.waiting_hook``), which draws every status that reports progress.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Mapping, TextIO

from bluesky.callbacks.core import CallbackBase

__all__ = ["MapProgress", "map_point_count"]


def map_point_count(start: Mapping[str, Any]) -> int | None:
    """Number of points of a map run from its start document, or None for a run that is not a counted map."""
    shape = start.get("shape")
    is_map = start.get("map") is not None or (shape is not None and len(shape) == 2)
    if not is_map:
        return None
    n = start.get("num_points")
    if n is None and shape:
        n = math.prod(int(s) for s in shape)
    try:
        n = int(n)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


class MapProgress(CallbackBase):
    """Progress of map runs: one bar per run, advanced by each event of ``stream``.

    Parameters
    ----------
    stream : str
        The event stream whose events are the map's points.
    file : text stream, optional
        Where the bar is drawn (default ``sys.stderr``, tqdm's own default).
    **tqdm_kwargs
        Passed to ``tqdm.tqdm`` (e.g. ``disable=True``, ``mininterval=``).

    Attributes
    ----------
    total, done : int
        Points announced and points seen in the present (or last) map run.
    """

    def __init__(self, stream: str = "primary", *, file: TextIO | None = None, **tqdm_kwargs: Any):
        super().__init__()
        self.stream = stream
        self.file = file
        self.tqdm_kwargs = dict(unit="pt", dynamic_ncols=True, leave=True) | tqdm_kwargs
        self._bar = None
        self._descriptors: set[str] = set()
        self.total = self.done = 0

    def start(self, doc):
        self._close()
        self._descriptors.clear()
        n = map_point_count(doc)
        if n is not None:
            from tqdm import tqdm

            self.total, self.done = n, 0
            desc = f"{doc.get('plan_name', 'run')} {doc['uid'][:8]}"
            self._bar = tqdm(total=n, desc=desc, file=self.file if self.file is not None else sys.stderr,
                             **self.tqdm_kwargs)
        return super().start(doc)

    def descriptor(self, doc):
        if self._bar is not None and doc.get("name") == self.stream:
            self._descriptors.add(doc["uid"])
        return super().descriptor(doc)

    def event_page(self, doc):  # single events reach here packed as pages of one (DocumentRouter)
        if self._bar is not None and doc["descriptor"] in self._descriptors:
            n = len(doc.get("seq_num", ()))
            self.done += n
            self._bar.update(n)
        return doc

    def stop(self, doc):
        if self._bar is not None:
            self._bar.set_postfix_str(doc.get("exit_status", ""), refresh=False)
        self._close()
        return super().stop(doc)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
