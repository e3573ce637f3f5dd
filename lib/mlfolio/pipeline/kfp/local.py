"""Running the compiled pipeline: ``--engine kfp-local`` (kfp's SubprocessRunner on this
machine, then the normal audit folder assembled from the task artifacts) and
``--engine kfp`` (one submission to a Kubeflow Pipelines endpoint)."""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mlfolio import config as config_mod
from mlfolio.config import Config, project_dir
from mlfolio.context import read_json
from mlfolio.errors import StageError
from mlfolio.pipeline.graph import STAGES, new_run_dir
from mlfolio.pipeline.kfp import spec, steps
from mlfolio.pipeline.provenance import Manifest, git_info, package_versions

log = logging.getLogger(__name__)

GATED = ("register", "deploy")  # inside dsl.If(gate passed)


def run_local(
    params_file: str | Path,
    overrides: dict[str, Any] | None = None,
    runs_root: Path | None = None,
    echo: Callable[[str], None] = print,
) -> Manifest:
    """Compile the pipeline and run it with ``kfp.local`` (each task a subprocess working
    in its own folder, artifacts under a temporary pipeline root); then assemble the run
    folder. Raises StageError (after writing the folder) when a task failed."""
    from kfp import compiler, components
    from kfp import local as kfp_local

    from mlfolio import data, logs
    from mlfolio.pipeline.runner import _create_sqlite_store

    cfg, text = spec.prepare(params_file, overrides, cluster=False)
    data.check_header(cfg.data, cfg.schema)  # before the run folder, as the default engine
    folder = new_run_dir(cfg, runs_root)
    (folder / "logs").mkdir(parents=True)
    unroute = logs.route_runner(logs.runner_log(folder))  # MLflow's store lines: not here
    created = datetime.now(UTC).isoformat(timespec="seconds")
    package = folder / "pipeline.yaml"
    compiler.Compiler().compile(spec.build(cfg, text), str(package))
    # Task subprocesses inherit these: the project's notebooks, a calm OpenMP (xgboost).
    os.environ["MLFOLIO_PROJECT_DIR"] = str(project_dir())
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _create_sqlite_store(cfg.tracking_uri())
    root = Path(tempfile.mkdtemp(prefix="mlfolio-kfp-"))
    echo(f"kfp-local: {package.name} in {folder}, task logs in logs/kfp-local.log")
    # kfp.local indents its tasks' output by swapping builtins.print per task and back;
    # tasks that overlap (the tune workers' ParallelFor) restore each other's swap, and the
    # process kept printing every line four spaces in (the verdict, a later command's).
    original_print = builtins.print
    try:
        with (
            (folder / "logs" / "kfp-local.log").open("w") as out,
            contextlib.redirect_stdout(out),  # kfp streams every task's output to stdout
            warnings.catch_warnings(),
        ):
            # kfp warns that an image without "python" in its name may not be Python.
            warnings.simplefilter("ignore", RuntimeWarning)
            kfp_local.init(
                runner=kfp_local.SubprocessRunner(use_venv=False),
                pipeline_root=str(root),
                raise_on_error=False,
            )
            try:
                components.load_component_from_file(str(package))(run_name=folder.name)
            finally:
                builtins.print = original_print
        return assemble(folder, root, cfg, params_file, overrides, created, echo)
    finally:
        unroute()
        shutil.rmtree(root, ignore_errors=True)


def _collect_artifacts(root: Path, folder: Path) -> dict[str, dict[str, Any]]:
    """Copy every stage's products artifact into the run folder, in stage order (a later
    stage's file wins: register's completed model card over evaluate's first one); return
    their entries."""
    order = {stage.name: i for i, stage in enumerate(STAGES)}
    found = [(read_json(path), path) for path in root.rglob(f"{steps.ENTRY_DIR}/*.json")]
    entries: dict[str, dict[str, Any]] = {}
    for entry, path in sorted(found, key=lambda ep: order.get(ep[0]["stage"], len(order))):
        entries[entry.pop("stage")] = entry
        entry.pop("parent_run_id", None)
        shutil.copytree(
            path.parent.parent,
            folder,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(steps.ENTRY_DIR),
        )
    return entries


def _stage_records(
    entries: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], str | None, int | None]:
    """Per stage: its entry, or why it has none; and the stage that failed first."""
    # evaluate ran, register did not: dsl.If held it back
    evaluated = entries.get("evaluate", {}).get("status") == "succeeded"
    records: dict[str, dict[str, Any]] = {}
    failed, cell = None, None
    for stage in STAGES:
        entry = entries.get(stage.name)
        if entry is not None:
            records[stage.name] = entry
            if entry["status"] != "succeeded" and failed is None:
                failed, cell = stage.name, entry.get("error", {}).get("cell_index")
        elif stage.name in GATED and evaluated and failed is None:
            records[stage.name] = {
                "status": "skipped",
                "notebook": stage.notebook,
                "reason": "the gate did not pass (dsl.If)",
            }
        else:
            records[stage.name] = {"status": "not run", "notebook": stage.notebook}
    if failed is None and any(r["status"] == "not run" for r in records.values()):
        # A task without a notebook failed (start, a tuning worker): see the task log.
        failed = next(name for name, r in records.items() if r["status"] == "not run")
        records[failed]["reason"] = "an upstream task failed: see logs/kfp-local.log"
    return records, failed, cell


