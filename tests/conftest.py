"""Shared fixtures: a RunEngine whose every document is validated against the event-model schemas."""

from __future__ import annotations

import os
import sys
import traceback
import types

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


def _stack_without_source(f=None, limit=None):
    """``traceback.format_stack`` without reading source lines (file, line and function of every frame)."""
    f = sys._getframe(1) if f is None else f
    out = []
    while f is not None and (limit is None or len(out) < limit):
        out.append(f'  File "{f.f_code.co_filename}", line {f.f_lineno}, in {f.f_code.co_name}\n')
        f = f.f_back
    out.reverse()
    return out


def _cheap_plan_stacks() -> None:
    """Bluesky's ``@plan`` decorator formats the whole call stack each time a plan stub is *created*, only to
    name it in a "plan was never iterated" warning: ``traceback.format_stack`` stats and reads the source file of
    every frame (~1 ms under pytest's deep stacks, several stubs per scan point; ~4 % of this suite).  The tests
    keep the warning and its frames (file, line, function), without the source text."""
    import bluesky.utils as bu

    if isinstance(getattr(bu, "traceback", None), types.ModuleType) and hasattr(bu, "Plan"):
        shim = types.SimpleNamespace(**{k: getattr(traceback, k) for k in dir(traceback) if not k.startswith("__")})
        shim.format_stack = _stack_without_source
        bu.traceback = shim


_cheap_plan_stacks()


def _runengine_validates_events() -> bool:
    """True when the RunEngine already validates every event it emits against event-model's schema.

    bluesky's bundler builds each event (``save``, ``monitor``, ``collect``, interruptions) with event-model's
    ``ComposeEvent``, whose ``validate=True`` default runs ``schema_validators[DocumentNames.event]`` -- the
    collector's own check -- on the very object emitted (the RunEngine says so: "already validated against the
    schema in event-model").  Checked here, not assumed: if a bluesky or event-model release changes either, the
    collector validates events again."""
    import inspect

    import bluesky.bundlers
    import event_model

    try:
        default = inspect.signature(event_model.ComposeEvent.__call__).parameters["validate"].default
        src = inspect.getsource(bluesky.bundlers)
    except (AttributeError, KeyError, OSError, TypeError):
        return False
    return default is True and "compose_event(" in src and "validate=False" not in src


_EVENTS_VALIDATED_BY_RE = _runengine_validates_events()


class DocumentCollector:
    """Collects (name, doc) pairs and validates each against the event-model JSON schemas.

    Events are validated by the RunEngine itself when it builds them (see :func:`_runengine_validates_events`);
    validating them a second time here cost a quarter of the CPU of event-heavy tests (a JSON-schema walk per
    event), so the collector checks every other document and leaves events to that identical check.
    """

    SKIP = ("event_page", "datum_page")

    def __init__(self):
        from event_model import DocumentNames, schema_validators

        self._validators = schema_validators
        self._names = DocumentNames
        self._skip = self.SKIP + (("event",) if _EVENTS_VALIDATED_BY_RE else ())
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        if name not in self._skip:
            self._validators[self._names[name]].validate(doc)
        self.docs.append((name, doc))

    def of(self, name):
        return [d for n, d in self.docs if n == name]

    def events(self, stream="primary"):
        descs = {d["uid"] for d in self.of("descriptor") if d.get("name") == stream}
        return [d for d in self.of("event") if d["descriptor"] in descs]


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    engine.collector = DocumentCollector()
    engine.subscribe(engine.collector)
    yield engine
    if engine.state != "idle":
        engine.halt()


