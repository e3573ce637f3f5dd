"""The stage chain as a Kubeflow Pipelines v2 pipeline, built with the kfp SDK and
compiled to a spec file (``mlfolio compile kfp``).

Shape: ``start`` (MLflow parent run, study name) → ingest → preprocess → train and
[tune-worker × ``tuning.n_workers`` (``dsl.ParallelFor``) → tune] → evaluate →
``dsl.If(gate passed)``: register → deploy; all inside a ``dsl.ExitHandler`` whose exit
task ends the parent run (FAILED when a task failed). The validated parameters are the
pipeline parameter ``params`` (JSON text), so a changed parameter changes the spec;
the structure (workers, resources, image) is fixed when compiling. The wiring follows
the stage declarations (:data:`~mlfolio.graph.STAGES`): a task receives the
products folders of the stages whose products it ``reads``, waits for those it comes
``after``, and the ``gated`` stages sit inside the ``dsl.If`` on the gate stage's verdict.
(No ``from __future__ import annotations``: kfp reads the pipeline's annotations as types.)
"""

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from mlfolio import config as config_mod
from mlfolio.config import Config, project_dir
from mlfolio.errors import ConfigError
from mlfolio.graph import STAGE_NAMES, STAGES

log = logging.getLogger(__name__)

ENGINES = ("papermill", "kfp-local", "kfp")
WORKERS = "tune_worker"  # the task of the fanned-out stage's workers


def tasks() -> tuple[str, ...]:
    """The pipeline's tasks that take resource requests (``kfp.resources``): one per
    stage, and the workers of the stage that fans out."""
    return (*(s.name for s in STAGES), *(WORKERS for s in STAGES if s.fans_out))


def _is_rdb(url: str | None) -> bool:
    return bool(url) and url.startswith(config_mod.SQL_PREFIXES)


def _project_relative(value: str) -> str:
    """A path inside the project as a relative one: it resolves in the image's copy."""
    try:
        return Path(value).relative_to(project_dir()).as_posix()
    except ValueError:
        return value


def check(cfg: Config, source: str, cluster: bool) -> list[str]:
    """Refuse what cannot work when the tasks run in separate pods (``cluster``) or with
    fanned-out tuning; return warnings for what may not."""
    for name in cfg.kfp.resources:
        if name not in tasks():
            raise ConfigError(
                f"{source}: kfp.resources.{name}: the pipeline has no such task; "
                f"expected one of {', '.join(tasks())}"
            )
    tuning = cfg.tuning
    if tuning.enabled and tuning.n_workers > 1:
        if not _is_rdb(tuning.storage):
            raise ConfigError(
                f"{source}: tuning.storage: tuning.n_workers is {tuning.n_workers}, so the "
                "tuning workers run as separate pipeline tasks and must share the study: "
                "give an RDB URL such as postgresql+psycopg://user@host:5432/db (got "
                f"{tuning.storage or 'none: a journal file in each task folder'})"
            )
        if cluster and tuning.storage.startswith("sqlite"):
            raise ConfigError(
                f"{source}: tuning.storage: {tuning.storage} is a file on this machine; "
                "workers in other pods cannot open it: give a PostgreSQL or MySQL URL"
            )
    uri = cfg.tracking_uri()
    if cluster and not uri.startswith(("http://", "https://", "databricks", "postgresql", "mysql")):
        raise ConfigError(
            f"{source}: tracking.tracking_uri: {uri} is local to this machine; pipeline "
            "tasks run in pods that cannot reach it: give the team's tracking server "
            "(http://...) in the parameters or $MLFLOW_TRACKING_URI"
        )
    warnings = []
    if cluster and cfg.data.kind == "file" and Path(_project_relative(cfg.data.uri)).is_absolute():
        warnings.append(
            f"data.uri {cfg.data.uri} is outside the project: the image holds only the "
            "project's data/ folder, so the ingest task will not find it (use s3:// or a database)"
        )
    return warnings


def pipeline_params(cfg: Config, cluster: bool) -> dict[str, Any]:
    """The validated parameters the tasks receive: paths in the project relative (they
    resolve against the image's project folder); for a cluster the tracking URI pinned."""
    params = cfg.to_dict()
    if cfg.data.kind == "file":
        params["data"]["uri"] = _project_relative(cfg.data.uri)
    for key in ("prediction_log", "current", "labels"):
        if params["monitoring"].get(key):
            params["monitoring"][key] = _project_relative(params["monitoring"][key])
    if cluster:
        params["tracking"]["tracking_uri"] = cfg.tracking_uri()
    return params


