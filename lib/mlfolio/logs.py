"""Where a stage kernel's logs go: everything to the run's log file, only mlfolio's own
warnings to the page too.

Left alone, Optuna prints an INFO line per trial, MLflow its warnings and progress bars
and scikit-learn its ``warnings.warn`` calls to the kernel's stderr, which the executed
notebook (and its HTML) shows as red blocks that look like errors. The setup cell routes
them to ``runs/<run>/logs/<stage>.log`` instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Loggers that their library configures with its own stderr handler and no propagation.
LIBRARY_LOGGERS = ("mlflow", "optuna", "alembic", "sqlalchemy.engine", "huey")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_active: list[Callable[[], None]] = []  # the undo of the routing in place, if any


def stage_log(run_dir: Path, stage: str) -> Path:
    """The log file of one stage in a run folder."""
    return run_dir / "logs" / f"{stage}.log"


def _own_warnings(record: logging.LogRecord) -> bool:
    return record.name == "mlfolio" or record.name.startswith("mlfolio.")


def route(log_file: Path) -> Callable[[], None]:
    """Send every logger's records (INFO and up) and Python warnings to ``log_file``;
    mlfolio's warnings also to stderr, where the reader sees them. Returns the undo
    (idempotent: a setup cell run twice replaces its handlers, never stacks them)."""
    # Import the libraries first: each installs its handler on import (optuna on first use).
    import mlflow  # noqa: F401
    import optuna  # noqa: F401

    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    to_page = logging.StreamHandler(sys.stderr)
    to_page.setLevel(logging.WARNING)
    to_page.addFilter(_own_warnings)
    to_page.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    if _active:  # a setup cell run again: start from the state before the first route
        _active.pop()()
    root = logging.getLogger()
    root_level = root.level
    libraries = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in LIBRARY_LOGGERS
    }
    progress = os.environ.get(PROGRESS_BAR)
    for handler in (to_file, to_page):
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
    logging.captureWarnings(True)  # warnings.warn → logger "py.warnings" → the file
    # MLflow's artifact download bars (tqdm, on stderr) carry nothing a reader needs.
    os.environ[PROGRESS_BAR] = "false"

    def undo() -> None:
        if undo in _active:
            _active.remove(undo)
        logging.captureWarnings(False)
        for handler in (to_file, to_page):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(root_level)
        for name, (handlers, propagate) in libraries.items():
            lib = logging.getLogger(name)
            lib.handlers, lib.propagate = handlers, propagate
        if progress is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = progress

    _active.append(undo)
    return undo


# What the runner itself logs to the run folder (MLflow creating a new store's tables,
# alembic's migrations): INFO lines that would otherwise open the terminal's output.
RUNNER_LOGGERS = ("mlflow", "alembic")


def runner_log(run_dir: Path) -> Path:
    """The runner process's log file in a run folder."""
    return run_dir / "logs" / "runner.log"


def route_runner(log_file: Path) -> Callable[[], None]:
    """Send :data:`RUNNER_LOGGERS`' records (INFO and up) to ``log_file`` only, for the
    runner process while it runs; the terminal keeps the runner's own lines and mlfolio's
    warnings. Returns the undo."""
    import mlflow  # noqa: F401  (it installs its stderr handler on import: replace it after)

    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    saved = {}
    for name in RUNNER_LOGGERS:
        lib = logging.getLogger(name)
        saved[name] = (lib.handlers[:], lib.propagate, lib.level)
        lib.handlers, lib.propagate = [to_file], False
        lib.setLevel(logging.INFO)

    def undo() -> None:
        for name, (handlers, propagate, level) in saved.items():
            lib = logging.getLogger(name)
            lib.handlers, lib.propagate = handlers, propagate
            lib.setLevel(level)
        to_file.close()

    return undo
