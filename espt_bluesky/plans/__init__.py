"""Bluesky plans for electrochemical scanning-probe experiments (SECM, SICM, SECCM, EC-AFM).

Every plan validates its arguments before anything moves (raising
:class:`espt_bluesky.errors.InvalidArgument`), builds its start document with
:func:`espt_bluesky.plans.metadata.build_start_md`, and ends in a known state: tip raised, cell at open circuit.
See docs/plans.md.
"""

from ._common import ApproachLimitReached
from .adaptive import adaptive_hopping_scan
from .approach import approach, approach_stub, make_approach_spec
from .combinatorial import combinatorial_sweep, parameter_table
from .hopping import hop_signals, hop_stub, hopping_scan
from .imaging import constant_height_image, measure_tilt, operando_imaging
from .metadata import ExperimentContext, build_start_md
from .sgtc import sgtc

__all__ = ["ApproachLimitReached", "adaptive_hopping_scan", "ExperimentContext", "approach", "approach_stub", "build_start_md",
           "combinatorial_sweep", "constant_height_image", "hop_signals", "hop_stub", "hopping_scan", "make_approach_spec", "measure_tilt",
           "operando_imaging", "parameter_table", "sgtc"]
