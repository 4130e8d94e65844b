"""``rotatord setup-systemd``: put in place what ``rotatord.service`` expects — the system user,
rotatord's directories, a drop-in granting write access to the configured output paths, and the
unit — idempotently: every step looks first and says whether it changed anything.

Rules: only rotatord's own directories (state, audit log, created output directories) are
chowned or chmodded; a directory that exists and belongs to someone else is never loosened, the
step says what to run instead. Files are replaced atomically. Runs only ``useradd`` and
``systemctl daemon-reload``, as argv with a fixed environment and a timeout.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from rotatord.core.errors import ConfigError, RotatordError
from rotatord.core.model import Config, Http01Webroot, OutputFormat
from rotatord.fsutil import atomic_write
from rotatord.packaged import packaged_text

UNIT_NAME = "rotatord.service"
DROPIN_NAME = "50-setup-systemd.conf"
UNIT_BINARY = Path("/usr/local/bin/rotatord")
DEFAULT_CONFIG = Path("/etc/rotatord/rotatord.toml")
# The unit's StateDirectory=, LogsDirectory=, RuntimeDirectory=, ConfigurationDirectory=.
STATE, LOGS, RUNTIME, CONFDIR = (
    Path("/var/lib/rotatord"),
    Path("/var/log/rotatord"),
    Path("/run/rotatord"),
    Path("/etc/rotatord"),
)
# What the sandbox hides or replaces (ProtectHome=yes, PrivateTmp=yes).
HIDDEN = tuple(Path(p) for p in ("/home", "/root", "/run/user", "/tmp", "/var/tmp"))  # noqa: S108
SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass
class Report:
    """What each step found and did; ``todo`` lines are left for the operator."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, action: str, what: str, detail: str = "") -> None:
        self.lines.append((action, what, detail))

    def count(self, action: str) -> int:
        return sum(1 for a, _, _ in self.lines if a == action)

    @property
    def changed(self) -> int:
        return self.count("created") + self.count("updated")


@dataclass(frozen=True)
class Setup:
    """Where to act. ``root`` prefixes every path (tests; a chroot being prepared)."""

    config: Config
    config_path: Path
    unit_text: str
    user: str = "rotatord"
    exec_path: Path = UNIT_BINARY
    root: Path = Path("/")
    bootstrap: bool = False

    def at(self, path: Path) -> Path:
        return self.root / path.relative_to("/")


def packaged_unit() -> str:
    """The unit shipped with rotatord (the wheel's copy, else the checkout's file)."""
    try:
        return packaged_text("systemd-unit")
    except OSError as exc:
        raise RotatordError(f"no {UNIT_NAME} shipped with this rotatord; pass --unit-file") from exc


def _ids(s: Setup) -> tuple[int, int]:
    entry = pwd.getpwnam(s.user)
    return entry.pw_uid, entry.pw_gid


def ensure_user(s: Setup, report: Report) -> bool:
    """The static system account the unit runs as (User=/Group=)."""
    try:
        entry = pwd.getpwnam(s.user)
    except KeyError:
        pass
    else:
        report.add("unchanged", f"user {s.user}", f"uid {entry.pw_uid}")
        return True
    if s.root != Path("/"):
        report.add("todo", f"user {s.user}", "does not exist (not created under --root)")
        return False
    argv = [
        "useradd", "--system", "--user-group", "--no-create-home",
        "--home-dir", str(STATE), "--shell", "/usr/sbin/nologin",
        "--comment", "rotatord TLS rotation daemon", s.user,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=SAFE_ENV, timeout=60)
    if proc.returncode != 0:
        report.add("todo", f"user {s.user}", f"useradd failed: {proc.stderr.strip()}")
        return False
    report.add("created", f"user {s.user}", " ".join(argv))
    return True


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def own_dir(s: Setup, path: Path, mode: int, report: Report, uid: int, gid: int) -> None:
    """A directory rotatord owns: created, or given its owner and mode."""
    real = s.at(path)
    want = f"{pwd.getpwuid(uid).pw_name}:{grp.getgrgid(gid).gr_name} {mode:04o}"
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        parent = real.parent
        parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.mkdir(real, mode)
        os.chown(real, uid, gid, follow_symlinks=False)
        os.chmod(real, mode, follow_symlinks=False)
        report.add("created", str(path), want)
        return
    if not stat.S_ISDIR(st.st_mode):
        report.add("todo", str(path), "exists and is not a directory")
        return
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode):
        report.add("unchanged", str(path), want)
        return
    os.chown(real, uid, gid, follow_symlinks=False)
    os.chmod(real, mode, follow_symlinks=False)
    report.add("updated", str(path), f"{want} (was uid {st.st_uid} gid {st.st_gid} {_mode(st)})")


