"""What a config change would make the daemon do: the summary ``rotatord plan`` prints and
``rotatord reload`` returns.

Computed from the running config, the new one and what is installed, with the same drift rule
the rotator applies (``policy.config_drift``) and the same due time (``Rotator.decision``), so
the plan says what the reload will do — nothing more: for instance new outputs and reload
actions take effect at the service's next rotation, and the plan says so with its time.

Rules: read-only (no lock, no order, no write); every action names its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

from rotatord.core import policy
from rotatord.core.errors import RotatordError
from rotatord.core.model import Config, ServiceSpec
from rotatord.rotation import Installed

# Service settings whose change affects the next rotation only, and what they govern.
_LATER = {
    "reload": "reload actions",
    "reload_targets": "reload targets",
    "probes": "probes",
    "probe_deadline_seconds": "probe deadline",
    "key_group": "key file group",
    "keep_versions": "versions kept",
    "reuse_key": "key reuse",
    "challenge": "challenge",
}


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings fixed for the daemon's life: ``[daemon]`` keys, the metrics listener, the
    alert queue's bound."""
    out = [
        f"daemon.{f.name}"
        for f in fields(old.daemon)
        if getattr(old.daemon, f.name) != getattr(new.daemon, f.name)
    ]
    if old.observe.metrics != new.observe.metrics:
        out.append("metrics.listen")
    if old.observe.alerts.queue_max != new.observe.alerts.queue_max:
        out.append("alerts.queue_max")
    return out


def keep_fixed(old: Config, new: Config) -> Config:
    """``new`` with what ``restart_needed`` lists kept at its running value."""
    alerts = replace(new.observe.alerts, queue_max=old.observe.alerts.queue_max)
    observe = replace(new.observe, metrics=old.observe.metrics, alerts=alerts)
    return replace(new, daemon=old.daemon, observe=observe)


def decision(
    spec: ServiceSpec, current: Installed | None, new: Config, now: datetime
) -> policy.Decision:
    """``Rotator.decision`` under the new config (whose accounts the rotator does not know yet)."""
    if current is None:
        return policy.decide(None, now)
    drift = policy.config_drift(current.bundle.meta, spec, new.acme[spec.account].directory)
    return policy.decide(
        current.info,
        now,
        renew_before=spec.renew_before,
        jitter=policy.jitter_for(spec.name, current.info.serial),
        drift=drift,
    )


def plan_changes(
    old: Config, new: Config, installed: Callable[[str], Installed | None], now: datetime
) -> dict[str, Any]:
    """``{"services": [{"service", "change", "actions": [{"action", "why"}]}],
    "restart_needed": [...]}`` for every service that differs; unchanged ones are left out."""
    services = []
    for name in sorted(set(old.services) | set(new.services)):
        before, after = old.services.get(name), new.services.get(name)
        if after is None:
            services.append(
                {
                    "service": name,
                    "change": "removed",
                    "actions": [
                        {
                            "action": "stop managing",
                            "why": "no longer configured; its files stay on disk, nothing "
                            "is revoked",
                        }
                    ],
                }
            )
            continue
        account_changed = before is not None and old.acme.get(before.account) != new.acme.get(
            after.account
        )
        if before == after and not account_changed:
            continue
        try:
            current = installed(name)
        except (RotatordError, OSError):
            current = None  # unreadable: the rotation will find out; the plan says "issue"
        actions = _actions(before, after, new, current, now)
        services.append(
            {
                "service": name,
                "change": "added" if before is None else "changed",
                "actions": actions,
            }
        )
    return {"services": services, "restart_needed": restart_needed(old, new)}


def _actions(
    before: ServiceSpec | None,
    after: ServiceSpec,
    new: Config,
    current: Installed | None,
    now: datetime,
) -> list[dict[str, str]]:
    actions: list[dict[str, str]] = []
    rotating_now = False
    if current is None:
        actions.append({"action": "issue", "why": "no certificate installed"})
        rotating_now = True
    else:
        directory = new.acme[after.account].directory
        drift = policy.config_drift(current.bundle.meta, after, directory)
        if "names" in drift:
            have, want = set(current.bundle.meta.names), set(after.domains)
            delta = [f"+{n}" for n in sorted(want - have)] + [f"-{n}" for n in sorted(have - want)]
            actions.append({"action": "issue", "why": "names " + " ".join(delta)})
        if "account" in drift:
            actions.append({"action": "issue", "why": f"account or CA changed ({after.account})"})
        if "key_type" in drift:
            key = current.bundle.meta.key_type.value
            actions.append({"action": "re-key", "why": f"key type {key} -> {after.key_type.value}"})
        rotating_now = bool(drift)
        if not drift and before is None:
            actions.append({"action": "adopt", "why": "the installed certificate matches"})
    due = decision(after, current, new, now)
    rotating_now = rotating_now or due.due
    when = (
        "now" if rotating_now else f"at the next rotation ({due.at.isoformat(timespec='seconds')})"
    )
    old_outputs = {o.path: o for o in (before.outputs if before else ())}
    for out in after.outputs:
        if out.path not in old_outputs:
            actions.append(
                {"action": "new output", "why": f"{out.path} ({out.format.value}), {when}"}
            )
        elif old_outputs[out.path] != out:
            actions.append({"action": "re-deploy", "why": f"{out.path} changed, {when}"})
    for path in sorted(set(old_outputs) - {o.path for o in after.outputs}):
        actions.append({"action": "drop output", "why": f"{path} no longer written (left as is)"})
    if before is not None:
        if before.renew_before != after.renew_before and not rotating_now:
            actions.append({"action": "reschedule", "why": f"renew_before, next renewal {when}"})
        later = [
            what for key, what in _LATER.items() if getattr(before, key) != getattr(after, key)
        ]
        if later:
            actions.append({"action": "settings", "why": f"{', '.join(later)}, used {when}"})
    if not actions:
        actions.append({"action": "settings", "why": f"account settings, used {when}"})
    return actions


def format_plan(plan: dict[str, Any]) -> list[str]:
    lines = []
    for svc in plan.get("services", []):
        for a in svc["actions"]:
            lines.append(f"{svc['service']}: {a['action']}: {a['why']}")
    if plan.get("restart_needed"):
        lines.append("restart needed for: " + ", ".join(plan["restart_needed"]))
    return lines or ["no changes"]
