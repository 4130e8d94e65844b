"""Config fuzzing: hypothesis writes thousands of TOML *files* (valid, near-valid and hostile) and
checks that loading one yields a Config or a ConfigError whose every problem names the file and
a dotted key path, never another exception; and that a running daemon fed such files on hot
reload never raises or dies, keeps its old config on rejection and audits ``config_rejected``.

Documents are built in two layers, so both the validator and the TOML reader are exercised:
structural mutations of a valid base (drop, add, retype, rename and duplicate keys; huge ints,
long strings, ``../`` names, unicode, NUL, deep nesting) and then textual ones (delete, duplicate
or swap lines, insert syntax debris, truncate, CRLF, invalid UTF-8, a BOM).
"""

from __future__ import annotations

import copy
import os
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rotatord.clock import SystemClock
from rotatord.config import SAFE_NAME_RE, load_config
from rotatord.core.errors import ConfigError, ControlError
from rotatord.core.model import Config
from rotatord.daemon import Daemon, IssuerCache, Planner
from rotatord.daemon.loop import ServiceLoop
from rotatord.deploy.reload import SubprocessReloader
from rotatord.observe.audit import AuditLog
from rotatord.rotation import Rotator
from rotatord.runtime import control
from rotatord.runtime.systemd import SdNotifier
from tests.daemon_harness import DaemonProcess, Record, read_audit

#: How many documents the load_config fuzz test checks (the CI requirement is at least 2,000).
FUZZ_EXAMPLES: Final = 2000
#: How many documents the in-process daemon receives on hot reload.
RELOAD_EXAMPLES: Final = 200

# Messages of problems that concern the whole file (it cannot be read or parsed), which have no
# key path; every other problem must name one.
_FILE_LEVEL: Final = ("invalid TOML", "config file is not valid UTF-8", "cannot read config file")
_SEGMENT: Final = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[[0-9]+\])*'
#: A dotted key path as config.py writes it: ``services.web.reload[1].timeout``,
#: ``services."../x".domains``.
DOTTED_PATH: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")


# --------------------------------------------------------------------------------------------
# A TOML writer that can also write what no serializer would
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A value written verbatim: numbers Python cannot print (5,000 digits), deep nesting, junk."""

    text: str


def _escape(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            # Control characters are legal only escaped; a surrogate escape is illegal TOML,
            # which is one more way to be near-valid.
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _escape(key)


def _value(value: object) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__}")


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """Write ``doc`` as TOML: scalars and inline values first, then sub-tables and table arrays."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in nested:
        path = (*prefix, key)
        header = ".".join(_key(k) for k in path)
        if isinstance(value, dict):
            out += f"\n[{header}]\n" + to_toml(value, path)
        else:
            for item in value:
                out += f"\n[[{header}]]\n" + to_toml(item, path)
    return out


# --------------------------------------------------------------------------------------------
# The valid base and its mutations
# --------------------------------------------------------------------------------------------


def base_doc(directory: Path) -> dict[str, Any]:
    """A valid config using every section; its files live in ``directory``."""
    return {
        "daemon": {
            "state_dir": "state",
            "audit_log": "audit.jsonl",
            "control_socket": str(directory / "c.sock"),
            "keep_versions": 3,
            "max_concurrent": 4,
            "log_format": "json",
            "retry_ladder": ["1m", "10m", "6h"],
            "control_allowed_uids": [0],
        },
        "acme": {
            "ca": {
                "directory": "https://127.0.0.1:14000/dir",
                "contact": ["mailto:ops@example.test"],
                "ca_bundle": "ca.pem",
                "timeout": 10,
                "order_deadline": 120.5,
            },
        },
        "reload_targets": {
            "nginx": {"order": 10, "actions": [{"command": ["/bin/true"], "timeout": 5}]},
        },
        "services": {
            "web": {
                "domains": ["web.example.test", "www.example.test"],
                "account": "ca",
                "key_type": "ecdsa-p256",
                "reuse_key": False,
                "renew_before": "10d",
                "keep_versions": 4,
                "reload_targets": ["nginx"],
                "probe_deadline": 10,
                "challenge": {"type": "http-01", "listen": "127.0.0.1:5002"},
                "reload": [{"command": ["/bin/true", "web"], "env": {"A": "b"}, "timeout": 5}],
                "outputs": [{"path": str(directory / "out" / "web.pem"), "format": "combined"}],
                "probe": [{"address": "127.0.0.1:8443", "sni": "web.example.test"}],
            },
            "api": {
                "domains": ["api.example.test"],
                "key_type": "rsa-2048",
                "challenge": {"webroot": "webroot"},
                "reload": [{"signal": "HUP", "pid_file": "run/nginx.pid"}],
            },
        },
    }


