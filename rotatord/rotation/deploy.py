"""Deploying one pair to its consumers: outputs, the service's own reloads, each shared reload
target once per batch (in its declared order), then the TLS probe.

The same function deploys a new pair and, on rollback, the previous one: a rollback is just a
deployment of the old pair whose probe must see the old certificate.

Rules: reload actions only through the ``Reloader`` port; nothing here flips ``current`` (the
rotator does, before calling this); a reload's output is scrubbed of key material before it is
audited.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from rotatord.core import identifiers, keys
from rotatord.core.errors import AuditError, ReloadError, StoreError
from rotatord.core.model import Config, ReloadAction, ReloadTarget, ServiceSpec
from rotatord.deploy.outputs import publish as publish_outputs
from rotatord.deploy.probe import Prober
from rotatord.deploy.reload import Reloader, describe
from rotatord.fsutil import DEFAULT_OPS, FsOps
from rotatord.observe.logging import redact_text
from rotatord.rotation.state import Ctx, Installed
from rotatord.store import CertStore, Version

Pick = Callable[[Ctx], Installed]


def reload_env(store: CertStore, service: ServiceSpec, version: Version | None) -> dict[str, str]:
    """Paths and facts a reload action may use. Never a secret: the key is passed by path."""
    current = store.current_link
    env = {
        "ROTATORD_SERVICE": service.name,
        "ROTATORD_DOMAINS": ",".join(service.domains),
        "ROTATORD_CERT_DIR": str(current),
        "ROTATORD_KEY": str(current / "privkey.pem"),
        "ROTATORD_CERT": str(current / "cert.pem"),
        "ROTATORD_CHAIN": str(current / "chain.pem"),
        "ROTATORD_FULLCHAIN": str(current / "fullchain.pem"),
    }
    if version is not None:
        env["ROTATORD_VERSION"] = version.name
        env["ROTATORD_VERSION_DIR"] = str(version.path)
    return env


def targets_of(config: Config, ctxs: Sequence[Ctx]) -> list[ReloadTarget]:
    targets = config.reload_targets
    names = {t for c in ctxs for t in c.spec.reload_targets if t in targets}
    return sorted((targets[n] for n in names), key=lambda t: (t.order, t.name))


class Deployer:
    def __init__(
        self,
        config: Callable[[], Config],
        reloader: Reloader,
        prober: Prober | None,
        ops: FsOps = DEFAULT_OPS,
    ) -> None:
        self._config = config
        self._reloader = reloader
        self._prober = prober
        self._ops = ops

    def deploy(
        self, ctxs: Sequence[Ctx], pick: Pick, probe_phase: str
    ) -> dict[str, str]:
        """Deploy ``pick(c)`` for every context; returns the first failure per service name.

        A service whose outputs or own reloads failed is left out of the shared targets (its
        pair is about to be rolled back); a failed shared target fails every service using it.

        No journal marks here: a resumed rotation redoes the whole deployment (outputs, reloads,
        probe) whatever step it had reached, and the audit log already records each step, so
        a durable write per step would buy nothing.
        """
        failures: dict[str, str] = {}
        for c in ctxs:
            pair = pick(c)
            try:
                if c.spec.outputs:
                    publish_outputs(c.spec.outputs, pair.bundle, pair.version.name, self._ops)
                self.run_actions(c, c.spec.reload, pair.version, target=None)
            except (ReloadError, StoreError, AuditError, OSError) as exc:
                failures[c.spec.name] = str(exc)
        healthy = [c for c in ctxs if c.spec.name not in failures]
        for target in targets_of(self._config(), healthy):
            users = [c for c in healthy if target.name in c.spec.reload_targets]
            try:
                self.run_actions(users[0], target.actions, pick(users[0]).version, target.name)
            except (ReloadError, AuditError) as exc:
                for c in users:
                    failures.setdefault(c.spec.name, str(exc))
                    if c is not users[0]:
                        with contextlib.suppress(AuditError):
                            c.audit.emit(
                                "reload_failed",
                                target=target.name,
                                error=str(exc),
                                returncode=getattr(exc, "returncode", None),
                                timed_out=getattr(exc, "timed_out", False),
                            )
            else:
                for c in users[1:]:
                    c.audit.emit("reload_succeeded", target=target.name, shared=True)
        for c in ctxs:
            if c.spec.name in failures:
                continue
            fp = keys.cert_fingerprint(keys.split_pem_chain(pick(c).bundle.cert_pem)[0])
            failure = self.probe(c, fp, probe_phase)
            if failure is not None:
                failures[c.spec.name] = failure
        return failures

    def run_actions(
        self,
        ctx: Ctx,
        actions: Sequence[ReloadAction],
        version: Version | None,
        target: str | None,
    ) -> None:
        env = reload_env(ctx.store, ctx.spec, version)
        for action in actions:
            try:
                res = self._reloader.run(action, env)
            except ReloadError as exc:
                ctx.audit.emit(
                    "reload_failed",
                    action=describe(action),
                    target=target,
                    returncode=exc.returncode,
                    timed_out=exc.timed_out,
                    stderr_tail=scrub(ctx, exc.stderr_tail[-500:]),
                    error=str(exc),
                )
                raise
            ctx.audit.emit(
                "reload_succeeded",
                action=res.action,
                target=target,
                returncode=res.returncode,
                version=version.name if version else None,
            )

    def probe(self, ctx: Ctx, expected: str, phase: str) -> str | None:
        """Probe every endpoint of the service; returns the first failure, audited."""
        if self._prober is None:
            return None
        for spec in ctx.spec.probes:
            # A wildcard is no host name to send as SNI, an address is never sent as SNI.
            plain = [d for d in ctx.spec.domains if not d.startswith("*.")]
            sni = spec.sni or (
                identifiers.default_sni(plain) if plain else "wildcard" + ctx.spec.domains[0][1:]
            )
            res = self._prober.probe(spec, sni, expected, ctx.spec.probe_deadline_seconds)
            fields = {
                "endpoint": res.endpoint,
                "sni": sni,
                "expected_fingerprint": expected,
                "served_fingerprint": res.served_fingerprint,
                "attempts": res.attempts,
                "elapsed_ms": round(res.elapsed_ms, 1),
                "phase": phase,
            }
            if not res.ok:
                ctx.audit.emit("probe_failed", **fields, error=res.error)
                return f"probe {res.endpoint}: {res.error}"
            ctx.audit.emit("probe_succeeded", **fields)
        return None


def scrub(ctx: Ctx, text: str) -> str:
    """A reload's output may echo a key (a script that cats the wrong file): drop every line
    that carries a piece of the old or new private key, and anything PEM-private."""
    secret_lines: set[str] = set()
    for pem in (
        ctx.new.bundle.key_pem if ctx.new else b"",
        ctx.old.bundle.key_pem if ctx.old else b"",
    ):
        for line in pem.decode("ascii", "replace").splitlines():
            if line and not line.startswith("-----"):
                secret_lines.add(line.strip())
    kept = []
    for line in redact_text(text).splitlines():
        stripped = line.strip()
        if any(piece and piece in line for piece in secret_lines) or (
            len(stripped) >= 16 and any(stripped in piece for piece in secret_lines)
        ):
            kept.append("[redacted: key material]")
        else:
            kept.append(line)
    return "\n".join(kept)
