"""The Tiled servers' FastAPI speed-up (storage/fastapi_speedup.py): dependencies are analysed once, not per request,
and overrides (Tiled overrides its settings dependency) still apply."""

from __future__ import annotations

import fastapi.dependencies.utils as fdu
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from espt_bluesky.storage.fastapi_speedup import install


def get_settings() -> str:
    return "default"


def get_name(settings: str = Depends(get_settings)) -> str:
    return f"name from {settings}"


def test_dependencies_analysed_once_and_overrides_still_apply():
    app = FastAPI()

    @app.get("/x")
    def x(name: str = Depends(get_name), settings: str = Depends(get_settings)):
        return {"name": name, "settings": settings}

    app.dependency_overrides[get_settings] = lambda: "overridden"  # what Tiled does with its Settings
    assert install()
    client = TestClient(app)
    first = client.get("/x").json()
    assert first == {"name": "name from overridden", "settings": "overridden"}
    after_first = fdu.get_dependant.cache_info()
    for _ in range(5):
        assert client.get("/x").json() == first
    after = fdu.get_dependant.cache_info()
    assert after.misses == after_first.misses  # nothing analysed again
    assert after.hits >= after_first.hits + 5 * 2  # each request asks for (at least) its two overridden dependencies
    wrapped = fdu.get_dependant
    assert install() and fdu.get_dependant is wrapped  # idempotent
