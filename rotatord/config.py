"""Configuration: TOML → frozen :class:`~rotatord.core.model.Config`, every problem reported.

One job: turn the operator's TOML file into the frozen model, or raise ONE
:class:`~rotatord.core.errors.ConfigError` listing every problem found, each with the file and
the dotted key path (``services.web.reload[1].timeout``) and a message saying what is wrong and
what is expected. Validation never stops at the first problem: an operator fixing a config wants
the whole list in one go (lego validates its config the same way).

Rules:

* No network and no side effects. The only I/O is reading the config file itself, ``stat()`` of
  files that must already exist (``ca_bundle``, the EAB ``hmac_key_file``, a PKCS#12
  ``password_file``) and user/group database lookups (``pwd``/``grp``). Nothing is created,
  written, chmod-ed or opened for writing here; directories are created by the store, sockets by
  the control server.
* Secret material is never read: the EAB HMAC key file and the PKCS#12 password file are checked
  to exist, their content is read only by the adapters that use them, so it cannot leak into an
  error message. Messages never echo the value of an unknown key either (a misspelt
  ``hmac_key = "..."`` would otherwise print the key).
* ``parse_config``/``load_config`` raise nothing but ``ConfigError``, whatever the input (huge
  integers, NUL bytes, lone surrogates, tables where strings belong, ...): the daemon reloads
  config on change and must keep running on the old snapshot when the new one is bad.
* Relative paths are resolved against the directory holding the config file, never against the
  daemon's working directory (which is ``/`` under systemd and the repo in a demo).
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import json
import math
import os
import pwd
import re
import signal
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from rotatord import config_accounts
from rotatord.core import identifiers
from rotatord.core.errors import ConfigError, Problem
from rotatord.core.model import (
    SECRET_FORMATS,
    AcmeSpec,
    BudgetLimits,
    Challenge,
    CommandReload,
    Config,
    DaemonSpec,
    EabSpec,
    Http01Standalone,
    Http01Webroot,
    KeyType,
    OutputFormat,
    OutputSpec,
    ProbeSpec,
    ReloadAction,
    ReloadTarget,
    ServiceSpec,
    SignalReload,
    SystemdReload,
    TlsAlpn01,
    challenge_type,
)

__all__ = ["SAFE_NAME_RE", "load_config", "parse_config"]

#: Names of ``[acme.<name>]``, ``[services.<name>]`` and ``[reload_targets.<name>]`` sections.
#: The first two become directory names under the state dir, so they must be safe as one: no "/",
#: no leading dot (so never "." or ".."), no control characters, at most 63 characters. Reload
#: target names follow the same rule so every name in a config looks alike.
SAFE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# Limits. Each caps a value whose only effect when huge is a daemon that hangs or never acts;
# they are far above anything sensible, so a real config never meets them.
MAX_TIMEOUT_SECONDS: Final = 3600.0
MAX_ORDER_DEADLINE_SECONDS: Final = 86400.0
MAX_PROBE_DEADLINE_SECONDS: Final = 600.0
MAX_TARGET_ORDER: Final = 1000  # reload_targets.<name>.order is from -1000 to 1000
MAX_RENEW_BEFORE: Final = timedelta(days=365)
MAX_LADDER_STEPS: Final = 16
MAX_KEEP_VERSIONS: Final = 1000
MAX_CONCURRENT: Final = 64
MAX_DOMAINS: Final = 100  # Let's Encrypt's limit on names per certificate
MAX_UID: Final = 2**32 - 2  # uid_t is 32 bits and (uid_t)-1 means "no change"
SUN_PATH_MAX: Final = 107  # AF_UNIX paths: 108 bytes including the terminating NUL
# A config for 10,000 services (bench/idle.py) is about 1.3 MB; 8 MiB leaves room for ~60,000
# while keeping a stray multi-gigabyte file (or /dev/zero) from being read into memory.
MAX_CONFIG_BYTES: Final = 8 << 20

_LOG_FORMATS: Final = ("auto", "json", "console")
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DURATION_RE: Final = re.compile(r"([0-9]+)([smhd])")
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MODE_RE: Final = re.compile(r"(?:0o)?([0-7]{1,4})")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_RE: Final = re.compile(r"[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,255}")

OBSERVE_KEYS: Final = ("metrics", "alerts", "heartbeat", "watch", "revocation")
_TOP_KEYS: Final = ("daemon", "acme", "reload_targets", "dns", "services", *OBSERVE_KEYS)
_DAEMON_KEYS: Final = (
    "state_dir",
    "audit_log",
    "control_socket",
    "control_socket_group",
    "control_allowed_uids",
    "keep_versions",
    "max_concurrent",
    "log_format",
    "retry_ladder",
    "min_order_interval",
)
_ACME_KEYS: Final = (
    "directory",
    "contact",
    "ca_bundle",
    "timeout",
    "order_deadline",
    "eab",
    "budget",
    "trust_roots",
    "trust_roots_url",
    "allowed_hosts",
)
_BUDGET_KEYS: Final = ("orders", "orders_window", "certificates", "certificates_window")
# Below this the "floor" between orders is no floor: a broken CA would be asked every second.
MIN_ORDER_INTERVAL_FLOOR: Final = timedelta(seconds=5)
MAX_BUDGET_COUNT: Final = 1_000_000
_EAB_KEYS: Final = ("kid", "hmac_key_file")
_SERVICE_KEYS: Final = (
    "domains",
    "account",
    "key_type",
    "reuse_key",
    "renew_before",
    "key_group",
    "keep_versions",
    "challenge",
    "reload",
    "reload_targets",
    "outputs",
    "probe",
    "probe_deadline",
    "profile",
    "fallback_after",
)
_CHALLENGE_KEYS: Final = ("type", "listen", "webroot", "provider")
_RELOAD_KEYS: Final = (
    "command",
    "env",
    "timeout",
    "signal",
    "pid_file",
    "executable",
    "systemd_unit",
)
_OUTPUT_KEYS: Final = ("path", "format", "mode", "owner", "group", "password_file")
_TARGET_KEYS: Final = ("order", "actions")
_PROBE_KEYS: Final = ("address", "unix_socket", "sni")

_E = TypeVar("_E", KeyType, OutputFormat)
_T = TypeVar("_T")


# --------------------------------------------------------------------------- public API


def load_config(path: Path) -> Config:
    """Read and validate the TOML file at ``path``.

    Raises ConfigError with one problem naming the file when it cannot be read or is not valid
    TOML (the message gives the line and column), else whatever :func:`parse_config` finds.
    """
    file = str(path)
    try:
        # Read at most one byte past the cap: a huge (or endless, e.g. /dev/zero) file is
        # refused without being held in memory.
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([Problem(file, "", f"cannot read config file: {reason}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        message = f"config file is larger than {MAX_CONFIG_BYTES >> 20} MiB; refusing to read it"
        raise ConfigError([Problem(file, "", message)])
    try:
        # utf-8-sig: a byte-order mark (some Windows editors add one) is not a TOML error.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"config file is not valid UTF-8 (byte offset {exc.start})"
        raise ConfigError([Problem(file, "", message)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line L, column C)" in the message; 3.11 has no lineno attribute.
        raise ConfigError([Problem(file, "", f"invalid TOML: {exc}")]) from None
    except RecursionError:
        message = "invalid TOML: arrays or inline tables are nested too deeply"
        raise ConfigError([Problem(file, "", message)]) from None
    except ValueError as exc:
        # tomllib lets int() refuse a number of more than 4,300 digits with a plain ValueError.
        raise ConfigError([Problem(file, "", f"invalid TOML: {exc}")]) from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], source: Path) -> Config:
    """Validate already-parsed TOML ``data`` read from ``source`` and build the frozen Config.

    Raises one ConfigError listing every problem found; never raises anything else.
    """
    ctx = _Ctx(source)
    root = _table(ctx, data, "")
    if root is None:
        raise ConfigError(ctx.problems)
    _known_keys(ctx, root, "", _TOP_KEYS)

    daemon = _daemon(ctx, root["daemon"]) if "daemon" in root else DaemonSpec()
    ctx.state_dir = daemon.state_dir

    acme: dict[str, AcmeSpec] = {}
    acme_names: list[str] = []
    acme_root = _table(ctx, root["acme"], "acme") if "acme" in root else {}
    if acme_root is not None:
        if not acme_root:
            ctx.add("acme", "at least one [acme.<name>] section is required (the CA to use)")
        for name, raw in acme_root.items():
            acme_names.append(name)
            spec = _acme(ctx, name, raw, _join("acme", name))
            if spec is not None:
                acme[name] = spec

    targets: dict[str, ReloadTarget] = {}
    # Every name defined, even one whose section has problems, so a service naming it does not get
    # a second, misleading "does not exist"; None when [reload_targets] itself is not a table.
    target_names: list[str] | None = None
    targets_root = (
        _table(ctx, root["reload_targets"], "reload_targets") if "reload_targets" in root else {}
    )
    if targets_root is not None:
        target_names = list(targets_root)
        for name, raw in targets_root.items():
            target = _reload_target(ctx, name, raw, _join("reload_targets", name))
            if target is not None:
                targets[name] = target

    if "dns" in root:
        from rotatord import config_dns  # it imports this module back

        ctx.dns = config_dns.providers(ctx, root["dns"])

    services: dict[str, ServiceSpec] = {}
    services_root = _table(ctx, root["services"], "services") if "services" in root else {}
    for name, raw in (services_root or {}).items():
        service = _service(ctx, name, raw, _join("services", name), acme_names, target_names)
        if service is not None:
            services[name] = service

    # Imported here: config_observe reads this module's helpers.
    from rotatord.config_observe import parse_observe

    observe = parse_observe(ctx, root)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    # Iterating the mapping gives the reload order: ascending (order, name).
    ordered = sorted(targets.values(), key=lambda target: (target.order, target.name))
    return Config(
        source=source,
        daemon=daemon,
        acme=MappingProxyType(acme),
        services=MappingProxyType(services),
        reload_targets=MappingProxyType({target.name: target for target in ordered}),
        observe=observe,
    )


# --------------------------------------------------------------------------- context, paths, shows


class _Ctx:
    """Collects problems for one file and knows the directory relative paths start from."""

    def __init__(self, source: Path) -> None:
        self.file = str(source)
        self.problems: list[Problem] = []
        # Output files seen so far (path -> where), across services, even ones with problems.
        self.output_paths: dict[Path, str] = {}
        # The subset of those that are ``format = "directory"`` outputs (path -> where).
        self.output_dirs: dict[Path, str] = {}
        # Every directory above an output seen so far -> those outputs, in the order seen: a new
        # directory output finds what it would own in one lookup, not by a scan of every output
        # (which made 10,000 directory outputs take minutes).
        # Keyed by ``Path.parts`` (equal tuples are equal paths), which hash far cheaper.
        self.outputs_below: dict[tuple[str, ...], list[Path]] = {}
        self.output_dir_parts: dict[tuple[str, ...], Path] = {}
        self.state_dir = DaemonSpec().state_dir
        self.dns: dict[str, Any] = {}  # [dns.<name>] -> Dns01, or None when it has problems
        parent = source.parent
        if not parent.is_absolute():
            try:
                parent = Path.cwd() / parent
            except OSError:  # the working directory was removed under us
                self.add("", "config path is relative and the working directory is gone")
        self.base = Path(os.path.normpath(parent))

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message))

    def resolve(self, raw: str) -> Path:
        """Resolve ``raw`` against the config file's directory; normalise ``.``/``..``.

        Lexically, not with ``Path.resolve()``: no filesystem lookup happens here, and a symlink
        in the path stays the operator's choice rather than being frozen at load time.
        """
        # os.path.join, not ``self.base / raw``: the same path, one Path built instead of two.
        return Path(os.path.normpath(os.path.join(self.base, raw)))


def _join(path: str, key: str) -> str:
    """Dotted path of ``key`` under ``path``, quoting keys TOML would need to quote."""
    shown = key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key, ensure_ascii=True)
    return f"{path}.{shown}" if path else shown


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _kind(value: object) -> str:
    """The TOML name of ``value``'s type, for 'expected X, got Y' messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _show(value: object, limit: int = 60) -> str:
    """A short, ASCII-safe rendering of a scalar for a message.

    Strings are shortened before ``repr`` (which escapes lone surrogates and control characters
    so a message can always be printed); integers too large to print cheaply are not printed
    (``str()`` of a 5000-digit int raises ValueError in 3.11); containers are named, not shown.
    """
    if isinstance(value, str):
        shown = value if len(value) <= limit else value[:limit] + "..."
        return ascii(shown)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    return _kind(value)


