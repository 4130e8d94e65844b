"""The files the wheel carries (example config, unit file): one copy each, in the source tree's
``config/`` and ``systemd/``; ``setup.py`` maps them into the wheel as ``rotatord._data.*``. From
a checkout (``PYTHONPATH=.``, no install) they are read from the tree itself."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> (data package in the wheel, file, its place in the source tree)
FILES = {
    "example-config": ("rotatord._data.config", "rotatord.example.toml", "config"),
    "systemd-unit": ("rotatord._data.systemd", "rotatord.service", "systemd"),
}


def packaged_text(what: str) -> str:
    """The text of a packaged file (``OSError`` when neither the wheel nor a tree has it)."""
    package, name, tree_dir = FILES[what]
    try:
        return resources.files(package).joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        tree = Path(__file__).resolve().parent.parent / tree_dir / name
        return tree.read_text(encoding="utf-8")