KeyPath = tuple[str | int, ...]


def _paths(node: object, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every key path in ``node`` (tables and array items included)."""
    found: list[KeyPath] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: dict[str, Any], path: KeyPath) -> Any:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    return node


_HOSTILE_NAMES: Final = [
    "..", ".", "../etc", "a/b", "/abs", "", " ", "-lead", ".hidden", "a\x00b", "tab\there",
    "ÿ", "名前", "😀", "\u202eevil", "x" * 63, "x" * 64, "x" * 300, "services", "web", "a.b",
    "con", "C:\\x", "$(reboot)", "%s%n", "\ufeff", "\u0085", "\\",
]  # fmt: skip

_HOSTILE_SCALARS: Final = [
    Raw("1" * 5000),  # more digits than Python turns into an int by default
    Raw("-" + "9" * 4301),
    Raw("0x" + "f" * 3000),
    Raw("1e999999"),
    Raw("-1e400"),
    Raw("nan"),
    Raw("-inf"),
    Raw("0o777"),
    Raw("0b" + "1" * 200),
    Raw("1_000_000"),
    2**63 - 1,
    -(2**63),
    0,
    -1,
    65536,
    "",
    " ",
    "\x00",
    "a\x00b",
    "../../../../etc/passwd",
    "/",
    "..",
    "x" * 100_000,
    "\u202egnp.exe",
    "😀" * 50,
    "\ud800",
    "名前.example.test",
    "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
    "${HOME}",
    "\n",
    "127.0.0.1:99999",
    "[::1]:0",
    "0.0.0.0:80",
    "http://evil.example/dir",
    "file:///etc/passwd",
    "mailto:",
    "0640",
    "9999",
    "10d",
    "0s",
    "99999999999999999999d",
    "KILL",
    "SIGKILL",
    "pkcs12",
    "directory",
    "ecdsa-p384",
    True,
    False,
    1.5,
    -0.0,
    datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    date(1979, 5, 27),
    dtime(7, 32),
    [],
    {},
    [[]],
    [1, "a"],
    {"command": ["/bin/true"]},
    [{"signal": "HUP"}],
]

_NAMES: Final = st.sampled_from(_HOSTILE_NAMES) | st.text(max_size=8)
_SCALARS: Final = (
    st.sampled_from(_HOSTILE_SCALARS)
    | st.integers()
    | st.floats()
    | st.text(max_size=16)
    | st.booleans()
)
_VALUES: Final = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=8,
)


def _deep(depth: int, kind: str) -> Raw:
    """An array or inline table nested ``depth`` deep (deeper than the TOML reader recurses)."""
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    return Raw("{a = " * depth + "1" + "}" * depth)


_DEEP: Final = st.builds(
    _deep, st.sampled_from([2, 50, 900, 3000]), st.sampled_from(["array", "table"])
)


@dataclass(frozen=True)
class Mutation:
    """One structural edit: ``op`` at the ``at``-th key path of the document as it is then."""

    op: str  # set | delete | rename | add | duplicate_service
    at: int
    value: object = None
    name: str = ""

    def apply(self, doc: dict[str, Any]) -> None:
        paths = _paths(doc)
        if self.op == "duplicate_service":
            services = doc.get("services")
            if isinstance(services, dict) and services:
                first = next(iter(services.values()))
                services[self.name] = copy.deepcopy(first)
            return
        if not paths:
            doc[self.name or "x"] = self.value
            return
        path = paths[self.at % len(paths)]
        parent = _parent(doc, path)
        key = path[-1]
        if self.op == "set":
            parent[key] = self.value
        elif self.op == "delete":
            del parent[key]
        elif self.op == "rename" and isinstance(parent, dict):
            parent[self.name] = parent.pop(key)
        elif self.op == "add":
            target = parent[key]
            if isinstance(target, dict):
                target[self.name] = self.value
            elif isinstance(target, list):
                target.append(self.value)
            else:
                parent[key] = [target, self.value]


_MUTATIONS: Final = st.one_of(
    st.builds(Mutation, st.just("set"), st.integers(0, 10**6), _VALUES | _DEEP),
    st.builds(Mutation, st.just("delete"), st.integers(0, 10**6)),
    st.builds(Mutation, st.just("rename"), st.integers(0, 10**6), st.none(), _NAMES),
    st.builds(Mutation, st.just("add"), st.integers(0, 10**6), _VALUES, _NAMES),
    st.builds(Mutation, st.just("duplicate_service"), st.just(0), st.none(), _NAMES),
)

_DEBRIS: Final = [
    "=", "==", "[", "]", "[[", "]]", '"', "'''", '"""', "{", "}", ",", "\\", "\\u", "#", "\x00",
    "\x7f", "\ufeff", "a.b.c = 1", "[services]", "[services.web]", "[daemon]", "[[services]]",
    "services.web.domains = []", "x = 1\nx = 2", "\n[acme.ca]\n", "key = \"unterminated",
]  # fmt: skip