def _show_path(path: Path) -> str:
    return _show(str(path), limit=200)


# --------------------------------------------------------------------------- generic readers


def _table(ctx: _Ctx, value: object, path: str) -> dict[str, Any] | None:
    """``value`` as a table with string keys, or None (with a problem) when it is not one."""
    if not isinstance(value, Mapping):
        where = f"[{path}]" if path else "the top level"
        ctx.add(path, f"{where} must be a table, got {_kind(value)}")
        return None
    table: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str):
            table[key] = item
        else:
            ctx.add(path, f"keys must be strings, got {_kind(key)} {_show(key)}")
    return table


def _known_keys(ctx: _Ctx, table: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
    """Report keys not in ``allowed``, suggesting the closest one (typos are the usual cause)."""
    for key in table:
        if key in allowed:
            continue
        message = f"unknown key {_show(key)}"
        suggestion = _suggest(key, allowed)
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        else:
            message += f"; expected one of: {', '.join(allowed)}"
        ctx.add(_join(path, key), message)


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word`` ignoring case, if any is close (a typo, "Domains")."""
    if len(word) > 64:  # difflib is quadratic; nobody typos a 65-character key
        return None
    by_folded = {choice.casefold(): choice for choice in choices}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1)
    return by_folded[close[0]] if close else None


def _required(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str, what: str) -> bool:
    if key in table:
        return True
    ctx.add(_join(path, key), f"missing required key {key!r}: {what}")
    return False


def _check_string(ctx: _Ctx, value: object, path: str) -> str | None:
    """``value`` if it is a non-blank string without NUL, else None with a problem."""
    if not isinstance(value, str):
        ctx.add(path, f"expected a string, got {_kind(value)}")
        return None
    if not value.strip():
        ctx.add(path, "must not be empty")
        return None
    if "\x00" in value:
        ctx.add(path, "must not contain a NUL character")
        return None
    return value


def _string(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str) -> str | None:
    if key not in table:
        return None
    return _check_string(ctx, table[key], _join(path, key))


def _int(
    ctx: _Ctx, table: Mapping[str, Any], key: str, path: str, low: int, high: int
) -> int | None:
    if key not in table:
        return None
    value, where = table[key], _join(path, key)
    # bool is a subclass of int in Python; `keep_versions = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.add(where, f"expected an integer from {low} to {high}, got {_kind(value)}")
        return None
    if not low <= value <= high:
        ctx.add(where, f"must be from {low} to {high}, got {_show(value)}")
        return None
    return value


def _seconds(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str, high: float) -> float | None:
    """A positive number of seconds (integer or float), at most ``high``."""
    if key not in table:
        return None
    value, where = table[key], _join(path, key)
    expected = f"a number of seconds greater than 0 and at most {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.add(where, f"expected {expected}, got {_kind(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        ctx.add(where, f"expected {expected}, got {_show(value)}")
        return None
    if not 0 < value <= high:
        ctx.add(where, f"must be greater than 0 and at most {high:g}, got {_show(value)}")
        return None
    return float(value)


def _bool(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str) -> bool | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, bool):
        ctx.add(_join(path, key), f"expected true or false, got {_kind(value)}")
        return None
    return value


def _choice(
    ctx: _Ctx, table: Mapping[str, Any], key: str, path: str, enum_type: type[_E]
) -> _E | None:
    if key not in table:
        return None
    value, where = table[key], _join(path, key)
    if isinstance(value, str):
        for member in enum_type:
            if member.value == value:
                return member
    choices = ", ".join(member.value for member in enum_type)
    if not isinstance(value, str):
        ctx.add(where, f"expected one of {choices}; got {_kind(value)}")
        return None
    ctx.add(where, f"expected one of {choices}; got {_show(value)}")
    return None


def _path(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str) -> Path | None:
    raw = _string(ctx, table, key, path)
    return None if raw is None else ctx.resolve(raw)


def _string_list(ctx: _Ctx, value: object, path: str, what: str) -> list[str] | None:
    """A list whose items are all valid strings; each bad item is reported with its index."""
    if not isinstance(value, list | tuple):
        ctx.add(path, f"expected an array of {what}, got {_kind(value)}")
        return None
    items: list[str] = []
    ok = True
    for index, item in enumerate(value):
        checked = _check_string(ctx, item, _item(path, index))
        if checked is None:
            ok = False
        else:
            items.append(checked)
    return items if ok else None


def _existing_file(ctx: _Ctx, path: str, file: Path) -> bool:
    """Check that ``file`` exists and is a regular file; stat() only, the content is not read."""
    shown = _show_path(file)
    try:
        st = file.stat()
    except FileNotFoundError:
        ctx.add(path, f"file {shown} does not exist")
        return False
    except PermissionError:
        ctx.add(path, f"cannot access {shown}: permission denied")
        return False
    except (OSError, ValueError) as exc:  # ValueError: unencodable name (lone surrogate)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        ctx.add(path, f"cannot access {shown}: {reason}")
        return False
    if not stat.S_ISREG(st.st_mode):
        ctx.add(path, f"{shown} is not a regular file")
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except (KeyError, ValueError, OSError):  # ValueError: NUL or unencodable in the name
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except (KeyError, ValueError, OSError):
        return False
    return True


def _group(ctx: _Ctx, table: Mapping[str, Any], key: str, path: str) -> str | None:
    name = _string(ctx, table, key, path)
    if name is not None and not _group_exists(name):
        ctx.add(_join(path, key), f"group {_show(name)} does not exist on this system")
        return None
    return name


# --------------------------------------------------------------------------- [daemon]


def _daemon(ctx: _Ctx, raw: object) -> DaemonSpec:
    table = _table(ctx, raw, "daemon")
    defaults = DaemonSpec()
    if table is None:
        return defaults
    path = "daemon"
    _known_keys(ctx, table, path, _DAEMON_KEYS)

    control_socket = _path(ctx, table, "control_socket", path)
    if control_socket is not None:
        _check_socket_path(ctx, control_socket, _join(path, "control_socket"))

    uids: tuple[int, ...] | None = None
    if "control_allowed_uids" in table:
        uids = _uids(ctx, table["control_allowed_uids"], _join(path, "control_allowed_uids"))

    log_format = _string(ctx, table, "log_format", path)
    if log_format is not None and log_format not in _LOG_FORMATS:
        ctx.add(
            _join(path, "log_format"),
            f"expected one of {', '.join(_LOG_FORMATS)}; got {_show(log_format)}",
        )

    state_dir = _path(ctx, table, "state_dir", path)
    audit_log = _path(ctx, table, "audit_log", path)
    group = _group(ctx, table, "control_socket_group", path)
    keep = _int(ctx, table, "keep_versions", path, 2, MAX_KEEP_VERSIONS)
    concurrent = _int(ctx, table, "max_concurrent", path, 1, MAX_CONCURRENT)
    ladder = _retry_ladder(ctx, table, path)
    interval: timedelta | None = None
    if "min_order_interval" in table:
        where = _join(path, "min_order_interval")
        interval = _duration_value(ctx, table["min_order_interval"], where)
        if interval is not None and interval < MIN_ORDER_INTERVAL_FLOOR:
            ctx.add(where, f"must be at least {int(MIN_ORDER_INTERVAL_FLOOR.total_seconds())}s")
            interval = None
    return DaemonSpec(
        state_dir=defaults.state_dir if state_dir is None else state_dir,
        audit_log=defaults.audit_log if audit_log is None else audit_log,
        control_socket=defaults.control_socket if control_socket is None else control_socket,
        control_socket_group=group,
        control_allowed_uids=defaults.control_allowed_uids if uids is None else uids,
        keep_versions=defaults.keep_versions if keep is None else keep,
        max_concurrent=defaults.max_concurrent if concurrent is None else concurrent,
        log_format=log_format or defaults.log_format,
        retry_ladder=defaults.retry_ladder if ladder is None else ladder,
        min_order_interval=defaults.min_order_interval if interval is None else interval,
    )


def _check_socket_path(ctx: _Ctx, socket_path: Path, where: str) -> bool:
    """Report a unix socket path that cannot be encoded or is too long for ``sun_path``."""
    try:
        size = len(os.fsencode(socket_path))
    except (UnicodeError, ValueError):
        ctx.add(where, "path cannot be encoded for the filesystem")
        return False
    if size > SUN_PATH_MAX:
        ctx.add(
            where,
            f"unix socket paths are limited to {SUN_PATH_MAX} bytes; "
            f"{_show_path(socket_path)} is {size} after resolution",
        )
        return False
    return True


def _uids(ctx: _Ctx, value: object, path: str) -> tuple[int, ...] | None:
    if not isinstance(value, list | tuple):
        ctx.add(path, f"expected an array of numeric uids, got {_kind(value)}")
        return None
    uids: list[int] = []
    for index, item in enumerate(value):
        where = _item(path, index)
        if isinstance(item, bool) or not isinstance(item, int):
            ctx.add(where, f"expected a numeric uid (0 to {MAX_UID}), got {_kind(item)}")
        elif not 0 <= item <= MAX_UID:
            ctx.add(where, f"uid must be from 0 to {MAX_UID}, got {_show(item)}")
        elif item not in uids:
            uids.append(item)
    return tuple(uids)


# --------------------------------------------------------------------------- [acme.<name>]


def _check_name(
    ctx: _Ctx, name: str, path: str, section: str, why: str = "it becomes a directory name"
) -> bool:
    if SAFE_NAME_RE.fullmatch(name):
        return True
    ctx.add(
        path,
        f"invalid {section} name {_show(name)}: {why}, so use 1-63 "
        "letters, digits, '.', '_' or '-', starting with a letter or digit",
    )
    return False


def _acme(ctx: _Ctx, name: str, raw: object, path: str) -> AcmeSpec | None:
    name_ok = _check_name(ctx, name, path, "[acme.<name>]")
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _ACME_KEYS)
    before = len(ctx.problems)

    directory: str | None = None
    if _required(ctx, table, "directory", path, "the CA's ACME directory URL (https://...)"):
        directory = _string(ctx, table, "directory", path)
        if directory is not None:
            problem = _directory_problem(directory)
            if problem is not None:
                ctx.add(_join(path, "directory"), problem)

    contact: list[str] = []
    if "contact" in table:
        where = _join(path, "contact")
        contact = _string_list(ctx, table["contact"], where, "mailto: URLs") or []
        for index, item in enumerate(contact):
            if not item.startswith("mailto:") or len(item) <= len("mailto:"):
                ctx.add(
                    _item(where, index),
                    f"contacts must be mailto: URLs like 'mailto:ops@example.com', "
                    f"got {_show(item)}",
                )

    ca_bundle = _path(ctx, table, "ca_bundle", path)
    if ca_bundle is not None:
        _existing_file(ctx, _join(path, "ca_bundle"), ca_bundle)

    trust_roots = _path(ctx, table, "trust_roots", path)
    if trust_roots is not None:
        _existing_file(ctx, _join(path, "trust_roots"), trust_roots)
    trust_roots_url = _string(ctx, table, "trust_roots_url", path)
    if trust_roots_url is not None:
        problem = _trust_url_problem(trust_roots_url)
        if problem is not None:
            ctx.add(_join(path, "trust_roots_url"), problem)
    allowed_hosts: list[str] = []
    if "allowed_hosts" in table:
        where = _join(path, "allowed_hosts")
        allowed_hosts = _string_list(ctx, table["allowed_hosts"], where, "host names") or []
        for index, host in enumerate(allowed_hosts):
            if not _HOST_RE.fullmatch(host):
                ctx.add(_item(where, index), f"expected a bare host name, got {_show(host)}")

    timeout = _seconds(ctx, table, "timeout", path, MAX_TIMEOUT_SECONDS)
    deadline = _seconds(ctx, table, "order_deadline", path, MAX_ORDER_DEADLINE_SECONDS)
    eab = _eab(ctx, table["eab"], _join(path, "eab")) if "eab" in table else None
    budget = _budget(ctx, table["budget"], _join(path, "budget")) if "budget" in table else None

    if not name_ok or directory is None or len(ctx.problems) != before:
        return None
    spec = AcmeSpec(name=name, directory=directory, contact=tuple(contact), ca_bundle=ca_bundle)
    if eab is not None:
        spec = dataclasses.replace(spec, eab=eab)
    if timeout is not None:
        spec = dataclasses.replace(spec, timeout_seconds=timeout)
    if deadline is not None:
        spec = dataclasses.replace(spec, order_deadline_seconds=deadline)
    if budget is not None:
        spec = dataclasses.replace(spec, budget=budget)
    return dataclasses.replace(
        spec,
        trust_roots=trust_roots,
        trust_roots_url=trust_roots_url,
        allowed_hosts=tuple(h.lower() for h in allowed_hosts),
    )


# Host names and IP literals as they appear in URLs (no scheme, port or path).
_HOST_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def _trust_url_problem(url: str) -> str | None:
    """Why ``url`` cannot serve trust anchors, or None: https only, like the directory but with
    no plain-http exception (roots fetched in the clear could be swapped by anyone)."""
    problem = _directory_problem(url)
    if problem is not None:
        return problem.replace("directory URL", "trust_roots_url")
    if not url.lower().startswith("https://"):
        return f"trust_roots_url must be an https:// URL, got {_show(url)}"
    return None


def _budget(ctx: _Ctx, raw: object, path: str) -> BudgetLimits | None:
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _BUDGET_KEYS)
    before = len(ctx.problems)
    defaults = BudgetLimits()
    orders = _int(ctx, table, "orders", path, 1, MAX_BUDGET_COUNT)
    certificates = _int(ctx, table, "certificates", path, 1, MAX_BUDGET_COUNT)
    windows: dict[str, timedelta | None] = {}
    for key in ("orders_window", "certificates_window"):
        windows[key] = _duration_value(ctx, table[key], _join(path, key)) if key in table else None
    if len(ctx.problems) != before:
        return None
    return BudgetLimits(
        orders=defaults.orders if orders is None else orders,
        orders_window=windows["orders_window"] or defaults.orders_window,
        certificates=defaults.certificates if certificates is None else certificates,
        certificates_window=windows["certificates_window"] or defaults.certificates_window,
    )


def _directory_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable ACME directory URL, or None."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "the directory URL must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        return f"{_show(url)} is not a valid URL; expected https://host/path"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return f"expected an https:// URL, got {_show(url)}"
    if not host:
        return f"the directory URL has no host: {_show(url)}"
    if scheme == "http" and host not in _LOCAL_HOSTS:
        # Plain HTTP lets anyone on the path swap the CA's answers; tolerable only on loopback,
        # where a test CA such as Pebble runs.
        return (
            "plain http:// is only allowed for a CA on this machine "
            "(127.0.0.1, localhost, ::1); use https://"
        )
    return None


def _eab(ctx: _Ctx, raw: object, path: str) -> EabSpec | None:
    # Never put the hmac file's content or any value from this table but the paths in a message.
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _EAB_KEYS)
    kid: str | None = None
    if _required(ctx, table, "kid", path, "the key identifier your CA gave you"):
        kid = _string(ctx, table, "kid", path)
    key_file: Path | None = None
    if _required(ctx, table, "hmac_key_file", path, "a file holding the CA's HMAC key"):
        key_file = _path(ctx, table, "hmac_key_file", path)
        if key_file is not None and not _existing_file(ctx, _join(path, "hmac_key_file"), key_file):
            key_file = None
    if kid is None or key_file is None:
        return None
    return EabSpec(kid=kid, hmac_key_file=key_file)


# --------------------------------------------------------------------------- [services.<name>]


def _service(
    ctx: _Ctx,
    name: str,
    raw: object,
    path: str,
    acme_names: Sequence[str],
    target_names: Sequence[str] | None,
) -> ServiceSpec | None:
    name_ok = _check_name(ctx, name, path, "[services.<name>]")
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _SERVICE_KEYS)
    before = len(ctx.problems)

    # The challenge first: which identifiers are allowed depends on it.
    challenge: Challenge | None = Http01Standalone()
    if "challenge" in table:
        challenge = _challenge(ctx, table["challenge"], _join(path, "challenge"))

    domains: tuple[str, ...] | None = None
    if _required(ctx, table, "domains", path, "a non-empty array of DNS names or IP addresses"):
        domains = _domains(ctx, table["domains"], _join(path, "domains"))
    if domains is not None and challenge is not None:
        _identifiers_for(ctx, domains, challenge_type(challenge), _join(path, "domains"))

    accounts = _account(ctx, table, path, acme_names)
    fallback_after = config_accounts.fallback_after(ctx.add, table, path)
    profile = config_accounts.profile(ctx.add, table, path)
    key_type = _choice(ctx, table, "key_type", path, KeyType)
    reuse_key = _bool(ctx, table, "reuse_key", path)
    renew_before = _renew_before(ctx, table, path)
    key_group = _group(ctx, table, "key_group", path)
    keep = _int(ctx, table, "keep_versions", path, 2, MAX_KEEP_VERSIONS)

    reload: tuple[ReloadAction, ...] = ()
    if "reload" in table:
        reload = _reloads(ctx, table["reload"], _join(path, "reload"))

    target_refs: tuple[str, ...] = ()
    if "reload_targets" in table:
        where = _join(path, "reload_targets")
        target_refs = _target_refs(ctx, table["reload_targets"], where, target_names) or ()

    outputs: tuple[OutputSpec, ...] = ()
    if "outputs" in table:
        outputs = _outputs(ctx, table["outputs"], _join(path, "outputs"))

    probes: tuple[ProbeSpec, ...] = ()
    if "probe" in table:
        probes = _probes(ctx, table["probe"], _join(path, "probe"))
    probe_deadline = _seconds(ctx, table, "probe_deadline", path, MAX_PROBE_DEADLINE_SECONDS)

    if (
        not name_ok
        or domains is None
        or accounts is None
        or challenge is None
        or len(ctx.problems) != before
    ):
        return None
    return ServiceSpec(
        name=name,
        domains=domains,
        account=accounts[0],
        fallback_accounts=accounts[1:],
        fallback_after=fallback_after,
        profile=profile,
        challenge=challenge,
        key_type=key_type or KeyType.ECDSA_P256,
        reuse_key=bool(reuse_key),
        renew_before=renew_before,
        reload=reload,
        outputs=outputs,
        key_group=key_group,
        keep_versions=keep,
        reload_targets=target_refs,
        probes=probes,
        probe_deadline_seconds=15.0 if probe_deadline is None else probe_deadline,
    )


def _target_refs(
    ctx: _Ctx, value: object, path: str, defined: Sequence[str] | None
) -> tuple[str, ...] | None:
    """``services.<svc>.reload_targets``: names of defined targets, each listed once.

    ``defined`` is None when ``[reload_targets]`` itself was malformed (already reported): the
    names cannot be checked then, and saying each one is missing would only add noise.
    """
    if not isinstance(value, list | tuple):
        ctx.add(path, f"expected an array of [reload_targets.<name>] names, got {_kind(value)}")
        return None
    known = None if defined is None else frozenset(defined)
    names: list[str] = []
    first_index: dict[str, int] = {}
    ok = True
    for index, item in enumerate(value):
        where = _item(path, index)
        name = _check_string(ctx, item, where)
        if name is None:
            ok = False
            continue
        if name in first_index:
            ctx.add(where, f"{_show(name)} is listed twice (also at index {first_index[name]})")
            ok = False
            continue
        first_index[name] = index
        names.append(name)
        if known is None or name in known:
            continue
        ok = False
        message = f"{_show(name)} does not name a [reload_targets.<name>] section"
        suggestion = _suggest(name, list(defined or ()))
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        elif defined:
            message += f"; defined: {', '.join(_show(n) for n in defined)}"
        else:
            message += "; none is defined"
        ctx.add(where, message)
    return tuple(names) if ok else None


def _account(
    ctx: _Ctx, table: Mapping[str, Any], path: str, acme_names: Sequence[str]
) -> tuple[str, ...] | None:
    where = _join(path, "account")
    if isinstance(table.get("account"), list):  # CA fallback: accounts tried in order
        return config_accounts.account_list(ctx.add, table["account"], where, acme_names)
    if "account" not in table:
        if len(acme_names) == 1:
            return (acme_names[0],)
        if len(acme_names) > 1:
            ctx.add(
                where,
                "missing required key 'account': there is more than one [acme.<name>] section, "
                f"so say which to use: {', '.join(_show(n) for n in acme_names)}",
            )
        return None  # no [acme] at all: reported once at "acme"
    account = _string(ctx, table, "account", path)
    if account is None or account in acme_names:
        return None if account is None else (account,)
    message = f"account {_show(account)} does not name an [acme.<name>] section"
    suggestion = _suggest(account, acme_names)
    if suggestion is not None:
        message += f"; did you mean {suggestion!r}?"
    elif acme_names:
        message += f"; defined: {', '.join(_show(n) for n in acme_names)}"
    ctx.add(where, message)
    return None


def _domain_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS name we can get a certificate for over http-01, or None."""
    if name.startswith("*."):
        return "wildcard names are not supported: http-01 cannot validate them"
    # Check ASCII before lower(): "\u212a".lower() is an ASCII "k".
    if not name.isascii():
        return "must be ASCII; write internationalised names in their punycode (xn--) form"
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return "IP addresses are not supported; give a DNS name"
    lowered = name.lower()
    if lowered.endswith("."):
        return "must not end with a dot"
    if len(lowered) > 253:
        return "longer than 253 characters"
    labels = lowered.split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            return (
                f"label {_show(label)} is not valid: labels are 1-63 letters, digits or "
                "hyphens and do not start or end with a hyphen"
            )
    if labels[-1].isdigit():
        return "the last label must not be all digits"
    return None


def _identifier_problem(name: str) -> str | None:
    """Why ``name`` cannot be a certificate identifier (a DNS name, ``*.`` wildcard or IP
    address; which challenge can validate it is checked later), or None."""
    if name.isascii() and "%" in name and identifiers.is_ip(name.split("%", 1)[0]):
        return "a scoped IPv6 address (with a %zone) cannot be validated by a CA"
    ip = identifiers.ip_of(name) if name.isascii() else None
    if ip is not None:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address; write the IPv4 address {ip.ipv4_mapped}"
        if ip.is_unspecified or ip.is_multicast:
            return "not a unicast address"
        return None
    if name.startswith("*."):
        return _domain_problem(name[2:])
    return _domain_problem(name)


def _challenge_problem(name: str, kind: str) -> str | None:
    """Why challenge type ``kind`` cannot validate identifier ``name``, or None (RFC 8738 §7:
    no DNS-01 for an address; RFC 8555 §7.1.3: only DNS-01 for a wildcard)."""
    if identifiers.is_ip(name) and kind == "dns-01":
        return "is an IP address, which dns-01 cannot validate; use http-01 or tls-alpn-01"
    if name.startswith("*.") and kind != "dns-01":
        return (
            f"is a wildcard name, which only dns-01 can validate, not {kind}; set the "
            'challenge\'s type = "dns-01" with a provider'
        )
    return None


def _identifiers_for(ctx: _Ctx, names: Sequence[str], kind: str, path: str) -> None:
    for index, name in enumerate(names):
        problem = _challenge_problem(name, kind)
        if problem is not None:
            ctx.add(_item(path, index), f"{_show(name)} {problem} (see the service's challenge)")


def _domains(ctx: _Ctx, value: object, path: str) -> tuple[str, ...] | None:
    if not isinstance(value, list | tuple):
        ctx.add(path, f"expected an array of DNS names, got {_kind(value)}")
        return None
    if not value:
        ctx.add(path, "must list at least one DNS name")
        return None
    if len(value) > MAX_DOMAINS:
        ctx.add(path, f"at most {MAX_DOMAINS} names per certificate, got {len(value)}")
        return None
    names: list[str] = []
    first_index: dict[str, int] = {}
    ok = True
    for index, item in enumerate(value):
        where = _item(path, index)
        if not isinstance(item, str):
            ctx.add(where, f"expected a DNS name string, got {_kind(item)}")
            ok = False
            continue
        problem = _identifier_problem(item)
        if problem is not None:
            ctx.add(where, f"{_show(item)} is not a valid DNS name or IP address: {problem}")
            ok = False
            continue
        lowered = identifiers.normalise(item)
        if lowered in first_index:
            ctx.add(where, f"{_show(item)} is listed twice (also at index {first_index[lowered]})")
            ok = False
            continue
        first_index[lowered] = index
        names.append(lowered)
    return tuple(names) if ok else None


def _retry_ladder(ctx: _Ctx, table: Mapping[str, Any], path: str) -> tuple[timedelta, ...] | None:
    if "retry_ladder" not in table:
        return None
    where = _join(path, "retry_ladder")
    value = table["retry_ladder"]
    if not isinstance(value, list) or not value or len(value) > MAX_LADDER_STEPS:
        ctx.add(
            where,
            f"expected a list of 1 to {MAX_LADDER_STEPS} durations like '1m', got {_kind(value)}",
        )
        return None
    steps = [_duration_value(ctx, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if any(step is None for step in steps):
        return None
    return tuple(step for step in steps if step is not None)


def _renew_before(ctx: _Ctx, table: Mapping[str, Any], path: str) -> timedelta | None:
    if "renew_before" not in table:
        return None
    return _duration_value(ctx, table["renew_before"], _join(path, "renew_before"))


def _duration_value(ctx: _Ctx, value: object, where: str) -> timedelta | None:
    expected = "a duration like '90s', '30m', '12h' or '10d'"
    if not isinstance(value, str):
        ctx.add(where, f"expected {expected}, got {_kind(value)}")
        return None
    match = _DURATION_RE.fullmatch(value)
    if match is None:
        ctx.add(where, f"expected {expected}, got {_show(value)}")
        return None
    digits, unit = match.groups()
    # Compare digit counts first: int() of thousands of digits is refused and timedelta overflows.
    seconds = int(digits) * _DURATION_UNITS[unit] if len(digits) <= 12 else None
    if seconds is None or seconds > MAX_RENEW_BEFORE.total_seconds():
        ctx.add(where, f"must be at most {MAX_RENEW_BEFORE.days}d, got {_show(value)}")
        return None
    if seconds == 0:
        ctx.add(where, "must be greater than zero")
        return None
    return timedelta(seconds=seconds)


# --------------------------------------------------------------------------- challenge


def _challenge(ctx: _Ctx, raw: object, path: str) -> Challenge | None:
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _CHALLENGE_KEYS)
    before = len(ctx.problems)

    kind = _string(ctx, table, "type", path)
    if kind == "dns-01":
        from rotatord import config_dns  # it imports this module back

        dns01 = config_dns.challenge(ctx, table, path)
        return dns01 if len(ctx.problems) == before else None
    if kind is not None and kind not in ("http-01", "tls-alpn-01"):
        ctx.add(
            _join(path, "type"),
            f"supported types are 'http-01', 'tls-alpn-01' and 'dns-01', got {_show(kind)}",
        )
    if "provider" in table:
        ctx.add(_join(path, "provider"), "'provider' belongs to dns-01 (type = \"dns-01\")")
    if kind == "tls-alpn-01" and "webroot" in table:
        ctx.add(
            _join(path, "webroot"),
            "tls-alpn-01 is answered by rotatord's own responder ('listen'); 'webroot' is for "
            "http-01",
        )

    if "listen" in table and "webroot" in table:
        ctx.add(
            path,
            "set exactly one of 'listen' (answer from rotatord's own listener) or 'webroot' "
            "(write tokens for an existing web server), not both",
        )

    challenge: Challenge = Http01Standalone()
    listen = _string(ctx, table, "listen", path)
    if listen is not None:
        parsed = _parse_listen(listen)
        if isinstance(parsed, str):
            ctx.add(_join(path, "listen"), parsed)
        else:
            challenge = Http01Standalone(host=parsed[0], port=parsed[1])
    webroot = _path(ctx, table, "webroot", path)
    if webroot is not None:
        challenge = Http01Webroot(webroot=webroot)
    if kind == "tls-alpn-01" and isinstance(challenge, Http01Standalone):
        challenge = TlsAlpn01(host=challenge.host, port=challenge.port if listen else 443)
    return challenge if len(ctx.problems) == before else None


def _parse_listen(value: str) -> tuple[str, int] | str:
    """A listen address ``host:port`` (``[v6]:port``) as a pair, or what is wrong with it."""
    return _parse_host_port(
        value,
        "'0.0.0.0:80', '127.0.0.1:5002' or '[::1]:80'",
        "missing host; use '0.0.0.0:80' to listen on all interfaces",
    )


def _parse_host_port(value: str, examples: str, missing_host: str) -> tuple[str, int] | str:
    """``host:port`` (``[v6]:port``) as a pair, or a message saying what is wrong."""
    expected = f"expected host:port such as {examples}"
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            return f"{expected}, got {_show(value)}"
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{_show(host)} in brackets is not an IPv6 address"
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            return f"{expected}, got {_show(value)}"
        if ":" in host:
            return "write IPv6 addresses in brackets, e.g. '[::1]:80'"
        if not host:
            return missing_host
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if _domain_problem(host) is not None:
                return f"{_show(host)} is not an IPv4 address or host name"
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        return f"port must be a number from 1 to 65535, got {_show(port_text)}"
    return host, int(port_text)


# --------------------------------------------------------------------------- reload actions


def _array_of_tables(ctx: _Ctx, value: object, path: str) -> list[object] | None:
    if isinstance(value, list | tuple):
        return list(value)
    header = f"[[{path}]]"
    ctx.add(path, f"expected an array of tables (write each entry as {header}), got {_kind(value)}")
    return None


def _each_table(
    ctx: _Ctx, value: object, path: str, parse: Callable[[_Ctx, object, str], _T | None]
) -> tuple[_T, ...]:
    """Parse every entry of an array of tables; entries with problems are left out."""
    parsed = (
        parse(ctx, raw, _item(path, i))
        for i, raw in enumerate(_array_of_tables(ctx, value, path) or [])
    )
    return tuple(item for item in parsed if item is not None)


def _reloads(ctx: _Ctx, value: object, path: str) -> tuple[ReloadAction, ...]:
    return _each_table(ctx, value, path, _reload)


def _reload(ctx: _Ctx, raw: object, path: str) -> ReloadAction | None:
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _RELOAD_KEYS)
    before = len(ctx.problems)

    kinds = [
        kind
        for kind, present in (
            ("command", "command" in table),
            ("signal + pid_file", "signal" in table or "pid_file" in table),
            ("systemd_unit", "systemd_unit" in table),
        )
        if present
    ]
    if not kinds:
        ctx.add(path, "set one of 'command', 'signal' + 'pid_file', or 'systemd_unit'")
    elif len(kinds) > 1:
        ctx.add(path, f"set exactly one kind of reload action; found {' and '.join(kinds)}")
    if "env" in table and "command" not in table:
        ctx.add(_join(path, "env"), "'env' only applies to a 'command' reload action")

    # Validate every field present even when the kind is ambiguous, so all problems show at once.
    argv = _argv(ctx, table["command"], _join(path, "command")) if "command" in table else None
    env = _env(ctx, table["env"], _join(path, "env")) if "env" in table else {}
    timeout = _seconds(ctx, table, "timeout", path, MAX_TIMEOUT_SECONDS)
    sig: signal.Signals | None = None
    if "signal" in table:
        sig = _signal(ctx, table["signal"], _join(path, "signal"))
    pid_file = _path(ctx, table, "pid_file", path)
    if "signal" in table and "pid_file" not in table:
        ctx.add(
            _join(path, "pid_file"),
            "missing required key 'pid_file': a signal needs the file holding the target's pid",
        )
    unit = _unit(ctx, table, path)
    executable = _path(ctx, table, "executable", path)
    if "executable" in table and "pid_file" not in table:
        ctx.add(_join(path, "executable"), "'executable' only applies to a 'signal' reload action")

    if len(ctx.problems) != before:
        return None
    action: ReloadAction
    if argv is not None:
        action = CommandReload(argv=argv, env=MappingProxyType(env))
    elif pid_file is not None:
        action = SignalReload(pid_file=pid_file, signal=sig or signal.SIGHUP, executable=executable)
    elif unit is not None:
        action = SystemdReload(unit=unit)
    else:  # unreachable: a missing kind was reported above
        return None
    if timeout is not None:
        action = dataclasses.replace(action, timeout_seconds=timeout)
    return action


def _reload_target(ctx: _Ctx, name: str, raw: object, path: str) -> ReloadTarget | None:
    """``[reload_targets.<name>]``: a shared program's reload actions and its place in the order."""
    name_ok = _check_name(
        ctx, name, path, "[reload_targets.<name>]", "services and logs refer to it by this name"
    )
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _TARGET_KEYS)
    before = len(ctx.problems)

    order = _int(ctx, table, "order", path, -MAX_TARGET_ORDER, MAX_TARGET_ORDER)
    actions: tuple[ReloadAction, ...] = ()
    where = _join(path, "actions")
    if _required(ctx, table, "actions", path, f"one or more reload actions, each as [[{where}]]"):
        raw_actions = table["actions"]
        if isinstance(raw_actions, list | tuple) and not raw_actions:
            ctx.add(where, f"must list at least one reload action, each as [[{where}]]")
        actions = _reloads(ctx, raw_actions, where)

    if not name_ok or len(ctx.problems) != before:
        return None
    return ReloadTarget(name=name, actions=actions, order=0 if order is None else order)


