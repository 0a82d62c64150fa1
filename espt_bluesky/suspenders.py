"""Suspenders for what can pause a run safely, and resume it where it left off.

* the potentiostat stops answering (``pstat.online`` = 0): the run waits in place until it is back;
* the potentiostat reports an overload (``pstat.overload`` = 1, latched by the reading that overloaded): the cell
  is put at open circuit, the run waits until the operator chooses a current range that fits (writing
  ``current_range`` clears the latch), then the cell is reconnected and the run repeats from its last checkpoint.

Without these suspenders (a bare RunEngine) the same overload ends the run in a known state instead (tip
retracted, cell at open circuit): see :func:`espt_bluesky.plans._common.managed_run`.
"""

from __future__ import annotations

from typing import Any

from bluesky.suspenders import SuspendBoolHigh, SuspendBoolLow, SuspenderBase

from .plans._common import cell_on, open_circuit

__all__ = ["install_suspenders", "potentiostat_suspenders"]


def potentiostat_suspenders(potentiostat: Any, *, sleep: float = 1.0) -> list[SuspenderBase]:
    """Suspenders on a bipotentiostat's ``online`` and ``overload`` signals.

    Parameters
    ----------
    potentiostat : Bipotentiostat
        Simulated or EPICS.
    sleep : float, s
        How long to wait after the condition clears before resuming.
    """
    name = potentiostat.name
    offline = SuspendBoolLow(potentiostat.online, sleep=sleep,
                             tripped_message=f"{name} does not answer ({potentiostat.online.name}=0); the run "
                                             f"resumes when it is back")
    overload = SuspendBoolHigh(potentiostat.overload, sleep=sleep,
                               pre_plan=lambda: open_circuit(potentiostat), post_plan=lambda: cell_on(potentiostat),
                               tripped_message=f"{name} overloaded: the cell is at open circuit; set a larger "
                                               f"{name}.tip.current_range / {name}.substrate.current_range "
                                               f"(or write 0 to {potentiostat.overload.name}) to resume")
    return [offline, overload]


def install_suspenders(RE: Any, suspenders: list[SuspenderBase]) -> list[SuspenderBase]:
    """Install ``suspenders`` on ``RE`` (idempotent) and return them."""
    for s in suspenders:
        RE.install_suspender(s)
    return suspenders
