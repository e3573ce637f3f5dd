"""Executing one stage notebook: warm kernels started ahead of their stage, the papermill
engine that runs a notebook on one, and the manifest entry of the result; the interface
the runner drives one stage at a time (:class:`StageEngine`) and its papermill
implementation (:class:`WarmKernels`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mlfolio import products
from mlfolio.files import read_json
from mlfolio.graph import Stage, notebooks_dir
from mlfolio.pipeline.manifest import StageEntry
from mlfolio.pipeline.signals import Signals, running_cell
from mlfolio.procstat import peak_rss_mb, tree_cpu_s

log = logging.getLogger(__name__)

# Kernels warming ahead of the running stage: short stages (2-4 s) end before one
# kernel's warm-up (~5 s on two busy cores) does.
KERNEL_LOOKAHEAD = 2


# -- executing one stage ---------------------------------------------------------------
def _cell_seconds(nb_path: Path) -> tuple[float, float]:
    """(all cells, the setup cell) durations recorded by papermill in the executed notebook."""
    nb = json.loads(nb_path.read_text())
    total = setup = 0.0
    for cell in nb["cells"]:
        dur = cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        total += dur
        if "setup" in cell.get("metadata", {}).get("tags", []):
            setup += dur
    return total, setup


def kernel_env(env: Mapping[str, str]) -> dict[str, str]:
    """A stage kernel's environment: ``env``, with OpenMP's idle threads sleeping unless
    ``env`` says otherwise (``OMP_WAIT_POLICY``). Beside another busy process on 2 cores, a
    2-thread XGBoost fit (:func:`mlfolio.train.fit_threads`) of 1M rows whose threads spin
    while they wait takes 1.47x one thread's time; sleeping, 1.01x
    (benchmarks/results/xgboost-threads.md). OpenMP reads it once, as it loads."""
    return {"OMP_WAIT_POLICY": "PASSIVE", **env}


class WarmKernel:
    """A kernel started, and warmed up, while the previous stage still runs.

    Kernel start plus the imports of pandas, scikit-learn and MLflow cost ~6 s per stage
    on a 2-core machine; stage code mostly uses one core, so the other prepares the next
    kernel. The warm-up runs as the kernel's own start-up code (IPython's ``exec_lines``),
    before it answers anyone, so papermill simply finds a kernel that became ready late.
    """

    def __init__(self, run_dir: Path, tracking_uri: str, warm_up: bool = True):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        # IPC sockets in a private folder: no TCP ports, and two kernels starting at once
        # cannot pick the same socket names (paths must stay short: 107 bytes at most).
        self._sockets = tempfile.mkdtemp(prefix="mlfolio-k")
        # Async, like the kernel managers nbclient creates itself: papermill's client then
        # drives it exactly as it drives its own.
        self.km = AsyncKernelManager(
            kernel_name="python3", transport="ipc", ip=f"{self._sockets}/k"
        )
        warm = f"import mlfolio.stages.warm as _w; _w.warm_up({tracking_uri!r}); del _w"
        # The kernel's own stdout/stderr (not the notebook's outputs) go to a log file:
        # inheriting the runner's descriptors stalls kernel start when they are captured.
        (run_dir / "logs").mkdir(exist_ok=True)
        self._log = (run_dir / "logs" / "kernels.log").open("ab")
        self.peak_rss_mb: float | None = None  # read when its notebook's cells are done
        self._cpu_start: float | None = None  # the kernel's CPU seconds when its stage began
        self.cpu_s: float | None = None  # ... and those its stage used (its children's too)
        run_sync(self.km.start_kernel)(
            cwd=str(run_dir),
            env=kernel_env(os.environ),
            stdout=self._log,
            stderr=self._log,
            extra_arguments=[f"--IPKernelApp.exec_lines={[warm]!r}"] if warm_up else [],
        )

    def record_start(self) -> None:
        """Its stage begins: the CPU time so far (start-up, warm-up) is not the stage's."""
        self._cpu_start = tree_cpu_s(getattr(getattr(self.km, "provisioner", None), "pid", None))

    def record_peak(self) -> None:
        """Read the kernel's peak memory and the CPU time its stage used (kernels are shut
        down right after their cells, and a high-water mark read then covers every cell)."""
        provisioner = getattr(self.km, "provisioner", None)
        self.peak_rss_mb = peak_rss_mb(getattr(provisioner, "pid", None))
        cpu = tree_cpu_s(getattr(provisioner, "pid", None))
        if cpu is not None and self._cpu_start is not None:
            self.cpu_s = round(cpu - self._cpu_start, 2)

    def kill(self) -> None:
        """SIGKILL the kernel's process group at once (safe inside a signal handler): the
        notebook client then sees a dead kernel and returns; shutdown() still cleans up."""
        provisioner = getattr(self.km, "provisioner", None)
        pgid, pid = getattr(provisioner, "pgid", None), getattr(provisioner, "pid", None)
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)
            elif pid:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        if self.km.has_kernel:
            run_sync(self.km.shutdown_kernel)(now=True)
        shutil.rmtree(self._sockets, ignore_errors=True)
        self._log.close()


