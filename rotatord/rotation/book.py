"""The loop's memory: per-service status and per-account issuance budgets, memory first.

Both live in memory and are written through to disk when the disk lets us. A state directory
that is full or read-only must not make the loop forget a failure (that is how retry ladders get
skipped and failures get hidden), so the in-memory copy is the truth for the running daemon and
``persisted`` says whether disk has caught up. At start-up both are read back from disk.

Rules: no clock reads (``now`` is passed in); never raises for a disk that cannot be written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rotatord.core import policy
from rotatord.core.errors import StoreError
from rotatord.core.model import BudgetLimits
from rotatord.fsutil import DEFAULT_OPS, FsOps, atomic_write, ensure_tree, read_file_nofollow
from rotatord.observe.logging import get_logger
from rotatord.store import CertStore, ServiceStatus

log = get_logger("rotatord.book")


@dataclass(frozen=True)
class Entry:
    status: ServiceStatus
    persisted: bool = True
    persist_error: str | None = None
    # Changed in memory on purpose (``note``) since the last write: the next ``put`` writes.
    dirty: bool = False


class StatusBook:
    """Service status, in memory first. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}

    def get(self, store: CertStore) -> ServiceStatus:
        return self.entry(store).status

    def entry(self, store: CertStore) -> Entry:
        with self._lock:
            found = self._entries.get(store.service)
        if found is not None:
            return found
        entry = Entry(ServiceStatus.from_doc(store.read_status()))
        with self._lock:
            return self._entries.setdefault(store.service, entry)

    def put(self, store: CertStore, status: ServiceStatus) -> Entry:
        """Remember ``status``; write it to disk if possible and say whether that worked."""
        with self._lock:
            known = self._entries.get(store.service)
        if known is not None and known.persisted and not known.dirty and known.status == status:
            return known  # already on disk as it is
        try:
            store.write_status(status.to_doc())
            entry = Entry(status)
        except StoreError as exc:
            log.error("status_unwritable", service=store.service, error=str(exc))
            entry = Entry(status, persisted=False, persist_error=str(exc))
        with self._lock:
            self._entries[store.service] = entry
        return entry

    def update(self, store: CertStore, **changes: Any) -> Entry:
        return self.put(store, replace(self.get(store), **changes))

    def note(self, store: CertStore, **changes: Any) -> None:
        """Change the status in memory only; the next ``put`` or ``update`` writes it. For
        facts that are durable elsewhere already (the ledger holds the last order's time)."""
        entry = self.entry(store)
        with self._lock:
            self._entries[store.service] = replace(
                entry, status=replace(entry.status, **changes), dirty=True
            )

    def forget(self, service: str) -> None:
        with self._lock:
            self._entries.pop(service, None)


def identifier_key(names: Sequence[str]) -> str:
    """The identifier set a CA counts duplicates by: case-insensitive, order-free."""
    return ",".join(sorted({n.lower() for n in names}))


