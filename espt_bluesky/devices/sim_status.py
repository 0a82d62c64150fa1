"""Completing a simulated device's status at once, or after its instrument time scaled by ``time_scale``."""

from __future__ import annotations

import threading
import time

from ophyd.status import StatusBase


def complete_status(status: StatusBase, error: BaseException | None, duration: float, time_scale: float) -> StatusBase:
    """Finish ``status`` (with ``error`` if given) now, or after ``duration · time_scale`` s in a thread."""

    def finish() -> None:
        if error is not None:
            status.set_exception(error)
        else:
            status.set_finished()

    if time_scale > 0 and duration > 0:
        def later() -> None:
            time.sleep(duration * time_scale)
            finish()

        threading.Thread(target=later, daemon=True).start()
    else:
        finish()
    return status
