"""Dead-man heartbeat: after each successful check cycle, GET a URL and/or touch a file.

An external monitor (healthchecks.io, a cron job watching the file's mtime, Uptime Kuma's push
monitor) raises the alarm when pings stop: a daemon that died, hangs or is stopped cannot send
the alert itself. Rules: the URL is never logged past its host; the file is written with
O_NOFOLLOW (a planted symlink is refused) and mode 0644; a failed ping is logged, not retried
(the next cycle pings again).
"""

from __future__ import annotations

import os
from datetime import datetime

from rotatord import __version__
from rotatord.core.observing import HeartbeatSpec
from rotatord.observe.http_out import redact, request
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.heartbeat")


def beat(spec: HeartbeatSpec, now: datetime) -> bool:
    """One heartbeat; True when every configured target took it."""
    ok = True
    if spec.file is not None:
        try:
            fd = os.open(
                spec.file,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
            try:
                os.write(fd, (now.isoformat() + "\n").encode())
                os.utime(fd, (now.timestamp(), now.timestamp()))
            finally:
                os.close(fd)
        except OSError as exc:
            ok = False
            log.error("heartbeat_failed", file=str(spec.file), error=exc.strerror)
    if spec.url is not None:
        try:
            status = request(
                "GET",
                spec.url,
                headers={"User-Agent": f"rotatord/{__version__}"},
                timeout=spec.timeout_seconds,
                ca_bundle=spec.ca_bundle,
            )
        except OSError as exc:
            ok = False
            log.warning("heartbeat_failed", url=redact(spec.url), error=str(exc))
        else:
            if not 200 <= status < 300:
                ok = False
                log.warning("heartbeat_failed", url=redact(spec.url), status=status)
    return ok