def assemble(
    folder: Path,
    root: Path,
    cfg: Config,
    params_file: str | Path,
    overrides: dict[str, Any] | None,
    created: str,
    echo: Callable[[str], None] = print,
) -> Manifest:
    """The audit folder of a pipeline run from its task artifacts under ``root``:
    products, notebooks and HTML, ``manifest.json`` and ``index.html``."""
    from mlflow.tracking import MlflowClient

    from mlfolio import products, report, tracking
    from mlfolio.pipeline import terminal
    from mlfolio.pipeline.runner import held_aliases

    entries = _collect_artifacts(root, folder)
    records, failed, cell = _stage_records(entries)
    frozen = folder / "parameters.yaml"
    config_mod.dump(cfg, frozen)
    parent = steps.find_parent_run(cfg, steps.RUN_NAME_TAG, folder.name)
    exp_id = tracking.configure(cfg)
    manifest = Manifest(
        folder / "manifest.json",
        {
            "experiment": cfg.experiment,
            "kind": "training",
            "engine": "kfp-local",
            "run_dir": str(folder),
            "created": created,
            "stages": records,
            "status": "failed" if failed else "succeeded",
            "interrupted": None,
            "failed_stage": failed,
            "failed_cell": cell,
            "parameters_file": str(params_file),
            "overrides": overrides or {},
            "parameters": cfg.to_dict(),
            "seed": cfg.seed,
            "git": git_info(),
            "packages": package_versions(),
            "history": [
                {
                    "at": created,
                    "engine": "kfp-local",
                    "stages": [s.name for s in STAGES],
                    "overrides": overrides or {},
                    "force": False,
                    "changed": [],
                }
            ],
            "kfp": {"pipeline": "pipeline.yaml", "pipeline_name": spec.pipeline_name(cfg)},
            "mlflow": {
                "parent_run_id": parent,
                "tracking_uri": cfg.tracking_uri(),
                "experiment_id": exp_id,
                "experiment_name": cfg.experiment_name,
                "parent_run_url": tracking.run_url(cfg, exp_id, parent) if parent else None,
            },
        },
    )
    manifest.data.update(products.collect(folder))
    manifest.save()
    nb_params = {"params_file": str(frozen), "run_dir": str(folder), "parent_run_id": parent}
    (folder / "stage_parameters.yaml").write_text(
        "# papermill notebooks/NN_stage.ipynb out.ipynb -f this file: replays a stage\n"
        + yaml.safe_dump(nb_params, sort_keys=False)
    )
    report.write_index(folder, manifest.data)
    if parent:
        tracking.log_artifacts(
            parent, [folder / "manifest.json", frozen, folder / "pipeline.yaml"], "run"
        )
        if MlflowClient().get_run(parent).info.status == "RUNNING":  # the exit task failed
            tracking.end_run(parent, "FAILED")
    for i, (name, rec) in enumerate(records.items(), 1):
        line = f"[{i}/{len(records)}] {name:<10} "
        if rec["status"] == "succeeded":
            line += f"ok in {rec['duration_s']:.1f}s"
        elif rec["status"] == "failed":
            err = rec["error"]
            line += f"FAILED in cell {err.get('cell_index')}: {err['ename']}: {err['evalue']}"
        else:
            line += rec["status"] + (f" ({rec['reason']})" if rec.get("reason") else "")
        echo(line)
    # the default engine's verdict: gate, model, champion, deployed
    for line in terminal.run_verdict(manifest.data, folder, held_aliases(manifest.data)):
        echo(line)
    echo(f"run folder: {folder}\nreport:     {folder / 'index.html'}")
    if failed:
        err = records[failed].get("error") or {}
        why = f"{err.get('ename')}: {err.get('evalue')}" if err else records[failed]["reason"]
        raise StageError(failed, why, cell)
    return manifest


def submit(
    params_file: str | Path,
    overrides: dict[str, Any] | None,
    host: str,
    echo: Callable[[str], None] = print,
) -> str:
    """Compile for a cluster and submit one run to the KFP endpoint ``host``; return the
    run id. (Authentication beyond what ``kfp.Client`` finds itself is not handled.)"""
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        cfg, package = spec.compile_pipeline(params_file, overrides, Path(tmp) / "pipeline.yaml")
        result = kfp.Client(host=host).create_run_from_pipeline_package(
            str(package), arguments={}, experiment_name=cfg.experiment_name, enable_caching=False
        )
    echo(f"submitted run {result.run_id} of {spec.pipeline_name(cfg)} to {host}")
    return result.run_id
