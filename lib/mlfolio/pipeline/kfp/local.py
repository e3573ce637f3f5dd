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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlfolio import config as config_mod
from mlfolio.config import Config, project_dir
from mlfolio.errors import RunInterrupted, StageError
from mlfolio.files import read_json
from mlfolio.graph import STAGES, new_run_dir
from mlfolio.pipeline.kfp import spec, steps, stop
from mlfolio.pipeline.manifest import Manifest, StageEntry, now
from mlfolio.pipeline.provenance import git_info, package_versions
from mlfolio.pipeline.runlock import end_open_runs
from mlfolio.pipeline.signals import running_cell

log = logging.getLogger(__name__)

ENGINE = "kfp-local"  # the manifest's "engine"

# A task process -> the stage it belongs to (the tuning workers run the tune stage's trials).
TASK_STAGE = {
    "tune_worker": next(s.name for s in STAGES if s.fans_out),
    **{s.name: s.name for s in STAGES},
}


@dataclass(frozen=True)
class Stop:
    """What stopped a pipeline run: the signal, and the tasks that were running."""

    signum: int
    signal: str
    tasks: list[str]


def run_local(
    params_file: str | Path,
    overrides: dict[str, Any] | None = None,
    runs_root: Path | None = None,
    echo: Callable[[str], None] = print,
) -> Manifest:
    """Compile the pipeline and run it with ``kfp.local`` (each task a subprocess working
    in its own folder, artifacts under a temporary pipeline root); then assemble the run
    folder. Raises StageError (after writing the folder) when a task failed.

    SIGINT/SIGTERM stop every task with what it started (kernels, tuning workers); the
    run is recorded ``interrupted``, its MLflow runs ended KILLED, and RunInterrupted
    raised (exit 130/143). A second signal stops at once."""
    from kfp import compiler, components

    from mlfolio import data, logs
    from mlfolio.pipeline.runner import create_sqlite_store

    cfg, text = spec.prepare(params_file, overrides, cluster=False)
    data.check_header(cfg.data, cfg.schema)  # before the run folder, as the default engine
    folder = new_run_dir(cfg, runs_root)
    (folder / "logs").mkdir(parents=True)
    unroute = logs.route_runner(logs.runner_log(folder))  # MLflow's store lines: not here
    created = now()
    sigs, stopper = stop.Signals(), stop.TaskStopper()
    sigs.track(stopper)  # type: ignore[arg-type]  # stopped as the default engine's kernels
    sigs.install()
    root = Path(tempfile.mkdtemp(prefix="mlfolio-kfp-"))
    try:
        package = folder / "pipeline.yaml"
        compiler.Compiler().compile(spec.build(cfg, text), str(package))
        # Task subprocesses inherit these: the project's notebooks, a calm OpenMP (xgboost).
        os.environ["MLFOLIO_PROJECT_DIR"] = str(project_dir())
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        create_sqlite_store(cfg.tracking_uri())
        echo(f"kfp-local: {package.name} in {folder}, task logs in logs/kfp-local.log")
        pipeline = components.load_component_from_file(str(package))
        # (a signal during the record of a finished pipeline changes nothing: it ran)
        stopped = sigs.signum is not None or _run_pipeline(pipeline, folder, root, sigs)
        stopper.shutdown()  # a stopped task's processes are all gone before the record
        why = Stop(sigs.signum, sigs.name, sorted(stopper.tasks)) if stopped else None
        return assemble(folder, root, cfg, params_file, overrides, created, echo, why)
    except KeyboardInterrupt:
        if sigs.signum is None:  # not a signal of ours
            raise
        _record_forced_stop(folder, root, cfg, created, sigs.name)
        raise RunInterrupted(
            sigs.signum,
            f"run stopped at once by a second signal; its MLflow runs may still say "
            f"RUNNING (run folder {folder})",
        ) from None
    finally:
        sigs.end(unroute, lambda: shutil.rmtree(root, ignore_errors=True))


# Environment of the task subprocesses: a killed task cannot clean up, so its temporary
# files (work folder, kernel sockets and connection file) go under the pipeline root,
# which is removed with everything in it.
TASK_ENV = {"TMPDIR": "t", "JUPYTER_RUNTIME_DIR": "rt"}  # short: IPC socket paths


