"""The runner: chains the stage notebooks with papermill into one audited run folder.

``runs/<UTC time>-<experiment>-<short id>/`` receives, per stage, the executed notebook,
its HTML and its products; ``manifest.json`` records parameters, data hash, git commit,
package versions, per-stage status, timings, input hashes and MLflow ids; ``index.html``
is what a reviewer opens first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlfolio import config as config_mod
from mlfolio.config import Config, project_dir
from mlfolio.context import read_json, write_json
from mlfolio.errors import ConfigError, RunInterrupted, StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    products: tuple[str, ...]
    sections: tuple[str, ...]  # parameter sections the stage reads


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "01_ingest.ipynb", ("data/snapshot.parquet", "ingest.json"),
          ("experiment", "seed", "data", "schema", "tracking")),
    Stage("preprocess", "02_preprocess.ipynb",
          ("data/train.parquet", "data/valid.parquet", "data/test.parquet", "preprocess.json"),
          ("seed", "schema", "split")),
    Stage("train", "03_train.ipynb", ("train.json",), ("seed", "schema", "training")),
    Stage("tune", "04_tune.ipynb", ("tune.json",), ("seed", "schema", "tuning")),
    Stage("evaluate", "05_evaluate.ipynb", ("evaluate.json", "data/test_scores.parquet"),
          ("seed", "schema", "evaluation", "gate", "registry")),
    Stage("register", "06_register.ipynb", ("register.json",), ("registry", "tracking")),
    Stage("deploy", "07_deploy.ipynb", ("deploy.json",), ("registry", "tracking", "deploy")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# `mlfolio monitor`: its own run folder, linked to the retraining run it may fire.
MONITOR_STAGES: tuple[Stage, ...] = (
    Stage("monitor", "08_monitor.ipynb",
          ("drift.json", "monitor.json", "drift_report.html", "data/current.parquet"),
          ("seed", "schema", "registry", "tracking", "monitoring")),
    Stage("ab_report", "09_ab_report.ipynb", ("ab.json",),
          ("seed", "schema", "registry", "tracking", "monitoring")),
)
PIPELINES = {"training": STAGES, "monitor": MONITOR_STAGES}
# Logged to the pipeline run's artifacts under data/ (log_artifacts skips missing files).
REFERENCE_DATA = ("data/snapshot.parquet", "data/train.parquet", "data/test.parquet")
# Kernels warming ahead of the running stage: short stages (2-4 s) end before one
# kernel's warm-up (~5 s on two busy cores) does.
KERNEL_LOOKAHEAD = 2
KEY_PACKAGES = ("mlfolio", "mlflow", "optuna", "scikit-learn", "xgboost", "pandas", "numpy",
                "papermill", "nbconvert", "pyarrow")


def notebooks_dir() -> Path:
    return project_dir() / "notebooks"


def select_stages(stages: Sequence[str] | None = None, from_stage: str | None = None,
                  kind: str = "training") -> list[Stage]:
    """The stages to run: an explicit list, or ``from_stage`` to the end, or all."""
    if stages and from_stage:
        raise ConfigError("give either --stages or --from, not both")
    if kind not in PIPELINES:
        raise ConfigError(f"unknown pipeline {kind!r}; expected one of {', '.join(PIPELINES)}")
    pipeline = PIPELINES[kind]
    names = [s.name for s in pipeline]
    for name in [*(stages or []), *([from_stage] if from_stage else [])]:
        if name not in names:
            raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(names)}")
    if stages:
        return [s for s in pipeline if s.name in stages]
    if from_stage:
        return list(pipeline[names.index(from_stage):])
    return list(pipeline)


def new_run_dir(cfg: Config, runs_root: Path | None = None, kind: str = "training") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = runs_root or project_dir() / "runs"
    suffix = "-monitor" if kind == "monitor" else ""
    return root / f"{stamp}-{cfg.experiment}{suffix}-{secrets.token_hex(3)}"


# -- hashes and provenance -------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def notebook_source_hash(path: Path) -> str:
    """Hash of a notebook's cell sources only (outputs and metadata do not count)."""
    nb = json.loads(path.read_text())
    cells = [[c["cell_type"], "".join(c["source"])] for c in nb["cells"]]
    return _sha256(json.dumps(cells).encode())


def package_source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _upstream_hashes(stage: Stage, run_dir: Path) -> dict[str, str]:
    """Hashes of the earlier stages' products, as a stage reads them now."""
    upstream = {}
    pipeline = next(p for p in PIPELINES.values() if stage in p)
    for earlier in pipeline[:pipeline.index(stage)]:
        for product in earlier.products:
            path = run_dir / product
            if path.exists() and path.suffix == ".parquet":
                upstream[product] = file_hash(path)
            elif path.exists() and path.suffix == ".json":  # leave out volatile MLflow ids
                payload = read_json(path)
                payload.pop("mlflow_run_id", None)
                upstream[product] = _sha256(json.dumps(payload, sort_keys=True).encode())
            elif path.exists():
                upstream[product] = file_hash(path)
    return upstream


