"""The one start-document builder every plan uses, and the experiment context hardware users pass in.

Keys written (see docs/plans.md): ``technique``, ``mode``, ``probe``, ``sample``, ``electrolyte``, ``mediator``,
``reference_electrode``, ``plan_name``, ``plan_args``, ``hints``, ``summary`` (one line for a person: plan,
technique, sample, time); for maps also ``map`` = {"x": <data key>,
"y": <data key>, "order": "snake" | "raster" | "hopping" | "random" | "points"} and, for grids, bluesky's
``shape``, ``extents`` and ``snaking``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidArgument
from ..summary import run_summary

MAP_ORDERS = ("snake", "raster", "hopping", "random", "points", "adaptive")


@dataclass
class ExperimentContext:
    """Sample and environment of an experiment, as a start document records them.

    On the simulated bench ``ExperimentContext.from_dict(bench.metadata())`` fills it; on hardware build it by
    hand.  Plans also accept the plain dict (``context=bench.metadata()``).

    Examples
    --------
    >>> ctx = ExperimentContext(technique="SECM", sample={"name": "Au/SiO2 pattern"},
    ...                         electrolyte="0.1 M KCl", mediator={"name": "FcMeOH", "c": 1.0},
    ...                         reference_electrode="Ag/AgCl (3 M KCl)")
    >>> ctx.as_dict()["electrolyte"]
    '0.1 M KCl'
    """

    technique: str | None = None
    sample: Any = None
    electrolyte: str | None = None
    mediator: Any = None
    reference_electrode: str | None = None
    probe: Any = None
    extra: dict = field(default_factory=dict)

    _FIELDS = ("technique", "sample", "electrolyte", "mediator", "reference_electrode", "probe")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ExperimentContext":
        """Build from a dict such as ``SimBench.metadata()``; unknown keys go to ``extra``."""
        if d is None:
            return cls()
        if isinstance(d, ExperimentContext):
            return d
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"context={d!r} must be an ExperimentContext or a dict")
        known = {k: d[k] for k in cls._FIELDS if k in d}
        extra = {k: v for k, v in d.items() if k not in cls._FIELDS}
        return cls(**known, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._FIELDS if getattr(self, k) is not None}
        out.update(self.extra)
        return out


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy: devices become their names, numpy values plain Python, others ``repr``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else repr(v)
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "as_dict"):
        return jsonable(value.as_dict())
    name = getattr(value, "name", None)
    if isinstance(name, str) and hasattr(value, "read"):
        return name
    return repr(value)


def probe_metadata(probe: Any) -> dict | None:
    """``probe.metadata()`` for a probe device, the dict itself for a dict, else None."""
    if probe is None:
        return None
    if isinstance(probe, Mapping):
        return dict(probe)
    if hasattr(probe, "metadata"):
        return probe.metadata()
    return {"type": repr(probe)}


def build_start_md(plan_name: str, plan_args: Mapping[str, Any], *, technique: str | None, mode: str,
                   probe: Any = None, context: ExperimentContext | Mapping | None = None,
                   sample_md: Mapping | None = None, md: Mapping | None = None,
                   map_keys: tuple[str, str] | None = None, order: str | None = None,
                   shape: tuple[int, ...] | None = None, extents: Any = None, snaking: Any = None,
                   hints: Mapping | None = None, extra: Mapping | None = None) -> dict[str, Any]:
    """Start-document metadata of a plan (the only place plans build it).

    Precedence (later wins): context, ``sample_md`` (merged into ``sample``), the plan's own keys and ``extra``,
    then the user's ``md``.

    Examples
    --------
    >>> build_start_md("hopping_scan", {"hop_height": 2.0}, technique="SICM", mode="hopping",
    ...                map_keys=("hopper_x", "hopper_y"), order="points")["map"]
    {'x': 'hopper_x', 'y': 'hopper_y', 'order': 'points'}
    """
    ctx = ExperimentContext.from_dict(context).as_dict()
    out: dict[str, Any] = {}
    out.update(jsonable(ctx))
    if sample_md:
        sample = out.get("sample")
        sample = dict(sample) if isinstance(sample, Mapping) else ({"name": sample} if sample else {})
        sample.update(jsonable(dict(sample_md)))
        out["sample"] = sample
    if technique is not None:
        out["technique"] = technique
    out["mode"] = mode
    pm = probe_metadata(probe)
    if pm is not None:
        out["probe"] = jsonable(pm)
    out["plan_name"] = plan_name
    out["plan_args"] = jsonable(dict(plan_args))
    if map_keys is not None:
        if order not in MAP_ORDERS:
            raise InvalidArgument(f"order={order!r} is not one of {list(MAP_ORDERS)}")
        out["map"] = {"x": map_keys[0], "y": map_keys[1], "order": order}
    if shape is not None:
        out["shape"] = [int(s) for s in shape]
    if extents is not None:
        out["extents"] = jsonable(extents)
    if snaking is not None:
        out["snaking"] = [bool(s) for s in snaking]
    if hints:
        out["hints"] = jsonable(dict(hints))
    if extra:
        out.update(jsonable(dict(extra)))
    if md:
        out.update(dict(md))
    if "summary" not in out:  # what a person reads in a run list
        out["summary"] = run_summary(out, time=time.time())
    return out
