"""Watch the config file with watchdog. The only module that imports watchdog.

Editors save by writing a temp file and renaming it over the original, so we watch the
*directory* and react to any event whose source or destination is the config file. The callback
only signals; the daemon's main loop does the reload (coalescing bursts of events into one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Path, on_change: Callable[[], None]) -> None:
        self._target = os.fsdecode(target)
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = {os.fsdecode(event.src_path)}
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.add(os.fsdecode(dest))
        if self._target in paths:
            self._on_change()


class ConfigWatcher:
    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self._path = path.absolute()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(
            _Handler(self._path, on_change), str(self._path.parent), recursive=False
        )

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
