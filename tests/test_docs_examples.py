"""Documented examples are tests: every ```python block of README.md and docs/*.md runs as written.

One test per file: its blocks run in order in one namespace (as a reader would paste them into one session), with
``ESPT_DATA_DIR`` set to a fresh temporary directory and a temporary working directory.  A failure names the file,
the block and its first line in the file.  Blocks fenced ```python hardware need an instrument or a service CI
lacks: they are skipped, and the test says which.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\S*)\s*(.*)$")


def doc_files() -> list[Path]:
    return [p for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))] if p.is_file()]


def python_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(first line number, info, code)`` of each fenced block whose language is python (info: the rest of the
    fence line, e.g. "hardware")."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, lang, info = m.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang.lower() == "python":
            blocks.append((i + 2, info.strip(), "\n".join(lines[i + 1:j])))
        i = j + 1
    return blocks


def _cleanup(ns: dict) -> None:
    """Stop what the examples started (in-process Tiled servers, sessions)."""
    from espt_bluesky.storage import LocalCatalog

    for v in list(ns.values()):
        try:
            if isinstance(v, LocalCatalog):
                v.stop()
            elif type(v).__name__ == "Session" and hasattr(v, "close"):
                v.close()
        except Exception:  # noqa: BLE001 - cleanup must not hide the example's own result
            pass


FILES = [p for p in doc_files() if python_blocks(p)]


def test_every_doc_with_examples_is_collected():
    names = {p.relative_to(REPO).as_posix() for p in FILES}
    assert "README.md" in names and "docs/plans.md" in names and "docs/storage.md" in names


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(REPO).as_posix() for p in FILES])
def test_doc_examples_run(path: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("ESPT_DATA_DIR", str(tmp_path / "espt_data"))
    for var in ("ESPT_CONFIG", "ESPT_TILED_URI", "ESPT_TILED_API_KEY", "ESPT_BENCH", "ESPT_STORAGE_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    rel = path.relative_to(REPO).as_posix()
    blocks = python_blocks(path)
    skipped = [line for line, info, _ in blocks if "hardware" in info.split()]
    ns: dict = {"__name__": "__docs__"}
    ran = 0
    try:
        for k, (line, info, code) in enumerate(blocks, 1):
            if "hardware" in info.split():
                continue
            try:
                exec(compile(code, f"{rel}:{line}", "exec"), ns)
            except Exception:
                pytest.fail(f"{rel}, block {k} (line {line}) failed:\n{traceback.format_exc()}", pytrace=False)
            ran += 1
    finally:
        _cleanup(ns)
    if not ran:
        pytest.skip(f"{rel}: every example needs hardware (```python hardware at lines {skipped})")
    if skipped:
        print(f"{rel}: skipped hardware blocks at lines {skipped}")
