"""``ApproachFitCallback``: fit every SECM approach curve of a run as it ends (contact offset, κ, k).

Collects the probe height and tip current of the approach stream (default ``"approach"``, keys ``stage_z`` and
``pstat_tip_current``), splits the stream into approaches where z goes up again (several approaches in one run,
e.g. ``measure_tilt``), and fits each with :func:`espt_bluesky.analysis.approach_fit.fit_approach_curve` using a
and RG from the start document's ``probe`` and D from its ``mediator`` (overridable).  Results accumulate in
``results``; ``on_result`` is called with each one (e.g. to write a product, see :mod:`.products`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np
from bluesky.callbacks.core import CallbackBase

from ..errors import InvalidArgument
from .live_map import probe_radius_from_metadata

__all__ = ["ApproachFitCallback", "split_approaches"]

logger = logging.getLogger(__name__)


def split_approaches(z: np.ndarray, min_points: int = 5) -> list[slice]:
    """Slices of monotonic approaches (z not increasing) in a sequence of probe heights (µm)."""
    z = np.asarray(z, float)
    if z.size == 0:
        return []
    up = np.flatnonzero(np.diff(z) > 1e-9) + 1
    bounds = [0, *up.tolist(), z.size]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= min_points]


class ApproachFitCallback(CallbackBase):
    """Fit each approach curve of SECM runs with the feedback theory.

    Parameters
    ----------
    stream : str
        Event stream holding the approach readings.
    z_key, current_key : str
        Data keys of the probe height (µm) and tip current (A).
    substrate : {"kinetic", "conductor", "insulator"}
        Model fitted (see ``fit_approach_curve``).
    a, D, rg, i_inf : float, optional
        Override the start document's probe radius (µm), mediator D (m²/s), RG and i_T,inf (A; default: fitted
        unless the start document carries ``i_inf``).
    min_points : int
        Shortest approach fitted.
    on_result : callable, optional
        ``on_result(start_doc, result_dict)`` after every fit.
    raise_errors : bool
        Raise fit errors (InvalidArgument) instead of logging them and recording ``error`` in the result.

    Attributes
    ----------
    results : list of dict
        ``uid``, ``index`` (approach number in the run), ``n_points``, ``fit`` (ApproachFitResult) or ``error``.
    """

    def __init__(self, *, stream: str = "approach", z_key: str = "stage_z", current_key: str = "pstat_tip_current",
                 substrate: str = "kinetic", a: Optional[float] = None, D: Optional[float] = None,
                 rg: Optional[float] = None, i_inf: Optional[float] = None, min_points: int = 8,
                 on_result: Optional[Callable[[dict, dict], Any]] = None, raise_errors: bool = False):
        super().__init__()
        self.stream, self.z_key, self.current_key = stream, z_key, current_key
        self.substrate = substrate
        self._over = dict(a=a, D=D, rg=rg, i_inf=i_inf)
        self.min_points = int(min_points)
        self.on_result = on_result
        self.raise_errors = raise_errors
        self.results: list[dict] = []
        self._start: Optional[dict] = None

    def start(self, doc):
        self._start = doc if str(doc.get("technique", "")).upper() == "SECM" else None
        self._desc: set[str] = set()
        self._z: list[float] = []
        self._i: list[float] = []
        return super().start(doc)

    def descriptor(self, doc):
        if self._start is not None and doc.get("name") == self.stream:
            keys = doc.get("data_keys", {})
            missing = [k for k in (self.z_key, self.current_key) if k not in keys]
            if missing:
                raise InvalidArgument(f"ApproachFitCallback: the {self.stream!r} stream lacks {missing}; it has "
                                      f"{sorted(keys)}")
            self._desc.add(doc["uid"])
        return super().descriptor(doc)

    def event(self, doc):
        if self._start is not None and doc["descriptor"] in self._desc:
            self._z.append(float(doc["data"][self.z_key]))
            self._i.append(float(doc["data"][self.current_key]))
        return super().event(doc)

    def stop(self, doc):
        if self._start is not None and self._z:
            self.fit_run(self._start, np.asarray(self._z), np.asarray(self._i))
        return super().stop(doc)

    def parameters(self, start: dict) -> dict:
        """a (µm), D (m²/s), rg, i_inf (A or None) for a run, from overrides and start-document metadata."""
        o = self._over
        probe = start.get("probe") or {}
        med = start.get("mediator") or {}
        a = o["a"] if o["a"] is not None else probe_radius_from_metadata(probe)
        if a is None:
            raise InvalidArgument(f"ApproachFitCallback: run {start['uid'][:8]} has no probe radius in its start "
                                  "document ('probe': {'radius': ...}); pass a=... (µm)")
        D = o["D"] if o["D"] is not None else (med.get("D") if isinstance(med, dict) else None)
        rg = o["rg"] if o["rg"] is not None else probe.get("rg", 10.0)
        i_inf = o["i_inf"] if o["i_inf"] is not None else start.get("i_inf")
        return dict(a=float(a), D=None if D is None else float(D), rg=float(rg),
                    i_inf=None if i_inf is None else float(i_inf))

    def fit_run(self, start: dict, z: np.ndarray, current: np.ndarray) -> list[dict]:
        """Fit every approach in (z, current) of one run; returns (and records) the result dicts."""
        from ..analysis.approach_fit import fit_approach_curve

        p = self.parameters(start)
        out = []
        for k, sl in enumerate(split_approaches(z, self.min_points)):
            rec: dict[str, Any] = dict(uid=start["uid"], index=k, n_points=sl.stop - sl.start, parameters=p,
                                       substrate=self.substrate)
            try:
                rec["fit"] = fit_approach_curve(z[sl], current[sl], a=p["a"], D=p["D"], rg=p["rg"],
                                                substrate=self.substrate, i_inf=p["i_inf"])
                f = rec["fit"]
                logger.info("approach %d of %s: z0 = %.3f ± %.3f µm, kappa = %.3g ± %.2g%s", k, start["uid"][:8],
                            f.z0, f.z0_err, f.kappa, f.kappa_err,
                            "" if f.k is None else f", k = {f.k:.3g} m/s")
            except InvalidArgument as exc:
                if self.raise_errors:
                    raise
                rec["error"] = str(exc)
                logger.warning("approach %d of %s not fitted: %s", k, start["uid"][:8], exc)
            self.results.append(rec)
            out.append(rec)
            if self.on_result is not None:
                self.on_result(start, rec)
        return out
