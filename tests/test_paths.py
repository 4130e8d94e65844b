"""Planted paths (issue 9): a symlink planted as an output's parent, a FIFO or device at an output
path, a directory output's root owned by someone else, a pid file another user can write — each
refused with an error naming the path, nothing written through, nothing signalled. Real files,
real processes; "someone else" is nobody (uid 65534), set with chown (these tests need root).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from rotatord.config import load_config
from rotatord.core.errors import ConfigError, ReloadError, StoreError
from rotatord.core.model import OutputFormat, OutputSpec, ReloadAction, SignalReload, Trigger
from rotatord.deploy.outputs import publish
from rotatord.deploy.paths import Trust, open_dir
from rotatord.deploy.pidfile import PidFileError, open_target
from rotatord.deploy.reload import SubprocessReloader
from rotatord.fsutil import FsOps
from rotatord.rotation import Outcome, service_status
from tests.certs import make_bundle
from tests.fakes import FaultyFsOps
from tests.world import make_world, service

pytestmark = pytest.mark.root  # conftest: skip without root, fail under CI=true

NOBODY = 65534
VERSION = "20260101T000000Z-00000001"
PRECIOUS = b"precious data\n"


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``root`` (not following links): its mode and a regular file's bytes."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only directory holding a file an attacker would like rotatord to write into."""
    d = tmp_path / "victim"
    d.mkdir(mode=0o700)
    (d / "precious").write_bytes(PRECIOUS)
    return d


