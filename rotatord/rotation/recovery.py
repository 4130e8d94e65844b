"""Start-up recovery: repair what an interrupted rotation left on disk, and resume a rotation
whose pair went live but whose consumers may not have caught up.

Rules: every repair and every resumption is audited; recovery runs under the service lock.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rotatord.core.errors import StoreError
from rotatord.fsutil import read_file_nofollow, remove_temp_files
from rotatord.observe.audit import AuditSink
from rotatord.rotation import journal
from rotatord.rotation.installed import read_version
from rotatord.rotation.state import UNFINISHED, Ctx, Phase, RotationResult, Stage
from rotatord.store import META_FILE, CertStore, RecoveryReport, Version

if TYPE_CHECKING:
    from pathlib import Path

    from rotatord.rotation.rotator import Rotator


def recover_state(state_dir: Path) -> list[str]:
    """Remove temp files a kill left beside the state kept outside the services (the budget
    ledgers, account keys and registrations). Call only while holding the daemon lock, so that no
    writer is active there. Returns what was removed, relative to ``state_dir``."""
    removed = [f"budget/{e}" for e in remove_temp_files(state_dir / "budget")]
    accounts = state_dir / "accounts"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in sorted(os.listdir(accounts)):
            removed += [f"accounts/{name}/{e}" for e in remove_temp_files(accounts / name)]
    return removed


def _audit_unrecorded_activation(
    rotator: Rotator, store: CertStore, name: str, audit: AuditSink
) -> None:
    """A kill between the ``current`` flip and its audit record leaves a pair in service that
    the log never said was activated. status.json names the version the last finished rotation
    left current, and the journal is marked ``activated`` right after the audit record; if
    neither vouches for ``current``, record its activation now (a duplicate, after a kill in
    the instant between record and mark, is harmless; a missing key event is not)."""
    current = store.current_version()
    if current is None:
        return
    status = rotator.book.get(store)
    if status.current_version == current.name:
        return
    entry = journal.read(store)
    if entry is not None and entry.version == current.name and entry.phase is not Phase.STAGED:
        return
    try:
        meta = json.loads(read_file_nofollow(current.path / META_FILE))
    except (OSError, ValueError, StoreError):
        meta = {}
    audit.emit(
        "certificate_activated",
        service=name,
        rotation_id=meta.get("rotation_id"),
        trigger="startup",
        serial=meta.get("serial"),
        version=current.name,
        key_fingerprint=meta.get("key_fingerprint"),
        recovered=True,
    )
    rotator.book.update(store, current_version=current.name)


def recover_service(
    rotator: Rotator, name: str, audit: AuditSink, *, thorough: bool = True
) -> RecoveryReport | None:
    """Recovery of one service under its lock; audited when it changed anything. None when the
    service has nothing on disk yet.

    ``thorough=False`` (start-up, for every service) first looks without the lock: a service
    left settled (no temp entry, a complete ``current`` that its status names) has nothing to
    repair or record, and costs a few ``stat`` calls, not a lock and a store per service."""
    spec = rotator.spec(name)
    if not thorough:
        plain = rotator.plain_store(name)
        clean, current = plain.settled()
        if clean and (current is None or rotator.book.get(plain).current_version == current.name):
            if current is None and not os.path.isdir(plain.dir):
                return None
            return RecoveryReport(current=current.name if current else None)
    store = rotator.store(spec)
    if not store.dir.exists():
        return None
    with store.lock():
        report = store.recover(thorough=thorough)
        _audit_unrecorded_activation(rotator, store, name, audit)
    if report.removed_temp or report.removed_incomplete or report.repointed_current:
        audit.emit(
            "store_recovered",
            service=name,
            removed_temp=list(report.removed_temp),
            removed_incomplete=list(report.removed_incomplete),
            repointed_current=report.repointed_current,
            current=report.current,
        )
    return report


def unfinished(rotator: Rotator, names: Sequence[str]) -> list[str]:
    """Services whose journal shows a rotation that did not finish (cheap: one small read)."""
    out = []
    for name in names:
        if name not in rotator.config.services:
            continue
        entry = journal.read(rotator.store(rotator.spec(name)))
        if entry is not None and (entry.phase in UNFINISHED or entry.phase is Phase.ROLLING_BACK):
            out.append(name)
    return out


def resume(rotator: Rotator, names: Sequence[str]) -> list[RotationResult]:
    """Finish every unfinished rotation of ``names`` as one batch (shared targets once).

    - the journal's version is live: deploy it (outputs, reloads, probe), then finish with
      ``resumed=true`` — or roll back if that deployment fails, as the original would have;
    - it never went live (killed between staging and the flip): its unused key is destroyed;
    - killed during a rollback: the rollback is completed.
    """
    with contextlib.ExitStack() as stack:
        ctxs = []
        for name in sorted(set(unfinished(rotator, names))):
            spec = rotator.spec(name)
            store = rotator.store(spec)
            stack.enter_context(store.lock())
            entry = journal.read(store)  # again, under the lock
            if entry is None or not (
                entry.phase in UNFINISHED or entry.phase is Phase.ROLLING_BACK
            ):
                continue
            ctx = rotator.new_ctx(spec, entry.trigger, None, entry.rotation_id)
            ctx.store = store
            ctx.resumed = True
            ctx.reason = f"resumed:{entry.phase.value}"
            ctx.extra["journal"] = store.read_journal()
            current = store.current_version()
            live = current is not None and current.name == entry.version
            if not live and entry.phase is not Phase.ROLLING_BACK:
                _abandon(store, entry, ctx)
                continue
            new = read_version(
                store, Version(entry.version, store.dir / "versions" / entry.version)
            )
            old = None
            if entry.previous_version:
                prev = Version(
                    entry.previous_version, store.dir / "versions" / entry.previous_version
                )
                old = read_version(store, prev) if prev.path.is_dir() else None
            if new is None:
                journal.mark(ctx, Phase.FINISHED)
                continue
            ctx.new, ctx.old = new, old
            ctx.stage = Stage.ACTIVATED
            ctx.audit.emit("rotation_resumed", phase=entry.phase.value, version=entry.version)
            if entry.phase is Phase.ROLLING_BACK:
                ctx.deploy_error = StoreError("interrupted during rollback")
            ctxs.append(ctx)
        if not ctxs:
            return []
        return rotator.run_resumed(ctxs, stack)


def _abandon(store: CertStore, entry: journal.Entry, ctx: Ctx) -> None:
    """A staged version that never went live: destroy its key, close the journal."""
    path = store.dir / "versions" / entry.version
    if path.is_dir() and not path.is_symlink():
        store.destroy_version(Version(entry.version, path))
        ctx.audit.emit("key_destroyed", version=entry.version, why="abandoned")
    journal.mark(ctx, Phase.FINISHED)
