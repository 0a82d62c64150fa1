"""A server makes its catalog database in its own process: Tiled's ``init_if_not_exists`` would start a second
Python process (``tiled catalog init``) at every server start, seconds each time."""

from __future__ import annotations

import subprocess

from espt_bluesky.storage import LocalCatalog


def test_catalog_made_without_a_subprocess_and_reopened(tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    cat = LocalCatalog.in_process(tmp_path / "data")  # a new database: its tables created here
    try:
        client = cat.client()
        client.create_container("kept", metadata={"n": 1})
        assert list(client) == ["kept"]
    finally:
        cat.stop()
    cat = LocalCatalog.in_process(tmp_path / "data")  # an existing one: checked, opened, nothing lost
    try:
        assert cat.client()["kept"].metadata["n"] == 1
    finally:
        cat.stop()
    assert not [c for c in calls if "catalog" in c and "init" in c], calls


def test_replay_is_the_function_whichever_import_comes_first():
    """``storage.replay`` is both the submodule and the function in it: importing the submodule first (as a test
    file or the CLI does) must not leave ``from espt_bluesky.storage import replay`` bound to the module."""
    import sys

    code = ("import sys; import espt_bluesky.storage.replay; from espt_bluesky.storage import replay; "
            "assert callable(replay) and replay is sys.modules['espt_bluesky.storage.replay'].replay, replay")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
