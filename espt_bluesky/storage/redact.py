"""Keep secrets out of server logs: API keys in query strings and passwords in database URIs.

:class:`RedactSecrets` is a ``logging.Filter`` that rewrites a record's message and arguments, so a request line
``GET /ui/browse/?api_key=3f9a... HTTP/1.1`` is logged as ``GET /ui/browse/?api_key=*** HTTP/1.1``.
:func:`server_log_config` is Tiled's uvicorn logging configuration with that filter on every handler (the server
process); :func:`install` puts it on uvicorn's and Tiled's loggers in this process (the in-process server).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

_PATTERNS = [
    (re.compile(r"(api_key=)[^&\s\"'#]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(Apikey\s+)[A-Za-z0-9]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"), r"\1***\2"),  # scheme://user:password@host
]
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn", "tiled")


def redact(text: str) -> str:
    """``text`` with API keys and URI passwords replaced by ``***``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Rewrite the message and the string arguments of every record (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return True


def server_log_config() -> dict[str, Any]:
    """Tiled's uvicorn logging configuration, without colours (a log file), with :class:`RedactSecrets` on every
    handler."""
    from tiled.server.logging_config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactSecrets"}
    for handler in cfg.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    for formatter in cfg.get("formatters", {}).values():
        if "use_colors" in formatter:
            formatter["use_colors"] = False
    return cfg


def install() -> None:
    """Put :class:`RedactSecrets` on uvicorn's and Tiled's loggers of this process (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
