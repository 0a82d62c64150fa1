"""The Tiled server process of :meth:`~espt_bluesky.storage.server.LocalCatalog.start`.

``python -m espt_bluesky.storage.tiled_process CONFIG`` serves a ``tiled serve config`` file as ``tiled serve
config`` does, with three differences: the start-up banner that prints the API key is not printed, every log
line goes through :class:`~espt_bluesky.storage.redact.RedactSecrets` (no ``?api_key=`` in the access log), and the
DuckDB table store is used by one thread at a time (:mod:`~espt_bluesky.storage.duckdb_guard`), and FastAPI's
dependency analysis is done once, not per request (:mod:`~espt_bluesky.storage.fastapi_speedup`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m espt_bluesky.storage.tiled_process CONFIG", file=sys.stderr)
        return 2
    import uvicorn
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config

    from .duckdb_guard import install as guard_duckdb
    from .fastapi_speedup import install as memoise_dependencies
    from .redact import install, server_log_config
    from .server import _init_here

    guard_duckdb()  # the server's threads share one DuckDB connection: one at a time
    memoise_dependencies()  # FastAPI re-analyses every dependency of every request under Tiled's override
    config = parse_configs(argv[0])
    for tree in config.trees:  # the catalog database made here, not by a second Python process (seconds)
        if isinstance(tree.args, dict):
            _init_here(tree.args)
    kwargs = dict(config.uvicorn)
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 8000)
    kwargs["log_config"] = server_log_config()
    app = build_app_from_config(config)
    install()
    uvicorn.run(app, **kwargs)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