def _register_engine() -> str:
    """A papermill engine that runs a notebook on a given (warm) kernel and, like papermill
    with its own kernels, shuts that kernel and its client down when the notebook ends."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class WarmKernelEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            km=None,
            on_cells_done=None,
            **kwargs,
        ):
            client = _Client(
                nb_man,
                km=km,
                kernel_name=kernel_name,
                log=logging.getLogger("papermill"),
                startup_timeout=start_timeout,
                timeout=execution_timeout,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )
            # nbclient leaves a kernel it did not start running, with its client's channels
            # open; cleanup_kc closes both in the event loop that owns them. "immediate":
            # every cell has returned, so nothing is left to flush, and a graceful shutdown
            # spends 2-3 s in the kernel's exit handlers.
            client.shutdown_kernel = "immediate"
            client.on_cells_done = on_cells_done
            return client.execute(cleanup_kc=True)

    class _Client(PapermillNotebookClient):
        on_cells_done = None

        def papermill_execute_cells(self):
            try:
                super().papermill_execute_cells()
            finally:  # the kernel still runs here, also after a failing cell
                if self.on_cells_done is not None:
                    self.on_cells_done()

    papermill_engines.register("mlfolio-warm", WarmKernelEngine)
    return "mlfolio-warm"


class _Bound:
    """The whole-attempt time limit: past ``timeout_s`` the kernel is killed (papermill's
    ``execution_timeout`` bounds each cell, not a stage that loops over many)."""

    def __init__(self, kernel: WarmKernel, timeout_s: float | None):
        self.fired = False
        self._kernel = kernel
        self._timer = threading.Timer(timeout_s, self._fire) if timeout_s else None

    def _fire(self) -> None:
        self.fired = True
        self._kernel.kill()

    def __enter__(self) -> _Bound:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


def timeout_setting(stage: Stage) -> str:
    """Where a stage's time limit is set (named by a timed-out attempt's error)."""
    return f"stages.{stage.name}.timeout_s"


def execute_stage(
    stage: Stage,
    run_dir: Path,
    parameters: dict[str, Any],
    kernel: WarmKernel | None = None,
    timeout_s: float | None = None,
) -> StageEntry:
    """Run one notebook into the run folder (on ``kernel`` when given, else on one started
    for it); return its manifest entry (never raises for a failing cell: the entry says
    which cell failed). An attempt still running after ``timeout_s`` seconds has its kernel
    killed and is recorded failed as ``StageTimeout``, naming ``stages.<stage>.timeout_s``."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from mlfolio.pipeline import report

    out_nb = run_dir / stage.notebook
    t0 = time.perf_counter()
    entry = StageEntry.executing(stage.notebook)
    # Never papermill's own kernel: its manager listens on TCP, and ipykernel 7 then warns
    # "Kernel is running over TCP without encryption" on the terminal at every start. Ours
    # talks over IPC sockets in a private folder and logs to logs/kernels.log.
    own = None if kernel else WarmKernel(run_dir, "", warm_up=False)
    running = kernel or own
    running.record_start()
    bound = _Bound(running, timeout_s)  # type: ignore[arg-type]
    try:
        with bound:
            pm.execute_notebook(
                str(notebooks_dir() / stage.notebook),
                str(out_nb),
                parameters=parameters,
                kernel_name="python3",
                progress_bar=False,
                cwd=str(run_dir),
                start_timeout=180,
                km=running.km,
                engine_name=_register_engine(),
                on_cells_done=running.record_peak,
            )
        entry.succeed()
    except PapermillExecutionError as exc:
        entry.fail(
            exc.ename,
            exc.evalue,
            exc.cell_index,
            execution_count=exc.exec_count,
            source=exc.source[:2000],
        )
    except Exception as exc:  # kernel died, notebook missing, ... : still record it
        entry.fail(type(exc).__name__, str(exc))
    finally:
        if own is not None:
            own.shutdown()
    if bound.fired and entry.status != "succeeded":
        entry.time_out(timeout_s, timeout_setting(stage), running_cell(out_nb))  # type: ignore[arg-type]
    entry.duration_s = round(time.perf_counter() - t0, 3)
    if (peak := running.peak_rss_mb) is not None:
        entry.set(peak_rss_mb=peak)
    if (cpu := running.cpu_s) is not None:
        entry.set(cpu_s=cpu)  # from the stage's start to its last cell (children included)
    if out_nb.exists():
        try:
            cells, setup = _cell_seconds(out_nb)
            entry.set(cells_s=round(cells, 3), setup_cell_s=round(setup, 3))
            t_html = time.perf_counter()
            report.notebook_to_html(out_nb, run_dir / entry.html)
            entry.set(html_s=round(time.perf_counter() - t_html, 3))
        except (OSError, ValueError) as exc:  # a full disk cut the notebook or its page
            if isinstance(exc, ValueError):  # not JSON: cut short, of no use to a reader
                out_nb.unlink(missing_ok=True)
            _unwritten(entry, exc)
        entry.duration_s = round(time.perf_counter() - t0, 3)
    # The run id is in the stage's own document (named by its declaration, not after it).
    document = products.document(stage.name)
    if entry.status == "succeeded" and document and (run_dir / document.path).exists():
        entry.mlflow_run_id = read_json(run_dir / document.path).get("mlflow_run_id")
    return entry


