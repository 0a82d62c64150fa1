"""The ``espt`` command's generalities: help without a command, ``--version``, and a demo that says where its
data directory is and which URL it serves."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import espt_bluesky
from espt_bluesky.cli import main

from test_session_exit import session_env


def test_espt_alone_prints_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "espt_bluesky.cli"], env=session_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: espt") and "serve" in proc.stdout and "demo" in proc.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"espt_bluesky {espt_bluesky.__version__}"


@pytest.mark.slow
def test_demo_says_where_its_data_is_and_what_it_serves(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data-dir", str(tmp_path / "data"), "--spots", "2", "--image-side", "5",
                 "--output", "figs"]) == 0
    out = capsys.readouterr().out
    assert f"data directory: {(tmp_path / 'data').resolve()}" in out
    served = re.search(r"serving the catalog at (http://127\.0\.0\.1:(\d+)/api/v1)", out)
    assert served and served.group(2) != "0"
    assert f"run `espt serve --data-dir {(tmp_path / 'data').resolve()}`" in out