def _run_pipeline(pipeline: Any, folder: Path, root: Path, sigs: stop.Signals) -> bool:
    """Run the compiled pipeline on kfp's local runner, artifacts under ``root``; True
    when a signal stopped it."""
    from kfp import local as kfp_local

    saved = {key: os.environ.get(key) for key in TASK_ENV}
    for key, sub in TASK_ENV.items():
        (root / sub).mkdir()
        os.environ[key] = str(root / sub)
    # kfp.local indents its tasks' output by swapping builtins.print per task and back;
    # tasks that overlap (the tune workers' ParallelFor) restore each other's swap, and the
    # process kept printing every line four spaces in (the verdict, a later command's).
    original_print = builtins.print
    # Once stopped, kfp's threads report the killed tasks as FAILURE (on the terminal,
    # as it swaps the root logger's handlers per task): the record says what happened.
    root_logger = logging.getLogger()
    root_logger.addFilter(quiet := lambda record: sigs.signum is None)
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
            sigs.unwind = True
            try:
                pipeline(run_name=folder.name)
            finally:
                sigs.unwind = False
    except stop.Stopped:
        pass
    finally:
        builtins.print = original_print
        root_logger.removeFilter(quiet)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return sigs.signum is not None


def _collect_artifacts(root: Path, folder: Path) -> dict[str, StageEntry]:
    """Copy every stage's products artifact into the run folder, in stage order (a later
    stage's file wins: register's completed model card over evaluate's first one); return
    their entries."""
    order = {stage.name: i for i, stage in enumerate(STAGES)}
    found = [(read_json(path), path) for path in root.rglob(f"{steps.ENTRY_DIR}/*.json")]
    entries: dict[str, StageEntry] = {}
    for doc, path in sorted(found, key=lambda ep: order.get(ep[0]["stage"], len(order))):
        entries[doc["stage"]] = _entry(doc)
        shutil.copytree(
            path.parent.parent,
            folder,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(steps.ENTRY_DIR),
        )
    return entries


def _entry(doc: dict[str, Any]) -> StageEntry:
    """A task's entry without what only the task needed (its stage, the parent run)."""
    return StageEntry.model_validate(
        {k: v for k, v in doc.items() if k not in ("stage", "parent_run_id")}
    )


def _stage_records(
    entries: dict[str, StageEntry],
) -> tuple[dict[str, StageEntry], str | None, int | None]:
    """Per stage: its entry, or why it has none; and the stage that failed first."""
    # the gate stage ran, a gated one did not: dsl.If held it back
    evaluated = any(
        s.name in entries and entries[s.name].status == "succeeded"
        for s in STAGES
        if s.decides_gate
    )
    records: dict[str, StageEntry] = {}
    failed, cell = None, None
    for stage in STAGES:
        entry = entries.get(stage.name)
        if entry is not None:
            records[stage.name] = entry
            if entry.status != "succeeded" and failed is None:
                failed, cell = stage.name, (entry.error or {}).get("cell_index")
        elif stage.gated and evaluated and failed is None:
            records[stage.name] = StageEntry.skipped(
                stage.notebook, "the gate did not pass (dsl.If)"
            )
        else:
            records[stage.name] = StageEntry.not_run(stage.notebook)
    if failed is None and any(r.status == "not run" for r in records.values()):
        # A task without a notebook failed (start, a tuning worker): see the task log.
        failed = next(name for name, r in records.items() if r.status == "not run")
        records[failed].reason = "an upstream task failed: see logs/kfp-local.log"
    return records, failed, cell


