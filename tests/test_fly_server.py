"""The Tiled servers' FastAPI speed-up (storage/fastapi_speedup.py): dependencies are analysed once, not per request,
and overrides (Tiled overrides its settings dependency) still apply.

Run in a child process: the speed-up replaces a FastAPI internal for the whole process, which only our own server
process (storage/tiled_process.py) does -- never the test suite's or a user's session (an in-process server leaves
FastAPI as it is: checked in tests/test_fly_tiled.py, which runs one anyway).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import fastapi.dependencies.utils as fdu
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from espt_bluesky.storage.fastapi_speedup import install


    def get_settings() -> str:
        return "default"


    def get_name(settings: str = Depends(get_settings)) -> str:
        return f"name from {settings}"


    app = FastAPI()


    @app.get("/x")
    def x(name: str = Depends(get_name), settings: str = Depends(get_settings)):
        return {"name": name, "settings": settings}


    app.dependency_overrides[get_settings] = lambda: "overridden"  # what Tiled does with its Settings
    assert install()
    client = TestClient(app)
    first = client.get("/x").json()
    assert first == {"name": "name from overridden", "settings": "overridden"}, first
    after_first = fdu.get_dependant.cache_info()
    for _ in range(5):
        assert client.get("/x").json() == first
    after = fdu.get_dependant.cache_info()
    assert after.misses == after_first.misses, (after_first, after)  # nothing analysed again
    assert after.hits >= after_first.hits + 5 * 2, (after_first, after)  # two overridden dependencies per request
    wrapped = fdu.get_dependant
    assert install() and fdu.get_dependant is wrapped  # idempotent
    print("ok")
    """
)


def test_dependencies_analysed_once_and_overrides_still_apply():
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
