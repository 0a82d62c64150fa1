"""Spare the Tiled servers this package runs a per-request cost of FastAPI: re-analysing every dependency.

Tiled (0.2.20) builds its app with ``app.dependency_overrides[get_settings] = ...``.  FastAPI (0.165) treats a
non-empty ``dependency_overrides`` as "any dependency may be overridden": for *every* request it rebuilds the
``Dependant`` of every sub-dependency with ``get_dependant`` -- ``inspect.signature`` and pydantic field analysis
of ~50 functions -- instead of using the ones it built at start-up.  Measured with the server's own CPU time
(``benchmarks/bench_fly.py`` notes, docs/fly.md): about half of the CPU of a small request (a metadata read, a
node registration, a stream close), so half of the fixed cost per run that TiledWriter's requests add.

:func:`install` memoises ``get_dependant`` on its arguments (path, callable, name, scopes, cache flag, scope,
concurrency): the result of one analysis is the same for every request, and FastAPI already shares the
``Dependant`` objects it built at start-up between requests.  Overrides still apply: the overriding callable is
part of the key.  Installed only in the server process of :meth:`LocalCatalog.start` (``storage/tiled_process.py``), a process this
package owns whole: never in a user's session, where other FastAPI apps may live (an in-process server there pays
the per-request analysis).  A FastAPI whose ``get_dependant`` has another signature is left alone.  This replaces a
FastAPI internal; drop it when FastAPI caches the analysis itself.
"""

from __future__ import annotations

import functools
import inspect
import logging

logger = logging.getLogger(__name__)

_KEYS = ("path", "call", "name", "own_oauth_scopes", "parent_oauth_scopes", "use_cache", "scope", "concurrency")
_installed = False


def install() -> bool:
    """Memoise FastAPI's per-request dependency analysis (idempotent).  Returns True if installed."""
    global _installed
    if _installed:
        return True
    try:
        import fastapi.dependencies.utils as fdu
    except ImportError:  # pragma: no cover - Tiled needs FastAPI
        return False
    original = fdu.get_dependant
    params = inspect.signature(original).parameters
    if set(params) != set(_KEYS) or any(p.kind is not p.KEYWORD_ONLY for p in params.values()):
        logger.info("fastapi.get_dependant has the signature %s; not memoised", inspect.signature(original))
        return False

    @functools.lru_cache(maxsize=8192)
    def _cached(key: tuple) -> object:
        kw = dict(zip(_KEYS, key))
        for k in ("own_oauth_scopes", "parent_oauth_scopes"):
            if kw[k] is not None:
                kw[k] = list(kw[k])
        return original(**kw)

    @functools.wraps(original)
    def get_dependant(**kwargs: object) -> object:
        kw = {k: params[k].default for k in _KEYS}
        kw.update(kwargs)
        key = tuple(tuple(v) if k.endswith("oauth_scopes") and v is not None else v for k, v in kw.items())
        try:
            hash(key)
        except TypeError:  # an unhashable callable or scope: analyse it as FastAPI does
            return original(**kwargs)
        return _cached(key)

    get_dependant.cache_info = _cached.cache_info  # type: ignore[attr-defined]
    fdu.get_dependant = get_dependant
    _installed = True
    return True
