"""Ctrl-C and SIGTERM while ``--engine kfp-local`` runs: every task stopped together with
what it started, so the run can be recorded ``interrupted``.

kfp's local runner has no stop of its own: it starts each task as a child process (its
stage kernel in a session of its own under it) and waits in a thread pool, where a
SIGINT was lost and a SIGTERM killed this process only, orphaning the tasks.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from mlfolio.pipeline import signals

EXECUTOR = "kfp.dsl.executor_main"  # in the command line of every lightweight task
REAP_INTERVAL_S = 0.2


class Stopped(BaseException):
    """Raised by the signal handler to unwind kfp's orchestrator: a BaseException, as kfp
    catches Exception around its tasks (and would then go on to the exit task)."""


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _children() -> dict[int, list[int]]:
    """Live (not zombie) processes by parent pid, from /proc."""
    found: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the name may hold spaces
        if state != "Z":
            found[int(ppid)].append(int(entry.name))
    return found


def task_processes(parent: int | None = None) -> list[int]:
    """The kfp task processes started by ``parent`` (this process) and all they started:
    stage kernels (in sessions of their own), tuning workers, their helpers."""
    children = _children()
    stack = [
        pid for pid in children.get(parent or os.getpid(), []) if EXECUTOR in " ".join(_argv(pid))
    ]
    found = []
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def task_name(argv: list[str]) -> str | None:
    """The component function a task process runs (``--function_to_execute NAME``)."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--function_to_execute":
            return value
    return None


class TaskStopper:
    """Stops the run's tasks (tracked by the run's signal handler, as the default engine's
    kernels are): the first ``kill`` stops every task process tree at once, then keeps
    sweeping until ``shutdown`` (kfp may start a queued task while it unwinds)."""

    def __init__(self) -> None:
        self.tasks: set[str] = set()  # the component functions that were running
        self.stopped = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._reaper: threading.Thread | None = None

    def kill(self) -> None:
        self._sweep()
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="kfp-stop", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while not self._done.wait(REAP_INTERVAL_S):
            self._sweep()

    def _sweep(self) -> None:
        """SIGSTOP the whole tree first (a process cannot fork once stopped, so none
        escapes by being re-parented), then SIGKILL it."""
        with self._lock:
            frozen: list[int] = []
            while new := [pid for pid in task_processes() if pid not in frozen]:
                for pid in new:
                    if name := task_name(_argv(pid)):
                        self.tasks.add(name)
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
                    frozen.append(pid)
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.stopped += len(frozen)

    def shutdown(self) -> None:
        """Stop sweeping; one last sweep (only once a signal came)."""
        if self._reaper is None:
            return
        self._done.set()
        self._reaper.join()
        self._sweep()


class Signals(signals.Signals):
    """The default engine's handler (first signal: record it, stop what is tracked;
    second: KeyboardInterrupt at once), which also unwinds kfp's orchestrator with
    :class:`Stopped` while ``unwind`` is set."""

    unwind = False

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        super()._handle(signum, frame)
        if first and self.unwind:
            self.unwind = False
            raise Stopped
