"""Logging setup: the only module that calls ``structlog.configure``.

Everyone else calls ``get_logger()``. Library loggers (acme, apscheduler, watchdog, urllib3) go
through structlog's ``ProcessorFormatter`` so every line on stdout is the same JSON (or console
text on a terminal). A last-line-of-defence processor redacts anything that looks like a PEM
private key or a JWK private member, whoever logged it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

from rotatord.observe import journal

_SECRET_RE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
_JWK_PRIVATE_RE = re.compile(r'"(d|p|q|dp|dq|qi)"\s*:\s*"[A-Za-z0-9_-]+"')


def redact_text(text: str) -> str:
    text = _SECRET_RE.sub("[redacted private key]", text)
    return _JWK_PRIVATE_RE.sub(r'"\1": "[redacted]"', text)


def contains_secret(text: str) -> bool:
    return bool(_SECRET_RE.search(text) or _JWK_PRIVATE_RE.search(text))


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event_dict.items()):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str) and ("PRIVATE KEY" in v or '"d"' in v):
            event_dict[k] = redact_text(v)
    return event_dict


def configure_logging(
    fmt: str = "auto", level: int = logging.INFO, stream: IO[str] | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout) as JSON or console lines; when
    systemd connected ``stream`` to the journal, as native journal records (``journal.py``)."""
    out = stream or sys.stdout
    handler: logging.Handler
    if journal.journal_stream_matches(out):
        handler = journal_handler = journal.JournalHandler(out)
        native = [journal_handler.annotate]
    else:
        handler, native = logging.StreamHandler(out), []
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests swap processors with structlog.testing.capture_logs.
        cache_logger_on_first_use=False,
    )
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.processors.format_exc_info,
            _redact,
            # After redaction, so journal fields never hold what the line would not; before the
            # meta keys go, since it reads the stdlib record from them.
            *native,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # acme logs every JWS payload and response at DEBUG; urllib3 every connection. Useful when
    # debugging a CA, noise (and needless exposure of account data) otherwise.
    for name in ("acme", "urllib3", "apscheduler", "watchdog"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str = "rotatord") -> Any:
    """A structlog logger. Typed ``Any`` because structlog's proxies are dynamically bound."""
    return structlog.get_logger(name)
