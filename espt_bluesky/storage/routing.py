"""Which open run a document belongs to: the one router of the in-process writer and the bus publisher.

A ``start`` opens a run; a ``descriptor``, ``resource`` or ``stream_resource`` names its run (``run_start``) and
is remembered by uid; an ``event``/``event_page`` (``descriptor``), ``datum``/``datum_page`` (``resource``) or
``stream_datum`` (``stream_resource``) follows the document it names; a ``stop`` closes the run.  A document whose
run cannot be told (a ``stream_resource`` without ``run_start``, as ophyd-async composes them) goes to the only
open run when there is exactly one.

Imports nothing from the package (every layer above may use it).
"""

from __future__ import annotations

from typing import Any, Generic, Mapping, TypeVar

R = TypeVar("R")

#: documents that later documents of the run name by uid
_NAMED = ("descriptor", "resource", "stream_resource")


class RunRouter(Generic[R]):
    """Map documents to the run records of their (open) runs.

    Examples
    --------
    >>> router, run = RunRouter(), {"uid": "s1"}  # any record of the run
    >>> router.open("s1", run)
    >>> router.find("descriptor", {"uid": "d1", "run_start": "s1"}) is run
    True
    >>> router.find("event", {"uid": "e1", "descriptor": "d1"}) is run
    True
    >>> router.close(run)
    >>> router.find("event", {"uid": "e2", "descriptor": "d1"}) is None
    True
    """

    def __init__(self) -> None:
        #: start uid -> run record, for the runs between their start and stop
        self.runs: dict[str, R] = {}
        self._by_uid: dict[str, R] = {}  # descriptor / resource / stream resource uid -> run record

    def open(self, uid: str, run: R) -> None:
        """A start document ``uid`` opened ``run``."""
        self.runs[uid] = run

    def find(self, name: str, doc: Mapping[str, Any]) -> R | None:
        """The run record of document ``(name, doc)`` (not a start), or None when it belongs to no open run."""
        key = doc.get("run_start")
        if key is None:
            key = doc.get("descriptor") or doc.get("resource") or doc.get("stream_resource")
            run = self._by_uid.get(key) if isinstance(key, str) else None
        else:
            run = self.runs.get(key)
        if run is None and len(self.runs) == 1:
            run = next(iter(self.runs.values()))
        if run is not None and name in _NAMED:
            self._by_uid[doc["uid"]] = run
        return run

    def close(self, run: R) -> None:
        """Forget ``run`` and every document uid that led to it (at its stop, or when the session closes)."""
        self.runs = {k: r for k, r in self.runs.items() if r is not run}
        self._by_uid = {k: r for k, r in self._by_uid.items() if r is not run}

    def clear(self) -> None:
        self.runs.clear()
        self._by_uid.clear()

    def __bool__(self) -> bool:
        return bool(self.runs)

    def __len__(self) -> int:
        return len(self.runs)
