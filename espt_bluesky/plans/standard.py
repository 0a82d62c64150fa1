"""Standard bluesky plans whose own signatures bluesky-queueserver cannot use, re-declared with ones it can.

bluesky 1.15 annotates ``list_scan``'s ``*args`` as ``(motor, list)`` tuples while the plan takes them flattened
(``motor1, [points], motor2, [points]``), so the queue server refuses every real call.  The wrapper here takes the
same arguments and runs bluesky's plan unchanged (same documents, ``plan_name`` "list_scan").
"""

from collections.abc import Sequence
from typing import Any

import bluesky.plans as bp
from bluesky.protocols import Movable, Readable

__all__ = ["list_scan"]


def list_scan(detectors: Sequence[Readable], *args: Movable | list[float], per_step: Any = None,
              md: dict | None = None):
    """Scan over one or more variables in steps simultaneously (inner product): ``bluesky.plans.list_scan``.

    Parameters
    ----------
    detectors : list
        Readable devices.
    *args
        ``motor1, [point1, point2, ...], motor2, [point1, point2, ...], ...`` (lists of equal length).
    per_step : callable, optional
        Hook for customizing action of inner loop (see ``bluesky.plans.list_scan``).
    md : dict, optional
        Metadata.
    """
    return (yield from bp.list_scan(detectors, *args, per_step=per_step, md=md))