def _argv(ctx: _Ctx, value: object, path: str) -> tuple[str, ...] | None:
    if isinstance(value, str):
        ctx.add(
            path,
            "expected an argv list like ['/usr/sbin/nginx', '-s', 'reload'], never a shell "
            "string: commands are run without a shell",
        )
        return None
    argv = _string_list(ctx, value, path, "non-empty strings (argv)")
    if argv is None:
        return None
    if not argv:
        ctx.add(path, "must not be empty: give at least the program to run")
        return None
    # A program given as a relative path is relative to the config file, like every other path;
    # a bare name ("systemctl") is looked up in PATH when it runs.
    if "/" in argv[0]:
        argv[0] = str(ctx.resolve(argv[0]))
    return tuple(argv)


def _env(ctx: _Ctx, value: object, path: str) -> dict[str, str]:
    table = _table(ctx, value, path)
    env: dict[str, str] = {}
    for key, item in (table or {}).items():
        where = _join(path, key)
        if not _ENV_NAME_RE.fullmatch(key):
            ctx.add(where, f"{_show(key)} is not a valid environment variable name")
            continue
        if not isinstance(item, str):
            ctx.add(where, f"expected a string value, got {_kind(item)}")
        elif "\x00" in item:
            ctx.add(where, "must not contain a NUL character")
        else:
            env[key] = item
    return env


