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
import subprocess
import tempfile
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
from mlfolio.errors import ConfigError, StageError

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


def stage_inputs(stage: Stage, cfg: Config, run_dir: Path, mlfolio_hash: str) -> dict[str, Any]:
    """What a stage's result depends on: the basis for skipping unchanged stages."""
    params = cfg.to_dict()
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
    parts = {
        "notebook": notebook_source_hash(notebooks_dir() / stage.notebook),
        "mlfolio": mlfolio_hash,
        "parameters": _sha256(json.dumps({k: params.get(k) for k in stage.sections},
                                         sort_keys=True).encode()),
        "upstream": upstream,
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

    def __init__(self, run_dir: Path, tracking_uri: str):
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
            extra_arguments=[f"--IPKernelApp.exec_lines={[warm]!r}"])

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


def run(params_file: str | Path, overrides: dict[str, Any] | None = None,
        stages: Sequence[str] | None = None, from_stage: str | None = None,
        run_dir: str | Path | None = None, runs_root: Path | None = None,
        echo: Callable[[str], None] = print, warm_kernels: bool = True,
        kind: str = "training", trigger: dict[str, Any] | None = None) -> Manifest:
    """Validate the parameters, then execute the selected stages into a run folder.

    ``kind`` picks the stage list (``training`` or ``monitor``); ``trigger`` records why
    a monitor run fired this one (manifest and MLflow tags). Raises StageError (after
    writing the manifest, HTML and index) when a stage fails.
    """

    selected = select_stages(stages, from_stage, kind)
    cfg = config_mod.load(params_file, overrides)  # all validation before any notebook
    if run_dir is not None:
        folder = Path(run_dir).resolve()
        manifest = Manifest.load(folder)
        if manifest.data.get("experiment") != cfg.experiment:
            raise ConfigError(f"{folder} belongs to experiment "
                              f"{manifest.data.get('experiment')!r}, not {cfg.experiment!r}")
    else:
        folder = new_run_dir(cfg, runs_root, kind)
        folder.mkdir(parents=True)
        manifest = Manifest(folder / "manifest.json", {
            "experiment": cfg.experiment, "kind": kind, "run_dir": str(folder),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": {}})
    if trigger:
        manifest.data["trigger"] = trigger
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # kernels inherit it (xgboost)
    os.environ["MLFOLIO_PROJECT_DIR"] = str(project_dir())
    frozen = folder / "parameters.yaml"
    config_mod.dump(cfg, frozen)
    _create_sqlite_store(cfg.tracking_uri())
    # Kernels start now, so their imports overlap the tracking store's start-up below.
    kernels = [WarmKernel(folder, cfg.tracking_uri())
               for _ in range(min(1 + KERNEL_LOOKAHEAD, len(selected)))] if warm_kernels else []
    try:
        return _run(cfg, selected, folder, frozen, manifest, params_file, overrides, kernels,
                    echo)
    finally:
        for kernel in kernels:
            kernel.shutdown()


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
         echo: Callable[[str], None]) -> Manifest:
    from mlfolio import report, tracking

    manifest.data.update({
        "status": "running", "parameters_file": str(params_file),
        "overrides": overrides or {}, "parameters": cfg.to_dict(), "seed": cfg.seed,
        "git": git_info(), "packages": package_versions(),
    })
    parent_run_id, _ = _parent_run(cfg, folder, manifest)
    nb_params = {"params_file": str(frozen), "run_dir": str(folder),
                 "parent_run_id": parent_run_id}
    (folder / "stage_parameters.yaml").write_text(
        "# papermill notebooks/NN_stage.ipynb out.ipynb -f this file: replays a stage\n"
        + yaml.safe_dump(nb_params, sort_keys=False))
    manifest.save()

    failed = _run_stages(selected, cfg, folder, nb_params, manifest, package_source_hash(),
                         kernels, echo)

    _collect_results(manifest, folder)
    if failed is None:
        manifest.data.update({"status": "succeeded", "failed_stage": None, "failed_cell": None})
    manifest.save()
    report.write_index(folder, manifest.data)
    # The data a model was trained on travels with its run: a monitor on another machine
    # (shared tracking server, S3 artifacts) finds its reference rows there.
    tracking.log_artifacts(parent_run_id, [folder / name for name in REFERENCE_DATA], "data")
    tracking.log_artifacts(parent_run_id, sorted(folder.glob("*.ipynb")) +
                           sorted(folder.glob("*.html")) + [folder / "manifest.json",
                                                             frozen], "run")
    tracking.end_run(parent_run_id, "FAILED" if failed else "FINISHED")
    echo(f"run folder: {folder}\nreport:     {folder / 'index.html'}")
    if failed is not None:
        raise failed
    return manifest


def _run_stages(selected: list[Stage], cfg: Config, folder: Path, nb_params: dict[str, Any],
                manifest: Manifest, mlfolio_hash: str, kernels: list[WarmKernel],
                echo: Callable[[str], None]) -> StageError | None:
    """Execute stages in order, each on a kernel warmed during the stages before it
    (none given: papermill starts a cold kernel per stage)."""
    parent_run_id = nb_params["parent_run_id"]
    started = len(kernels)
    for i, stage in enumerate(selected, 1):
        inputs = stage_inputs(stage, cfg, folder, mlfolio_hash)
        echo(f"[{i}/{len(selected)}] {stage.name:<10} running ...")
        kernel = kernels.pop(0) if kernels else None
        if kernel is not None and started < len(selected):
            kernels.append(WarmKernel(folder, cfg.tracking_uri()))
            started += 1
        try:
            entry = execute_stage(stage, folder, nb_params, kernel)
        finally:
            if kernel is not None:
                kernel.shutdown()
        entry["inputs"] = inputs
        entry["inputs_hash"] = inputs["hash"]
        manifest.data["stages"][stage.name] = entry
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