def _shared_data_dir():
    from pathlib import Path

    env = os.environ.get("ESPT_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path("/work/shared/data"), Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    for c in candidates:
        if (c / "MANIFEST.md").exists():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data():
    """The real instrument files of ``shared/data`` (never copied into the repository)."""
    d = _shared_data_dir()
    if d is None:
        pytest.fail("shared/data not found: set ESPT_SHARED_DATA to the folder holding MANIFEST.md")
    return d


# --- pytest-xdist: which tests must never run at the same time --------------------------------------------------
# The default options run the suite on two workers with ``--dist loadgroup``: tests of one group run on one worker,
# one after another; ungrouped tests go to whichever worker is free.  A module belongs to a group when its tests
# share something outside the process with other modules -- a service, a port, a file -- or time a server's answers
# (a second worker would only add load to what they measure).
XDIST_GROUPS = {
    # the facility services of CI: Redis (queue server), PostgreSQL database ``test``, NATS JetStream
    "services": ("test_bus", "test_qserver", "test_storage_services"),
    # caproto IOCs on loopback Channel Access ports and the CA repeater
    "epics": ("test_epics", "test_fly_epics", "test_session_epics"),
    # writers against slow, hung or vanishing servers: bounds of max_wait, retry windows and probe timeouts
    "timing": ("test_storage_slow_server", "test_storage_faults", "test_fly_tiled"),
}
# single tests of otherwise independent modules ("module::test name")
XDIST_GROUP_TESTS = {
    "services": ("test_docs_examples::test_doc_examples_run[docs/bus.md]",),  # its examples publish to JetStream
}
_GROUP_OF = {name: group for table in (XDIST_GROUPS, XDIST_GROUP_TESTS) for group, names in table.items()
             for name in names}


def _uses_module_fixture(item: pytest.Item) -> bool:
    """True when the test uses a module-scoped fixture (pytest's record of the fixtures a test needs)."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


def xdist_group_of(item: pytest.Item) -> str | None:
    """The xdist group of a collected test (None: it may run beside anything).

    Besides the groups above, the tests of a module that share a module-scoped fixture (a simulated screen, a
    Tiled catalog, an IPython session: up to 40 s each) form a group of their own, so that the fixture is built
    once, on one worker, and not once on each."""
    module = getattr(item, "module", None)
    if module is None:
        return None
    name = module.__name__.rpartition(".")[2]
    group = _GROUP_OF.get(f"{name}::{item.name}", _GROUP_OF.get(name))
    if group is None and _uses_module_fixture(item):
        group = name
    return group


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Without pytest-xdist (``-p no:xdist``, or not installed) the default ``-n 2 --dist loadgroup`` of
    pyproject.toml is accepted and ignored: the tests run in one process (said once, see pytest_configure)."""
    if not pluginmanager.has_plugin("xdist"):
        group = parser.getgroup("xdist", "pytest-xdist is not loaded: these options are ignored")
        # _addoption: pytest keeps lowercase short options for itself and its plugins (xdist declares -n so too)
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=None, help="ignored without xdist")
        group.addoption("--dist", dest="dist", default="no", help="ignored without xdist")


_BLAS_LIMIT = None  # the worker's threadpoolctl limiter, kept for the worker's life


def _one_blas_thread_per_worker() -> None:
    """Two workers on two cores: one BLAS thread each.  OpenBLAS starts a thread per core in every process; with two
    workers (and other load) those threads spin for cores they cannot get: one sparse SECM solve
    (``secm_solver.tip_current``) took 11-16 s wall, 4-5 s CPU with two threads and 2.6 s wall, 0.55 s CPU with one,
    measured side by side on this machine.  The environment reaches the libraries loaded later (scipy's OpenBLAS)
    and the processes the tests start; threadpoolctl limits the ones already loaded.  A value set by the user wins."""
    global _BLAS_LIMIT
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker
        _one_blas_thread_per_worker()
    if not config.pluginmanager.has_plugin("xdist") and config.getoption("numprocesses", None) not in (None, "0"):
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"-n {config.getoption('numprocesses')} ignored: pytest-xdist is not loaded; the tests run in one process"),
            stacklevel=2)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.has_plugin("xdist"):
        return  # one process: nothing runs at the same time (and the xdist_group mark is unknown)
    for item in items:
        group = xdist_group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