def _signal(ctx: _Ctx, value: object, path: str) -> signal.Signals | None:
    expected = "a signal name such as 'HUP', 'USR1' or 'SIGUSR2'"
    if not isinstance(value, str):
        ctx.add(path, f"expected {expected}, got {_kind(value)}")
        return None
    # Check ASCII before upper(): "\u017f".upper() is an ASCII "S".
    name = value.strip().upper() if value.isascii() else ""
    if name and not name.startswith("SIG"):
        name = "SIG" + name
    sig = signal.Signals.__members__.get(name)
    if sig is None:
        ctx.add(path, f"unknown signal {_show(value)}; expected {expected}")
        return None
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        ctx.add(path, f"{sig.name} cannot be caught, so it cannot ask a process to reload")
        return None
    return sig


def _unit(ctx: _Ctx, table: Mapping[str, Any], path: str) -> str | None:
    unit = _string(ctx, table, "systemd_unit", path)
    # The name goes into `systemctl reload UNIT`: a leading "-" would be read as an option.
    if unit is not None and not _UNIT_RE.fullmatch(unit):
        ctx.add(
            _join(path, "systemd_unit"),
            f"{_show(unit)} is not a systemd unit name such as 'nginx.service' "
            "(letters, digits and ':_.\\@-', not starting with '-')",
        )
        return None
    return unit


