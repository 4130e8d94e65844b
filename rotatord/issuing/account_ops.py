"""Account operations beyond registering: key rollover (RFC 8555 §7.3.5), deactivation
(§7.3.6), contact update (§7.3.2), what the CA holds (``account show``), and the resolution of a
rollover that was interrupted.

Crash safety of the rollover: the new key is written durably as ``key.pending.json`` *before*
the key-change request; ``key.json`` (the old key) is replaced only once the CA confirmed. A
process killed anywhere in between leaves both keys on disk, and the next user of the account
(daemon or CLI) asks the CA which one it knows (newAccount with ``onlyReturnExisting``, signed
with the pending key): known, the pending key is promoted; unknown, it is dropped. A CA that
cannot be reached leaves the pending key for the next attempt. All under the account's flock.

Rules: no josepy/acme object leaves this module; keys and EAB secrets are never logged (key
*thumbprints* are public and are what the audit records).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acme import errors, messages
from acme import jws as acme_jws
from acme.client import ClientV2
from josepy.b64 import b64encode
from josepy.interfaces import JSONDeSerializable
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec
from rotatord.issuing import account
from rotatord.issuing.acme_net import problem_code, translate
from rotatord.observe.audit import AuditSink
from rotatord.observe.logging import get_logger

if TYPE_CHECKING:
    from rotatord.issuing.acme_issuer import AcmeIssuer

log = get_logger("rotatord.issuing")


class _Json(JSONDeSerializable):
    """A literal JSON body (acme's Registration drops an empty ``contact`` list)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def to_partial_json(self) -> dict[str, Any]:
        return self.doc

    @classmethod
    def from_json(cls, jobj: Any) -> _Json:
        return cls(dict(jobj))


def thumbprint(key: JWKEC) -> str:
    """The RFC 7638 thumbprint of the public key (public: safe to log and audit)."""
    return b64encode(key.thumbprint()).decode()


def _bind(client: ClientV2, uri: str | None) -> None:
    body = messages.Registration()
    client.net.account = None if uri is None else messages.RegistrationResource(uri=uri, body=body)


def _post(client: ClientV2, url: str, body: JSONDeSerializable | None) -> Any:
    return client.net.post(url, body, new_nonce_url=client.directory["newNonce"])


def register(client: ClientV2, spec: AcmeSpec, account_dir: Path, key: JWKEC) -> str:
    """newAccount (with EAB when configured); the key already registered is ours."""
    reg = account.new_registration(spec, key, client.directory)
    # newAccount must be signed with the JWK, not a kid: forget any account we thought we had
    # (after a CA lost our account, the stale kid would be rejected as "No JWK in JWS header").
    _bind(client, None)
    try:
        uri = client.new_account(reg).uri
    except errors.ConflictError as exc:
        uri = exc.location
    _bind(client, uri)
    account.save_uri(account_dir, uri, spec.directory, spec.contact)
    log.info("acme_account_registered", account=spec.name, uri=uri)
    return str(uri)


def known_uri(client: ClientV2, key: JWKEC) -> str | None:
    """The URL of the account the CA holds for ``key``; None when it holds none."""
    saved = client.net.key, client.net.account
    client.net.key, client.net.account = key, None
    try:
        resp = _post(client, client.directory["newAccount"], _Json({"onlyReturnExisting": True}))
        location = resp.headers.get("Location")
        return str(location) if location else None
    except messages.Error as exc:
        if problem_code(exc) == "accountDoesNotExist":
            return None
        raise
    finally:
        client.net.key, client.net.account = saved


def resolve_pending(client: ClientV2, spec: AcmeSpec, account_dir: Path) -> str | None:
    """Settle an interrupted rollover (call under :func:`account.locked`): "promoted",
    "dropped", or None when there was nothing pending."""
    pending = account.load_pending(account_dir)
    if pending is None:
        return None
    if known_uri(client, pending) is not None:
        account.promote_pending(account_dir)
        outcome = "promoted"
    else:
        account.drop_pending(account_dir)
        outcome = "dropped"
    log.warning(
        "acme_account_pending_key_resolved",
        account=spec.name,
        outcome=outcome,
        key=thumbprint(pending),
    )
    return outcome


def sync_contact(client: ClientV2, spec: AcmeSpec, account_dir: Path, uri: str) -> bool:
    """Send the config's contacts when they differ from those last sent (§7.3.2)."""
    doc = account.load_doc(account_dir, spec.directory)
    if doc is None or doc.get("contact") == list(spec.contact):
        return False
    _bind(client, uri)
    _post(client, uri, _Json({"contact": list(spec.contact)}))
    account.save_uri(account_dir, uri, spec.directory, spec.contact)
    log.info("acme_account_contact_updated", account=spec.name, contacts=len(spec.contact))
    return True


@contextlib.contextmanager
def _session(issuer: AcmeIssuer, what: str) -> Iterator[ClientV2]:
    """A client with the account settled (pending key resolved, registered), its errors
    translated; the issuer reads the key afresh afterwards (it may have changed)."""
    with issuer.session() as client, account.locked(issuer.account_dir):
        try:
            resolve_pending(client, issuer.spec, issuer.account_dir)
            client.net.key = account.load_or_create_key(issuer.account_dir)
            yield client
        except IssuanceError:
            raise
        except Exception as exc:
            raise translate(exc, client.net, what) from exc  # type: ignore[arg-type]


def _uri(client: ClientV2, issuer: AcmeIssuer) -> str:
    uri = account.load_uri(issuer.account_dir, issuer.spec.directory)
    if uri is None:
        return register(client, issuer.spec, issuer.account_dir, _key(client))
    sync_contact(client, issuer.spec, issuer.account_dir, uri)  # the config is the truth
    _bind(client, uri)
    return uri


def _key(client: ClientV2) -> JWKEC:
    key = client.net.key
    assert isinstance(key, JWKEC)
    return key


def rollover(issuer: AcmeIssuer, audit: AuditSink) -> tuple[str, str]:
    """Replace the account key; returns (old, new) thumbprints. Audited."""
    spec, adir = issuer.spec, issuer.account_dir
    with _session(issuer, f"rolling over the key of account {spec.name}") as client:
        uri = _uri(client, issuer)
        old = _key(client)
        new = account.new_key()
        account.write_pending(adir, new)  # durable before the CA hears of it
        fields = {"account": spec.name, "uri": uri, "old_key": thumbprint(old)}
        audit.emit("account_key_rollover_started", **fields, new_key=thumbprint(new))
        url = client.directory["keyChange"]
        inner = acme_jws.JWS.sign(
            json.dumps({"account": uri, "oldKey": old.public_key().to_partial_json()}).encode(),
            key=new,
            alg=ES256,
            nonce=None,
            url=url,
        )
        try:
            _post(client, url, inner)
        except Exception as exc:
            # The CA may have applied it before the answer was lost: ask which key it knows.
            try:
                took = known_uri(client, new) is not None
            except Exception:  # noqa: BLE001 - unreachable: the pending key settles next time
                took = None
            if took is not True:
                if took is False:
                    account.drop_pending(adir)
                audit.emit("account_key_rollover_failed", **fields, error=str(exc)[:300])
                raise
        account.promote_pending(adir)
        audit.emit("account_key_rolled", **fields, new_key=thumbprint(new))
        return thumbprint(old), thumbprint(new)


def deactivate(issuer: AcmeIssuer, audit: AuditSink) -> str:
    """Deactivate the account at the CA (final) and record it; returns its URL. Audited."""
    spec, adir = issuer.spec, issuer.account_dir
    with _session(issuer, f"deactivating account {spec.name}") as client:
        uri = account.load_uri(adir, spec.directory)
        if uri is None:
            raise IssuanceError(
                f"account {spec.name!r} has never been registered at {spec.directory}",
                retryable=False,
            )
        _bind(client, uri)
        _post(client, uri, _Json({"status": "deactivated"}))
        account.save_uri(adir, uri, spec.directory, spec.contact, status="deactivated")
        audit.emit("account_deactivated", account=spec.name, uri=uri)
        return uri


def describe(issuer: AcmeIssuer, *, ask_ca: bool) -> dict[str, Any]:
    """What we hold for the account and, with ``ask_ca``, what the CA says about it."""
    spec, adir = issuer.spec, issuer.account_dir
    doc = account.load_doc(adir, spec.directory) or {}
    out: dict[str, Any] = {
        "account": spec.name,
        "directory": spec.directory,
        "uri": doc.get("uri"),
        "contact_config": list(spec.contact),
        "contact_sent": doc.get("contact"),
        "local_status": doc.get("status", "registered" if doc.get("uri") else "unregistered"),
        "eab_kid": spec.eab.kid if spec.eab else None,
        "pending_key": (adir / account.PENDING_NAME).exists(),
    }
    with contextlib.suppress(FileNotFoundError):
        out["key_thumbprint"] = thumbprint(account.load_key(adir / account.KEY_NAME))
    if not ask_ca or not doc.get("uri") or doc.get("status") == "deactivated":
        return out
    with _session(issuer, f"querying account {spec.name}") as client:
        uri = _uri(client, issuer)
        # POST-as-GET (RFC 8555 7.3.3 allows either; Pebble refuses the empty update).
        body = _post(client, uri, None).json()
    out["ca_status"] = body.get("status")
    out["ca_contact"] = body.get("contact", [])
    return out
