"""A real systemd booted in a container for tests (recipe: ../shared/SYSTEMD-CONTAINER.md).

systemd-nspawn boots the host's own root through an overlay whose writes land on a tmpfs, so the
host is never touched; PID 1 is started with ``systemd.unit=`` a minimal target (sysinit +
sockets: journald, no nginx/haproxy/timers from the host's presets). The container shares the
host's network namespace: a Pebble on the host's loopback is reachable from inside, and
whatever binds inside binds the host's ports (tests use free loopback ports only).

rotatord is installed for the unit the way the systemd guide says — a venv of Debian's
``/usr/bin/python3`` under ``/opt/rotatord`` and ``/usr/local/bin/rotatord`` — but filled by
copying the checkout and its installed dependency closure instead of ``pip install`` (which
spends ~40 s resolving against indexes here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
TARGET = "rotatord-test.target"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = Path("/opt/rotatord")
SYSTEM_PYTHON = "/usr/bin/python3"


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
    )


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


class Container:
    """A booted systemd container over an overlay of ``/``; ``root`` is its tree on the host."""

    def __init__(self, workdir: Path, name: str = "rotatord-test") -> None:
        self.workdir = workdir
        self.name = name
        self.upper = workdir / "up"
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self._mounted: list[Path] = []

    def path(self, inside: str | Path) -> Path:
        """The host path of ``inside`` (an absolute path in the container)."""
        return self.root / Path(inside).relative_to("/")

    # ------------------------------------------------------------------ lifecycle

    def boot(self, mask: tuple[str, ...] = ()) -> None:
        for d in (self.upper, self.root):
            d.mkdir(parents=True, exist_ok=True)
        self._mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(self.upper)], self.upper)
        (self.upper / "u").mkdir()
        (self.upper / "w").mkdir()
        opts = f"lowerdir=/,upperdir={self.upper}/u,workdir={self.upper}/w"
        self._mount(["-t", "overlay", "overlay", "-o", opts, str(self.root)], self.root)
        # Whiteouts in the overlay only: nspawn refuses a populated /dev and the host's id.
        for entry in self.path("/dev").iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.path("/etc/machine-id").unlink(missing_ok=True)
        units = self.path("/etc/systemd/system")
        (units / TARGET).write_text(
            "[Unit]\nDescription=rotatord container test\n"
            "Requires=sysinit.target sockets.target\nAfter=sysinit.target sockets.target\n"
        )
        for unit in mask:
            link = units / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        with open(self.console, "wb") as console:
            self.nspawn = subprocess.Popen(
                [
                    "systemd-nspawn", "-q", "-D", str(self.root), "--register=no",
                    "--keep-unit", "--link-journal=no", "-M", self.name, "--boot",
                    "--console=pipe", f"systemd.unit={TARGET}",
                ],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait(self._find_pid1, 30, f"the container's PID 1 ({self.console})")
        _wait(self._booted, 60, "systemctl is-system-running: running/degraded")

    def _find_pid1(self) -> bool:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.console.read_text()[-2000:]}")
        out = _run(["ps", "-o", "pid=", "--ppid", str(self.nspawn.pid)]).stdout.split()
        if out:
            self.pid1 = int(out[0])
        return bool(out)

    def _booted(self) -> bool:
        state = self.sh("systemctl is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def shutdown(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.pid1:
                self.sh("systemctl poweroff", check=False, timeout=30)
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        for mount in reversed(self._mounted):
            if _run(["umount", str(mount)]).returncode != 0:
                _run(["umount", "-l", str(mount)])
        self._mounted.clear()

    def _mount(self, args: list[str], where: Path) -> None:
        result = _run(["mount", *args])
        if result.returncode != 0:
            raise AssertionError(f"mount {args}: {result.stderr}")
        self._mounted.append(where)

    # ------------------------------------------------------------------ running things inside

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container as root, with a clean environment."""
        result = _run(
            [
                "nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={PATH}",
                "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "LC_ALL=C", "bash", "-c", script,
            ],
            timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container: {script!r} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def popen(self, script: str) -> subprocess.Popen[str]:
        """Start a shell script inside the container without waiting for it."""
        return subprocess.Popen(
            [
                "nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={PATH}",
                "bash", "-c", script,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    # ------------------------------------------------------------------ installing rotatord

    def install_rotatord(self) -> None:
        """A venv of Debian's python at /opt/rotatord holding this checkout and its dependency
        closure (copied from the running interpreter), linked at /usr/local/bin/rotatord."""
        self.sh(f"{SYSTEM_PYTHON} -m venv --without-pip {VENV}")
        version = self.sh(
            f"{VENV}/bin/python3 -c 'import sys; print(*sys.version_info[:2])'"
        ).stdout.split()
        if tuple(int(v) for v in version) != sys.version_info[:2]:
            raise AssertionError(
                f"{SYSTEM_PYTHON} is {version}, the test runs on {sys.version_info[:2]}: "
                "cannot copy compiled dependencies across"
            )
        site = self.path(VENV / "lib" / f"python{version[0]}.{version[1]}" / "site-packages")
        for dist in _closure("rotatord"):
            if dist.metadata["Name"].lower() == "rotatord":
                continue
            for rel in dist.files or ():
                src = Path(str(dist.locate_file(rel)))
                if ".." in rel.parts or "__pycache__" in rel.parts or not src.is_file():
                    continue
                dst = site / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        shutil.copytree(
            REPO / "rotatord", site / "rotatord", ignore=shutil.ignore_patterns("__pycache__")
        )
        script = self.path(VENV / "bin" / "rotatord")
        script.write_text(
            f"#!{VENV}/bin/python3\nimport sys\nfrom rotatord.cli import main\nsys.exit(main())\n"
        )
        os.chmod(script, 0o755)  # noqa: S103 - a program everyone may run
        link = self.path("/usr/local/bin/rotatord")
        link.unlink(missing_ok=True)
        link.symlink_to(VENV / "bin" / "rotatord")


def _closure(name: str) -> Iterator[metadata.Distribution]:
    """``name``'s distribution and every distribution it needs (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        key = todo.pop().lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        yield dist
        for raw in dist.requires or ():
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