# --------------------------------------------------------------------------- probes


def _probes(ctx: _Ctx, value: object, path: str) -> tuple[ProbeSpec, ...]:
    return _each_table(ctx, value, path, _probe)


def _probe(ctx: _Ctx, raw: object, path: str) -> ProbeSpec | None:
    """``[[services.<svc>.probe]]``: one TLS endpoint, by ``address`` or ``unix_socket``."""
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _PROBE_KEYS)
    before = len(ctx.problems)

    if "address" in table and "unix_socket" in table:
        ctx.add(path, "set exactly one of 'address' (host:port) or 'unix_socket' (a path)")
    elif "address" not in table and "unix_socket" not in table:
        ctx.add(
            path,
            "set one of 'address' (host:port such as '127.0.0.1:8443') or 'unix_socket' "
            "(the path of the server's TLS socket)",
        )

    host: str | None = None
    port: int | None = None
    address = _string(ctx, table, "address", path)
    if address is not None:
        parsed = _parse_probe_address(address)
        if isinstance(parsed, str):
            ctx.add(_join(path, "address"), parsed)
        else:
            host, port = parsed

    unix_socket = _path(ctx, table, "unix_socket", path)
    if unix_socket is not None:
        _check_socket_path(ctx, unix_socket, _join(path, "unix_socket"))

    sni: str | None = None
    raw_sni = _string(ctx, table, "sni", path)
    if raw_sni is not None:
        problem = _sni_problem(raw_sni)
        if problem is None:
            sni = raw_sni.lower()
        else:
            ctx.add(_join(path, "sni"), f"{_show(raw_sni)} is not a valid DNS name: {problem}")

    if len(ctx.problems) != before:
        return None
    return ProbeSpec(host=host, port=port, unix_socket=unix_socket, sni=sni)


