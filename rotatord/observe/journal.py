"""Journal-native log records: under systemd every line reaches journald with its syslog priority
and its structured fields as journal fields.

Why the native protocol rather than ``<N>`` prefixes on the stream: a prefix carries only the
priority, while a native datagram also carries each field (``ROTATORD_EVENT=rolled_back``,
``ROTATORD_SERVICE=web``), so ``journalctl -u rotatord ROTATORD_SERVICE=web`` and
``journalctl -o json`` work, and ``MESSAGE`` stays the same JSON line as before. The prefix is the
fallback: a record the journal socket refuses is written to the stream as ``<N>line``, which
journald parses too (``SyslogLevelPrefix=yes``, its default), so no line is lost.

Rules: enabled only when systemd connected our log stream to the journal (``$JOURNAL_STREAM``
names the stream's ``device:inode``, sd_journal_stream_fd(3)); never raises into the caller;
field values have already been through the redaction processor (see ``logging.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "rotatord"
FIELD_PREFIX = "ROTATORD_"

# syslog(3) priorities.
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

_LEVEL_PRIORITY = {
    "critical": CRIT,
    "exception": ERR,
    "error": ERR,
    "warning": WARNING,
    "warn": WARNING,
    "info": INFO,
    "debug": DEBUG,
}

# Audit events are logged at info by the audit log's echo; what they mean decides their priority.
# Anything that needs a human (an alarm) or says a rotation did not go through is >= warning, so
# `journalctl -p warning -u rotatord` lists exactly the trouble.
EVENT_PRIORITY: Mapping[str, int] = {
    "alarm": CRIT,
    "config_rejected": ERR,
    "rotation_failed": ERR,
    "rolled_back": WARNING,
    "reload_failed": WARNING,
    "probe_failed": WARNING,
    "budget_exhausted": WARNING,
    "config_warning": WARNING,
    "audit_torn_record_removed": WARNING,
    "certificate_revoked": NOTICE,
    "config_loaded": NOTICE,
    "daemon_started": NOTICE,
    "daemon_stopped": NOTICE,
}

# Keys structlog adds itself or that the record's own journal fields already say.
_SKIP = frozenset({"timestamp", "level", "_record", "_from_structlog"})
_FIELD_RE = re.compile(r"[^A-Z0-9_]")


def priority_for(level: str | None, event: Any = None) -> int:
    """The syslog priority of a record: the more severe of its level's and its event's."""
    by_level = _LEVEL_PRIORITY.get((level or "info").lower(), INFO)
    by_event = EVENT_PRIORITY.get(event, DEBUG) if isinstance(event, str) else DEBUG
    return min(by_level, by_event)


def field_name(key: str) -> str:
    """A journal field name for an event-dict key: ``rotation_id`` -> ``ROTATORD_ROTATION_ID``."""
    return (FIELD_PREFIX + _FIELD_RE.sub("_", key.upper()))[:64]


def journal_stream_matches(stream: IO[str], env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd gave us ($JOURNAL_STREAM=dev:ino)."""
    raw = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = raw.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def stderr_prefix(priority: int = ERR) -> str:
    """``<N>`` when stderr is our journal stream (journald reads it as the line's priority),
    else nothing: for the few lines printed before logging is set up (a refused config)."""
    return f"<{priority}>" if journal_stream_matches(sys.stderr) else ""


def _json(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def encode(fields: Mapping[str, str]) -> bytes:
    """journald's native datagram: ``KEY=value\\n``, or the binary form for values with a
    newline (``KEY\\n<le64 length><bytes>\\n``)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send each formatted record to journald's native socket, with the stream as fallback."""

    def __init__(self, stream: IO[str], socket_path: str | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.socket_path = socket_path or JOURNAL_SOCKET
        self._sock: socket.socket | None = None
        # What ``annotate`` found for the record being formatted on this thread (the formatter
        # works on a copy of the record, so the finding cannot ride on the record itself).
        self._pending = threading.local()

    def annotate(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor (inside ProcessorFormatter, after redaction): note the record's
        priority and journal fields for :meth:`emit`."""
        record = event_dict.get("_record")
        level = event_dict.get("level") or getattr(record, "levelname", "info")
        fields: dict[str, str] = {}
        for key, value in event_dict.items():
            if key in _SKIP:
                continue
            fields[field_name(key)] = value if isinstance(value, str) else _json(value)
        self._pending.found = (priority_for(str(level), event_dict.get("event")), fields)
        return event_dict

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return self._sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.found = None
            text = self.format(record)
            found: tuple[int, dict[str, str]] | None = self._pending.found
            priority, extra = found or (priority_for(record.levelname), {})
            fields = {
                "MESSAGE": text,
                "PRIORITY": str(priority),
                "SYSLOG_IDENTIFIER": IDENTIFIER,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                **extra,
            }
            if not self._send(encode(fields)):
                # journald reads "<N>" at the start of a stream line as the line's priority.
                self.stream.write(f"<{priority}>{text}\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)

    def _send(self, payload: bytes) -> bool:
        """True when journald has the datagram; large ones go as a sealed memfd (like
        sd_journal_send: a datagram is capped by the socket's send buffer)."""
        try:
            self._socket().sendto(payload, self.socket_path)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return False
        try:
            fd = os.memfd_create("rotatord-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (OSError, AttributeError):
            return False
        try:
            os.write(fd, payload)
            # journald takes a memfd only when it is sealed (nobody can change it any more).
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            self._socket().sendmsg(
                [],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))],
                0,
                self.socket_path,
            )
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        super().close()