@dataclass(frozen=True)
class TextEdit:
    """One textual edit of the serialized document (positions are taken modulo its length)."""

    op: str  # delete_line | duplicate_line | swap_lines | insert | truncate | crlf
    at: int
    other: int = 0
    text: str = ""

    def apply(self, text: str) -> str:
        lines = text.split("\n")
        i, j = self.at % len(lines), self.other % len(lines)
        if self.op == "delete_line":
            del lines[i]
        elif self.op == "duplicate_line":
            lines.insert(i, lines[i])
        elif self.op == "swap_lines":
            lines[i], lines[j] = lines[j], lines[i]
        elif self.op == "insert":
            pos = self.at % (len(text) + 1)
            return text[:pos] + self.text + text[pos:]
        elif self.op == "truncate":
            return text[: self.at % (len(text) + 1)]
        elif self.op == "crlf":
            return text.replace("\n", "\r\n")
        return "\n".join(lines)


_TEXT_EDITS: Final = st.one_of(
    st.builds(
        TextEdit,
        st.sampled_from(["delete_line", "duplicate_line", "swap_lines", "truncate", "crlf"]),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    st.builds(
        TextEdit,
        st.just("insert"),
        st.integers(0, 10**6),
        st.just(0),
        st.sampled_from(_DEBRIS) | st.text(max_size=4),
    ),
)

_BAD_BYTES: Final = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]


@dataclass(frozen=True)
class Document:
    """A generated config file: the base, its structural and textual edits, and byte damage."""

    mutations: tuple[Mutation, ...]
    edits: tuple[TextEdit, ...]
    bad_bytes: tuple[int, bytes] | None
    bom: bool

    def render(self, directory: Path) -> bytes:
        doc = base_doc(directory)
        for mutation in self.mutations:
            mutation.apply(doc)
        text = to_toml(doc)
        for edit in self.edits:
            text = edit.apply(text)
        data = text.encode("utf-8", "surrogatepass")  # a stray surrogate is invalid UTF-8 too
        if self.bad_bytes is not None:
            pos = self.bad_bytes[0] % (len(data) + 1)
            data = data[:pos] + self.bad_bytes[1] + data[pos:]
        return (b"\xef\xbb\xbf" if self.bom else b"") + data


