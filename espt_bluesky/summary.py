"""One line that tells a person which run this is: plan, technique, sample, time (and, once it ended, how).

``run_summary(start)`` is written into every start document of our plans (key ``summary``, by
``plans/metadata.build_start_md``) and recomputed by the browse page for runs that lack it (stock bluesky plans).
A leaf module like ``errors``: plans and storage both use it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any


def sample_name(start: Mapping[str, Any]) -> str:
    """The sample's name from a start document (``sample`` may be a dict with ``name`` or a plain string)."""
    sample = start.get("sample")
    if isinstance(sample, Mapping):
        return str(sample.get("name") or "")
    return str(sample) if sample else ""


def local_time(t: float | None) -> str:
    """A POSIX time (s) as local ``YYYY-MM-DD HH:MM`` (empty for None)."""
    if t is None:
        return ""
    return _dt.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M")


def run_summary(start: Mapping[str, Any], stop: Mapping[str, Any] | None = None, *,
                time: float | None = None) -> str:
    """``"hopping_scan · SECCM hopping · patterned · 2026-05-04 10:31"`` (plus ``" · success"`` given a stop).

    Parameters
    ----------
    start : dict
        Start document (or the metadata a plan is about to open a run with).
    stop : dict, optional
        Stop document: its ``exit_status`` is appended.
    time : float, optional
        POSIX time (s); default ``start["time"]``.
    """
    plan = str(start.get("plan_name") or "run")
    tech = " ".join(str(v) for v in (start.get("technique"), start.get("mode")) if v)
    if not tech and start.get("detectors"):
        tech = "detectors " + ", ".join(map(str, start["detectors"]))
    parts = [plan, tech, sample_name(start), local_time(time if time is not None else start.get("time"))]
    if stop:
        parts.append(str(stop.get("exit_status") or ""))
    return " · ".join(p for p in parts if p)