def _unwritten(entry: StageEntry, exc: Exception) -> None:
    """A stage whose notebook or page cannot be written failed, whatever its cells did (a
    cell's own error stays the one reported)."""
    if isinstance(exc, OSError):
        what = f"cannot write {entry.html}: {exc.strerror or exc}"
    else:
        what = f"{entry.notebook} was cut short and is removed ({exc})"
    log.info("stage notebook %s: not recorded: %s", entry.notebook, what)
    if entry.status == "succeeded" or entry.error is None:
        entry.fail(type(exc).__name__, what)


# -- what the runner drives, one stage at a time ------------------------------------------
class StageEngine(Protocol):
    """Executes one stage at a time for the runner, which drives it: the order, reuse,
    retries, signals and the run's record are the runner's; running one attempt of one
    stage into the run folder, within its time limit, is the engine's."""

    def execute(
        self, stage: Stage, parameters: dict[str, Any], timeout_s: float | None, later: int
    ) -> StageEntry | None:
        """One attempt of ``stage``: its entry (failed, never raised, when the stage
        fails; ``StageTimeout`` when stopped past ``timeout_s``). ``later``: how many
        stages execute after it (what to prepare ahead). None: a signal came first."""
        ...


class WarmKernels:
    """The papermill stage engine: each stage on a kernel started and warmed while the
    stages before it ran (``warm``; else on one started for it), tracked by the run's
    signal handler so that a signal kills it at once."""

    def __init__(self, folder: Path, tracking_uri: str, sigs: Signals, warm: bool, to_execute: int):
        self.folder, self.uri, self.sigs, self.warm = folder, tracking_uri, sigs, warm
        # Kernels start now, so their imports overlap the tracking store's start-up; none
        # for the leading stages that will be reused.
        self.kernels = (
            [self._start() for _ in range(min(1 + KERNEL_LOOKAHEAD, to_execute))] if warm else []
        )

    def _start(self, warm_up: bool = True) -> WarmKernel:
        return self.sigs.track(WarmKernel(self.folder, self.uri, warm_up))  # type: ignore[return-value]

    def execute(
        self, stage: Stage, parameters: dict[str, Any], timeout_s: float | None, later: int
    ) -> StageEntry | None:
        if self.warm:
            # (none left when the plan foresaw a reuse that did not happen)
            kernel = self.kernels.pop(0) if self.kernels else self._start()
            # Keep kernels warming for the stages after this one (reused ones need none).
            if len(self.kernels) < min(1 + KERNEL_LOOKAHEAD, later):
                self.kernels.append(self._start())
        else:
            kernel = self._start(warm_up=False)
        try:
            if self.sigs.signum is not None:  # it came while kernels were starting
                return None
            return execute_stage(stage, self.folder, parameters, kernel, timeout_s)
        finally:
            self.sigs.release(kernel)


def attempt_name(name: str, attempt: int) -> str:
    """``05_evaluate.ipynb`` -> ``05_evaluate.attempt1.ipynb``."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.attempt{attempt}.{suffix}" if dot else f"{name}.attempt{attempt}"


def set_aside(run_dir: Path, entry: StageEntry, attempt: int) -> dict[str, Any]:
    """Keep a failed attempt's notebook and page under its attempt's names (the next
    attempt writes the stage's own); return the attempt's record for the stage's entry."""
    kept: dict[str, str | None] = {}
    for key in ("notebook", "html"):
        name = getattr(entry, key)
        kept[key] = None
        if name and (run_dir / name).exists():
            kept[key] = attempt_name(name, attempt)
            (run_dir / name).replace(run_dir / kept[key])
    return entry.as_attempt(attempt, kept["notebook"], kept["html"])