def config_file(s: Setup, report: Report, gid: int) -> None:
    """The config stays root-owned; the daemon's group may read it (root:rotatord 0640)."""
    real = s.at(s.config_path)
    st = os.lstat(real)
    group = grp.getgrgid(gid).gr_name
    if st.st_uid == 0 and st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o640:
        report.add("unchanged", str(s.config_path), f"root:{group} 0640")
        return
    os.chown(real, 0, gid, follow_symlinks=False)
    os.chmod(real, 0o640, follow_symlinks=False)
    report.add("updated", str(s.config_path), f"root:{group} 0640 (was {_mode(st)})")


def _under(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def writable_dirs(config: Config) -> list[tuple[str, Path]]:
    """(config key, directory) the daemon writes outside the unit's own four directories."""
    d = config.daemon
    wanted = [
        ("daemon.state_dir", d.state_dir),
        ("daemon.audit_log", d.audit_log.parent),
        ("daemon.control_socket", d.control_socket.parent),
    ]
    for name, spec in sorted(config.services.items()):
        for i, o in enumerate(spec.outputs):
            is_dir = o.format is OutputFormat.DIRECTORY
            wanted.append((f"services.{name}.outputs[{i}]", o.path if is_dir else o.path.parent))
        if isinstance(spec.challenge, Http01Webroot):
            challenge_dir = spec.challenge.webroot / ".well-known" / "acme-challenge"
            wanted.append((f"services.{name}.challenge.webroot", challenge_dir))
    out: list[tuple[str, Path]] = []
    for key, path in wanted:
        if any(_under(path, own) for own in (STATE, LOGS, RUNTIME)):
            continue
        if all(path != p for _, p in out):
            out.append((key, path))
    return out


def grant_dir(s: Setup, key: str, path: Path, report: Report, uid: int, gid: int) -> bool:
    """An output directory: created as rotatord's, or checked that rotatord can write it.
    False when the sandbox cannot reach it at all."""
    if any(_under(path, hidden) for hidden in HIDDEN):
        report.add("todo", f"{path} ({key})", "hidden by ProtectHome=/PrivateTmp=; move it")
        return False
    real = s.at(path)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        own_dir(s, path, 0o755, report, uid, gid)
        return True
    if not stat.S_ISDIR(st.st_mode):
        report.add("todo", f"{path} ({key})", "exists and is not a directory")
        return False
    bits = stat.S_IMODE(st.st_mode)
    can = (st.st_uid == uid and bits & 0o300 == 0o300) or (
        st.st_gid == gid and bits & 0o030 == 0o030
    )
    try:
        has_acl = bool(os.getxattr(real, "system.posix_acl_access", follow_symlinks=False))
    except OSError:
        has_acl = False
    if can or has_acl:
        report.add("unchanged", f"{path} ({key})", "has an ACL" if not can else "writable")
    else:
        # Never loosen a directory that belongs to someone else: say how instead.
        report.add(
            "todo",
            f"{path} ({key})",
            f"{s.user} cannot write it: chgrp {s.user} {path} && chmod g+rwx {path}"
            f"  (or: setfacl -m u:{s.user}:rwx {path})",
        )
    return True


def dropin_text(s: Setup, paths: list[Path]) -> str:
    lines = [
        f"# Written by `rotatord setup-systemd` from {s.config_path}; running it again rewrites",
        "# this file. Put your own settings in another file here (e.g. override.conf).",
        "[Service]",
    ]
    lines += [f"ReadWritePaths={p}" for p in paths]
    if s.exec_path != UNIT_BINARY or s.config_path != DEFAULT_CONFIG:
        lines += ["ExecStart=", f"ExecStart={s.exec_path} -c {s.config_path} run"]
    return "\n".join(lines) + "\n"


def write_file(s: Setup, path: Path, text: str, report: Report) -> bool:
    real = s.at(path)
    data = text.encode("utf-8")
    try:
        if real.read_bytes() == data:
            report.add("unchanged", str(path))
            return False
        action = "updated"
    except FileNotFoundError:
        action = "created"
    real.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    atomic_write(real, data, 0o644)
    report.add(action, str(path))
    return True


def daemon_reload(s: Setup, report: Report) -> None:
    if s.root != Path("/"):
        report.add("skipped", "systemctl daemon-reload", "--root")
        return
    if not Path("/run/systemd/system").is_dir():
        report.add("todo", "systemctl daemon-reload", "systemd is not running here")
        return
    argv = ["systemctl", "daemon-reload"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=SAFE_ENV, timeout=120)
    if proc.returncode != 0:
        report.add("todo", "systemctl daemon-reload", proc.stderr.strip())
    else:
        report.add("updated", "systemctl daemon-reload")


def bootstrap_outputs(s: Setup, report: Report, uid: int, gid: int) -> None:
    """A self-signed placeholder for each missing single-file output, so a server that reads it
    (nginx cannot start with a missing ssl_certificate) starts before the first issuance."""
    from rotatord.bootstrap import placeholder_bundle
    from rotatord.deploy.outputs import publish
    from rotatord.deploy.paths import Trust

    skip = {OutputFormat.DIRECTORY, OutputFormat.PKCS12}
    group = grp.getgrgid(gid).gr_name
    for name, spec in sorted(s.config.services.items()):
        missing = [
            replace(o, path=s.at(o.path), owner=o.owner or s.user, group=o.group or group)
            for o in spec.outputs
            if o.format not in skip and not os.path.lexists(s.at(o.path))
        ]
        if not missing:
            continue
        publish(missing, placeholder_bundle(spec), "bootstrap", trust=Trust.of(uid, gid))
        for o in missing:
            shown = Path("/") / o.path.relative_to(s.root)
            report.add("created", str(shown), f"self-signed placeholder for {name}")


def run(s: Setup, report: Report) -> None:
    if not ensure_user(s, report):
        return
    uid, gid = _ids(s)
    if os.path.lexists(s.at(CONFDIR)):
        # The operator's directory: never re-moded (0750 root:rotatord is as good as 0755).
        report.add("unchanged", str(CONFDIR), "exists")
    else:
        own_dir(s, CONFDIR, 0o755, report, 0, 0)
    config_file(s, report, gid)
    own_dir(s, STATE, 0o700, report, uid, gid)
    own_dir(s, LOGS, 0o750, report, uid, gid)
    grants = []
    for key, path in writable_dirs(s.config):
        if grant_dir(s, key, path, report, uid, gid):
            grants.append(path)
    if s.bootstrap:
        bootstrap_outputs(s, report, uid, gid)
    if any(_under(s.exec_path, hidden) for hidden in HIDDEN):
        report.add("todo", f"ExecStart {s.exec_path}", "hidden by ProtectHome=; install under /opt")
    unit_dir = Path("/etc/systemd/system")
    changed = write_file(s, unit_dir / UNIT_NAME, s.unit_text, report)
    changed |= write_file(
        s, unit_dir / f"{UNIT_NAME}.d" / DROPIN_NAME, dropin_text(s, grants), report
    )
    if changed:
        daemon_reload(s, report)


def default_exec() -> Path:
    """The unit's /usr/local/bin/rotatord when it exists, else this installation's script."""
    if os.access(UNIT_BINARY, os.X_OK):
        return UNIT_BINARY
    return Path(sys.argv[0]).absolute() if Path(sys.argv[0]).name == "rotatord" else UNIT_BINARY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default="rotatord", help="service account (default: rotatord)")
    p.add_argument("--unit-file", type=Path, help="unit to install (default: the shipped one)")
    p.add_argument("--exec", dest="exec_path", type=Path, help="rotatord binary for ExecStart=")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.add_argument(
        "--bootstrap-certs",
        action="store_true",
        help="write a self-signed placeholder to each missing output file (nginx bootstrap)",
    )