def _interrupted(
    records: dict[str, StageEntry], why: Stop, root: Path, folder: Path
) -> dict[str, Any]:
    """Mark the stage whose tasks were stopped ``interrupted`` (its partial notebook, when
    it had begun one, copied into the folder) and every stage without a result ``not
    run``; return the manifest's ``interrupted`` record (``resume_from``: where the
    default engine resumes the folder)."""
    from mlfolio import products

    order = [s.name for s in STAGES]
    running = sorted({TASK_STAGE[t] for t in why.tasks if t in TASK_STAGE}, key=order.index)
    stage = running[0] if running else None
    evaluated = products.EVALUATE.load(folder)
    gate_closed = evaluated is not None and not evaluated.gate.passed
    for name, rec in records.items():
        if rec.status == "not run" or (rec.status == "skipped" and not gate_closed):
            records[name] = StageEntry.not_run(rec.notebook)
    cell = None
    if stage is not None:
        notebook = records[stage].notebook
        # papermill saves the notebook after every cell; the task's work folder is kept
        # under the pipeline root (TASK_ENV)
        partial = next(
            iter(sorted(root.glob(f"{TASK_ENV['TMPDIR']}/mlfolio-{stage}-*/{notebook}"))), None
        )
        if partial is not None:
            shutil.copy2(partial, folder / notebook)
            cell = running_cell(folder / notebook)
        records[stage] = StageEntry.interrupted_in(notebook, why.signal, cell, tasks=why.tasks)
    # The default engine resumes the folder from its first stage without a result.
    resume = next((n for n, rec in records.items() if rec.status != "succeeded"), None)
    return {
        "signal": why.signal,
        "stage": stage,
        "cell_index": cell,
        "tasks": why.tasks,
        "resume_from": resume,
        "at": now(),
    }


def assemble(
    folder: Path,
    root: Path,
    cfg: Config,
    params_file: str | Path,
    overrides: dict[str, Any] | None,
    created: str,
    echo: Callable[[str], None] = print,
    stopped: Stop | None = None,
) -> Manifest:
    """The audit folder of a pipeline run from its task artifacts under ``root``:
    products, notebooks and HTML, ``manifest.json`` and ``index.html``. ``stopped``: a
    signal stopped the tasks; the run is recorded ``interrupted``, its MLflow runs still
    RUNNING are ended KILLED, and RunInterrupted raised."""
    from mlflow.tracking import MlflowClient

    from mlfolio import products, tracking
    from mlfolio.pipeline import report, terminal
    from mlfolio.pipeline.runner import held_aliases

    entries = _collect_artifacts(root, folder)
    records, failed, cell = _stage_records(entries)
    interrupted = None
    if stopped is not None:
        interrupted = _interrupted(records, stopped, root, folder)
        failed, cell = None, None
    frozen = folder / "parameters.yaml"
    config_mod.dump(cfg, frozen)
    unended = None  # why the MLflow runs of a stopped run could not be ended
    try:
        parent = steps.find_parent_run(cfg, steps.RUN_NAME_TAG, folder.name)
        exp_id = tracking.configure(cfg)
    except tracking.store_errors() as exc:
        if stopped is None:
            raise
        # the local record first; the message says the MLflow runs were not ended
        unended = tracking.cause(exc)
        log.warning("the MLflow runs of %s could not be found: %s", folder.name, unended)
        parent, exp_id = None, None
    manifest = _record(folder, cfg, created, records, overrides)
    manifest.set(
        parameters_file=str(params_file),
        overrides=overrides or {},
        seed=cfg.seed,
        git=git_info(),
        packages=package_versions(),
        kfp={"pipeline": "pipeline.yaml", "pipeline_name": spec.pipeline_name(cfg)},
    )
    manifest.set_mlflow(
        parent_run_id=parent,
        tracking_uri=cfg.tracking_uri(),
        experiment_id=exp_id,
        experiment_name=cfg.experiment_name,
        parent_run_url=tracking.run_url(cfg, exp_id, parent) if parent else None,
    )
    manifest.ended(failed, cell, interrupted)
    manifest.set(**products.collect(folder))
    manifest.save()
    nb_params = {"params_file": str(frozen), "run_dir": str(folder), "parent_run_id": parent}
    (folder / "stage_parameters.yaml").write_text(
        "# papermill notebooks/NN_stage.ipynb out.ipynb -f this file: replays a stage\n"
        + yaml.safe_dump(nb_params, sort_keys=False)
    )
    report.write_index(folder, manifest.data)
    if parent and stopped is not None:
        try:
            tracking.log_artifacts(
                parent, [folder / "manifest.json", frozen, folder / "pipeline.yaml"], "run"
            )
            # the stopped stage's run, a trial's, and the parent (its exit task never ran)
            end_open_runs(MlflowClient(), parent, "KILLED")
        except tracking.store_errors() as exc:
            unended = tracking.cause(exc)
            log.warning("the MLflow runs of %s are not all ended: %s", folder.name, unended)
    elif parent:
        tracking.log_artifacts(
            parent, [folder / "manifest.json", frozen, folder / "pipeline.yaml"], "run"
        )
        if MlflowClient().get_run(parent).info.status == "RUNNING":  # the exit task failed
            tracking.end_run(parent, "FAILED")
    for i, (name, rec) in enumerate(records.items(), 1):
        line = f"[{i}/{len(records)}] {name:<10} "
        if rec.status == "succeeded":
            line += f"ok in {rec.duration_s:.1f}s"
        elif rec.status == "failed":
            err = rec.error or {}
            line += f"FAILED in cell {err.get('cell_index')}: {err['ename']}: {err['evalue']}"
        elif rec.status == "interrupted":
            at = rec.interrupted["cell_index"]
            line += f"INTERRUPTED by {stopped.signal if stopped else '?'}" + (
                f" in cell {at}" if at is not None else ""
            )
            line += f" (tasks stopped: {', '.join(rec.interrupted['tasks'])})"
        else:
            line += rec.status + (f" ({rec.reason})" if rec.reason else "")
        echo(line)
    # the default engine's verdict: gate, model, champion, deployed
    for line in terminal.run_verdict(manifest.data, folder, held_aliases(manifest.data)):
        echo(line)
    echo(f"run folder: {folder}\nreport:     {folder / 'index.html'}")
    if stopped is not None:
        raise RunInterrupted(stopped.signum, _stop_message(interrupted, folder, unended))
    if failed:
        err = records[failed].error or {}
        why = f"{err.get('ename')}: {err.get('evalue')}" if err else records[failed].reason
        raise StageError(failed, why, cell)
    return manifest


