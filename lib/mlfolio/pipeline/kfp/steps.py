"""What each Kubeflow task does, as plain functions (the component bodies in
:mod:`.components` only import one of these and call it).

A task never shares a disk with another: it works in a fresh folder of its own, copies
its upstream stages' declared products out of their ``Input[Artifact]`` folders, runs the
stage notebook there with the same engine as the in-process runner, and copies what the
stage wrote (products, notebook, HTML, logs) into its ``Output[Artifact]`` folder, with
its manifest entry under ``_kfp/<stage>.json`` for whoever assembles the audit folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from mlfolio import config as config_mod
from mlfolio import products
from mlfolio.config import Config
from mlfolio.errors import ConfigError, StageError
from mlfolio.files import read_json, write_json

log = logging.getLogger(__name__)

ENTRY_DIR = "_kfp"  # in a stage's products artifact: its manifest entry
PARAMS_SOURCE = "pipeline parameter 'params'"
# MLflow tags that tie the parent run to the pipeline run (the exit task finds it by them).
JOB_TAG = "mlfolio.kfp_job_id"
RUN_NAME_TAG = "mlfolio.run_name"


def load_params(params: str, overrides: dict[str, Any] | None = None) -> Config:
    """The pipeline's ``params`` (the parameters as JSON or YAML text) validated, with
    ``overrides`` applied; relative paths resolve against this task's project folder."""
    try:
        raw = yaml.safe_load(params)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{PARAMS_SOURCE}: not valid YAML: {exc}") from None
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{PARAMS_SOURCE}: expected a mapping of parameters")
        raw = config_mod.apply_overrides(raw, overrides, PARAMS_SOURCE)
    return config_mod.from_mapping(raw, source=PARAMS_SOURCE)


def run_name(cfg: Config, given: str, job_id: str) -> str:
    """The run's name (MLflow parent run, audit folder): ``given``, else from the job id,
    so any task can derive it without another task's output."""
    return given or f"{cfg.experiment}-kfp-{job_id[:8]}"


def study_name(cfg: Config, given_run_name: str, job_id: str) -> str:
    """The Optuna study of a run, as the tune stage names it for a run folder."""
    return cfg.tuning.study_name or f"{cfg.experiment}-{run_name(cfg, given_run_name, job_id)}"


# -- the first and the last task ---------------------------------------------------------
def start_run(params: str, job_id: str, given_run_name: str = "") -> dict[str, str]:
    """Create the MLflow parent run; return its id, the run's name and the study name
    (the tuning workers derive the same one: see :func:`study_name`)."""
    from mlfolio import tracking
    from mlfolio.pipeline.provenance import git_info

    cfg = load_params(params)
    name = run_name(cfg, given_run_name, job_id)
    tags = {
        "mlfolio.pipeline": "training",
        "mlfolio.engine": "kfp",
        "mlfolio.git_commit": str(git_info()["commit"]),
        JOB_TAG: job_id,
        RUN_NAME_TAG: name,
    }
    parent = tracking.start_parent_run(cfg, Path(name), tags)
    study = study_name(cfg, given_run_name, job_id)
    return {"parent_run_id": parent, "run_name": name, "study_name": study}


def find_parent_run(cfg: Config, tag: str, value: str) -> str | None:
    """The pipeline's parent run by one of its tags (None: it was never created)."""
    from mlflow.tracking import MlflowClient

    from mlfolio import tracking

    exp_id = tracking.configure(cfg)
    runs = MlflowClient().search_runs([exp_id], f"tags.`{tag}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


def finish_run(params: str, job_id: str, state: str) -> str | None:
    """The exit task: end the parent run FINISHED when the pipeline succeeded, else
    FAILED together with every run under it still RUNNING; return its id."""
    from mlflow.tracking import MlflowClient

    from mlfolio import tracking
    from mlfolio.pipeline.runlock import end_open_runs

    cfg = load_params(params)
    parent = find_parent_run(cfg, JOB_TAG, job_id)
    if parent is None:  # the start task itself failed
        log.warning("no MLflow run tagged %s=%s: nothing to end", JOB_TAG, job_id)
        return None
    if state == "SUCCEEDED":
        tracking.end_run(parent, "FINISHED")
    else:
        end_open_runs(MlflowClient(), parent, "FAILED")
        tracking.end_run(parent, "FAILED")
    return parent


# -- a stage -------------------------------------------------------------------------------
def _copy_upstream(upstream: Iterable[str], work: Path, stage: str | None = None) -> set[Path]:
    """Copy the declared products found in the upstream artifact folders into ``work``;
    return what was copied (relative paths), so it is not handed on as this stage's.
    ``stage``'s own products are not copied: it writes them (register completes the
    model card evaluate began; taken as an input, register's would never be handed on)."""
    copied: set[Path] = set()
    for folder in map(Path, upstream):
        for rel in products.BY_PATH:
            if stage is not None and products.producer(rel) == stage:
                continue
            src = folder / rel
            if src.is_file():
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, work / rel)
                copied.add(Path(rel))
    return copied


def _hand_over(work: Path, out: Path, skip: set[Path]) -> None:
    """Everything the stage left in ``work`` but its inputs, into its artifact folder."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(work.rglob("*")):
        rel = src.relative_to(work)
        if src.is_file() and rel not in skip:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)


def stage_metrics(stage: str, folder: Path) -> dict[str, float]:
    """The numbers a stage's product holds, flat, for its ``Output[Metrics]``."""
    out: dict[str, float] = {}
    for path in products.of_stage(stage):
        product = products.BY_PATH[path]
        if product.metrics is not None and (doc := product.load(folder)) is not None:
            out.update(product.metrics(doc))
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}


