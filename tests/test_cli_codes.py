"""Every subcommand's ``--help`` has a description and an EXIT CODES section, and every exit
code a subcommand documents is produced by a real run here (a real daemon for the socket verbs;
a fake daemon behind the control socket only for the replies a real one gives on faults that
are hard to cause: no valid reply, an internal error)."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rotatord import cli, packaged
from rotatord.store import ServiceStore
from tests.certs import make_bundle
from tests.daemon_harness import DaemonProcess, run_cli

DIRECTORY = "https://127.0.0.1:9/dir"  # nothing listens on the discard port: fails at once


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """``name -> parser`` for every subcommand, nested ones as ``audit verify``; groups too."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(cli.build_parser(), "")
    return out


def test_every_subcommand_help_has_a_description_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rotatord COMMAND --help` for every subcommand (nested too) exits 0 and prints a
    description and an `exit codes:` section listing each code the command returns; the top
    level help reads like a tool's, with --version and the commands."""
    for name, parser in leaf_parsers().items():
        with pytest.raises(SystemExit) as exited:
            cli.main([*name.split(), "--help"])
        assert exited.value.code == 0, name
        text = capsys.readouterr().out
        assert parser.description and parser.description.split()[0] in text, name
        codes = parser.get_default("exit_codes")
        assert codes, name
        section = text.split("exit codes:", 1)[1]
        for code in codes:
            assert f"  {code}  " in section, (name, code)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert top.startswith("usage: rotatord [-c FILE] COMMAND [options]")
    assert "exit codes:" in top and "--version" in top and "Traceback" not in top
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip().startswith("rotatord ")


# --- a config, a daemon and a fake daemon ---------------------------------------------------


def write(path: Path, state: Path, *, allowed: str = "[0]", extra: str = "") -> Path:
    path.write_text(
        f'[daemon]\nstate_dir = "{state}"\naudit_log = "{state}/audit.jsonl"\n'
        f'control_socket = "{state}/ctl.sock"\ncontrol_allowed_uids = {allowed}\n{extra}\n'
        f'[acme.a]\ndirectory = "{DIRECTORY}"\n'
        '[services.web]\ndomains = ["web.example.test"]\naccount = "a"\n'
        '[services.web.challenge]\nlisten = "127.0.0.1:1"\n'
    )
    return path


def install_valid_cert(state: Path) -> None:
    """A current certificate far from renewal, so `rotate web` is `not due` without any CA."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    store = ServiceStore(state, "web")
    bundle = make_bundle(
        ("web.example.test",),
        not_before=now,
        not_after=now + timedelta(days=90),
        account="a",
        directory=DIRECTORY,
    )
    store.activate(store.stage(bundle))


@contextlib.contextmanager
def fake_daemon(path: Path, reply: bytes) -> Iterator[None]:
    """A control socket that answers every request with ``reply`` (raw bytes)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two real daemons: one that lets root in, one that refuses every uid but 54321."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rt-codes-", dir="/tmp"))  # short: AF_UNIX paths
    started = []
    try:
        configs = {}
        for name, allowed in (("open", "[0]"), ("closed", "[54321]")):
            config = write(base / f"{name}.toml", base / name, allowed=allowed)
            daemon = DaemonProcess(config, base)
            daemon.start()
            started.append(daemon)
            configs[name] = config
        yield configs
    finally:
        for daemon in started:
            daemon.kill()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


Case = Callable[[Path, dict[str, Path]], int]


def _config(tmp: Path, **kw: str) -> Path:
    return write(tmp / "c.toml", tmp / "s", **kw)


def _code(*args: str | Path) -> int:
    result = run_cli(Path(str(args[0])), *[str(a) for a in args[1:]], timeout=60)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.returncode


def _bad(tmp: Path) -> Path:
    (tmp / "bad.toml").write_text("[daemon]\nkeep_versions = -1\n")
    return tmp / "bad.toml"


def _not_due(tmp: Path, _: dict[str, Path]) -> int:
    config = _config(tmp)
    install_valid_cert(tmp / "s")
    return _code(config, "rotate", "web")


def _fake(reply: bytes, *args: str) -> Case:
    def case(tmp: Path, _: dict[str, Path]) -> int:
        config = _config(tmp)
        (tmp / "s").mkdir()
        with fake_daemon(tmp / "s" / "ctl.sock", reply):
            return _code(config, *args)

    return case


def _run_stopped(tmp: Path, _: dict[str, Path]) -> int:
    daemon = DaemonProcess(_config(tmp), tmp)
    daemon.start()
    return daemon.stop(timeout=60)


def _local_while_daemon(tmp: Path, d: dict[str, Path]) -> int:
    audit = d["open"].parent / "open" / "audit.jsonl"
    before = audit.read_text()
    code = _code(d["open"], "rotate", "--local", "web", "--force")
    after = audit.read_text()
    new = [json.loads(line) for line in after[len(before) :].splitlines() if line]
    # refused before a key was made (the daemon's own scheduled retry may make one meanwhile)
    assert not [r for r in new if r["event"] == "key_generated" and r["trigger"] == "manual"]
    return code


def _reload_rejected(tmp: Path, d: dict[str, Path]) -> int:
    # The daemon re-reads its own file: break it (atomically: it watches the file), ask it to
    # reload (rejected, it keeps the old config), restore.
    original = d["open"].read_text()
    replace(d["open"], original.replace("[daemon]", "[daemon]\nkeep_versions = -1"))
    try:
        return _code(d["open"], "reload")
    finally:
        replace(d["open"], original)


def replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def _audit_copy(tmp: Path, d: dict[str, Path], *, tamper: bool) -> int:
    """`audit verify FILE` on a copy of the open daemon's audit log (it has records)."""
    lines = (d["open"].parent / "open" / "audit.jsonl").read_text().splitlines()
    assert lines
    if tamper:
        record = json.loads(lines[0])
        record["event"] = "rewritten"
        lines[0] = json.dumps(record)
    (tmp / "audit.jsonl").write_text("\n".join(lines) + "\n")
    return _code(_config(tmp), "audit", "verify", tmp / "audit.jsonl")


def _seal_twice(tmp: Path, _: dict[str, Path]) -> int:
    config = _config(tmp)
    assert _code(config, "audit", "init-seal", "--out", tmp / "k1") == 0
    return _code(config, "audit", "init-seal", "--out", tmp / "k2")


def _missing(what: str) -> Case:
    def case(tmp: Path, _: dict[str, Path]) -> int:
        saved = dict(packaged.FILES)
        packaged.FILES[what] = ("rotatord._data.nope", "x", "nope")
        try:
            return cli.main([what])
        finally:
            packaged.FILES.update(saved)

    return case


def _state_is_a_file(tmp: Path, _: dict[str, Path]) -> int:
    config = _config(tmp)
    (tmp / "s").write_text("")
    return _code(config, "recover")


def _show_unreachable(tmp: Path, _: dict[str, Path]) -> int:
    """An account registered earlier, its CA unreachable now: shown from the files, exit 1."""
    config = _config(tmp)
    adir = tmp / "s" / "accounts" / "a"
    adir.mkdir(parents=True, mode=0o700)
    regr = {"uri": "https://127.0.0.1:9/acct/1", "directory": DIRECTORY}
    (adir / "regr.json").write_text(json.dumps(regr))
    return _code(config, "account", "show")


NO_REPLY = b""
INTERNAL = json.dumps({"ok": False, "error": "internal error", "code": "internal"}).encode() + b"\n"

CASES: dict[tuple[str, int], Case] = {
    ("check-config", 0): lambda t, d: _code(_config(t), "check-config"),
    ("check-config", 2): lambda t, d: _code(_bad(t), "check-config"),
    ("run", 0): _run_stopped,
    ("run", 1): lambda t, d: _code(d["open"], "run"),  # that daemon holds the state dir
    ("run", 2): lambda t, d: _code(_bad(t), "run"),
    ("rotate", 0): _not_due,
    ("rotate", 1): _local_while_daemon,
    ("rotate", 2): lambda t, d: _code(_config(t), "rotate", "nope"),
    ("rotate", 3): _fake(NO_REPLY, "rotate", "web"),
    ("rotate", 4): lambda t, d: _code(d["closed"], "rotate", "web"),
    ("status", 0): lambda t, d: _code(d["open"], "status"),
    ("status", 1): _fake(INTERNAL, "status"),
    ("status", 2): lambda t, d: _code(d["open"], "status", "nope"),
    ("status", 3): lambda t, d: _code(_bad(t), "status", "--socket", t / "none.sock"),
    ("status", 4): lambda t, d: _code(d["closed"], "status"),
    ("plan", 0): lambda t, d: _code(d["open"], "plan"),
    ("plan", 1): _fake(INTERNAL, "plan"),
    ("plan", 2): lambda t, d: _code(d["open"], "plan", _bad(t)),
    ("plan", 3): lambda t, d: _code(_config(t), "plan"),
    ("plan", 4): lambda t, d: _code(d["closed"], "plan"),
    ("reload", 0): lambda t, d: _code(d["open"], "reload"),
    ("reload", 1): _fake(INTERNAL, "reload"),
    ("reload", 2): _reload_rejected,
    ("reload", 3): lambda t, d: _code(_config(t), "reload"),
    ("reload", 4): lambda t, d: _code(d["closed"], "reload"),
    ("revoke", 1): lambda t, d: _code(_config(t), "revoke", "web"),  # nothing installed
    ("revoke", 2): lambda t, d: _code(_config(t), "revoke", "nope"),
    ("revoke", 3): _fake(NO_REPLY, "revoke", "web"),
    ("revoke", 4): lambda t, d: _code(d["closed"], "revoke", "web"),
    ("recover", 0): lambda t, d: _code(_config(t), "recover"),
    ("recover", 1): _state_is_a_file,
    ("recover", 2): lambda t, d: _code(_config(t), "recover", "nope"),
    ("audit", 2): lambda t, d: _code(_config(t), "audit"),
    ("audit verify", 0): lambda t, d: _audit_copy(t, d, tamper=False),
    ("audit verify", 1): lambda t, d: _audit_copy(t, d, tamper=True),
    ("audit verify", 2): lambda t, d: _code(_config(t), "audit", "verify", t / "missing"),
    ("audit init-seal", 0): lambda t, d: _code(_config(t), "audit", "init-seal", "--out", "-"),
    ("audit init-seal", 1): _seal_twice,
    ("audit init-seal", 2): lambda t, d: _code(_bad(t), "audit", "init-seal", "--out", "-"),
    ("account", 2): lambda t, d: _code(_config(t), "account"),
    ("account show", 0): lambda t, d: _code(_config(t), "account", "show", "--offline"),
    ("account show", 1): _show_unreachable,
    ("account show", 2): lambda t, d: _code(_config(t), "account", "show", "nope"),
    ("account rollover", 1): lambda t, d: _code(_config(t), "account", "rollover", "a"),
    ("account rollover", 2): lambda t, d: _code(_bad(t), "account", "rollover", "a"),
    ("account deactivate", 1): lambda t, d: _code(
        _config(t), "account", "deactivate", "a", "--yes"
    ),
    ("account deactivate", 2): lambda t, d: _code(_config(t), "account", "deactivate", "a"),
    ("example-config", 0): lambda t, d: cli.main(["example-config"]),
    ("example-config", 1): _missing("example-config"),
    ("systemd-unit", 0): lambda t, d: cli.main(["systemd-unit"]),
    ("systemd-unit", 1): _missing("systemd-unit"),
}
#: Pairs another test already runs for real (with Pebble), by the test that does.
ELSEWHERE = {
    ("revoke", 0): "tests/test_revoke.py::test_cli_revoke_without_daemon",
    # A rollover and a deactivation that succeed need a CA: run against Pebble there.
    ("account rollover", 0): "tests/test_accounts_e2e.py",
    ("account deactivate", 0): "tests/test_accounts_e2e.py",
    # setup-systemd changes users and /etc: run as root against a scratch root directory.
    ("setup-systemd", 0): "tests/test_setup_systemd.py::test_creates_directories_dropin_and_unit"
    "_then_changes_nothing",
    ("setup-systemd", 1): "tests/test_setup_systemd.py::test_fixes_its_own_directories_but_never"
    "_loosens_someone_elses",
    ("setup-systemd", 2): "tests/test_setup_systemd.py::test_a_broken_config_is_refused_with_its"
    "_problems",
}


def documented() -> set[tuple[str, int]]:
    return {
        (name, code)
        for name, parser in leaf_parsers().items()
        for code in parser.get_default("exit_codes") or {}
    }


def test_every_documented_exit_code_has_a_case() -> None:
    """The table below covers exactly the documented (command, exit code) pairs: a new code or
    subcommand without a case here fails."""
    assert set(CASES) | set(ELSEWHERE) == documented()


#: Cases that must not overlap others: they run ``cli.main`` in this process (and patch its
#: module state) or rewrite the shared daemon's config.
SERIAL = {
    ("example-config", 0), ("example-config", 1), ("systemd-unit", 0), ("systemd-unit", 1),
    ("reload", 2),
}  # fmt: skip


def test_documented_exit_codes(
    running: dict[str, Path], short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each documented exit code is what the command really returns in its situation, with no
    traceback (the subprocess cases run four at a time, each in its own directory)."""
    pairs = sorted(CASES)
    dirs = {pair: short_tmp / str(n) for n, pair in enumerate(pairs)}
    for d in dirs.values():
        d.mkdir()

    def one(pair: tuple[str, int]) -> tuple[tuple[str, int], int | str]:
        try:
            return pair, CASES[pair](dirs[pair], running)
        except AssertionError as exc:
            return pair, f"assertion: {exc}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = dict(pool.map(one, [p for p in pairs if p not in SERIAL]))
    got.update(one(p) for p in pairs if p in SERIAL)
    capsys.readouterr()
    wrong = {pair: code for pair, code in got.items() if code != pair[1]}
    assert wrong == {}
