"""Import rules from ARCHITECTURE.md, enforced by walking every module's AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "rotatord"

# Third-party modules allowed only in the listed places (paths relative to rotatord/).
CONFINED = {
    "acme": ("issuing/",),
    "josepy": ("issuing/",),
    "requests": ("issuing/",),
    "apscheduler": ("runtime/scheduler.py",),
    "watchdog": ("runtime/confwatch.py",),
    # setup_systemd.py: the installer runs useradd and systemctl daemon-reload, nothing else.
    "subprocess": ("deploy/reload.py", "setup_systemd.py"),
}
# Calls allowed only in the listed places.
CONFINED_CALLS = {
    "structlog.configure": ("observe/logging.py",),
    "datetime.now": ("clock.py",),
    "datetime.utcnow": (),
    "time.time": ("clock.py",),
    "time.monotonic": ("clock.py",),
}
# Layer rank: a module may import only modules of the same or a lower rank.
RANKS = (
    (4, ("cli", "__main__.py", "daemon/")),  # cli.py and every cli_*.py
    (3, ("runtime/",)),
    (2, ("rotation/",)),
    (1, ("issuing/", "store/", "deploy/", "observe/", "config.py", "fsutil.py", "clock.py")),
    (0, ("core/",)),
)


def _rank(rel: str) -> int:
    for rank, prefixes in RANKS:
        if any(rel == p or rel.startswith(p) for p in prefixes):
            return rank
    return 1


def _module_rel(module: str) -> str | None:
    """Map ``rotatord.x.y`` to the path of its file or package relative to rotatord/."""
    parts = module.split(".")
    if parts[0] != "rotatord" or len(parts) == 1:
        return None
    base = PKG.joinpath(*parts[1:])
    if base.is_dir():
        return "/".join(parts[1:]) + "/"
    return "/".join(parts[1:]) + ".py"


def _sources() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        out.append((rel, ast.parse(path.read_text(), filename=str(path))))
    return out


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


SOURCES = _sources()


def test_there_is_code_to_check() -> None:
    """The walk sees the package (an empty walk would make every rule pass vacuously)."""
    rels = {rel for rel, _ in SOURCES}
    assert {
        "rotation/rotator.py",
        "store/fs.py",
        "core/policy.py",
        "issuing/acme_issuer.py",
        "daemon/loop.py",
    } <= rels


@pytest.mark.parametrize(("rel", "tree"), SOURCES, ids=[r for r, _ in SOURCES])
def test_confined_imports(rel: str, tree: ast.Module) -> None:
    """acme/josepy/requests, apscheduler, watchdog and subprocess stay in their one adapter."""
    for name in _imports(tree):
        top = name.split(".")[0]
        allowed = CONFINED.get(top)
        if allowed is not None:
            assert any(rel.startswith(a) for a in allowed), f"{rel} imports {name}"


@pytest.mark.parametrize(("rel", "tree"), SOURCES, ids=[r for r, _ in SOURCES])
def test_confined_calls(rel: str, tree: ast.Module) -> None:
    """The clock and structlog.configure are called in exactly one module each."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name is None:
                continue
            for call, allowed in CONFINED_CALLS.items():
                if name == call or name.endswith("." + call):
                    assert rel in allowed, f"{rel}:{node.lineno} calls {name}"


@pytest.mark.parametrize(("rel", "tree"), SOURCES, ids=[r for r, _ in SOURCES])
def test_layers_point_down(rel: str, tree: ast.Module) -> None:
    """A module imports only its own layer or lower ones; core imports nothing else of ours."""
    mine = _rank(rel)
    for name in _imports(tree):
        target = _module_rel(name)
        if target is None:
            continue
        if rel.startswith("core/"):
            assert target.startswith("core/"), f"{rel} (core) imports {name}"
        assert _rank(target) <= mine, f"{rel} (rank {mine}) imports {name} (rank {_rank(target)})"


def test_rule_catches_a_violation() -> None:
    """The checker itself flags a forbidden import (guards against a rule that cannot fail)."""
    tree = ast.parse("import acme.client\nfrom rotatord.rotation import Rotator\n")
    names = _imports(tree)
    assert "acme.client" in names
    assert _rank("store.py") < _rank(_module_rel("rotatord.rotation") or "")


# Modules that may exceed the size limit, and why.
SIZE_EXEMPT = {"config.py": "every key's validation, with its message; its own issue splits it"}
MAX_LINES = 450


@pytest.mark.parametrize(("rel", "tree"), SOURCES, ids=[r for r, _ in SOURCES])
def test_modules_stay_small(rel: str, tree: ast.Module) -> None:
    """No module under rotatord/ grows past 450 lines (a module doing eight jobs hides bugs)."""
    if rel in SIZE_EXEMPT:
        return
    lines = (PKG / rel).read_text().count("\n")
    assert lines <= MAX_LINES, f"{rel} has {lines} lines (limit {MAX_LINES})"
