"""The ``Examples`` of the public plans' and helpers' docstrings run as written (issue 10: the ``hopping_scan``
example once crashed the tip).  Each docstring's examples run in order in one namespace holding what a profile
session has (``RE``, ``bp``, ``bps``, ``np``, ``make_sim_bench``) and the module's own names; an example that
shows an output must produce it.

Not run here: the chained examples of ``plans.imaging`` (a 19 x 19 constant-height map and three operando images:
too slow for the suite; the same plans run in tests/test_plans.py and docs/plans.md) and the ``session`` module's
(it serves a fixed data directory; building and closing sessions is tests/test_session_exit.py).
"""

from __future__ import annotations

import doctest
import importlib

import pytest

CASES = [
    ("espt_bluesky.plans.hopping", "hopping_scan"),
    ("espt_bluesky.plans.approach", "approach"),
    ("espt_bluesky.plans.sgtc", "sgtc"),
    ("espt_bluesky.plans.combinatorial", "combinatorial_sweep"),
    ("espt_bluesky.plans.combinatorial", "parameter_table"),
    ("espt_bluesky.plans.metadata", "ExperimentContext"),
    ("espt_bluesky.plans.metadata", "build_start_md"),
    ("espt_bluesky.devices.sim_bench", "make_sim_bench"),
    ("espt_bluesky.analysis.plane", "fit_plane"),
    ("espt_bluesky.analysis.approach_criteria", "secm_distance"),
    ("espt_bluesky.correlate.frames", None),  # the module docstring
]


def _examples(module: str, name: str | None):
    mod = importlib.import_module(module)
    tests = [t for t in doctest.DocTestFinder(recurse=name is not None).find(mod)
             if t.name == (f"{module}.{name}" if name else module)]
    assert len(tests) == 1 and tests[0].examples, f"{module}.{name}: no examples"
    return mod, tests[0].examples


@pytest.mark.slow
@pytest.mark.parametrize("module,name", CASES, ids=[f"{m.rsplit('.', 1)[1]}.{n or ''}" for m, n in CASES])
def test_docstring_examples_run(module, name):
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine

    from espt_bluesky.devices import make_sim_bench

    mod, examples = _examples(module, name)
    ns = dict(vars(mod), RE=RunEngine({}, call_returns_result=True), bp=bp, bps=bps, np=np,
              make_sim_bench=make_sim_bench)
    checker = doctest.OutputChecker()
    for ex in examples:
        where = f"{module}.{name} line {ex.lineno + 1}: {ex.source.splitlines()[0]}"
        if ex.want.strip():
            got = repr(eval(compile(ex.source, where, "eval"), ns)) + "\n"
            assert checker.check_output(ex.want, got, doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS), \
                f"{where}: shows {ex.want!r}, gives {got!r}"
        else:
            exec(compile(ex.source, where, "exec"), ns)
