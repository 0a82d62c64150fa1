"""bluesky-queueserver support: the startup directory's list of plans and devices, generated from the startup code.

``profile_collection/startup`` is the queue server's startup directory.  Besides the startup code it holds
``user_group_permissions.yaml`` (written by hand) and ``existing_plans_and_devices.yaml``, generated here by loading
the startup code the way the queue server's worker does (same functions of ``bluesky_queueserver``), on the default
simulated bench with storage off and a throwaway data directory, so the file depends on the code only::

    espt qserver-lists                 # rewrite profile_collection/startup/existing_plans_and_devices.yaml
    espt qserver-lists --check         # exit 1 (and say what differs) when the checked-in file is stale

The queue server itself also validates every queued plan with these descriptions: a plan whose signature it
cannot describe (string annotations from ``from __future__ import annotations``, or ``Any`` on a device argument,
which turns off the conversion of device names) fails there; see ``tests/test_qserver.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

FILE_NAME = "existing_plans_and_devices.yaml"
DEFAULT_STARTUP_DIR = Path("profile_collection") / "startup"
_ENV_CLEARED = ("ESPT_CONFIG", "ESPT_BENCH", "ESPT_TILED_URI", "ESPT_TILED_API_KEY", "ESPT_STORAGE_MODE",
                "ESPT_DATA_DIR")


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """The environment of a listing run: the default bench, no storage, a temporary data directory, and the
    queue server's "RE worker active" flag (the profile then leaves out plots, magics and progress bars)."""
    from bluesky_queueserver.manager.profile_tools import clear_re_worker_active, set_re_worker_active

    saved = {k: os.environ.get(k) for k in _ENV_CLEARED}
    with tempfile.TemporaryDirectory(prefix="espt_qserver_") as tmp:
        for k in _ENV_CLEARED:
            os.environ.pop(k, None)
        os.environ.update(ESPT_STORAGE_MODE="none", ESPT_DATA_DIR=tmp)
        set_re_worker_active()
        try:
            yield
        finally:
            clear_re_worker_active()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def load_startup_namespace(startup_dir: str | os.PathLike = DEFAULT_STARTUP_DIR) -> dict[str, Any]:
    """Run the startup code as the queue server's worker does and return its namespace."""
    from bluesky_queueserver.manager.profile_ops import load_profile_collection

    with _worker_environment():
        return load_profile_collection(str(startup_dir))


def existing_plans_and_devices(startup_dir: str | os.PathLike = DEFAULT_STARTUP_DIR) -> dict[str, Any]:
    """``{"existing_plans": ..., "existing_devices": ...}`` as the queue server describes the startup code."""
    from bluesky_queueserver.manager.profile_ops import existing_plans_and_devices_from_nspace

    nspace = load_startup_namespace(startup_dir)
    plans, devices, _, _ = existing_plans_and_devices_from_nspace(nspace=nspace)
    return {"existing_plans": plans, "existing_devices": devices}


def write_existing_plans_and_devices(startup_dir: str | os.PathLike = DEFAULT_STARTUP_DIR) -> Path:
    """Regenerate ``existing_plans_and_devices.yaml`` in ``startup_dir``; return its path."""
    from bluesky_queueserver.manager.profile_ops import save_existing_plans_and_devices

    lists = existing_plans_and_devices(startup_dir)
    save_existing_plans_and_devices(existing_plans=lists["existing_plans"],
                                    existing_devices=lists["existing_devices"], file_dir=str(startup_dir),
                                    file_name=FILE_NAME, overwrite=True)
    return Path(startup_dir) / FILE_NAME


def stale_entries(startup_dir: str | os.PathLike = DEFAULT_STARTUP_DIR) -> list[str]:
    """What differs between the checked-in file and the startup code (empty when the file is current)."""
    import yaml

    path = Path(startup_dir) / FILE_NAME
    if not path.is_file():
        return [f"{path} does not exist"]
    stored = yaml.safe_load(path.read_text()) or {}
    fresh = existing_plans_and_devices(startup_dir)
    out = []
    for section in ("existing_plans", "existing_devices"):
        a, b = stored.get(section) or {}, fresh[section]
        out += [f"{section}: {k} is new" for k in sorted(set(b) - set(a))]
        out += [f"{section}: {k} no longer exists" for k in sorted(set(a) - set(b))]
        out += [f"{section}: {k} changed" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return out


# ------------------------------------------------------------------------------------------------- espt command
def add_qserver(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qserver-lists", help="regenerate (or --check) the queue server's list of plans and devices",
                       description="Write existing_plans_and_devices.yaml in the queue-server startup directory "
                                   "from its startup code (default bench, storage off).")
    p.add_argument("--startup-dir", default=str(DEFAULT_STARTUP_DIR),
                   help=f"startup directory (default: {DEFAULT_STARTUP_DIR})")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is stale")
    p.set_defaults(func=cmd_qserver)


def cmd_qserver(args: argparse.Namespace) -> int:
    if args.check:
        stale = stale_entries(args.startup_dir)
        for line in stale:
            print(line)
        print(f"{Path(args.startup_dir) / FILE_NAME} is {'stale: run `espt qserver-lists`' if stale else 'current'}")
        return 1 if stale else 0
    print(f"wrote {write_existing_plans_and_devices(args.startup_dir)}")
    return 0
