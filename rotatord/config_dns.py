"""Configuration of DNS-01: ``[dns.<name>]`` provider sections and ``type = "dns-01"``.

One job: the DNS part of :mod:`rotatord.config` (same rules: every problem collected with its
dotted path, no network, no side effects, secrets never read). ``config.py`` calls
:func:`providers` for the top-level ``[dns]`` table and :func:`challenge` for a service's
``[services.<name>.challenge]`` whose ``type`` is ``"dns-01"``.

The TSIG key file is checked to exist, be a regular file we may read, and not be readable by
others; its content (the secret) is read only by the issuing adapter. An exec hook's ``env``
(API tokens) is kept as given and never shown in a message.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from rotatord import config as base
from rotatord.core.dns01 import Dns01, DnsLookup, DnsProvider, ExecHook, Rfc2136

MAX_DNS_TIMEOUT: Final = 3600.0
MAX_TTL: Final = 86400
_COMMON_KEYS: Final = (
    "type",
    "resolvers",
    "authoritative_port",
    "propagation_timeout",
    "polling_interval",
    "query_timeout",
    "follow_cname",
)
_RFC2136_KEYS: Final = (*_COMMON_KEYS, "server", "tsig_key_file", "zone", "ttl", "timeout")
_EXEC_KEYS: Final = (*_COMMON_KEYS, "command", "mode", "env", "timeout")
_TYPES: Final = ("rfc2136", "exec")


def providers(ctx: base._Ctx, raw: object) -> dict[str, Dns01 | None]:
    """Every ``[dns.<name>]`` section; a section with problems maps to None (so a service
    naming it gets no second, misleading "does not exist")."""
    root = base._table(ctx, raw, "dns")
    found: dict[str, Dns01 | None] = {}
    for name, section in (root or {}).items():
        found[name] = _provider(ctx, name, section, base._join("dns", name))
    return found


def _provider(ctx: base._Ctx, name: str, raw: object, path: str) -> Dns01 | None:
    name_ok = base._check_name(ctx, name, path, "[dns.<name>]", "names look alike everywhere")
    table = base._table(ctx, raw, path)
    if table is None:
        return None
    before = len(ctx.problems)
    kind = None
    if base._required(ctx, table, "type", path, f"one of {', '.join(_TYPES)}"):
        kind = base._string(ctx, table, "type", path)
        if kind is not None and kind not in _TYPES:
            ctx.add(
                base._join(path, "type"),
                f"expected one of {', '.join(_TYPES)}, got {base._show(kind)}",
            )
            kind = None
    base._known_keys(
        ctx,
        table,
        path,
        _RFC2136_KEYS
        if kind == "rfc2136"
        else _EXEC_KEYS
        if kind == "exec"
        else _COMMON_KEYS + _RFC2136_KEYS + _EXEC_KEYS,
    )
    lookup = _lookup(ctx, table, path)
    provider: DnsProvider | None = None
    if kind == "rfc2136":
        provider = _rfc2136(ctx, table, path)
    elif kind == "exec":
        provider = _exec(ctx, table, path)
    if not name_ok or provider is None or len(ctx.problems) != before:
        return None
    return Dns01(name, provider, lookup, where=f"{ctx.file}: {path}")


def _lookup(ctx: base._Ctx, table: Mapping[str, Any], path: str) -> DnsLookup:
    resolvers: list[tuple[str, int]] = []
    if "resolvers" in table:
        where = base._join(path, "resolvers")
        items = base._string_list(ctx, table["resolvers"], where, "resolver addresses")
        for index, item in enumerate(items or ()):
            server = _server(ctx, item, base._item(where, index), ip_only=True)
            if server is not None:
                resolvers.append(server)
    default = DnsLookup()
    port = base._int(ctx, table, "authoritative_port", path, 1, 65535)
    propagation = base._seconds(ctx, table, "propagation_timeout", path, MAX_DNS_TIMEOUT)
    interval = base._seconds(ctx, table, "polling_interval", path, 600.0)
    query = base._seconds(ctx, table, "query_timeout", path, 60.0)
    follow = base._bool(ctx, table, "follow_cname", path)
    return DnsLookup(
        resolvers=tuple(resolvers),
        authoritative_port=default.authoritative_port if port is None else port,
        propagation_timeout_seconds=propagation or default.propagation_timeout_seconds,
        polling_interval_seconds=interval or default.polling_interval_seconds,
        query_timeout_seconds=query or default.query_timeout_seconds,
        follow_cname=default.follow_cname if follow is None else follow,
    )


def _server(ctx: base._Ctx, value: str, where: str, *, ip_only: bool) -> tuple[str, int] | None:
    """``host``, ``host:port`` or ``[v6]:port``; port 53 when left out."""
    text = value
    if _is_ip(value):  # a bare IPv4 or IPv6 address
        text = f"[{value}]:53" if ":" in value else f"{value}:53"
    elif not value.startswith("[") and ":" not in value:
        text = f"{value}:53"  # a bare host name
    parsed = base._parse_host_port(
        text, "'127.0.0.1:53', '[::1]:53' or '192.0.2.1'", "missing host"
    )
    if isinstance(parsed, str):
        ctx.add(where, parsed)
        return None
    if ip_only and not _is_ip(parsed[0]):
        ctx.add(
            where,
            f"{base._show(parsed[0])} is not an IP address: resolvers are given by "
            "address (a name would need a resolver to find them)",
        )
        return None
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _rfc2136(ctx: base._Ctx, table: Mapping[str, Any], path: str) -> Rfc2136 | None:
    server = None
    if base._required(ctx, table, "server", path, "the primary accepting updates, host:port"):
        text = base._string(ctx, table, "server", path)
        if text is not None:
            server = _server(ctx, text, base._join(path, "server"), ip_only=False)
    key_file = None
    if base._required(ctx, table, "tsig_key_file", path, "a key file written by tsig-keygen"):
        key_file = base._path(ctx, table, "tsig_key_file", path)
        if key_file is not None and not _secret_file(
            ctx, base._join(path, "tsig_key_file"), key_file
        ):
            key_file = None
    zone = base._string(ctx, table, "zone", path)
    if zone is not None:
        zone = zone.lower().rstrip(".")
        problem = base._domain_problem(zone) if zone else "must not be empty"
        if problem is not None or zone.startswith("*."):
            ctx.add(
                base._join(path, "zone"),
                f"{base._show(zone)} is not a zone name: {problem or 'no wildcards'}",
            )
    ttl = base._int(ctx, table, "ttl", path, 1, MAX_TTL)
    timeout = base._seconds(ctx, table, "timeout", path, MAX_DNS_TIMEOUT)
    if server is None or key_file is None:
        return None
    return Rfc2136(
        server=server,
        tsig_key_file=key_file,
        zone=zone,
        ttl=ttl or 60,
        timeout_seconds=timeout or 10.0,
    )


def _secret_file(ctx: base._Ctx, where: str, file: Path) -> bool:
    """Exists, is a regular file, we may read it, others may not; stat()/access() only."""
    if not base._existing_file(ctx, where, file):
        return False
    shown = base._show_path(file)
    if not os.access(file, os.R_OK):
        ctx.add(where, f"{shown} is not readable by this user (uid {os.geteuid()})")
        return False
    mode = file.stat().st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        ctx.add(
            where,
            f"{shown} holds a TSIG secret but is accessible to every user (mode "
            f"{stat.S_IMODE(mode):04o}); chmod 0600 or 0640 it",
        )
        return False
    return True


def _exec(ctx: base._Ctx, table: Mapping[str, Any], path: str) -> ExecHook | None:
    argv = None
    if base._required(ctx, table, "command", path, "the hook's argv, e.g. ['/usr/local/bin/h']"):
        argv = base._argv(ctx, table["command"], base._join(path, "command"))
    raw = False
    mode = base._string(ctx, table, "mode", path)
    if mode is not None:
        if mode.lower() not in ("default", "raw"):
            ctx.add(
                base._join(path, "mode"),
                "expected 'default' (present FQDN. VALUE) or "
                f"'raw' (present -- DOMAIN TOKEN KEYAUTH, lego's EXEC_MODE=RAW), "
                f"got {base._show(mode)}",
            )
        raw = mode.lower() == "raw"
    env: dict[str, str] = {}
    if "env" in table:
        env = base._env(ctx, table["env"], base._join(path, "env"))
    timeout = base._seconds(ctx, table, "timeout", path, MAX_DNS_TIMEOUT)
    if argv is None:
        return None
    return ExecHook(argv=argv, raw=raw, env=MappingProxyType(env), timeout_seconds=timeout or 60.0)


def challenge(ctx: base._Ctx, table: Mapping[str, Any], path: str) -> Dns01 | None:
    """``[services.<svc>.challenge]`` with ``type = "dns-01"``: ``provider`` names a
    ``[dns.<name>]`` section (optional when exactly one is defined)."""
    defined: Mapping[str, Dns01 | None] = ctx.dns
    for key in ("listen", "webroot"):
        if key in table:
            ctx.add(base._join(path, key), f"{key!r} belongs to http-01; dns-01 takes 'provider'")
    where = base._join(path, "provider")
    if "provider" not in table:
        if len(defined) == 1:
            return next(iter(defined.values()))
        ctx.add(
            where,
            "missing required key 'provider': name the [dns.<name>] section that "
            "writes the TXT records"
            + (f"; defined: {', '.join(defined)}" if defined else "; none is defined"),
        )
        return None
    name = base._string(ctx, table, "provider", path)
    if name is None:
        return None
    if name not in defined:
        message = f"{base._show(name)} does not name a [dns.<name>] section"
        suggestion = base._suggest(name, list(defined))
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        else:
            message += f"; defined: {', '.join(defined)}" if defined else "; none is defined"
        ctx.add(where, message)
        return None
    return defined[name]