def _parse_probe_address(value: str) -> tuple[str, int] | str:
    """An address to connect to, ``host:port`` (``[v6]:port``), or what is wrong with it."""
    parsed = _parse_host_port(
        value,
        "'127.0.0.1:8443', 'localhost:443' or '[::1]:8443'",
        "missing host; give the address the server listens on, e.g. '127.0.0.1:8443'",
    )
    if isinstance(parsed, str):
        return parsed
    try:
        unspecified = ipaddress.ip_address(parsed[0]).is_unspecified
    except ValueError:  # a host name
        unspecified = False
    if unspecified:
        return (
            f"{_show(parsed[0])} means 'all interfaces' and cannot be connected to; "
            "give a specific address such as '127.0.0.1:8443'"
        )
    return parsed


def _sni_problem(name: str) -> str | None:
    """Why ``name`` cannot be sent as TLS SNI (RFC 6066: a DNS host name), or None."""
    if name.startswith("*."):
        return "SNI names one host; wildcards are not allowed"
    return _domain_problem(name)


# --------------------------------------------------------------------------- outputs


def _outputs(ctx: _Ctx, value: object, path: str) -> tuple[OutputSpec, ...]:
    return _each_table(ctx, value, path, _output)


def _output(ctx: _Ctx, raw: object, path: str) -> OutputSpec | None:
    table = _table(ctx, raw, path)
    if table is None:
        return None
    _known_keys(ctx, table, path, _OUTPUT_KEYS)
    before = len(ctx.problems)

    file: Path | None = None
    if _required(ctx, table, "path", path, "where to write the file"):
        file = _path(ctx, table, "path", path)
    chosen = _choice(ctx, table, "format", path, OutputFormat)
    fmt = chosen or OutputFormat.FULLCHAIN
    format_ok = chosen is not None or "format" not in table
    if file is not None:
        _check_output_path(ctx, file, _join(path, "path"), fmt is OutputFormat.DIRECTORY)

    secret = fmt in SECRET_FORMATS
    mode = 0o600 if secret else 0o644
    if "mode" in table:
        parsed = _mode(ctx, table["mode"], _join(path, "mode"))
        if parsed is not None:
            mode = parsed
            if secret and mode & 0o007:
                holder = (
                    "in a directory output 'mode' applies to privkey.pem, which"
                    if fmt is OutputFormat.DIRECTORY
                    else f"a {fmt.value} output"
                )
                ctx.add(
                    _join(path, "mode"),
                    f"{holder} holds the private key, so it must grant nothing to "
                    f"others; got {mode:04o} (try 0600 or 0640)",
                )
    owner = _string(ctx, table, "owner", path)
    if owner is not None and not _user_exists(owner):
        ctx.add(_join(path, "owner"), f"user {_show(owner)} does not exist on this system")
    group = _group(ctx, table, "group", path)
    password_file = _password_file(ctx, table, path, fmt, format_ok)

    if file is None or len(ctx.problems) != before:
        return None
    return OutputSpec(
        path=file, format=fmt, mode=mode, owner=owner, group=group, password_file=password_file
    )


