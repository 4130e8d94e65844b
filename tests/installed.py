"""The wheel of this tree, built with ``python -m build`` and installed in a fresh venv of
Debian's own ``/usr/bin/python3`` (the README's install path), for tests that run the installed
``rotatord`` (tests/test_install.py, tests/test_unprivileged.py).

Nothing is cached across runs: the copy of the tree, the build, the venv and pip (no cache dir)
live in one temp dir, world-traversable so ``nobody`` can run the installed copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.unavailable import unavailable

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")  # Debian's own, externally managed (PEP 668)
IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "build", "dist", "*.egg-info", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis", "demo-state",
)  # fmt: skip


@dataclass(frozen=True)
class Installed:
    root: Path  # world-traversable temp dir holding everything below
    venv: Path
    wheel: Path
    sdist: Path
    build_output: str = field(repr=False)

    @property
    def rotatord(self) -> Path:
        return self.venv / "bin" / "rotatord"


def run(
    argv: list[str | Path], timeout: float = 120, **kw: object
) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False,
        **kw,  # type: ignore[call-overload]
    )  # fmt: skip
    return done


def install() -> Iterator[Installed]:
    if not DEBIAN_PYTHON.exists() or run([DEBIAN_PYTHON, "-c", "import ensurepip"]).returncode:
        unavailable("no /usr/bin/python3 with venv/ensurepip (apt-get install python3-venv)")
    if run([sys.executable, "-c", "import build"]).returncode:
        unavailable("`build` is not installed (pip install -e '.[dev]')")
    root = Path(tempfile.mkdtemp(prefix="rt-install-", dir="/tmp"))
    try:
        root.chmod(0o755)
        src = root / "src"
        shutil.copytree(REPO, src, ignore=IGNORE, symlinks=True)
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
        built = run([sys.executable, "-m", "build", "--outdir", root / "dist", src], env=env)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        (wheel,) = (root / "dist").glob("rotatord-*.whl")
        (sdist,) = (root / "dist").glob("rotatord-*.tar.gz")
        venv = root / "venv"
        made = run([DEBIAN_PYTHON, "-m", "venv", venv])
        assert made.returncode == 0, made.stderr
        # cwd: a tree with a rotatord.egg-info in it would count as installed already
        pip = run([venv / "bin" / "pip", "install", "-q", wheel], env=env, cwd=root)
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
        yield Installed(root, venv, wheel, sdist, built.stdout + built.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
