"""Files written whole or not at all, and JSON read back: the one way run folders are
written (stages, the runner, the report, the monitor all use these)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_text(path: Path, text: str) -> None:
    """Write through a new file, atomically: a crash leaves the old file, never half a
    new one, and a hard link shared with another run's folder is never altered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:  # a full disk: the half-written file would hold what is left
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(payload, indent=2, default=_to_jsonable) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