def _sometimes(strategy: st.SearchStrategy[Any], one_in: int) -> st.SearchStrategy[Any]:
    """``strategy`` about once in ``one_in`` draws, else None."""
    return st.integers(1, one_in).flatmap(lambda n: strategy if n == 1 else st.none())


DOCUMENTS: Final = st.builds(
    Document,
    st.lists(_MUTATIONS, max_size=4).map(tuple),
    _sometimes(st.lists(_TEXT_EDITS, min_size=1, max_size=2), 10).map(lambda e: tuple(e or ())),
    _sometimes(st.tuples(st.integers(0, 10**6), st.sampled_from(_BAD_BYTES)), 12),
    _sometimes(st.just(True), 24).map(bool),
)


#: Always tried first, whatever hypothesis draws: one document per hostile pattern (the first
#: path of the base document is the ``[daemon]`` table, so ``at=0`` replaces it).
EXPLICIT: Final = [
    Document((Mutation("set", 0, Raw("1" * 5000)),), (), None, False),
    Document((Mutation("set", 0, Raw("-" + "9" * 4301)),), (), None, False),
    Document((Mutation("set", 0, _deep(3000, "array")),), (), None, False),
    Document((Mutation("set", 0, _deep(3000, "table")),), (), None, False),
    Document((Mutation("duplicate_service", 0, None, "../etc"),), (), None, False),
    Document((Mutation("set", 1, "a\x00b"),), (), None, False),
    Document((), (), (40, b"\xff"), False),
    Document((), (), None, True),
]


def explicit_examples(test: Callable[[Document], None]) -> Callable[[Document], None]:
    """Apply ``@example(document=...)`` for every document of :data:`EXPLICIT`."""
    for document in reversed(EXPLICIT):
        test = example(document=document)(test)
    return test


# --------------------------------------------------------------------------------------------
# Checking one load
# --------------------------------------------------------------------------------------------


def prepare(directory: Path) -> None:
    """The files the base config refers to (config.py stat()s ca_bundle; nothing else)."""
    (directory / "ca.pem").write_text("not checked beyond existing\n")


