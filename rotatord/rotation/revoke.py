"""Revocation: revoke the current certificate at the CA, rotate to a fresh key at once, destroy
the revoked key.

Rules: the revoked pair is never rolled back to; its key never outlives the new pair's
activation.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from rotatord.core.errors import StoreError, VerificationError
from rotatord.core.model import Trigger
from rotatord.observe.audit import BoundAudit
from rotatord.rotation.installed import read_installed
from rotatord.rotation.state import Outcome, RotationResult

if TYPE_CHECKING:
    from rotatord.rotation.rotator import Rotator

# RFC 5280 CRLReason codes an ACME client may send (RFC 8555 §7.6).
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}


def revoke(
    rotator: Rotator, name: str, reason: str, *, uid: int | None = None
) -> tuple[str, RotationResult]:
    """Returns (the revoked serial, the rotation's result); errors before the revocation is
    done are raised."""
    spec = rotator.spec(name)
    code = REVOCATION_REASONS.get(reason)
    if code is None:
        raise VerificationError(
            f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}"
        )
    store = rotator.store(spec)
    audit = BoundAudit(
        rotator.audit,
        {"service": name, "rotation_id": secrets.token_hex(8), "trigger": "manual"}
        | ({"uid": uid} if uid is not None else {}),
    )
    with store.lock():
        installed = read_installed(store)
        if installed is None:
            raise StoreError(f"service {name!r} has no certificate to revoke")
        rotator.issuer(spec.account).revoke(installed.bundle.cert_pem, code)
        audit.emit(
            "certificate_revoked",
            serial=installed.info.serial_hex,
            version=installed.version.name,
            reason=reason,
            reason_code=code,
        )
    result = rotator.rotate_batch(
        [name], trigger=Trigger.MANUAL, force=True, uid=uid, rollback=False, fresh_key=True
    )[0]
    if result.outcome is Outcome.ROTATED:
        version = installed.version
        with store.lock():
            if store.current_version() != version and version.path.exists():
                store.destroy_version(version)
                audit.emit("key_destroyed", version=version.name, why="revoked")
    return installed.info.serial_hex, result