class BudgetLedger:
    """Orders and issuances per account (``<state>/budget/<account>.json``), memory first.

    An order is counted *before* it is sent (a crash after sending must not give the slot back);
    a certificate when the CA issued it, whether or not we could install it (the CA counts it).
    """

    def __init__(self, state_dir: Path, ops: FsOps = DEFAULT_OPS) -> None:
        self._dir = state_dir / "budget"
        self._ops = ops
        self._lock = threading.Lock()
        self._docs: dict[str, dict[str, Any]] = {}
        self.persist_error: str | None = None

    def _doc(self, account: str) -> dict[str, Any]:
        doc = self._docs.get(account)
        if doc is None:
            try:
                raw = json.loads(read_file_nofollow(self._dir / f"{account}.json"))
            except (OSError, ValueError, StoreError):
                raw = {}
            doc = raw if isinstance(raw, dict) else {}
            orders = doc.get("orders")
            certs = doc.get("certificates")
            doc = {
                "orders": [t for t in orders if isinstance(t, str)]
                if isinstance(orders, list)
                else [],
                "certificates": {
                    k: [t for t in v if isinstance(t, str)]
                    for k, v in certs.items()
                    if isinstance(k, str) and isinstance(v, list)
                }
                if isinstance(certs, dict)
                else {},
            }
            last = raw.get("last_order") if isinstance(raw, dict) else None
            doc["last_order"] = (
                {k: v for k, v in last.items() if isinstance(k, str) and isinstance(v, str)}
                if isinstance(last, dict)
                else {}
            )
            self._docs[account] = doc
        return doc

    @staticmethod
    def _times(values: list[str]) -> list[datetime]:
        out = []
        for v in values:
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                continue
            if t.tzinfo is not None:
                out.append(t)
        return out

    def free_at(
        self, account: str, names: Sequence[str], limits: BudgetLimits, now: datetime
    ) -> datetime | None:
        """None if one more order fits; else when the next slot frees up."""
        with self._lock:
            doc = self._doc(account)
            orders = self._times(doc["orders"])
            certs = self._times(doc["certificates"].get(identifier_key(names), []))
        return policy.budget_free_at(orders, certs, limits, now)

    def usage(
        self, account: str, names: Sequence[str], limits: BudgetLimits, now: datetime
    ) -> dict[str, Any]:
        """What ``status`` shows: used and remaining in each window."""
        with self._lock:
            doc = self._doc(account)
            orders = self._times(doc["orders"])
            certs = self._times(doc["certificates"].get(identifier_key(names), []))
        used_orders = sum(1 for t in orders if min(t, now) > now - limits.orders_window)
        used_certs = sum(1 for t in certs if min(t, now) > now - limits.certificates_window)
        return {
            "orders_used": used_orders,
            "orders_remaining": max(0, limits.orders - used_orders),
            "certificates_used": used_certs,
            "certificates_remaining": max(0, limits.certificates - used_certs),
        }

    def last_order(self, account: str, service: str) -> datetime | None:
        """When ``service`` last sent an order through ``account`` (within the orders window):
        the minimum-interval guard's memory across a crash in the middle of an order."""
        with self._lock:
            raw = self._doc(account)["last_order"].get(service)
        times = self._times([raw]) if raw else []
        return times[0] if times else None

    def record_order(
        self,
        account: str,
        now: datetime,
        limits: BudgetLimits,
        service: str | None = None,
    ) -> None:
        """Count an order before it is sent, durably: raises StoreError (and counts nothing)
        when the ledger cannot be written. An order whose count a crash could lose would let
        a restarted daemon exceed the CA's limits; and a state directory that cannot take the
        ledger could not take the certificate either.

        The same write remembers ``service`` as the last to order: the minimum-interval
        guard's memory across a crash mid-order, without a status write before every order."""
        self._record(account, now, limits, order=True, strict=True, service=service)

    def record_certificate(
        self, account: str, names: Sequence[str], now: datetime, limits: BudgetLimits
    ) -> None:
        self._record(account, now, limits, cert=identifier_key(names))

    def _record(
        self,
        account: str,
        now: datetime,
        limits: BudgetLimits,
        *,
        order: bool = False,
        cert: str | None = None,
        strict: bool = False,
        service: str | None = None,
    ) -> None:
        with self._lock:
            doc = self._doc(account)
            before = {
                "orders": list(doc["orders"]),
                "certificates": {k: list(v) for k, v in doc["certificates"].items()},
                "last_order": dict(doc["last_order"]),
            }
            if order:
                keep = now - limits.orders_window
                doc["orders"] = [
                    t.isoformat() for t in self._times(doc["orders"]) if min(t, now) > keep
                ] + [now.isoformat()]
                last = doc["last_order"]
                for svc, at in list(last.items()):
                    times = self._times([at])
                    if not times or min(times[0], now) <= keep:
                        del last[svc]
                if service is not None:
                    last[service] = now.isoformat()
            certs = doc["certificates"]
            if cert is not None:
                keep = now - limits.certificates_window
                for k in list(certs):
                    certs[k] = [t.isoformat() for t in self._times(certs[k]) if min(t, now) > keep]
                    if not certs[k]:
                        del certs[k]
                certs.setdefault(cert, []).append(now.isoformat())
            data = (json.dumps(doc, sort_keys=True) + "\n").encode()
        try:
            ensure_tree(self._dir, 0o700, self._ops)
            atomic_write(self._dir / f"{account}.json", data, 0o600, self._ops)
            self.persist_error = None
        except (OSError, StoreError) as exc:
            self.persist_error = str(exc)
            log.error("budget_unwritable", account=account, error=str(exc))
            if strict:
                with self._lock:
                    self._docs[account] = before
                raise StoreError(
                    f"{self._dir}: cannot record the order in the budget ledger, so it is not "
                    f"sent: {exc}"
                ) from exc
            # Still enforced from memory; the next successful write carries it to disk.