def stage_inputs(stage: Stage, cfg: Config, run_dir: Path, mlfolio_hash: str) -> dict[str, Any]:
    """What a stage's result depends on: the basis for skipping unchanged stages."""
    params = cfg.to_dict()
    parts = {
        "notebook": notebook_source_hash(notebooks_dir() / stage.notebook),
        "mlfolio": mlfolio_hash,
        "parameters": _sha256(json.dumps({k: params.get(k) for k in stage.sections},
                                         sort_keys=True).encode()),
        "upstream": _upstream_hashes(stage, run_dir),
    }
    parts["hash"] = _sha256(json.dumps(parts, sort_keys=True).encode())
    return parts


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_dir(), capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
        self.km = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                     ip=f"{self._sockets}/k")
        warm = f"import mlfolio.context as _w; _w.warm_up({tracking_uri!r}); del _w"
        # The kernel's own stdout/stderr (not the notebook's outputs) go to a log file:
        # inheriting the runner's descriptors stalls kernel start when they are captured.
        (run_dir / "logs").mkdir(exist_ok=True)
        self._log = (run_dir / "logs" / "kernels.log").open("ab")
        run_sync(self.km.start_kernel)(
            cwd=str(run_dir), stdout=self._log, stderr=self._log,
            extra_arguments=[f"--IPKernelApp.exec_lines={[warm]!r}"] if warm_up else [])

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
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False,
                                     stdout_file=None, stderr_file=None, start_timeout=60,
                                     execution_timeout=None, km=None, **kwargs):
            client = PapermillNotebookClient(
                nb_man, km=km, kernel_name=kernel_name, log=logging.getLogger("papermill"),
                startup_timeout=start_timeout, timeout=execution_timeout,
                log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
            # nbclient leaves a kernel it did not start running, with its client's channels
            # open; cleanup_kc closes both in the event loop that owns them. "immediate":
            # every cell has returned, so nothing is left to flush, and a graceful shutdown
            # spends 2-3 s in the kernel's exit handlers.
            client.shutdown_kernel = "immediate"
            return client.execute(cleanup_kc=True)

    papermill_engines.register("mlfolio-warm", WarmKernelEngine)
    return "mlfolio-warm"


def execute_stage(stage: Stage, run_dir: Path, parameters: dict[str, Any],
                  kernel: WarmKernel | None = None) -> dict[str, Any]:
    """Run one notebook into the run folder (on ``kernel`` when given); return its manifest
    entry (never raises for a failing cell: the entry says which cell failed)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from mlfolio import report

    out_nb = run_dir / stage.notebook
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"status": "running", "notebook": stage.notebook,
                             "html": stage.notebook.replace(".ipynb", ".html"),
                             "started": started.isoformat(timespec="seconds")}
    try:
        pm.execute_notebook(
            str(notebooks_dir() / stage.notebook), str(out_nb), parameters=parameters,
            kernel_name="python3", progress_bar=False, cwd=str(run_dir), start_timeout=180,
            **({"km": kernel.km, "engine_name": _register_engine()} if kernel else {}),
        )
        entry["status"] = "succeeded"
    except PapermillExecutionError as exc:
        entry["status"] = "failed"
        entry["error"] = {"cell_index": exc.cell_index, "execution_count": exc.exec_count,
                          "ename": exc.ename, "evalue": exc.evalue,
                          "source": exc.source[:2000]}
    except Exception as exc:  # kernel died, notebook missing, ... : still record it
        entry["status"] = "failed"
        entry["error"] = {"cell_index": None, "ename": type(exc).__name__, "evalue": str(exc)}
    entry["duration_s"] = round(time.perf_counter() - t0, 3)
    if out_nb.exists():
        cells, setup = _cell_seconds(out_nb)
        entry["cells_s"] = round(cells, 3)
        entry["setup_cell_s"] = round(setup, 3)
        t_html = time.perf_counter()
        report.notebook_to_html(out_nb, run_dir / entry["html"])
        entry["html_s"] = round(time.perf_counter() - t_html, 3)
        entry["duration_s"] = round(time.perf_counter() - t0, 3)
    product = run_dir / f"{stage.name}.json"
    if entry["status"] == "succeeded" and product.exists():
        entry["mlflow_run_id"] = read_json(product).get("mlflow_run_id")
    return entry


# -- the run ---------------------------------------------------------------------------
class Manifest:
    """manifest.json, rewritten atomically after every change."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / "manifest.json"
        if not path.exists():
            raise ConfigError(f"{run_dir}: no manifest.json; is this a run folder?")
        try:
            return cls(path, read_json(path))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None

    def save(self) -> None:
        self.data["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(self.path, self.data)


def _parent_run(cfg: Config, run_dir: Path, manifest: Manifest) -> tuple[str, str]:
    from mlfolio import tracking

    mlf = manifest.data.setdefault("mlflow", {})
    exp_id = tracking.configure(cfg)
    if not mlf.get("parent_run_id"):
        tags = {"mlfolio.git_commit": str(manifest.data["git"]["commit"]),
                "mlfolio.pipeline": manifest.data.get("kind", "training")}
        if trigger := manifest.data.get("trigger"):
            tags.update({"mlfolio.trigger": str(trigger.get("by", "monitor")),
                         "mlfolio.trigger_run_dir": str(trigger.get("monitor_run_dir", ""))})
        mlf["parent_run_id"] = tracking.start_parent_run(cfg, run_dir, tags)
    mlf.update({"tracking_uri": cfg.tracking_uri(), "experiment_id": exp_id,
                "experiment_name": cfg.experiment_name,
                "parent_run_url": tracking.run_url(cfg, exp_id, mlf["parent_run_id"])})
    return mlf["parent_run_id"], exp_id


def _fail_stage_run(parent_run_id: str, stage: str) -> None:
    """Mark the failed stage's MLflow run FAILED (the kernel died before closing it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    # MLflow's atexit hook closed it as FINISHED when the kernel shut down: correct that.
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                     f"and tags.`mlfolio.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    for stage_run in runs:
        client.set_terminated(stage_run.info.run_id, status="FAILED")


# -- interruptions, resumes and re-runs --------------------------------------------------
class _Signals:
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
        self.kernels: list[WarmKernel] = []
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

    def track(self, kernel: WarmKernel) -> WarmKernel:
        self.kernels.append(kernel)
        return kernel

    def release(self, kernel: WarmKernel) -> None:
        kernel.shutdown()
        self.kernels.remove(kernel)

    def release_all(self) -> None:
        while self.kernels:
            self.release(self.kernels[0])


def _lock_run_dir(folder: Path) -> Any:
    """Hold the run folder's lock for the whole run: a second runner on the same folder is
    refused, and a runner that holds it knows no other one is alive."""
    import fcntl

    handle = (folder / ".mlfolio.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"{folder}: another mlfolio run is using this run folder (pid "
                          f"{holder}); wait for it to end, or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _end_open_runs(client: Any, parent_run_id: str, status: str) -> list[str]:
    """End every RUNNING MLflow run under ``parent_run_id`` (stage runs, their trials) and
    the parent itself when it still runs; return their ids."""
    from mlflow.exceptions import MlflowException

    exp = client.get_run(parent_run_id).info.experiment_id
    running = client.search_runs([exp], "attributes.status = 'RUNNING'", max_results=50000)
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in running}

    def under(run_id: str | None) -> bool:
        seen: set[str] = set()
        while run_id and run_id not in seen:
            if run_id == parent_run_id:
                return True
            seen.add(run_id)
            if run_id not in parent_of:  # an ancestor that has ended already
                try:
                    parent_of[run_id] = client.get_run(run_id).data.tags.get(
                        "mlflow.parentRunId")
                except MlflowException:
                    return False
            run_id = parent_of[run_id]
        return False

    ended = [r.info.run_id for r in running if under(r.info.run_id)]
    for run_id in ended:
        client.set_terminated(run_id, status=status)
    return ended


def _close_abandoned(folder: Path, manifest: Manifest) -> None:
    """A runner killed outright (kill -9, power loss) leaves its record at ``running`` and
    its MLflow runs RUNNING. With the folder's lock held no runner is alive: end them."""
    data = manifest.data
    if data.get("status") == "running":
        stages = [name for name, s in data.get("stages", {}).items()
                  if s.get("status") == "running"]
        for name in stages:
            data["stages"][name].update(status="interrupted", interrupted={
                "signal": None, "cell_index": None,
                "why": "the runner ended without recording this stage (killed)"})
        data.update(status="interrupted", interrupted={
            "signal": None, "stage": stages[0] if stages else None, "cell_index": None,
            "at": data.get("updated"), "why": "the runner ended without recording the run"})
        manifest.save()
    mlf = data.get("mlflow") or {}
    if mlf.get("parent_run_id") and mlf.get("tracking_uri"):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            ended = _end_open_runs(MlflowClient(tracking_uri=mlf["tracking_uri"]),
                                   mlf["parent_run_id"], "KILLED")
        except MlflowException as exc:  # the store moved or was reset: nothing to end there
            log.warning("%s: could not end its abandoned MLflow runs: %s", folder, exc)
            return
        if ended:
            log.info("%s: ended %d MLflow run(s) left RUNNING as KILLED", folder, len(ended))


def _stage_parameters(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The parameter sections a stage reads (what its result depends on)."""
    return {key: params.get(key) for key in stage.sections}


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs; mappings compared per key."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [diff for key in sorted(set(old) | set(new), key=str)
                for diff in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _backfill_parameters(manifest: Manifest, kind: str) -> None:
    """Folders recorded before stages kept their own parameters: a stage that ran did so
    with the run's parameters of that time."""
    recorded = manifest.data.get("parameters")
    if recorded is None:
        return
    for stage in PIPELINES[kind]:
        entry = manifest.data.get("stages", {}).get(stage.name)
        if entry and entry.get("status") != "not run" and "parameters" not in entry:
            entry["parameters"] = _stage_parameters(stage, recorded)


def _check_parameters(folder: Path, manifest: Manifest, cfg: Config, selected: list[Stage],
                      kind: str, force: bool) -> list[str]:
    """Refuse a re-run whose parameters differ from the ones the folder's stages ran with
    when stages that keep their results would then disagree with the record: a stage that
    is not re-run but reads a changed key, or one downstream of a re-run stage whose keys
    changed. ``force`` runs anyway (they are marked stale). Returns the changed keys."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    recorded_stages = manifest.data.get("stages", {})
    upstream: list[tuple[str, Any, Any]] = []  # changes of re-run stages, seen downstream
    kept: dict[str, list[tuple[str, Any, Any]]] = {}
    changed: dict[str, tuple[str, Any, Any]] = {}
    for stage in PIPELINES[kind]:
        entry = recorded_stages.get(stage.name) or {}
        ran_with = entry.get("parameters")
        diff = ([] if ran_with is None else
                _differences(ran_with, _stage_parameters(stage, params)))
        if stage.name in names:
            upstream += diff
            changed.update({d[0]: d for d in diff})
        elif entry.get("status") == "succeeded" and (diff or upstream):
            kept[stage.name] = diff + upstream
            changed.update({d[0]: d for d in diff + upstream})
    if kept and not force:
        diffs = {d[0]: d for stage_diffs in kept.values() for d in stage_diffs}
        what = "; ".join(f"{key} (ran with {old!r}, now {new!r})"
                         for key, old, new in (diffs[k] for k in sorted(diffs)))
        raise ConfigError(
            f"{folder}: parameters differ from the ones its stages ran with: {what}. "
            f"Stage(s) {', '.join(kept)} would keep results made with the old values. "
            f"Re-run them too (e.g. --from {selected[0].name}), or give --force to run "
            f"anyway and mark them stale")
    return sorted(changed)


def _mark_stale(manifest: Manifest, cfg: Config, folder: Path, selected: list[Stage],
                kind: str) -> None:
    """A stage not re-run now is stale when its parameters or the upstream products it read
    changed since it ran; ``stale`` lists why (the index shows it)."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    for stage in PIPELINES[kind]:
        entry = manifest.data["stages"].get(stage.name)
        if not entry or stage.name in names or entry.get("status") != "succeeded":
            continue
        reasons = []
        if entry.get("parameters") is not None:
            keys = [d[0] for d in _differences(entry["parameters"],
                                               _stage_parameters(stage, params))]
            if keys:
                reasons.append(f"it ran with other parameters: {', '.join(keys)}")
        before = (entry.get("inputs") or {}).get("upstream")
        if before is not None:
            now = _upstream_hashes(stage, folder)
            changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
            if changed:
                reasons.append(f"its inputs changed since it ran: {', '.join(changed)}")
        if reasons:
            entry["stale"] = reasons
        else:
            entry.pop("stale", None)


def _running_cell(notebook: Path) -> int | None:
    """The cell that was executing when the kernel stopped: the last one papermill started
    (it marks even that one "completed" once the kernel is gone)."""
    if not notebook.exists():
        return None
    started = [index for index, cell in enumerate(json.loads(notebook.read_text())["cells"])
               if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _interrupted(manifest: Manifest, folder: Path, rest: list[Stage],
                 entry: dict[str, Any] | None, sigs: _Signals) -> RunInterrupted:
    """Record the interruption: the stage that was executing (``entry``, None between
    stages) ``interrupted``, the stages after it ``not run``."""
    stage = rest[0] if entry is not None else None
    cell = None
    if entry is not None:
        cell = _running_cell(folder / entry["notebook"])
        entry.pop("error", None)  # the dead kernel is our doing, not the stage's error
        entry.update(status="interrupted",
                     interrupted={"signal": sigs.name, "cell_index": cell})
    for later in rest[1:] if stage else rest:
        manifest.data["stages"][later.name] = {"status": "not run", "notebook": later.notebook}
    manifest.data.update(status="interrupted", failed_stage=None, failed_cell=None,
                         interrupted={"signal": sigs.name,
                                      "stage": stage.name if stage else None,
                                      "cell_index": cell, "resume_from": rest[0].name,
                                      "at": datetime.now(UTC).isoformat(timespec="seconds")})
    manifest.save()
    where = (f"during stage '{stage.name}'" + (f" (cell {cell})" if cell is not None else "")
             if stage else "between stages")
    return RunInterrupted(sigs.signum or signal.SIGINT,
                          f"run interrupted by {sigs.name} {where}; resume with "
                          f"--from {rest[0].name} --run-dir {folder}")


def _record_forced_stop(manifest: Manifest, folder: Path, sigs: _Signals) -> None:
    """The second signal: mark what still says ``running`` interrupted (the next resume
    ends the MLflow runs); no MLflow calls, it must be quick."""
    from mlfolio import report

    data = manifest.data
    if data.get("status") != "running":
        return
    for entry in data.get("stages", {}).values():
        if entry.get("status") == "running":
            entry.update(status="interrupted",
                         interrupted={"signal": sigs.name, "cell_index": None})
    data.update(status="interrupted", interrupted={
        "signal": sigs.name, "stage": None, "cell_index": None, "forced": True,
        "at": datetime.now(UTC).isoformat(timespec="seconds")})
    manifest.save()
    report.write_index(folder, data)


def run(params_file: str | Path, overrides: dict[str, Any] | None = None,
        stages: Sequence[str] | None = None, from_stage: str | None = None,
        run_dir: str | Path | None = None, runs_root: Path | None = None,
        echo: Callable[[str], None] = print, warm_kernels: bool = True,
        kind: str = "training", trigger: dict[str, Any] | None = None,
        force: bool = False) -> Manifest:
    """Validate the parameters, then execute the selected stages into a run folder.

    ``kind`` picks the stage list (``training`` or ``monitor``); ``trigger`` records why
    a monitor run fired this one (manifest and MLflow tags). Raises StageError (after
    writing the manifest, HTML and index) when a stage fails. Into an existing
    ``run_dir``: MLflow runs a killed runner left RUNNING are ended KILLED first, and
    parameters that differ from the ones its kept stages ran with are refused unless
    ``force`` (those stages are then marked stale). SIGINT/SIGTERM stop the stage's
    kernel; the run is recorded ``interrupted`` and RunInterrupted raised.
    """

    selected = select_stages(stages, from_stage, kind)
    cfg = config_mod.load(params_file, overrides)  # all validation before any notebook
    changed: list[str] = []
    if run_dir is not None:
        folder = Path(run_dir).resolve()
        manifest = Manifest.load(folder)
        if manifest.data.get("experiment") != cfg.experiment:
            raise ConfigError(f"{folder} belongs to experiment "
                              f"{manifest.data.get('experiment')!r}, not {cfg.experiment!r}")
        lock = _lock_run_dir(folder)
        try:
            _backfill_parameters(manifest, kind)
            _close_abandoned(folder, manifest)
            changed = _check_parameters(folder, manifest, cfg, selected, kind, force)
        except BaseException:
            lock.close()
            raise
    else:
        folder = new_run_dir(cfg, runs_root, kind)
        folder.mkdir(parents=True)
        lock = _lock_run_dir(folder)
        manifest = Manifest(folder / "manifest.json", {
            "experiment": cfg.experiment, "kind": kind, "run_dir": str(folder),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": {}})
    if trigger:
        manifest.data["trigger"] = trigger
    sigs = _Signals()
    sigs.install()
    try:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # kernels inherit it (xgboost)
        os.environ["MLFOLIO_PROJECT_DIR"] = str(project_dir())
        frozen = folder / "parameters.yaml"
        config_mod.dump(cfg, frozen)
        _create_sqlite_store(cfg.tracking_uri())
        # Kernels start now, so their imports overlap the tracking store's start-up below.
        kernels = [sigs.track(WarmKernel(folder, cfg.tracking_uri()))
                   for _ in range(min(1 + KERNEL_LOOKAHEAD, len(selected)))
                   ] if warm_kernels else []
        run_info = {"stages": [s.name for s in selected], "overrides": overrides or {},
                    "force": force, "changed": changed}
        return _run(cfg, selected, folder, frozen, manifest, params_file, overrides, kernels,
                    warm_kernels, sigs, run_info, echo)
    except KeyboardInterrupt:
        if sigs.signum is None:  # not a signal of ours (e.g. raised before the install)
            raise
        _record_forced_stop(manifest, folder, sigs)
        raise RunInterrupted(sigs.signum, f"run stopped at once by a second signal; resume "
                                          f"with --from STAGE --run-dir {folder}") from None
    finally:
        try:
            sigs.release_all()
        finally:
            sigs.restore()
            lock.close()


def _create_sqlite_store(uri: str) -> None:
    """Create a new SQLite tracking store before any kernel opens it: MLflow's schema
    migration is not safe against a second process migrating the same new file."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() and path.stat().st_size > 0:
        return
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _run(cfg: Config, selected: list[Stage], folder: Path, frozen: Path, manifest: Manifest,
         params_file: str | Path, overrides: dict[str, Any] | None, kernels: list[WarmKernel],
         warm: bool, sigs: _Signals, run_info: dict[str, Any],
         echo: Callable[[str], None]) -> Manifest:
    from mlflow.tracking import MlflowClient

    from mlfolio import report, tracking

    kind = manifest.data.get("kind", "training")
    manifest.data.update({
        "status": "running", "interrupted": None, "parameters_file": str(params_file),
        "overrides": overrides or {}, "parameters": cfg.to_dict(), "seed": cfg.seed,
        "git": git_info(), "packages": package_versions(),
    })
    manifest.data.setdefault("history", []).append(
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), **run_info})
    parent_run_id, _ = _parent_run(cfg, folder, manifest)
    nb_params = {"params_file": str(frozen), "run_dir": str(folder),
                 "parent_run_id": parent_run_id}
    (folder / "stage_parameters.yaml").write_text(
        "# papermill notebooks/NN_stage.ipynb out.ipynb -f this file: replays a stage\n"
        + yaml.safe_dump(nb_params, sort_keys=False))
    manifest.save()

    outcome = _run_stages(selected, cfg, folder, nb_params, manifest, package_source_hash(),
                          kernels, warm, sigs, echo)

    _collect_results(manifest, folder)
    _mark_stale(manifest, cfg, folder, selected, kind)
    if outcome is None:
        manifest.data.update({"status": "succeeded", "failed_stage": None, "failed_cell": None})
    manifest.save()
    report.write_index(folder, manifest.data)
    # The data a model was trained on travels with its run: a monitor on another machine
    # (shared tracking server, S3 artifacts) finds its reference rows there.
    tracking.log_artifacts(parent_run_id, [folder / name for name in REFERENCE_DATA], "data")
    tracking.log_artifacts(parent_run_id, sorted(folder.glob("*.ipynb")) +
                           sorted(folder.glob("*.html")) + [folder / "manifest.json",
                                                             frozen], "run")
    interrupted = isinstance(outcome, RunInterrupted)
    tracking.end_run(parent_run_id, "KILLED" if interrupted else
                     "FAILED" if outcome else "FINISHED")
    if interrupted:  # the stopped stage's run (and a trial's) never got to close itself
        _end_open_runs(MlflowClient(), parent_run_id, "KILLED")
    echo(f"run folder: {folder}\nreport:     {folder / 'index.html'}")
    if outcome is not None:
        raise outcome
    return manifest


def _run_stages(selected: list[Stage], cfg: Config, folder: Path, nb_params: dict[str, Any],
                manifest: Manifest, mlfolio_hash: str, kernels: list[WarmKernel], warm: bool,
                sigs: _Signals, echo: Callable[[str], None]
                ) -> StageError | RunInterrupted | None:
    """Execute stages in order, each on a kernel warmed during the stages before it (or,
    not ``warm``, on one started for it). Stops at the first failure or signal."""
    parent_run_id = nb_params["parent_run_id"]
    started = len(kernels)
    params = cfg.to_dict()
    overrides = manifest.data.get("overrides") or {}
    for i, stage in enumerate(selected, 1):
        if sigs.signum is not None:
            echo(f"[{i}/{len(selected)}] {stage.name:<10} not started: {sigs.name}")
            return _interrupted(manifest, folder, selected[i - 1:], None, sigs)
        inputs = stage_inputs(stage, cfg, folder, mlfolio_hash)
        echo(f"[{i}/{len(selected)}] {stage.name:<10} running ...")
        ran_with = {"parameters": _stage_parameters(stage, params), "overrides": overrides}
        manifest.data["stages"][stage.name] = {
            "status": "running", "notebook": stage.notebook,
            "started": datetime.now(UTC).isoformat(timespec="seconds"), **ran_with}
        manifest.save()
        if warm:
            kernel = kernels.pop(0)
            if started < len(selected):
                kernels.append(sigs.track(WarmKernel(folder, cfg.tracking_uri())))
                started += 1
        else:
            kernel = sigs.track(WarmKernel(folder, cfg.tracking_uri(), warm_up=False))
        try:
            entry = (execute_stage(stage, folder, nb_params, kernel)
                     if sigs.signum is None else None)
        finally:
            sigs.release(kernel)
        if entry is None:  # the signal came while kernels were starting
            echo(f"[{i}/{len(selected)}] {stage.name:<10} not started: {sigs.name}")
            return _interrupted(manifest, folder, selected[i - 1:], None, sigs)
        entry.update(ran_with)
        entry["inputs"] = inputs
        entry["inputs_hash"] = inputs["hash"]
        manifest.data["stages"][stage.name] = entry
        if entry["status"] != "succeeded" and sigs.signum is not None:
            stopped = _interrupted(manifest, folder, selected[i - 1:], entry, sigs)
            cell = entry["interrupted"]["cell_index"]
            echo(f"[{i}/{len(selected)}] {stage.name:<10} INTERRUPTED by {sigs.name} after "
                 f"{entry['duration_s']:.1f}s" + (f" in cell {cell}" if cell is not None else ""))
            return stopped
        if entry["status"] != "succeeded":
            err = entry["error"]
            failed = StageError(stage.name, f"{err['ename']}: {err['evalue']}", err["cell_index"])
            manifest.data.update({"status": "failed", "failed_stage": stage.name,
                                  "failed_cell": err["cell_index"]})
            for later in selected[i:]:
                manifest.data["stages"][later.name] = {"status": "not run",
                                                       "notebook": later.notebook}
            echo(f"[{i}/{len(selected)}] {stage.name:<10} FAILED after "
                 f"{entry['duration_s']:.1f}s in cell {err['cell_index']}: {err['ename']}: "
                 f"{str(err['evalue']).splitlines()[0] if err['evalue'] else ''}")
            manifest.save()
            _fail_stage_run(parent_run_id, stage.name)
            return failed
        echo(f"[{i}/{len(selected)}] {stage.name:<10} ok in {entry['duration_s']:.1f}s")
        manifest.save()
    return None


def _collect_results(manifest: Manifest, folder: Path) -> None:
    """Copy the headline facts of the stage products into the manifest."""
    def product(name: str) -> dict[str, Any] | None:
        path = folder / name
        return read_json(path) if path.exists() else None

    if ingest := product("ingest.json"):
        manifest.data["data_hash"] = ingest["data_hash"]
        manifest.data["data"] = {k: ingest[k] for k in ("source", "rows", "positive_rate",
                                                        "dropped_missing_target") if k in ingest}
    if ev := product("evaluate.json"):
        manifest.data["gate"] = ev["gate"]
        manifest.data["candidate"] = {"name": ev["candidate"]["name"],
                                      "test": ev["candidate"]["test"]}
    if deployed := product("deploy.json"):
        manifest.data["deploy"] = {k: deployed[k] for k in ("model_name", "version", "alias",
                                                             "model_uri", "targets")}
    if mon := product("monitor.json"):
        manifest.data["monitor"] = {k: mon[k] for k in (
            "model", "current", "share_drifted", "drifted_columns", "dataset_drift",
            "prediction_drift", "quality", "decision", "reports", "retrain_data")}
    if ab := product("ab.json"):
        manifest.data["ab"] = {k: ab.get(k) for k in ("design", "recommendation")}
    if reg := product("register.json"):
        manifest.data["model"] = {k: reg.get(k) for k in (
            "model_name", "version", "model_uri", "registered", "promoted", "why_not_promoted",
            "compared_against", "champion")}


# -- the monitor run -------------------------------------------------------------------
def _link(target: Path, start: Path) -> str:
    """A relative link from one run folder's index page to another's."""
    return os.path.relpath(target / "index.html", start)


def _log_has_rows(cfg: Config) -> bool:
    from datetime import timedelta

    from mlfolio import predlog

    mon = cfg.monitoring
    if not mon.prediction_log:
        return False
    since = datetime.now(UTC) - timedelta(hours=mon.window_hours) if mon.window_hours else None
    return predlog.count(mon.prediction_log, since=since) > 0


def _claim_retraining(cfg: Config, manifest: Manifest, runs_root: Path | None) -> str | None:
    """Claim the retraining this monitor run decided on, under the registry's retraining
    lock: None when claimed (the new run folder goes to ``actions.claimed_run_dir``), else
    why it is held. Two monitors that saw one trigger start one retraining."""
    from mlfolio import registry, tracking

    tracking.configure(cfg)
    retrain_dir = new_run_dir(cfg, runs_root)
    granted, claim = registry.claim_retraining(
        cfg.model_name, manifest.data["run_dir"],
        datetime.fromisoformat(manifest.data["created"]),
        cfg.monitoring.retrain.cooldown_hours, cfg.registry.lock_uri,
        cfg.registry.lock_timeout_s, retrain_run_dir=str(retrain_dir))
    if granted:
        manifest.data["actions"]["claimed_run_dir"] = str(retrain_dir)
        return None
    return (f"held: retraining already started by {claim['monitor_run_dir']} at "
            f"{claim['at']}" + (f" (run {claim['retrain_run_dir']})"
                                if claim.get("retrain_run_dir") else ""))


def monitor(params_file: str | Path, overrides: dict[str, Any] | None = None,
            dry_run: bool = False, runs_root: Path | None = None,
            echo: Callable[[str], None] = print, warm_kernels: bool = True
            ) -> tuple[Manifest, Manifest | None]:
    """``mlfolio monitor``: the monitor notebooks into their own run folder, then what they
    recommend — act on the A/B report (when ``monitoring.ab.act``) and run the training
    pipeline on the champion's data plus the newly labelled rows when the retraining policy
    fires. The new model is promoted only through the usual gate. ``dry_run`` decides and
    reports without acting. Returns the monitor manifest and the retraining one (or None).
    """
    from mlfolio import registry, report, tracking

    cfg = config_mod.load(params_file, overrides)
    if not (cfg.monitoring.current or cfg.monitoring.prediction_log):
        raise ConfigError(f"{params_file}: nothing to monitor: give --current FILE (CSV/"
                          "Parquet) or set monitoring.prediction_log to the model server's "
                          "--prediction-log folder")
    # The A/B report reads the prediction log: without rows there is nothing to compare.
    stages = ["monitor", "ab_report"] if _log_has_rows(cfg) else ["monitor"]
    manifest = run(params_file, overrides, stages=stages, runs_root=runs_root, echo=echo,
                   warm_kernels=warm_kernels, kind="monitor")
    folder = Path(manifest.data["run_dir"])
    decision = manifest.data["monitor"]["decision"]
    actions: dict[str, Any] = {"dry_run": dry_run}
    manifest.data["actions"] = actions
    echo(f"monitor: {'retraining fires' if decision['retrain'] else 'no retraining'}")
    for reason in decision["reasons"]:
        echo(f"  {reason}")

    ab = read_json(folder / "ab.json") if (folder / "ab.json").exists() else None
    action = (ab or {}).get("recommendation", {}).get("action", "keep")
    if ab and action != "keep":
        if not cfg.monitoring.ab.act:
            actions["ab"] = {"action": action, "done": False,
                             "why": "monitoring.ab.act is false: recommendation only"}
        elif dry_run:
            actions["ab"] = {"action": action, "done": False, "why": "--dry-run"}
        else:
            tracking.configure(cfg)
            actions["ab"] = {"action": action, "done": True,
                             **registry.act_on_ab(cfg.model_name, ab, str(folder),
                                                  cfg.registry.lock_uri,
                                                  cfg.registry.lock_timeout_s)}
        echo(f"A/B: {action} ({'done' if actions['ab']['done'] else actions['ab']['why']})")

    retrain_manifest: Manifest | None = None
    failure: StageError | None = None
    if decision["retrain"] and dry_run:
        actions["retrain"] = {"fired": True, "run": False, "why": "--dry-run"}
        echo("retraining not started (--dry-run)")
    elif decision["retrain"] and (held := _claim_retraining(cfg, manifest, runs_root)):
        actions["retrain"] = {"fired": True, "run": False, "why": held}
        echo(f"retraining {held}")
    elif decision["retrain"]:
        retrain_dir = Path(actions.pop("claimed_run_dir"))
        retrain_dir.mkdir(parents=True)
        trigger = {"by": "monitor", "monitor_run_dir": str(folder),
                   "monitor_index": _link(folder, retrain_dir),
                   "reasons": decision["reasons"],
                   "champion_version": manifest.data["monitor"]["model"]["version"],
                   "data": manifest.data["monitor"]["retrain_data"]}
        Manifest(retrain_dir / "manifest.json", {
            "experiment": cfg.experiment, "kind": "training", "run_dir": str(retrain_dir),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "stages": {},
            "trigger": trigger}).save()
        actions["retrain"] = {"fired": True, "run": True, "run_dir": str(retrain_dir),
                              "index": _link(retrain_dir, folder), "status": "running"}
        manifest.save()
        echo(f"retraining into {retrain_dir} on {trigger['data']}")
        retrain_overrides = {**(overrides or {}), "data.uri": trigger["data"]}
        retrain_overrides.pop("data.sample_rows", None)
        try:
            retrain_manifest = run(params_file, retrain_overrides, run_dir=retrain_dir,
                                   echo=echo, warm_kernels=warm_kernels)
            actions["retrain"]["status"] = "succeeded"
        except StageError as exc:
            failure = exc
            actions["retrain"].update(status="failed", error=str(exc))
            retrain_manifest = Manifest.load(retrain_dir)
        model = retrain_manifest.data.get("model") or {}
        actions["retrain"].update(
            gate_passed=(retrain_manifest.data.get("gate") or {}).get("passed"),
            version=model.get("version"), promoted=model.get("promoted"))
        if model:
            gate = "passed" if actions["retrain"]["gate_passed"] else "not passed"
            echo(f"retraining: gate {gate}; version {model.get('version')} "
                 f"{'promoted to champion' if model.get('promoted') else 'not promoted'}")
        tracking.configure(cfg)
        from mlflow import MlflowClient

        MlflowClient().set_tag(manifest.data["mlflow"]["parent_run_id"],
                               "mlfolio.retrain_run_dir", str(retrain_dir))
    else:
        actions["retrain"] = {"fired": False}
    manifest.save()
    report.write_index(folder, manifest.data)
    if failure is not None:
        raise failure
    return manifest, retrain_manifest
