"""SIGINT and SIGTERM while a run executes: the handler that stops what the run started,
and the record of an interruption (the stage that was executing, the cell it was in)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from mlfolio.errors import RunInterrupted
from mlfolio.graph import Stage
from mlfolio.pipeline.manifest import Manifest, StageEntry, now


class Stoppable(Protocol):
    """What a signal stops at once: a stage's kernel, kfp's tasks."""

    def kill(self) -> None: ...

    def shutdown(self) -> None: ...


class Signals:
    """SIGINT and SIGTERM while a run executes.

    The first one SIGKILLs every kernel of the run at once (papermill then returns the
    partial notebook) and is only recorded; the runner checks ``signum`` between its steps
    and ends the run as ``interrupted``. A second one raises KeyboardInterrupt at once.
    Handlers exist only in the main thread (Python runs them nowhere else) and are restored
    when the run returns.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.kernels: list[Stoppable] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler set outside Python; the default is the closest we can restore
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        for kernel in self.kernels:
            kernel.kill()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def track(self, kernel: Stoppable) -> Stoppable:
        self.kernels.append(kernel)
        return kernel

    def release(self, kernel: Stoppable) -> None:
        kernel.shutdown()
        self.kernels.remove(kernel)

    def release_all(self) -> None:
        while self.kernels:
            self.release(self.kernels[0])

    def end(self, *then: Callable[[], object]) -> None:
        """After a run, whatever ended it: shut down what is still tracked, restore the
        handlers, then call each of ``then`` in order (every step runs even when one
        before it raised, and the error is raised once all have run)."""
        with ExitStack() as steps:
            for call in reversed(then):
                steps.callback(call)
            steps.callback(self.restore)
            self.release_all()


def running_cell(notebook: Path) -> int | None:
    """The cell that was executing when the kernel stopped: the last one papermill started
    (it marks even that one "completed" once the kernel is gone)."""
    if not notebook.exists():
        return None
    started = [
        index
        for index, cell in enumerate(json.loads(notebook.read_text())["cells"])
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return started[-1] if started else None


def record_interruption(
    manifest: Manifest,
    folder: Path,
    rest: list[Stage],
    entry: StageEntry | None,
    sigs: Signals,
) -> RunInterrupted:
    """Record the interruption: the stage that was executing (``entry``, None between
    stages) ``interrupted``, the stages after it ``not run``."""
    stage = rest[0] if entry is not None else None
    cell = None
    if entry is not None:
        cell = running_cell(folder / entry.notebook)
        entry.interrupt(sigs.name, cell)
    manifest.not_run(rest[1:] if stage else rest)
    manifest.interrupt(
        {
            "signal": sigs.name,
            "stage": stage.name if stage else None,
            "cell_index": cell,
            "resume_from": rest[0].name,
            "at": now(),
        }
    )
    manifest.save()
    where = (
        f"during stage '{stage.name}'" + (f" (cell {cell})" if cell is not None else "")
        if stage
        else "between stages"
    )
    return RunInterrupted(
        sigs.signum or signal.SIGINT,
        f"run interrupted by {sigs.name} {where}; resume with "
        f"--from {rest[0].name} --run-dir {folder}",
    )


def record_forced_stop(manifest: Manifest, folder: Path, sigs: Signals) -> None:
    """The second signal: mark what still says ``running`` interrupted (the next resume
    ends the MLflow runs); no MLflow calls, it must be quick."""
    from mlfolio.pipeline import report

    if not manifest.forced_stop(sigs.name):
        return
    manifest.save()
    report.write_index(folder, manifest.data)