def main(config_path: Path, args: argparse.Namespace) -> int:
    from rotatord.config import load_config

    if os.geteuid() != 0:
        print(
            "setup-systemd: must run as root (it creates a user, directories under /var and "
            "/etc, and the unit)",
            file=sys.stderr,
        )
        return 2
    try:
        real_config = args.root / config_path.absolute().relative_to("/")
        config = load_config(real_config)
        unit = args.unit_file.read_text(encoding="utf-8") if args.unit_file else packaged_unit()
    except ConfigError as exc:
        print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (OSError, RotatordError) as exc:
        print(f"setup-systemd: {exc}", file=sys.stderr)
        return 2
    if args.root != Path("/"):
        config = _unrooted(config, args.root)
    setup = Setup(
        config=config,
        config_path=config_path.absolute(),
        unit_text=unit,
        user=args.user,
        exec_path=args.exec_path or default_exec(),
        root=args.root,
        bootstrap=args.bootstrap_certs,
    )
    report = Report()
    try:
        run(setup, report)
    except (OSError, RotatordError) as exc:
        report.add("todo", "stopped", str(exc))
    for action, what, detail in report.lines:
        print(f"{action:<10} {what}" + (f"  ({detail})" if detail else ""))
    todo = report.count("todo")
    if report.changed == 0 and todo == 0:
        print("nothing changed: already set up")
    else:
        print(f"{report.changed} change(s), {todo} step(s) left for you")
    if todo == 0:
        print("next: systemctl enable --now rotatord && systemctl status rotatord")
    return 1 if todo else 0


def _unrooted(config: Config, root: Path) -> Config:
    """Paths in a config read from under ``root`` are resolved there; strip ``root`` again."""

    def strip(p: Path) -> Path:
        return Path("/") / p.relative_to(root) if _under(p, root) else p

    services = {
        name: replace(
            spec,
            outputs=tuple(replace(o, path=strip(o.path)) for o in spec.outputs),
            challenge=replace(spec.challenge, webroot=strip(spec.challenge.webroot))
            if isinstance(spec.challenge, Http01Webroot)
            else spec.challenge,
        )
        for name, spec in config.services.items()
    }
    return replace(config, services=services)
