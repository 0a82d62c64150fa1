"""Extra detectors read at every point of a map plan (an XRF or Raman detector beside the potentiostat)."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import InvalidArgument


def check_detectors(detectors: Sequence[Any] | None) -> list:
    """The extra detectors as a list, each a readable, triggerable device with a unique name."""
    if detectors is None:
        return []
    if isinstance(detectors, (str, bytes)) or not hasattr(detectors, "__iter__"):
        raise InvalidArgument(f"detectors={detectors!r} must be a list of devices (e.g. [xrf])")
    dets = list(detectors)
    names = []
    for d in dets:
        if not all(hasattr(d, a) for a in ("read", "describe", "trigger", "name")):
            raise InvalidArgument(f"detectors: {d!r} is not a detector (needs name, read, describe, trigger)")
        names.append(d.name)
    if len(set(names)) != len(names):
        raise InvalidArgument(f"detectors={names!r}: names must be unique")
    return dets