def _password_file(
    ctx: _Ctx, table: Mapping[str, Any], path: str, fmt: OutputFormat, format_ok: bool
) -> Path | None:
    """The PKCS#12 ``password_file``: required for pkcs12, refused for every other format.

    Only ``stat()``-ed: the password is read by the output writer, never here, so it cannot end
    up in a message. ``format_ok`` is False when ``format`` itself was invalid (reported), in
    which case whether the key belongs cannot be known and nothing more is said about it.
    """
    where = _join(path, "password_file")
    if fmt is OutputFormat.PKCS12:
        if not _required(ctx, table, "password_file", path, "a file holding the PKCS#12 password"):
            return None
        password_file = _path(ctx, table, "password_file", path)
        if password_file is None or not _existing_file(ctx, where, password_file):
            return None
        return password_file
    if "password_file" in table and format_ok:
        ctx.add(
            where,
            f"'password_file' only applies to format = 'pkcs12', not {fmt.value!r}",
        )
    return None


def _mode(ctx: _Ctx, value: object, path: str) -> int | None:
    expected = "an octal mode string such as '0640', or an octal integer such as 0o640"
    if isinstance(value, str):
        match = _MODE_RE.fullmatch(value)
        if match is None:
            ctx.add(path, f"expected {expected}, got {_show(value)}")
            return None
        mode = int(match.group(1), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
        if not 0 <= mode <= 0o777:
            # Usually `mode = 640`, which TOML reads as decimal 640 (0o1200). Special bits are
            # refused anyway, so any integer above 0o777 is this mistake or a meaningless mode.
            ctx.add(
                path,
                f"{_show(value)} is not a file mode (TOML reads it as a decimal number); "
                f"expected {expected}",
            )
            return None
    else:
        ctx.add(path, f"expected {expected}, got {_kind(value)}")
        return None
    if mode > 0o777:
        ctx.add(path, f"setuid, setgid and sticky bits are not allowed; got {mode:04o}")
        return None
    return mode


def _check_output_path(ctx: _Ctx, file: Path, where: str, is_directory: bool) -> None:
    """Check an output's ``path`` against state_dir and against every output seen so far.

    A ``directory`` output owns everything below its path (versions, a ``current`` symlink), so
    no other output may be inside it, whichever of the two comes first in the file.
    """
    if not file.is_absolute():
        ctx.add(where, "must be an absolute path")
    # Two outputs writing one file would overwrite each other on every rotation.
    if file in ctx.output_paths:
        ctx.add(where, f"{_show_path(file)} is also written by {ctx.output_paths[file]}")
    else:
        # Both checks walk this path's own parents (``a.is_relative_to(b)`` is ``b == a or b in
        # a.parents``), so each output costs its depth, not the number of outputs before it.
        parts = file.parts
        anchored = 1 if file.anchor else 0  # "/" is a parent of "/a"; "" is not (only of "a")
        parents = [parts[:k] for k in range(len(parts) - 1, anchored - 1, -1)]
        owners = [ctx.output_dir_parts[p] for p in parents if p in ctx.output_dir_parts]
        if len(owners) > 1:  # nested directory outputs: report in declaration order
            order = {d: i for i, d in enumerate(ctx.output_dirs)}
            owners.sort(key=order.__getitem__)
        for directory in owners:
            ctx.add(
                where,
                f"{_show_path(file)} is inside {_show_path(directory)}, the directory "
                f"output of {ctx.output_dirs[directory]}, which owns everything below it",
            )
        if is_directory:
            for other_file in ctx.outputs_below.get(parts, ()):
                ctx.add(
                    where,
                    f"this directory output would own {_show_path(other_file)}, which is "
                    f"written by {ctx.output_paths[other_file]}",
                )
            ctx.output_dirs[file] = where
            ctx.output_dir_parts[parts] = file
        ctx.output_paths[file] = where
        for parent in parents:
            below = ctx.outputs_below.get(parent)
            if below is None:
                ctx.outputs_below[parent] = [file]
            else:
                below.append(file)
    if _is_within(file, ctx.state_dir):
        ctx.add(
            where,
            f"{_show_path(file)} is inside daemon.state_dir, which only the store writes; "
            "point consumers at <state_dir>/services/<name>/current instead",
        )
    elif is_directory and ctx.state_dir.is_relative_to(file):
        ctx.add(
            where,
            f"daemon.state_dir {_show_path(ctx.state_dir)} is inside this directory output; "
            "give the output a directory of its own",
        )


def _is_within(path: Path, other: Path) -> bool:
    """``path.is_relative_to(other)`` without building Paths (a tenth of the time)."""
    theirs = other.parts
    if not theirs:
        return not path.anchor
    return path.parts[: len(theirs)] == theirs