def foreign_dir(path: Path, mode: int = 0o755) -> Path:
    """A directory owned by nobody: everything in it is nobody's to swap."""
    path.mkdir(parents=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


def key_output(path: Path) -> OutputSpec:
    return OutputSpec(path=path, format=OutputFormat.KEY)


# ============================================================================================
# outputs, unit level
# ============================================================================================


@pytest.mark.parametrize("fmt", [OutputFormat.KEY, OutputFormat.DIRECTORY], ids=["key", "dir"])
def test_symlink_planted_as_parent_in_a_foreign_directory_is_refused(
    tmp_path: Path, victim: Path, fmt: OutputFormat
) -> None:
    """nobody owns out/ and plants out/web -> a root-only directory: publishing out/web/x is
    refused naming out/web, and nothing lands in the victim directory."""
    out = foreign_dir(tmp_path / "out")
    (out / "web").symlink_to(victim)
    os.lchown(out / "web", NOBODY, NOBODY)
    before = snapshot(victim)
    spec = OutputSpec(path=out / "web" / "tls", format=fmt)
    with pytest.raises(StoreError, match=rf"^{out / 'web'}: is a symlink, and .*uid 65534"):
        publish([spec], make_bundle(), VERSION)
    assert snapshot(victim) == before


def test_symlink_deeper_below_a_foreign_directory_is_refused(tmp_path: Path, victim: Path) -> None:
    """The rule holds for every component below the first foreign directory, not just its
    children: out/ (nobody) / sub (root's) / link -> victim is refused too."""
    out = foreign_dir(tmp_path / "out")
    (out / "sub").mkdir()
    (out / "sub" / "link").symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(StoreError, match=rf"^{out / 'sub' / 'link'}: is a symlink"):
        publish([key_output(out / "sub" / "link" / "web.key")], make_bundle(), VERSION)
    assert snapshot(victim) == before


def test_symlink_in_a_root_only_prefix_is_followed(tmp_path: Path) -> None:
    """A symlink only root could have made (``/var/run -> /run``) is followed as before."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    bundle = make_bundle()
    publish([key_output(tmp_path / "link" / "web.key")], bundle, VERSION)
    assert (tmp_path / "real" / "web.key").read_bytes() == bundle.key_pem


def test_directory_writable_by_others_is_refused_unless_sticky_and_ours(tmp_path: Path) -> None:
    """A world-writable directory on the way is refused; sticky and root's (/tmp) is fine;
    sticky but nobody's is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StoreError, match=rf"^{shared}: directory is writable by others"):
        publish([key_output(shared / "web.key")], make_bundle(), VERSION)
    assert not (shared / "web.key").exists()
    shared.chmod(0o1777)
    publish([key_output(shared / "web.key")], make_bundle(), VERSION)
    assert (shared / "web.key").is_file()
    theirs = foreign_dir(tmp_path / "theirs", 0o1777)
    with pytest.raises(StoreError, match=rf"^{theirs}: directory is writable by others"):
        publish([key_output(theirs / "web.key")], make_bundle(), VERSION)


def test_symlink_nobody_planted_in_a_sticky_directory_is_refused(
    tmp_path: Path, victim: Path
) -> None:
    """In a sticky shared directory (like /tmp) a symlink owned by nobody is refused; nothing
    lands in its target."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "web").symlink_to(victim)
    os.lchown(shared / "web", NOBODY, NOBODY)
    before = snapshot(victim)
    with pytest.raises(StoreError, match=rf"^{shared / 'web'}: is a symlink"):
        publish([key_output(shared / "web" / "web.key")], make_bundle(), VERSION)
    assert snapshot(victim) == before


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket"])
def test_fifo_or_device_at_an_output_path_is_refused(tmp_path: Path, kind: str) -> None:
    """A FIFO, character device or socket at an output path is refused (named, with its kind)
    and left as it was, not silently replaced by a regular file."""
    path = tmp_path / "out" / "web.key"
    path.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(path, 0o600)
        what = "a FIFO"
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
        what = "a character device"
    else:
        os.mknod(path, stat.S_IFSOCK | 0o600)
        what = "a socket"
    before = os.lstat(path)
    with pytest.raises(StoreError, match=rf"^{path}: is {what}, not a regular file"):
        publish([key_output(path)], make_bundle(), VERSION)
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino,
        before.st_mode,
        before.st_rdev,
    )
    assert [e for e in os.listdir(path.parent) if e != path.name] == []  # no temp left


def test_foreign_directory_output_root_is_refused(tmp_path: Path) -> None:
    """nobody pre-created a directory output's root holding its own version and ``current``:
    publishing is refused naming the root, and the root is exactly as nobody left it."""
    root = foreign_dir(tmp_path / "out" / "web")
    evil = root / "20990101T000000Z-00000bad"
    evil.mkdir()
    (evil / "privkey.pem").write_bytes(b"nobody's own key\n")
    (root / "current").symlink_to(evil.name)
    before = snapshot(root)
    spec = OutputSpec(path=root, format=OutputFormat.DIRECTORY)
    with pytest.raises(StoreError, match=rf"^{root}: a directory output's root must be owned"):
        publish([spec], make_bundle(), VERSION)
    assert snapshot(root) == before
    assert os.readlink(root / "current") == evil.name


def test_group_or_world_writable_directory_output_root_is_refused(tmp_path: Path) -> None:
    """A root-owned directory output root that others may write (even sticky) is refused."""
    root = tmp_path / "out" / "web"
    root.mkdir(parents=True)
    root.chmod(0o1777)
    with pytest.raises(StoreError, match="directory output's root must be owned"):
        publish([OutputSpec(path=root, format=OutputFormat.DIRECTORY)], make_bundle(), VERSION)
    assert os.listdir(root) == []


class SwapBeforeFirstFile(FsOps):
    """FsOps that, just before the first file is created, does what a racing attacker who owns
    ``out`` would: moves ``out/web`` away and plants ``out/web -> victim``."""

    def __init__(self, out: Path, victim: Path) -> None:
        self.out, self.victim, self.swapped = out, victim, False

    def open_excl(self, path: Path, mode: int, uid: int = -1, gid: int = -1) -> int:
        if not self.swapped:
            self.swapped = True
            os.rename(self.out / "web", self.out / "moved")
            (self.out / "web").symlink_to(self.victim)
        return super().open_excl(path, mode, uid, gid)


def test_swapping_a_checked_parent_mid_write_cannot_redirect_it(
    tmp_path: Path, victim: Path
) -> None:
    """The walk's check cannot go stale: a parent swapped for a symlink after it was checked
    and before the file is created still gets the file (it was opened, not re-walked), the
    victim gets nothing, and the next publish refuses the symlink."""
    out = foreign_dir(tmp_path / "out")
    (out / "web").mkdir()
    before = snapshot(victim)
    bundle = make_bundle()
    ops = SwapBeforeFirstFile(out, victim)
    publish([key_output(out / "web" / "a.key")], bundle, VERSION, ops)
    assert ops.swapped
    assert snapshot(victim) == before
    assert (out / "moved" / "a.key").read_bytes() == bundle.key_pem
    with pytest.raises(StoreError, match=rf"^{out / 'web'}: is a symlink"):
        publish([key_output(out / "web" / "a.key")], bundle, VERSION)
    assert snapshot(victim) == before


def test_a_failing_mkdir_on_the_way_is_a_store_error_naming_the_directory(tmp_path: Path) -> None:
    """An OSError while walking (here ENOSPC creating a missing parent) comes out as a
    StoreError naming that directory, so a rotation records it like any refused path."""
    missing = tmp_path / "new"
    with pytest.raises(StoreError, match=rf"^{missing}: cannot open or create: No space left"):
        publish([key_output(missing / "a.key")], make_bundle(), VERSION, FaultyFsOps(full=True))
    assert not missing.exists()


def test_open_dir_reports_the_first_missing_component_without_creating(tmp_path: Path) -> None:
    """Without create_mode the walk creates nothing and says None at a missing component."""
    assert open_dir(tmp_path / "a" / "b", Trust.of_process()) is None
    assert not (tmp_path / "a").exists()


# ============================================================================================
# pid files, with real processes
# ============================================================================================


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real child process (root's), the would-be victim of a planted pid."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def pid_file(path: Path, pid: int, uid: int = 0, mode: int = 0o644) -> Path:
    path.write_text(f"{pid}\n")
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def signal_reload(path: Path) -> SignalReload:
    return SignalReload(pid_file=path, signal=signal.SIGTERM)


def still_running(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=0.2)
    except subprocess.TimeoutExpired:
        return True
    return False


def test_pid_file_owned_by_another_user_naming_roots_process_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """nobody writes root's sleep's pid into a pid file it owns: the reload fails naming the
    pid file and the uids, and the process is not signalled."""
    path = pid_file(tmp_path / "app.pid", sleeper.pid, uid=NOBODY)
    with pytest.raises(ReloadError, match=rf"pid file {path}: is owned by uid 65534 but names"):
        SubprocessReloader().run(signal_reload(path), {})
    assert still_running(sleeper)


@pytest.mark.parametrize("mode", [0o666, 0o664], ids=["world", "group"])
def test_pid_file_writable_by_others_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], mode: int
) -> None:
    """A root-owned pid file others (or a non-root group) may write is refused; no signal."""
    path = pid_file(tmp_path / "app.pid", sleeper.pid, uid=0, mode=mode)
    os.chown(path, 0, NOBODY)
    with pytest.raises(ReloadError, match=rf"pid file {path}: is writable by others"):
        SubprocessReloader().run(signal_reload(path), {})
    assert still_running(sleeper)


def test_pid_file_symlink_fifo_and_foreign_parent_symlink_are_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A pid file that is a symlink, a FIFO (no hang), or is reached through a symlink nobody
    planted is refused, naming the path; the process is not signalled."""
    real = pid_file(tmp_path / "real.pid", sleeper.pid)
    link = tmp_path / "link.pid"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    run = foreign_dir(tmp_path / "run")
    (run / "app").symlink_to(tmp_path)
    cases = [
        (link, f"pid file {link}: cannot open: Too many levels of symbolic links"),
        (fifo, f"pid file {fifo}: is a FIFO, not a regular file"),
        (run / "app" / "real.pid", f"pid file {run / 'app'}: is a symlink, and {run} is owned"),
    ]
    for path, message in cases:
        with pytest.raises(ReloadError) as info:
            SubprocessReloader().run(signal_reload(path), {})
        assert message in str(info.value)
    assert still_running(sleeper)


def test_root_owned_pid_file_signals_its_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The control: a root-owned 0644 pid file gets its process signalled."""
    path = pid_file(tmp_path / "app.pid", sleeper.pid)
    SubprocessReloader().run(signal_reload(path), {})
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_user_owned_pid_file_signals_that_users_own_process(tmp_path: Path) -> None:
    """A pid file owned by nobody naming a process that runs as nobody is accepted: nobody
    could have sent that signal itself."""
    proc = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY)
    try:
        path = pid_file(tmp_path / "app.pid", proc.pid, uid=NOBODY)
        SubprocessReloader().run(signal_reload(path), {})
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_pid_file_executable_must_match(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """With an expected executable, a pid naming another program is refused; the right one
    passes."""
    path = pid_file(tmp_path / "app.pid", sleeper.pid)
    with pytest.raises(PidFileError, match=rf"names pid {sleeper.pid}, which runs .*sleep"):
        open_target(path, executable=Path("/usr/sbin/nginx"))
    sleep_bin = shutil.which("sleep")
    assert sleep_bin is not None
    open_target(path, executable=Path(sleep_bin)).close()
    assert still_running(sleeper)


def test_pid_file_naming_an_exited_process_is_absent(tmp_path: Path) -> None:
    """A pid file left by a process that exited is refused as absent (a warning at
    check-config time), never signalled."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    path = pid_file(tmp_path / "app.pid", proc.pid)
    with pytest.raises(PidFileError, match="not running") as info:
        open_target(path)
    assert info.value.absent


# ============================================================================================
# end to end: a rotation whose output parent was swapped for a symlink
# ============================================================================================


def test_rotation_with_planted_output_parent_fails_and_keeps_the_old_pair(
    tmp_path: Path, victim: Path
) -> None:
    """After a good rotation, nobody (who owns out/) swaps out/web for a symlink to a root-only
    directory: the next rotation fails and is rolled back, the old pair stays current,
    nothing lands in the victim, and status and audit show the failure naming the path."""
    out = foreign_dir(tmp_path / "out")
    spec = dataclasses.replace(service("a"), outputs=(key_output(out / "web" / "a.key"),))
    w = make_world(tmp_path / "state", [spec])
    assert w.rotator.rotate("a", trigger=Trigger.STARTUP).outcome is Outcome.ROTATED
    old = w.rotator.plain_store("a").current_version()
    assert old is not None
    os.rename(out / "web", out / "moved")
    (out / "web").symlink_to(victim)
    before = snapshot(victim)

    res = w.rotator.rotate("a", force=True)

    refused = f"{out / 'web'}: is a symlink, and {out} is owned by uid 65534"
    assert res.outcome is Outcome.ROLLED_BACK
    assert res.error is not None and res.error.startswith(refused)
    current = w.rotator.plain_store("a").current_version()
    assert current is not None and current.name == old.name
    assert snapshot(victim) == before
    status = service_status(w.rotator, "a", w.clock.now())
    assert status["failures"] == 1
    assert f"{out / 'web'}: is a symlink" in status["last_error"]
    finished = w.audit.events("rotation_finished", "a")[-1]
    assert finished["outcome"] == "rolled_back" and finished["error"].startswith(refused)
    # The old pair's outputs cannot be restored through the planted link either: said so.
    (rolled,) = w.audit.events("rolled_back", "a")
    assert rolled["cause"].startswith(refused) and rolled["ok"] is False
    assert w.audit.events("alarm", "a")


# ============================================================================================
# check-config says it at load time
# ============================================================================================


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotatord", "-c", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_names_every_planted_path_by_its_key(
    tmp_path: Path, victim: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """check-config reports a planted parent symlink, a FIFO, a foreign directory-output root
    and a pid file nobody owns as errors (exit 2), each with the file, its dotted key and the
    path; a missing pid file and an output below nobody's directory are warnings."""
    out = foreign_dir(tmp_path / "out")
    (out / "link").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo.pem")
    root = foreign_dir(tmp_path / "dirout")
    planted = pid_file(tmp_path / "app.pid", sleeper.pid, uid=NOBODY)
    config = tmp_path / "rotatord.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "state"
[acme.a]
directory = "https://ca.example/dir"
[services.web]
domains = ["web.example.test"]
[[services.web.outputs]]
path = "{out / "link" / "web.pem"}"
[[services.web.outputs]]
path = "{tmp_path / "fifo.pem"}"
[[services.web.outputs]]
path = "{root}"
format = "directory"
[[services.web.outputs]]
path = "{out / "mine" / "web.pem"}"
[[services.web.reload]]
signal = "HUP"
pid_file = "{planted}"
[reload_targets.nginx]
[[reload_targets.nginx.actions]]
signal = "HUP"
pid_file = "{tmp_path / "absent.pid"}"
"""
    )
    (out / "mine").mkdir()
    before = snapshot(victim)
    result = check_config(config)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    warnings = [ln for ln in result.stdout.splitlines() if ln.startswith("warning:")]
    expected_errors = [
        f"error: {config}: services.web.outputs[0].path: {out / 'link'}: is a symlink",
        f"error: {config}: services.web.outputs[1].path: {tmp_path / 'fifo.pem'}: is a FIFO",
        f"error: {config}: services.web.outputs[2].path: {root}: a directory output's root",
        f"error: {config}: services.web.reload[0].pid_file: pid file {planted}: is owned by uid",
    ]
    assert len(errors) == len(expected_errors), result.stderr
    for line, want in zip(errors, expected_errors, strict=True):
        assert line.startswith(want), (line, want)
    assert len(warnings) == 2, result.stdout
    assert warnings[0].startswith(
        f"warning: {config}: services.web.outputs[3].path: {out / 'mine' / 'web.pem'}: will be "
        f"written, but {out} is owned by uid 65534, not root: that user can replace"
    )
    assert warnings[1].startswith(
        f"warning: {config}: reload_targets.nginx.actions[0].pid_file: pid file "
        f"{tmp_path / 'absent.pid'}: does not exist"
    )
    assert "Traceback" not in result.stderr
    assert snapshot(victim) == before and still_running(sleeper)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.pem").st_mode)


def test_check_config_is_quiet_about_safe_paths(tmp_path: Path) -> None:
    """Outputs in root's own (or not yet existing) directories give no path warning, exit 0."""
    (tmp_path / "tls").mkdir()
    config = tmp_path / "rotatord.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "state"
[acme.a]
directory = "https://ca.example/dir"
[services.web]
domains = ["web.example.test"]
[[services.web.outputs]]
path = "{tmp_path / "tls" / "web.pem"}"
[[services.web.outputs]]
path = "{tmp_path / "later" / "web"}"
format = "directory"
"""
    )
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert "OK (1 services, 1 accounts)" in result.stdout
    assert "warning" not in result.stdout and result.stderr == ""


def test_config_reads_a_signal_reloads_executable(tmp_path: Path) -> None:
    """``executable`` is parsed onto a signal reload and refused on any other kind, by path."""
    base = (
        '[daemon]\nstate_dir = "s"\n[acme.a]\ndirectory = "https://ca.example/dir"\n'
        '[services.web]\ndomains = ["web.example.test"]\n[[services.web.reload]]\n'
    )
    good = tmp_path / "good.toml"
    good.write_text(base + 'signal = "HUP"\npid_file = "/run/x.pid"\nexecutable = "/usr/bin/x"\n')
    action = load_config(good).services["web"].reload[0]
    assert isinstance(action, SignalReload) and action.executable == Path("/usr/bin/x")
    bad = tmp_path / "bad.toml"
    bad.write_text(base + 'command = ["/bin/true"]\nexecutable = "/usr/bin/x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert [p.path for p in info.value.problems] == ["services.web.reload[0].executable"]


HUP_COUNTER = """
import signal, sys, time
def hup(*_):
    with open(sys.argv[1], "a") as f:
        f.write("hup\\n")
signal.signal(signal.SIGHUP, hup)
open(sys.argv[2], "w").close()  # ready: the handler is installed
for _ in range(600):
    time.sleep(0.1)
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_rotation_with_a_user_writable_pid_file_fails_and_signals_nothing(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A real signal reload inside a rotation: with root's pid file the server gets SIGHUP; once
    nobody owns the pid file and points it at another root process, the next rotation is
    refused naming the pid file and rolled back, the old pair stays current, and neither
    process gets a signal."""
    hups = tmp_path / "hups"
    ready = tmp_path / "ready"
    server = subprocess.Popen([sys.executable, "-c", HUP_COUNTER, str(hups), str(ready)])
    try:
        pid = pid_file(tmp_path / "server.pid", server.pid)
        reload = SignalReload(pid_file=pid, signal=signal.SIGHUP)
        spec = dataclasses.replace(service("a"), reload=(reload,))
        w = make_world(tmp_path / "state", [spec])
        real = SubprocessReloader()

        def really_signal(action: ReloadAction, env: Mapping[str, str]) -> None:
            real.run(action, env)

        w.reloader.on_run = really_signal
        assert wait_for(ready.exists)
        assert w.rotator.rotate("a", trigger=Trigger.STARTUP).outcome is Outcome.ROTATED
        assert wait_for(lambda: hups.exists() and hups.read_text() == "hup\n")
        old = w.rotator.plain_store("a").current_version()
        assert old is not None

        pid_file(pid, sleeper.pid, uid=NOBODY)  # what nobody could do to its own file
        res = w.rotator.rotate("a", force=True)

        refused = f"pid file {pid}: is owned by uid 65534 but names pid {sleeper.pid}"
        assert res.outcome is Outcome.ROLLED_BACK
        assert res.error is not None and refused in res.error
        current = w.rotator.plain_store("a").current_version()
        assert current is not None and current.name == old.name
        assert service_status(w.rotator, "a", w.clock.now())["failures"] == 1
        assert any(refused in r["error"] for r in w.audit.events("reload_failed", "a"))
        assert still_running(sleeper)
        assert hups.read_text() == "hup\n"
    finally:
        server.kill()
        server.wait()
