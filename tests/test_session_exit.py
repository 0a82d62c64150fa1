"""A session a user can leave: the in-process Tiled server never keeps the interpreter alive.

Each check runs a real interpreter as a user would start it; ``timeout=`` only bounds a hang (the failure being
tested), it does not time anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HANG = 300  # s: a session that has not exited by then hangs


def session_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's session on this checkout, with its own data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPT_")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               ESPT_DATA_DIR=str(data_dir), MPLBACKEND="Agg", **extra)
    env.pop("DISPLAY", None)
    return env


def profile_copy(tmp_path: Path) -> Path:
    """The repository's IPython profile, copied so IPython's history and logs stay out of the checkout."""
    dest = tmp_path / "profile_collection"
    shutil.copytree(REPO / "profile_collection", dest,
                    ignore=shutil.ignore_patterns("db", "log", "pid", "security", "history.sqlite", "__pycache__"))
    return dest


def test_close_is_idempotent(tmp_path):
    from espt_bluesky.session import build_session

    s = build_session({"storage": {"data_dir": str(tmp_path / "data"), "mode": "in_process"}})
    uri = s.catalog.uri
    s.close()
    s.close()
    import httpx

    with pytest.raises(httpx.HTTPError):
        httpx.get(uri.replace("/api/v1", "/healthz"), timeout=2.0)


def _script(tmp_path: Path) -> dict:
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent("""
        from espt_bluesky.session import build_session
        s = build_session()
        print("session", s.catalog.uri, flush=True)
        raise RuntimeError("before close")
    """))
    return dict(args=[sys.executable, str(script)], env=session_env(tmp_path / "data"), cwd=tmp_path)


def _ipython(tmp_path: Path, how: str) -> dict:
    profile = profile_copy(tmp_path)
    cmd = [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner", "--colors=NoColor"]
    if how == "-c":
        return dict(args=cmd + ["-c", "print('alive', catalog.uri)"], env=session_env(tmp_path / "data"),
                    cwd=tmp_path)
    return dict(args=cmd + ["--simple-prompt"], input="print('alive', catalog.uri)\nexit\n",
                env=session_env(tmp_path / "data"), cwd=tmp_path)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """The interpreters of this module's checks, started together: they are independent processes (own data
    directory, own port), so they share the machine's cores instead of waiting for each other."""
    from concurrent.futures import ThreadPoolExecutor

    runs = {"script": _script(tmp_path_factory.mktemp("script")),
            "-c": _ipython(tmp_path_factory.mktemp("ipython_c"), "-c"),
            "exit": _ipython(tmp_path_factory.mktemp("ipython_exit"), "exit")}
    with ThreadPoolExecutor(len(runs)) as pool:
        yield {name: pool.submit(subprocess.run, capture_output=True, text=True, timeout=HANG, **kw)
               for name, kw in runs.items()}


@pytest.mark.slow
def test_script_that_raises_before_close_exits(sessions):
    proc = sessions["script"].result()
    assert proc.returncode == 1, proc.stderr
    assert "session http://127.0.0.1:" in proc.stdout
    assert "RuntimeError: before close" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["-c", "exit"])
def test_ipython_profile_exits(sessions, how):
    proc = sessions[how].result()
    assert proc.returncode == 0, proc.stderr
    assert "alive http://127.0.0.1:" in proc.stdout