def check_load(path: Path) -> str:
    """Load ``path``; assert the outcome is a sound Config or ConfigError; return its kind."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must list at least one problem"
        file_level = False
        for problem in exc.problems:
            assert problem.file == str(path), problem
            assert problem.message, problem
            if problem.message.startswith(_FILE_LEVEL):
                # The TOML reader's own message (it may quote a key, repr-escaped): printable.
                file_level = True
                assert str(problem).isprintable(), problem
                continue
            assert DOTTED_PATH.fullmatch(problem.path), f"no dotted path in {problem!r}"[:500]
            str(problem).encode("ascii")  # escaped by config.py: prints anywhere
        return "unreadable" if file_level else "rejected"
    assert isinstance(config, Config)
    for name in (*config.services, *config.acme, *config.reload_targets):
        # Names become directory names: a valid config never holds a traversal or hidden name.
        assert SAFE_NAME_RE.fullmatch(name), name
    assert config.daemon.state_dir.is_absolute()
    return "valid"


def test_base_document_is_valid(tmp_path: Path) -> None:
    """The unmutated base document the fuzzers start from is itself a valid config."""
    prepare(tmp_path)
    path = tmp_path / "rotatord.toml"
    path.write_bytes(Document((), (), None, False).render(tmp_path))
    assert check_load(path) == "valid"


_KNOWN_HOSTILE: Final = {
    "huge decimal int": "[daemon]\nkeep_versions = " + "1" * 5000 + "\n",
    "huge negative int": "[daemon]\nmax_concurrent = -" + "9" * 4301 + "\n",
    "deep array": "x = " + "[" * 3000 + "]" * 3000 + "\n",
    "deep inline table": "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
    "traversal service name": '[services."../etc"]\ndomains = ["a.example"]\n',
    "NUL in a path": '[daemon]\nstate_dir = "a\\u0000b"\n',
}


@pytest.mark.parametrize("name", list(_KNOWN_HOSTILE))
def test_known_hostile_documents_raise_config_error(tmp_path: Path, name: str) -> None:
    """Each hostile pattern the fuzzer draws, on its own: load_config raises only ConfigError."""
    prepare(tmp_path)
    path = tmp_path / "rotatord.toml"
    path.write_text(_KNOWN_HOSTILE[name])
    assert check_load(path) in ("rejected", "unreadable"), name


def test_fuzzed_documents_raise_only_config_error_with_paths() -> None:
    """2,000 generated TOML files: load_config returns a Config or raises ConfigError whose every
    problem names the file and (unless the file is unreadable) a dotted key path."""
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="rt-fuzz-", dir="/tmp") as tmp:
        directory = Path(tmp)
        prepare(directory)
        path = directory / "rotatord.toml"

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,  # keep .hypothesis/ out of the source tree
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(document=DOCUMENTS)
        @explicit_examples
        def run(document: Document) -> None:
            path.write_bytes(document.render(directory))
            outcomes[check_load(path)] += 1

        run()
    total = sum(outcomes.values())
    assert total >= FUZZ_EXAMPLES, outcomes
    # The generator is only useful if it reaches all three outcomes often.
    for kind in ("valid", "rejected", "unreadable"):
        assert outcomes[kind] >= total // 50, outcomes


# --------------------------------------------------------------------------------------------
# Hot reload of a daemon (in process)
# --------------------------------------------------------------------------------------------


class FakeScheduler:
    """Records what ``Daemon.reload_config`` asks of the scheduler; runs nothing."""

    def __init__(self) -> None:
        self.scheduled: list[str] = []
        self.removed: list[str] = []
        self.submitted: list[str] = []

    def schedule(self, name: str, at: datetime, trigger: str) -> None:
        self.scheduled.append(name)

    def remove(self, name: str) -> None:
        self.removed.append(name)

    def submit(self, job_id: str, fn: object) -> None:
        self.submitted.append(job_id)

    def shutdown(self, wait: bool = True) -> None:
        return None


@pytest.fixture
def reloading_daemon() -> Iterator[tuple[Daemon, Path]]:
    """A Daemon set up as ``_serve`` does (fake scheduler, no sockets), with its config file."""
    with tempfile.TemporaryDirectory(prefix="rt-rl-", dir="/tmp") as tmp:
        directory = Path(tmp)
        prepare(directory)
        path = directory / "rotatord.toml"
        path.write_bytes(Document((), (), None, False).render(directory))
        clock = SystemClock()
        daemon = Daemon(path, clock=clock, notifier=SdNotifier(None))
        daemon.config = load_config(path)
        daemon.audit = AuditLog(daemon.config.daemon.audit_log, clock, echo=False)
        daemon.issuers = IssuerCache(daemon.config, clock)
        daemon.rotator = Rotator(
            daemon.config,
            clock=clock,
            audit=daemon.audit,
            issuer_for=daemon.issuers,
            reloader=SubprocessReloader(),
            on_close=daemon.issuers.close,
        )
        scheduler = FakeScheduler()
        daemon.scheduler = scheduler  # type: ignore[assignment]
        daemon.planner = Planner(daemon.rotator, clock)
        daemon.loop = ServiceLoop(
            daemon.rotator,
            daemon.planner,
            clock,
            daemon.audit,
            scheduler.schedule,
            scheduler.submit,
        )
        try:
            yield daemon, path
        finally:
            daemon.rotator.close()
            os.close(daemon._wake_r)
            os.close(daemon._wake_w)


def test_hot_reload_of_fuzzed_documents_never_raises(
    reloading_daemon: tuple[Daemon, Path],
) -> None:
    """200 generated files fed to a daemon's reload_config: it never raises, keeps the old config
    (and audits config_rejected) on rejection, and its config is always a valid Config."""
    daemon, path = reloading_daemon
    original_daemon_spec = daemon.config.daemon
    audit_path = daemon.config.daemon.audit_log
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=RELOAD_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(document=DOCUMENTS)
    @explicit_examples
    def run(document: Document) -> None:
        before = daemon.config
        path.write_bytes(document.render(path.parent))
        reply = daemon.reload_config()
        last = read_audit(audit_path)[-1]
        assert isinstance(daemon.config, Config)
        if reply["ok"]:
            outcomes["loaded"] += 1
            assert last["event"] == "config_loaded"
            # State dir, audit log and socket are fixed for the life of the process.
            assert daemon.config.daemon == original_daemon_spec
            assert daemon.rotator.config is daemon.config
        else:
            outcomes["rejected"] += 1
            assert daemon.config is before, "a rejected file must leave the old config in force"
            assert last["event"] == "config_rejected"
            assert last["problems"] == reply["problems"]
            assert reply["problems"] and all(str(path) in p for p in reply["problems"])

    run()
    assert outcomes["loaded"] and outcomes["rejected"], outcomes


# --------------------------------------------------------------------------------------------
# Hot reload of the real daemon process
# --------------------------------------------------------------------------------------------

_DAEMON_HOSTILE: Final = [
    ("huge int", "keep_versions = " + "1" * 5000),
    ("deep nesting", "keep_versions = " + "[" * 3000 + "]" * 3000),
    ("wrong type", 'keep_versions = "three"'),
    ("syntax error", "keep_versions = = 3"),
    ("NUL escape", 'log_format = "json\\u0000"'),
]


def _reloads(records: list[Record]) -> int:
    return sum(1 for r in records if r.get("event") in ("config_loaded", "config_rejected"))


def _daemon_config(directory: Path, extra: str, *, raw_tail: bytes = b"") -> bytes:
    return (
        f"""
