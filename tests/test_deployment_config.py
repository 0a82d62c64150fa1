"""The configuration files shown in docs/deployment.md are ones the session accepts (every key known, every value
valid), so a reader who copies them gets a working session."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from espt_bluesky.session import check_config, load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


def _toml_blocks() -> list[dict]:
    return [tomllib.loads(m) for m in re.findall(r"^```toml\n(.*?)^```", DOC.read_text(), re.M | re.S)]


def test_deployment_config_blocks_are_accepted(tmp_path):
    blocks = _toml_blocks()
    assert len(blocks) >= 2 and any("storage" in b for b in blocks) and any("epics" in b for b in blocks)
    for cfg in blocks:
        check_config(cfg, partial=True)  # known sections and keys
    bench_file = next(b for b in blocks if "bench" in b)
    path = tmp_path / "espt.toml"
    path.write_text(re.findall(r"^```toml\n(.*?)^```", DOC.read_text(), re.M | re.S)[blocks.index(bench_file)])
    cfg = load_config(str(path))  # and valid values, as the session loads the file
    assert cfg["storage"]["max_wait"] == bench_file["storage"]["max_wait"]
