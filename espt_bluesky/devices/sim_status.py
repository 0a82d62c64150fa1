"""Completing a simulated device's status at once, or after its instrument time scaled by ``time_scale``."""

from __future__ import annotations

import threading
import time
from typing import Callable

from ophyd.status import DeviceStatus, StatusBase

TICK = 0.1  # s between progress reports of a scaled move


class SimMoveStatus(DeviceStatus):
    """The status of a simulated move, reporting its progress to watchers like ophyd's ``MoveStatus``.

    bluesky's ``ProgressBar`` (``RE.waiting_hook = ProgressBarManager()``) draws a bar for every status with a
    ``watch`` method; the simulated position advances linearly over the move's scaled instrument time.
    """

    def __init__(self, device, *, initial: float, target: float, unit: str = "um", **kwargs):
        super().__init__(device, **kwargs)
        self.initial, self.target, self.unit = float(initial), float(target), unit
        self._watchers: list[Callable] = []
        self._t0 = time.monotonic()

    def watch(self, func: Callable) -> None:
        """Call ``func(name=, current=, initial=, target=, unit=, fraction=, time_elapsed=)`` as the move goes."""
        self._watchers.append(func)
        self.report(0.0)

    def report(self, fraction_done: float) -> None:
        f = min(max(float(fraction_done), 0.0), 1.0)
        current = self.initial + f * (self.target - self.initial)
        for w in list(self._watchers):
            w(name=self.device.name, current=current, initial=self.initial, target=self.target, unit=self.unit,
              fraction=1.0 - f, time_elapsed=time.monotonic() - self._t0)


def complete_status(status: StatusBase, error: BaseException | None, duration: float, time_scale: float) -> StatusBase:
    """Finish ``status`` (with ``error`` if given) now, or after ``duration · time_scale`` s in a thread.

    A :class:`SimMoveStatus` is told its progress every ``TICK`` s while it waits.
    """

    def finish() -> None:
        if error is not None:
            status.set_exception(error)
        else:
            if isinstance(status, SimMoveStatus):
                status.report(1.0)
            status.set_finished()

    if time_scale > 0 and duration > 0:
        def later() -> None:
            total = duration * time_scale
            t0 = time.monotonic()
            while (left := total - (time.monotonic() - t0)) > 0:
                if isinstance(status, SimMoveStatus):
                    status.report(1.0 - left / total)
                time.sleep(min(TICK, left))
            finish()

        threading.Thread(target=later, daemon=True).start()
    else:
        finish()
    return status
