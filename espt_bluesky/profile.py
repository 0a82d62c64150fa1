"""The interactive session: what ``profile_collection/startup`` runs, on top of :func:`~espt_bluesky.session.build_session`.

:func:`start_session` adds what a Bluesky user expects at an IPython prompt:

* the ``BestEffortCallback`` (live table; live plots only where a display exists, never headless);
* :class:`~espt_bluesky.callbacks.live_map.LiveFeedbackMap` for map runs (it skips any other run);
* progress bars: bluesky's ``ProgressBarManager`` for moves and :class:`~espt_bluesky.callbacks.progress.MapProgress`
  for the points of a map;
* the ``%wa``, ``%mov``, ``%movr`` and ``%ct`` magics (``bluesky.magics``) when IPython runs, and :func:`wh_pos`;
* a short banner naming the instrument and the catalog.

Under bluesky-queueserver (its RE worker runs the same startup directory) the plots, magics and progress bars are
left out.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, TextIO

from .session import Session, build_session

__all__ = ["display_available", "in_queue_server", "start_session", "wh_pos"]

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def in_queue_server() -> bool:
    """True inside bluesky-queueserver's RE worker."""
    try:
        from bluesky_queueserver import is_re_worker_active
    except ImportError:
        return False
    return bool(is_re_worker_active())


def display_available() -> bool:
    """True when matplotlib can show windows (an interactive backend was chosen; headless it falls back to Agg)."""
    if os.environ.get("MPLBACKEND", "").lower() in _NON_INTERACTIVE:
        return False
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return backend not in _NON_INTERACTIVE and "inline" not in backend


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def start_session(config: Mapping | str | os.PathLike | None = None, *, plots: bool | None = None,
                  banner: bool = True) -> Session:
    """Build the session (RunEngine, storage, devices) and the interactive extras; print the banner.

    Parameters
    ----------
    config : dict or path, optional
        See :func:`espt_bluesky.session.load_config` (default: ``$ESPT_CONFIG`` and the environment).
    plots : bool, optional
        Live plots of the BestEffortCallback and the live map; default: where a display exists.
    banner : bool
        Print :meth:`Session.banner`.

    Returns
    -------
    Session
        With ``bec``, ``live_map`` and ``map_progress`` attributes besides those of :class:`Session`.
    """
    from bluesky.callbacks.best_effort import BestEffortCallback
    from bluesky.utils import ProgressBarManager

    from .callbacks.live_map import LiveFeedbackMap
    from .callbacks.progress import MapProgress

    s = build_session(config)
    worker = in_queue_server()
    plots = (display_available() and not worker) if plots is None else bool(plots)
    s.bec = BestEffortCallback()
    fig = None
    if plots:
        import matplotlib.pyplot as plt

        plt.ion()
        fig = plt.figure("espt live map")
    else:
        s.bec.disable_plots()
    s.RE.subscribe(s.bec)
    s.live_map = LiveFeedbackMap(technique=None, fig=fig)
    s.RE.subscribe(s.live_map)
    s.map_progress = None
    if not worker:
        s.map_progress = MapProgress()
        s.RE.subscribe(s.map_progress)
        s.RE.waiting_hook = ProgressBarManager()
    ip = _ipython()
    if ip is not None and not worker:
        from bluesky.magics import BlueskyMagics

        ip.register_magics(BlueskyMagics)
    if banner:
        print(s.banner())
        if not worker:
            print("  try:       wh_pos(), %wa, summarize_plan(plan), RE(plan).plan_result, catalog.client()")
        sys.stdout.flush()
    return s


def wh_pos(stage: Any = None, *, file: TextIO | None = None) -> None:
    """Print where the stage is: each axis's position, soft limits and units (SPEC's ``wh``).

    Parameters
    ----------
    stage : XYZStage, optional
        Default: the ``stage`` of the IPython namespace.
    """
    if stage is None:
        ip = _ipython()
        stage = ip.user_ns.get("stage") if ip is not None else None
        if stage is None:
            raise TypeError("wh_pos(stage): no `stage` in the namespace; pass the stage")
    out = file if file is not None else sys.stdout
    print(f"{'axis':<10} {'position':>12} {'low limit':>12} {'high limit':>12}  units", file=out)
    for ax in (stage.x, stage.y, stage.z):
        lo, hi = ax.limits
        print(f"{ax.name:<10} {ax.position:>12.4f} {lo:>12.4f} {hi:>12.4f}  {ax.egu}", file=out)