def prepare(
    params_file: str | Path, overrides: dict[str, Any] | None, cluster: bool
) -> tuple[Config, str]:
    """Validate the parameter file (with overrides) for the pipeline; return the config
    and the YAML text given to the tasks."""
    cfg = config_mod.load(params_file, overrides)
    for warning in check(cfg, str(params_file), cluster):
        log.warning(warning)
    # JSON on one line (it is YAML too): kfp's compiler copies a default into the spec's
    # header comment without escaping newlines, so multi-line text breaks the spec file.
    text = json.dumps(pipeline_params(cfg, cluster))
    config_mod.from_mapping(json.loads(text), source=str(params_file))  # still valid
    return cfg, text


def pipeline_name(cfg: Config) -> str:
    return "mlfolio-" + re.sub(r"[^a-z0-9-]+", "-", cfg.experiment.lower()).strip("-")


def build(cfg: Config, params_text: str) -> Any:
    """The pipeline function (a kfp GraphComponent) for ``cfg``."""
    from kfp import dsl

    from mlfolio.pipeline.kfp import components as c

    resources = cfg.kfp.resources
    fan_out = cfg.tuning.enabled and cfg.tuning.n_workers > 1
    workers = list(range(cfg.tuning.n_workers)) if fan_out else []

    def task(func: Any, name: str, **kwargs: Any) -> Any:
        component = dsl.component(func, base_image=cfg.kfp.image, install_kfp_package=False)
        t = component(**kwargs)
        t.set_display_name(name)
        # Stages write to MLflow and the registry: a cached task would skip that.
        t.set_caching_options(False)
        # stages.<name>.retries: kfp re-runs a failed task (its local runner too); each
        # attempt is bounded by stages.<name>.timeout_s in the task itself (run_stage)
        if name in STAGE_NAMES and (retries := cfg.stages.of(name).retries):
            t.set_retry(num_retries=retries, backoff_duration="0s")
        if request := resources.get(name):
            if request.cpu:
                t.set_cpu_request(request.cpu)
            if request.memory:
                t.set_memory_request(request.memory)
        return t

    @dsl.pipeline(
        name=pipeline_name(cfg),
        description=f"mlfolio stage notebooks of experiment {cfg.experiment}",
        pipeline_root=cfg.kfp.pipeline_root,
    )
    def pipeline(params: str = params_text, run_name: str = ""):
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finish = task(c.finish, "finish", params=params, job_id=job)
        with dsl.ExitHandler(finish, name="mlfolio-run"), contextlib.ExitStack() as gated:
            start = task(c.start, "start", params=params, job_id=job, run_name=run_name)
            run = {"params": params, "parent_run_id": start.outputs["parent_run_id"]}
            tasks: dict[str, Any] = {}
            gate, in_gate = None, False
            for stage in STAGES:
                if stage.gated and not in_gate:
                    # the gate stage's one return value: whether the gate passed
                    passed = gate.outputs["Output"] == True  # noqa: E712
                    gated.enter_context(dsl.If(passed, name="gate-passed"))
                    in_gate = True
                # its inputs are the products folders of the stages it reads from
                up = {name: tasks[name].outputs["products"] for name in stage.upstream}
                extra: dict[str, Any] = {}
                if stage.fans_out:
                    extra = {"study_name": start.outputs["study_name"], "fanned_out": fan_out}
                t = task(c.STAGE_COMPONENTS[stage.name], stage.name, **run, **extra, **up)
                for name in stage.after:
                    t.after(tasks[name])
                if stage.fans_out:
                    for w in _workers(task, workers, params, run_name, job, up):
                        t.after(w)
                if stage.decides_gate:
                    gate = t
                tasks[stage.name] = t

    return pipeline


def _workers(
    task: Any, workers: list[int], params: Any, run_name: Any, job: Any, up: dict[str, Any]
) -> list[Any]:
    """The tuning workers of a stage that fans out (``dsl.ParallelFor``), each given the
    splits it tunes on; none when tuning runs in the stage itself."""
    from kfp import dsl

    from mlfolio.pipeline.kfp import components as c

    if not workers:
        return []
    tasks = []
    # Workers derive the study name from pipeline inputs, as start does: kfp's local
    # runner replaces a task-output parameter in a ParallelFor by the loop item (kfp
    # 2.17.3, task_spec_utils).
    with dsl.ParallelFor(workers, name="tune-workers") as worker:
        tasks.append(
            task(
                c.tune_worker,
                WORKERS,
                params=params,
                run_name=run_name,
                job_id=job,
                worker=worker,
                preprocess=up["preprocess"],
            )
        )
    return tasks


def compile_pipeline(
    params_file: str | Path,
    overrides: dict[str, Any] | None,
    output: str | Path,
    cluster: bool = True,
) -> tuple[Config, Path]:
    """Validate, build and compile; return the config and the spec file written."""
    from kfp import compiler

    cfg, text = prepare(params_file, overrides, cluster)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(cfg, text), str(out))
    return cfg, out
