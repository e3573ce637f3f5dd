"""Progress of a running stage, across the kernel boundary: the stage writes a small JSON
file in the run folder as it goes; the runner, in another process, watches it and shows
it on the terminal. Plain JSON and no heavy imports on either side."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TUNE = "logs/tune_progress.json"  # in the run folder; written by every tuning worker


def write(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` with ``doc`` at once (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def read(path: Path) -> dict[str, Any] | None:
    """The last progress written, or None (not started, or unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@contextmanager
def watch(
    path: Path,
    render: Callable[[dict[str, Any]], str],
    emit: Callable[[str], None],
    interval: float = 1.0,
) -> Iterator[None]:
    """While the block runs, emit ``render(doc)`` each time the file at ``path`` changes
    (polled every ``interval`` seconds on a daemon thread)."""
    stop = threading.Event()

    def poll() -> None:
        last = None
        while not stop.wait(interval):
            doc = read(path)
            if doc is not None and doc != last:
                last = doc
                emit(render(doc))

    thread = threading.Thread(target=poll, name="mlfolio-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 1)
