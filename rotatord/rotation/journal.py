"""The rotation journal: the persisted phase of each service's latest rotation.

``journal.json`` is written (atomically, fsynced) before activation (``staged``, naming the new
and the previous version), after it (``activated``, right after its audit record), and at the end
(``finished``, or ``rolling_back`` then ``rolled_back``). A rotation found unfinished at start-up
is resumed: the pair that is live gets its outputs, reloads and probe — all of them, whichever
step the kill interrupted — so a kill between the flip and the reload never leaves a consumer
serving the old certificate until it expires. (``published``, ``reloaded`` and ``probed`` are
still read from journals older daemons wrote; the audit log records those steps.)

Rules: a journal write that fails *before* activation stops the rotation (we could not resume
it); one that fails after only loses resumability, never the rotation itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotatord.core.errors import StoreError
from rotatord.observe.logging import get_logger
from rotatord.rotation.state import Ctx, Phase
from rotatord.store import CertStore

log = get_logger("rotatord.journal")


@dataclass(frozen=True)
class Entry:
    rotation_id: str
    phase: Phase
    version: str
    previous_version: str | None
    trigger: str
    started_at: str | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Entry | None:
        try:
            return cls(
                rotation_id=str(doc["rotation_id"]),
                phase=Phase(doc["phase"]),
                version=str(doc["version"]),
                previous_version=(
                    str(doc["previous_version"]) if doc.get("previous_version") else None
                ),
                trigger=str(doc.get("trigger", "startup")),
                started_at=doc.get("started_at")
                if isinstance(doc.get("started_at"), str)
                else None,
            )
        except (KeyError, ValueError, TypeError):
            return None


def read(store: CertStore) -> Entry | None:
    return Entry.from_doc(store.read_journal())


def begin(ctx: Ctx, version: str, now: datetime) -> None:
    """Record ``staged`` before activation; raises StoreError (the rotation must stop)."""
    doc = {
        "rotation_id": ctx.rotation_id,
        "phase": Phase.STAGED.value,
        "version": version,
        "previous_version": ctx.old.version.name if ctx.old else None,
        "trigger": ctx.trigger,
        "started_at": now.isoformat(),
    }
    ctx.store.write_journal(doc)
    ctx.extra["journal"] = doc


def mark(ctx: Ctx, phase: Phase) -> None:
    """Advance the journal; a failed write is logged, never raised (see module rules)."""
    doc = ctx.extra.get("journal")
    if not isinstance(doc, dict) or doc.get("rotation_id") != ctx.rotation_id:
        return
    doc = {**doc, "phase": phase.value}
    ctx.extra["journal"] = doc
    try:
        ctx.store.write_journal(doc)
    except StoreError as exc:
        log.error("journal_unwritable", service=ctx.spec.name, phase=phase.value, error=str(exc))


def mark_synced(ctx: Ctx, phase: Phase) -> None:
    """A journal mark says the steps before it are recorded: make their records durable."""
    ctx.audit.sync()
    mark(ctx, phase)