def run_stage(
    stage_name: str,
    params: str,
    parent_run_id: str,
    upstream: Iterable[str],
    products_dir: str,
    html_path: str,
    log_metric: Callable[[str, float], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one stage's notebook in a fresh folder fed from ``upstream`` artifact folders;
    write its outputs to ``products_dir`` (folder) and ``html_path`` (the executed
    notebook's HTML), its numbers through ``log_metric``; log notebook and HTML to the
    MLflow parent run. Returns the manifest entry; raises StageError when it failed
    (after writing everything)."""
    from mlfolio import tracking
    from mlfolio.graph import REFERENCE_DATA, STAGES
    from mlfolio.pipeline.engine import execute_stage
    from mlfolio.pipeline.parameters import stage_parameters
    from mlfolio.pipeline.provenance import package_source_hash, stage_inputs
    from mlfolio.pipeline.runner import fail_stage_run

    stage = next((s for s in STAGES if s.name == stage_name), None)
    if stage is None:
        names = ", ".join(s.name for s in STAGES)
        raise ConfigError(f"unknown stage {stage_name!r}; expected one of {names}")
    cfg = load_params(params, overrides)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the kernel inherits it (xgboost)
    work = Path(tempfile.mkdtemp(prefix=f"mlfolio-{stage.name}-")).resolve()
    try:
        copied = _copy_upstream(upstream, work, stage.name)
        (work / "logs").mkdir()  # a run folder has one (the runner's kernels make it)
        frozen = work / "parameters.yaml"
        config_mod.dump(cfg, frozen)
        inputs = stage_inputs(stage, cfg, work, package_source_hash())
        tracking.configure(cfg)
        nb_params = {
            "params_file": str(frozen),
            "run_dir": str(work),
            "parent_run_id": parent_run_id,
        }
        earlier = _earlier_attempts(Path(products_dir), stage.name)
        entry = execute_stage(stage, work, nb_params, timeout_s=cfg.stages.of(stage.name).timeout_s)
        entry.follows(earlier)
        entry.ran(stage_parameters(stage, cfg.to_dict()), overrides or {}, inputs)
        # what the assembling step needs besides the entry (dropped from the manifest)
        handed = {"stage": stage.name, **entry.to_json(), "parent_run_id": parent_run_id}
        tracking.log_artifacts(parent_run_id, [work / stage.notebook, work / entry.html], "run")
        # The data a model was trained on travels with its run (monitoring reads it there).
        mine = [work / p for p in REFERENCE_DATA if Path(p) not in copied]
        tracking.log_artifacts(parent_run_id, mine, "data")
        _hand_over(work, Path(products_dir), copied | {Path("parameters.yaml")})
        write_json(Path(products_dir) / ENTRY_DIR / f"{stage.name}.json", handed)
        if (work / entry.html).exists():
            shutil.copy2(work / entry.html, html_path)
        for name, value in stage_metrics(stage.name, work).items():
            if log_metric is not None:
                log_metric(name, value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if entry.status != "succeeded":
        err = entry.error or {}
        fail_stage_run(parent_run_id, stage.name)
        raise StageError(stage.name, f"{err['ename']}: {err['evalue']}", err["cell_index"])
    return handed


def _earlier_attempts(out: Path, stage: str) -> list[dict[str, Any]]:
    """A retried task (``set_retry``) finds its failed attempt's hand-over in its output
    folder (kfp's local runner keeps the folder; a cluster's pod starts empty): keep that
    attempt's notebook and page under its attempt's names, clear the rest, and return the
    attempts so far for this attempt's entry."""
    from mlfolio.pipeline.engine import set_aside
    from mlfolio.pipeline.manifest import StageEntry

    doc = read_entry(out, stage)
    if doc is None:
        return []
    entry = StageEntry.model_validate(
        {k: v for k, v in doc.items() if k not in ("stage", "parent_run_id", "attempts")}
    )
    attempts = list(doc.get("attempts") or [])
    attempts.append(set_aside(out, entry, len(attempts) + 1))
    kept = {a[key] for a in attempts for key in ("notebook", "html") if a.get(key)}
    for path in sorted(out.rglob("*"), reverse=True):  # files before their folders
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in kept:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return attempts


def gate_passed(products_dir: str) -> bool:
    """The evaluate stage's verdict, read from its products artifact."""
    doc = products.EVALUATE.load(Path(products_dir))
    if doc is None:
        raise StageError("evaluate", f"{products_dir}: no {products.EVALUATE.path}")
    return bool(doc.gate.passed)


def tune_worker(
    params: str, given_run_name: str, job_id: str, worker: int, preprocess_dir: str
) -> int:
    """One worker of the fanned-out tuning: join the run's shared study and run trials
    until it has ``tuning.n_trials`` finished ones; return how many this one finished."""
    import pandas as pd

    from mlfolio import tune

    cfg = load_params(params)
    train = pd.read_parquet(Path(preprocess_dir) / products.SPLITS["train"].path)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return tune.join_study(cfg, train, study_name(cfg, given_run_name, job_id), worker)


def read_entry(products_dir: Path, stage: str) -> dict[str, Any] | None:
    path = products_dir / ENTRY_DIR / f"{stage}.json"
    return read_json(path) if path.exists() else None