def _record(
    folder: Path,
    cfg: Config,
    created: str,
    records: dict[str, StageEntry],
    overrides: dict[str, Any] | None,
) -> Manifest:
    """The run's record as the default engine begins one (``running``, what it ran with),
    with every stage's entry as the tasks reported it; the caller ends it."""
    manifest = Manifest.new(folder, cfg.experiment, "training", created=created, engine=ENGINE)
    run_info = {
        "engine": ENGINE,
        "stages": [s.name for s in STAGES],
        "overrides": overrides or {},
        "force": False,
        "changed": [],
    }
    manifest.begin(run_info, at=created, parameters=cfg.to_dict())
    manifest.reported(records)
    return manifest


def _stop_message(info: dict[str, Any], folder: Path, unended: str | None) -> str:
    stage, cell = info["stage"], info["cell_index"]
    where = (
        f"during stage '{stage}'" + (f" (cell {cell})" if cell is not None else "")
        if stage
        else "between stages"
    )
    resume = (
        f"resume with --from {info['resume_from']} --run-dir {folder} (the default engine: "
        "kfp-local starts a new folder)"
        if info["resume_from"]
        else f"run folder {folder}"
    )
    runs = (
        f"its MLflow runs may still read RUNNING (tracking store: {unended})"
        if unended
        else "its MLflow runs ended KILLED"
    )
    return f"run interrupted by {info['signal']} {where}; its tasks were stopped, {runs}; {resume}"


def _record_forced_stop(folder: Path, root: Path, cfg: Config, created: str, signal: str) -> None:
    """The second signal: unless the run is recorded already, record it ``interrupted``
    from the task results at hand (no MLflow calls: it must be quick)."""
    from mlfolio.pipeline import report

    path = folder / "manifest.json"
    if path.exists():
        return
    found = [read_json(p) for p in root.rglob(f"{steps.ENTRY_DIR}/*.json")]
    records, _, _ = _stage_records({doc["stage"]: _entry(doc) for doc in found})
    for name, rec in records.items():
        if rec.status in ("not run", "skipped"):  # (skipped: the gate may not be why)
            records[name] = StageEntry.not_run(rec.notebook)
    manifest = _record(folder, cfg, created, records, None)
    manifest.forced_stop(signal)
    manifest.save()
    report.write_index(folder, manifest.data)


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