[daemon]
state_dir = "{directory}/state"
audit_log = "{directory}/audit.jsonl"
control_socket = "{directory}/ctl.sock"
{extra}

[acme.ca]
directory = "https://127.0.0.1:9/dir"
""".encode()
        + raw_tail
    )


def test_running_daemon_survives_hostile_configs_on_hot_reload(
    short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A running `rotatord run` sent SIGHUP after each hostile config rejects it, stays alive and
    answers its control socket, then loads a good config again."""
    path = short_tmp / "r.toml"
    path.write_bytes(_daemon_config(short_tmp, ""))
    audit = short_tmp / "audit.jsonl"
    daemon = DaemonProcess(path, short_tmp)
    daemons.append(daemon)
    daemon.start()
    cases = [(name, _daemon_config(short_tmp, extra)) for name, extra in _DAEMON_HOSTILE]
    cases.append(("invalid UTF-8", _daemon_config(short_tmp, "", raw_tail=b"# \xff\n")))
    cases.append(("good again", _daemon_config(short_tmp, "keep_versions = 3")))
    for name, data in cases:
        seen = _reloads(read_audit(audit))
        tmp = path.with_name("r.toml.new")
        tmp.write_bytes(data)
        tmp.replace(path)
        daemon.signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while _reloads(read_audit(audit)) <= seen:
            assert daemon.proc is not None
            if daemon.proc.poll() is not None:
                pytest.fail(f"the daemon died on reloading {name!r}:\n{daemon.log_tail()}")
            assert time.monotonic() < end, f"no reload recorded for {name!r}"
            time.sleep(0.05)
        time.sleep(0.2)  # let a watcher event for the same write land before looking
        last = [r for r in read_audit(audit) if r["event"].startswith("config_")][-1]
        expected = "config_loaded" if name == "good again" else "config_rejected"
        assert last["event"] == expected, (name, last)
        try:
            reply = control.request(short_tmp / "ctl.sock", {"verb": "ping"}, timeout=10)
        except ControlError as exc:
            pytest.fail(f"no answer after reloading {name!r}: {exc}\n{daemon.log_tail()}")
        assert reply["ok"], reply
    assert daemon.stop() == 0
