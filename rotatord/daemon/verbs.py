"""Control verbs: what the daemon answers on its control socket.

Rules: the caller's uid (from SO_PEERCRED) is audited for every request and checked against
``control_allowed_uids`` before anything else — at accept (``admit``, before a byte is read) and
again per request (the config may have changed in between); a verb never raises (errors become
replies). Refusals at accept are audited at most once per ``REFUSAL_AUDIT_INTERVAL`` per uid,
the next record counting those in between (``refused_since_last``), so a refused user's connect
loop cannot turn into one fsynced audit record per connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rotatord.core.errors import RotatordError
from rotatord.core.model import Config, Trigger
from rotatord.core.text import clip, quote
from rotatord.daemon.loop import ServiceLoop
from rotatord.rotation import service_status
from rotatord.runtime.control import Peer

REFUSAL_AUDIT_INTERVAL = 1.0


class Verbs:
    def __init__(
        self,
        config: Callable[[], Config],
        loop: ServiceLoop,
        reload_config: Callable[[int | None], dict[str, Any]],
        plan: Callable[[Path | None], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._loop = loop
        self._reload = reload_config
        self._plan = plan
        # uid -> (monotonic time of its last audited refusal, refusals not audited since)
        self._refusals: dict[int, tuple[float, int]] = {}

    def admit(self, peer: Peer) -> dict[str, Any] | None:
        """At accept: None lets the caller send its request; otherwise the refusal to send."""
        if peer.uid in self._config().daemon.control_allowed_uids:
            return None
        now = self._loop.clock.monotonic()
        last, unaudited = self._refusals.get(peer.uid, (None, 0))
        if last is not None and now - last < REFUSAL_AUDIT_INTERVAL:
            self._refusals[peer.uid] = (last, unaudited + 1)
        else:
            self._refusals[peer.uid] = (now, 0)
            with contextlib.suppress(RotatordError):
                self._loop.audit.emit(
                    "control_request",
                    verb=None,
                    service=None,
                    uid=peer.uid,
                    pid=peer.pid,
                    allowed=False,
                    stage="accept",
                    refused_since_last=unaudited,
                )
        return _forbidden(peer)

    def handle(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        verb = req.get("verb")
        config = self._config()
        allowed = peer.uid in config.daemon.control_allowed_uids
        try:
            # The whole request is recorded (the sink bounds it and puts a fingerprint in place
            # of anything that looks like key material), for a refused caller too.
            self._loop.audit.emit(
                "control_request",
                verb=str(verb),
                service=req.get("service"),
                uid=peer.uid,
                pid=peer.pid,
                allowed=allowed,
                request=req,
            )
        except RotatordError as exc:
            # A request the log cannot record is not carried out (no unaudited control).
            return {"ok": False, "error": f"cannot audit the request: {exc}", "code": "audit"}
        if not allowed:
            return _forbidden(peer)
        try:
            if verb == "ping":
                return {"ok": True, "pid": os.getpid()}
            if verb == "status":
                unknown = _unknown_service(req.get("services"), config.services)
                if unknown is not None:
                    return unknown
                return {"ok": True, "services": self.status(req.get("services"))}
            if verb == "reload-config":
                return self._reload(peer.uid)
            if verb == "plan" and self._plan is not None:
                candidate = req.get("config")
                if candidate is not None and not (
                    isinstance(candidate, str) and os.path.isabs(candidate)
                ):
                    return {"ok": False, "error": "plan: 'config' must be an absolute path"}
                return self._plan(Path(candidate) if candidate else None)
            if verb == "rotate":
                return self.rotate(req, peer)
            if verb == "revoke":
                return self.revoke(req, peer)
        except RotatordError as exc:
            return {"ok": False, "error": clip(str(exc))}
        return {"ok": False, "error": f"unknown verb {quote(verb)}"}

    def rotate(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        # One request is one batch: shared reload targets run once for all of its services.
        config = self._config()
        if req.get("all"):
            requested: list[Any] = list(config.services)
        elif isinstance(req.get("services"), list):
            requested = list(req["services"])
        else:
            requested = [req.get("service")]
        names: list[str] = []
        for n in requested:
            if not isinstance(n, str) or n not in config.services:
                return {"ok": False, "error": f"unknown service {n!r}", "code": "unknown"}
            names.append(n)
        force = bool(req.get("force"))
        rotator = self._loop.rotator
        batch = rotator.rotate_batch(names, trigger=Trigger.MANUAL, force=force, uid=peer.uid)
        results = []
        for res in batch:
            self._loop.schedule_next(res.service)
            results.append(res.summary())
        return {
            "ok": all(r["outcome"] in ("rotated", "not_due") for r in results),
            "results": results,
        }

    def revoke(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        name = req.get("service")
        if not isinstance(name, str) or name not in self._config().services:
            return {"ok": False, "error": f"unknown service {name!r}", "code": "unknown"}
        revoked, res = self._loop.rotator.revoke(
            name, str(req.get("reason", "unspecified")), uid=peer.uid
        )
        self._loop.schedule_next(name)
        doc = res.summary()
        return {"ok": doc["outcome"] == "rotated", "revoked": revoked, "results": [doc]}

    def status(self, names: Any) -> list[dict[str, Any]]:
        config = self._config()
        wanted = names if isinstance(names, list) and names else list(config.services)
        now = self._loop.clock.now()
        docs = []
        for n in wanted:
            doc = service_status(self._loop.rotator, str(n), now)
            plan, ari = self._loop.planner.planned_for(str(n))
            doc["planned"] = plan is not None  # the daemon's own plan, not just the decision
            if plan is not None:
                doc["next_action"] = {"at": plan.at.isoformat(), "why": plan.why}
            if ari is not None and ari.window is not None:
                doc["ari"] = {
                    "window_start": ari.window[0].isoformat(),
                    "window_end": ari.window[1].isoformat(),
                    "chosen": ari.chosen.isoformat() if ari.chosen else None,
                    "explanation_url": ari.explanation_url,
                }
            docs.append(doc)
        return docs


def _forbidden(peer: Peer) -> dict[str, Any]:
    return {"ok": False, "error": f"uid {peer.uid} is not allowed", "code": "forbidden"}


def _unknown_service(names: Any, services: Mapping[str, Any]) -> dict[str, Any] | None:
    """The error reply for a status request naming a service the config does not have."""
    for n in names if isinstance(names, list) else ():
        if not isinstance(n, str) or n not in services:
            return {"ok": False, "error": f"unknown service {quote(n)}", "code": "unknown"}
    return None
