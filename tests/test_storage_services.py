"""Facility services: a Tiled catalog on PostgreSQL, and Tiled's web UI in headless Chromium.

Each test skips when its service is missing, unless ESPT_REQUIRE_SERVICES=1 (CI), which turns the skip into a
failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
from espt_bluesky.storage import LocalCatalog, make_writer, read_map

from test_storage_helpers import hopping_plan, random_points, seccm_bench

REQUIRE = os.environ.get("ESPT_REQUIRE_SERVICES", "") not in ("", "0")
PG_HOST = os.environ.get("ESPT_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ESPT_PG_PORT", "5432"))


def _missing(what: str):
    if REQUIRE:
        pytest.fail(f"{what} (ESPT_REQUIRE_SERVICES=1)")
    pytest.skip(what)


def _pg_exec(user: str, sql: str, db: str = "test") -> None:
    import asyncio

    import asyncpg

    async def run():
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=db, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _pg_user() -> str | None:
    for user in ("postgres", "root"):
        try:
            _pg_exec(user, "SELECT 1")
            return user
        except Exception:  # noqa: BLE001
            continue
    return None


@pytest.fixture
def pg_database():
    """A fresh database ``espt_test_<random>`` on the local PostgreSQL server, dropped afterwards."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        _missing("asyncpg is not installed")
    user = _pg_user()
    if user is None:
        _missing(f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT} (database 'test', user postgres/root)")
    name = f"espt_test_{secrets.token_hex(4)}"
    _pg_exec(user, f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _pg_exec(user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.services
def test_postgresql_catalog_round_trip(tmp_path, pg_database):
    from bluesky import RunEngine

    data = tmp_path / "data"
    cat = LocalCatalog.start(data, catalog_uri=pg_database)
    try:
        bench = seccm_bench(300)
        bench.potentiostat.asset_writer = HDF5WaveformWriter(cat.asset_dir)
        RE = RunEngine({})
        RE.subscribe(make_writer(cat))
        pts = random_points(25, seed=5)
        record: list = []
        (uid,) = RE(hopping_plan(bench, pts, record=record))
        assert not (data / "catalog.db").exists() and not (data / "tables.duckdb").exists()  # all in PostgreSQL
        ds = read_map(cat.client()[uid])
        np.testing.assert_allclose(np.c_[ds.x, ds.y], pts, atol=1e-9)
        np.testing.assert_array_equal(ds["pstat_wf_current"].values, np.array([w for *_, w in record]))
        assert ds.attrs["technique"] == "SECCM"
    finally:
        cat.stop()


def _chromium() -> str | None:
    for exe in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if exe and os.path.exists(exe):
            return exe
    return None


def _dump_dom(exe: str, url: str) -> str:
    profile = tempfile.mkdtemp(prefix="espt-chromium-")
    try:
        out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180)
        return out.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.services
def test_web_ui_shows_runs(tmp_path):
    """Tiled's browser UI lists a simulated SECCM run and renders its page (a stand-in for `espt demo`'s runs)."""
    from bluesky import RunEngine

    exe = _chromium()
    if exe is None:
        _missing("chromium is not installed (apt-get install -y chromium)")
    cat = LocalCatalog.in_process(tmp_path / "data")
    try:
        bench = seccm_bench(100)
        bench.potentiostat.asset_writer = HDF5WaveformWriter(cat.asset_dir)
        RE = RunEngine({})
        RE.subscribe(make_writer(cat))
        (uid,) = RE(hopping_plan(bench, random_points(5, seed=1)))
        listing = _dump_dom(exe, cat.login_url())
        assert f'data-id="{uid}"' in listing
        page = _dump_dom(exe, f"{cat.base_url}/ui/browse/{uid}/?api_key={cat.api_key}")
        assert f'href="/ui/browse/{uid}/"' in page
        assert 'data-id="primary"' in page
    finally:
        cat.stop()
