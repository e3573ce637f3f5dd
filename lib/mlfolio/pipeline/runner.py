"""The runner: chains the stage notebooks with papermill into one audited run folder.

``runs/<UTC time>-<experiment>-<short id>/`` receives, per stage, the executed notebook,
its HTML and its products; ``manifest.json`` records parameters, data hash, git commit,
package versions, per-stage status, timings, input hashes and MLflow ids; ``index.html``
is what a reviewer opens first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from mlfolio import config as config_mod
from mlfolio import logs
from mlfolio import progress as progress_file
from mlfolio.config import Config, StageRunConfig, project_dir
from mlfolio.errors import ConfigError, MlfolioError, RunInterrupted, StageError
from mlfolio.graph import REFERENCE_DATA, Stage, new_run_dir, select_stages
from mlfolio.pipeline import costing, terminal
from mlfolio.pipeline.engine import StageEngine, WarmKernels, set_aside
from mlfolio.pipeline.manifest import Manifest, StageEntry
from mlfolio.pipeline.parameters import (
    backfill_parameters,
    check_parameters,
    mark_stale,
    stage_parameters,
)
from mlfolio.pipeline.provenance import git_info
from mlfolio.pipeline.record import Recorder, end_failed, one_line
from mlfolio.pipeline.reuse import Reuser, detach, outputs
from mlfolio.pipeline.runlock import close_abandoned, end_open_runs, lock_run_dir
from mlfolio.pipeline.signals import Signals, record_forced_stop, record_interruption

log = logging.getLogger(__name__)


def _parent_run(cfg: Config, run_dir: Path, manifest: Manifest) -> tuple[str, str]:
    from mlfolio import tracking

    exp_id = tracking.configure(cfg)
    if not manifest.mlflow.get("parent_run_id"):
        tags = {
            "mlfolio.git_commit": str(manifest.data["git"]["commit"]),
            "mlfolio.pipeline": manifest.data.get("kind", "training"),
        }
        if trigger := manifest.data.get("trigger"):
            tags.update(
                {
                    "mlfolio.trigger": str(trigger.get("by", "monitor")),
                    "mlfolio.trigger_run_dir": str(trigger.get("monitor_run_dir", "")),
                }
            )
        kind = manifest.kind
        label = "monitor" if kind == "monitor" else "retraining" if trigger else "pipeline"
        created = datetime.fromisoformat(manifest.created)
        name = tracking.parent_run_name(cfg.experiment, run_dir, created, label)
        parent = tracking.start_parent_run(cfg, run_dir, tags, name)
        manifest.set_mlflow(parent_run_id=parent, parent_run_name=name)
    parent = manifest.mlflow["parent_run_id"]
    manifest.set_mlflow(
        tracking_uri=cfg.tracking_uri(),
        experiment_id=exp_id,
        experiment_name=cfg.experiment_name,
        experiment_url=tracking.experiment_url(cfg, exp_id),
        parent_run_url=tracking.run_url(cfg, exp_id, parent),
    )
    return parent, exp_id


def fail_stage_run(parent_run_id: str, stage: str) -> None:
    """Mark the failed stage's MLflow run FAILED (the kernel died before closing it). The
    caller guards it: the store may be what made the stage fail."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    # MLflow's atexit hook closed it as FINISHED when the kernel shut down: correct that.
    runs = client.search_runs(
        [exp],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`mlfolio.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    for stage_run in runs:
        client.set_terminated(stage_run.info.run_id, status="FAILED")


def run(
    params_file: str | Path,
    overrides: dict[str, Any] | None = None,
    stages: Sequence[str] | None = None,
    from_stage: str | None = None,
    run_dir: str | Path | None = None,
    runs_root: Path | None = None,
    echo: Callable[[str], None] = print,
    warm_kernels: bool = True,
    kind: str = "training",
    trigger: dict[str, Any] | None = None,
    force: bool = False,
    reuse: bool = True,
    progress: Callable[[str], None] | None = None,
    stage_engine: Callable[..., StageEngine] | None = None,
) -> Manifest:
    """Validate the parameters, then execute the selected stages into a run folder.

    ``kind`` picks the stage list (``training`` or ``monitor``); ``trigger`` records why
    a monitor run fired this one (manifest and MLflow tags). Raises StageError (after
    writing the manifest, HTML and index) when a stage fails. Into an existing
    ``run_dir``: MLflow runs a killed runner left RUNNING are ended KILLED first, and
    parameters that differ from the ones its kept stages ran with are refused unless
    ``force`` (those stages are then marked stale). SIGINT/SIGTERM stop the stage's
    kernel; the run is recorded ``interrupted`` and RunInterrupted raised.

    ``reuse``: a training stage whose inputs hash equals the one of a succeeded stage
    in an earlier run of the experiment (same runs root) is taken over from it, not
    executed (register and deploy always execute); False executes every stage.

    ``progress``: called with a transient line while a stage reports progress (tuning:
    trials done / total, best so far); ``echo`` gets the lasting lines, the training
    verdict last.

    ``stage_engine``: what executes each stage (called with the run folder, the tracking
    URI, the signal handler, ``warm_kernels`` and the number of stages to execute);
    default :class:`~mlfolio.pipeline.engine.WarmKernels`. Each stage runs up to
    ``stages.<name>.retries`` more times after a failed attempt (whose notebook is kept as
    ``NN_stage.attemptN.ipynb``), each attempt within ``stages.<name>.timeout_s``.
    """

    selected = select_stages(stages, from_stage, kind)
    cfg = config_mod.load(params_file, overrides)  # all validation before any notebook
    if kind == "training" and any(s.reads_source for s in selected):
        from mlfolio import data

        data.check_header(cfg.data, cfg.schema)  # the schema's columns vs the file's header
    from mlfolio import tracking

    tracking.apply_limits(cfg)  # before any store call, and inherited by the kernels
    changed: list[str] = []
    if run_dir is not None:
        folder = Path(run_dir).resolve()
        manifest = Manifest.load(folder)
        if manifest.experiment != cfg.experiment:
            raise ConfigError(
                f"{folder} belongs to experiment {manifest.experiment!r}, not {cfg.experiment!r}"
            )
        lock = lock_run_dir(folder)
        try:
            backfill_parameters(manifest, kind)
            close_abandoned(folder, manifest)
            changed = check_parameters(folder, manifest, cfg, selected, kind, force)
        except BaseException:
            lock.close()
            raise
    else:
        folder = new_run_dir(cfg, runs_root, kind)
        folder.mkdir(parents=True)
        lock = lock_run_dir(folder)
        manifest = Manifest.new(folder, cfg.experiment, kind)
    if trigger:
        manifest.set(trigger=trigger)
    recorder = Recorder(manifest, folder, cfg.tracking_uri())
    sigs = Signals()
    sigs.install()
    unroute = logs.route_runner(logs.runner_log(folder))
    try:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # kernels inherit it (xgboost)
        os.environ["MLFOLIO_PROJECT_DIR"] = str(project_dir())
        frozen = folder / "parameters.yaml"
        config_mod.dump(cfg, frozen)
        with tracking.guard(cfg.tracking_uri(), "opening it"):
            create_sqlite_store(cfg.tracking_uri())
        reuser = Reuser(
            cfg,
            folder,
            enabled=reuse and kind == "training",
            ingest_selected=any(s.reads_source for s in selected),
        )
        to_execute = len(selected) - reuser.plan(selected)
        # (the default engine's kernels start now: their imports overlap the store's start-up)
        engine = (stage_engine or WarmKernels)(
            folder, cfg.tracking_uri(), sigs, warm_kernels, to_execute
        )
        run_info = {
            "stages": [s.name for s in selected],
            "overrides": overrides or {},
            "force": force,
            "changed": changed,
            "reuse": reuser.enabled,
        }
        return _run(
            cfg,
            selected,
            folder,
            frozen,
            manifest,
            params_file,
            overrides,
            engine,
            sigs,
            run_info,
            reuser,
            recorder,
            echo,
            progress,
        )
    except KeyboardInterrupt:
        if sigs.signum is None:  # not a signal of ours (e.g. raised before the install)
            raise
        record_forced_stop(manifest, folder, sigs)
        raise RunInterrupted(
            sigs.signum,
            f"run stopped at once by a second signal; resume with --from STAGE --run-dir {folder}",
        ) from None
    except (StageError, RunInterrupted):
        raise  # recorded by _run already
    except Exception as exc:  # the store, the disk, a bug: never a record left "running"
        error = end_failed(recorder, exc)
        if error is exc and not isinstance(exc, MlfolioError):
            raise  # a bug keeps its traceback (recorded failed all the same)
        raise error from None
    finally:
        sigs.end(unroute, lock.close)


def create_sqlite_store(uri: str) -> None:
    """Create a new SQLite tracking store before any kernel opens it: MLflow's schema
    migration is not safe against a second process migrating the same new file."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() and path.stat().st_size > 0:
        return
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _run(
    cfg: Config,
    selected: list[Stage],
    folder: Path,
    frozen: Path,
    manifest: Manifest,
    params_file: str | Path,
    overrides: dict[str, Any] | None,
    engine: StageEngine,
    sigs: Signals,
    run_info: dict[str, Any],
    reuser: Reuser,
    recorder: Recorder,
    echo: Callable[[str], None],
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    from mlfolio import tracking

    kind = manifest.kind
    manifest.begin(
        run_info,
        parameters_file=str(params_file),
        overrides=overrides or {},
        parameters=cfg.to_dict(),
        seed=cfg.seed,
        git=git_info(),
        packages=reuser.packages,
        reuse=reuser.enabled,
    )
    manifest.save()  # the record exists before the store is asked anything
    with tracking.guard(cfg.tracking_uri(), "starting the pipeline's parent run"):
        parent_run_id, _ = _parent_run(cfg, folder, manifest)
    nb_params = {"params_file": str(frozen), "run_dir": str(folder), "parent_run_id": parent_run_id}
    (folder / "stage_parameters.yaml").write_text(
        "# papermill notebooks/NN_stage.ipynb out.ipynb -f this file: replays a stage\n"
        + yaml.safe_dump(nb_params, sort_keys=False)
    )
    manifest.save()

    outcome = _run_stages(selected, cfg, nb_params, manifest, reuser, engine, sigs, echo, progress)

    _collect_results(manifest, folder)
    mark_stale(manifest, cfg, folder, selected, kind)
    costing.write(folder, manifest.data)  # cost.json: what the stages used, priced
    return _finish(manifest, folder, frozen, parent_run_id, outcome, recorder, echo)


def _finish(
    manifest: Manifest,
    folder: Path,
    frozen: Path,
    parent_run_id: str,
    outcome: StageError | RunInterrupted | None,
    recorder: Recorder,
    echo: Callable[[str], None],
) -> Manifest:
    """End the run's record: the local files first (with the outcome), then MLflow. A
    failure while recording makes the run ``failed`` with its cause (in the manifest and
    the index when the disk allows, and in MLflow when the store answers), and is raised
    as one line; it never reads ``succeeded`` unless every part of the record was written."""
    from mlflow.tracking import MlflowClient

    from mlfolio import tracking

    kind = manifest.kind
    if isinstance(outcome, StageError):
        recorder.store(
            f"marking stage {outcome.stage}'s run FAILED",
            fail_stage_run,
            parent_run_id,
            outcome.stage,
        )
    if outcome is None:
        manifest.succeed()
    if recorder.write() and recorder.failure is None:
        if kind == "training":
            recorder.store("logging the headline", _log_headline, parent_run_id, manifest, folder)
        # The data a model was trained on travels with its run: a monitor on another machine
        # (shared tracking server, S3 artifacts) finds its reference rows there.
        recorder.store(
            "logging the reference data",
            tracking.log_artifacts,
            parent_run_id,
            [folder / name for name in REFERENCE_DATA],
            "data",
        )
        recorder.store(
            "logging the run's notebooks and manifest",
            tracking.log_artifacts,
            parent_run_id,
            sorted(folder.glob("*.ipynb"))
            + sorted(folder.glob("*.html"))
            + [folder / "manifest.json", frozen],
            "run",
        )
    interrupted = isinstance(outcome, RunInterrupted)
    failed = outcome is not None or recorder.failure is not None
    status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
    recorder.store("ending the pipeline run", tracking.end_run, parent_run_id, status)
    if interrupted:  # the stopped stage's run (and a trial's) never got to close itself
        recorder.store(
            "ending the stopped runs",
            lambda: end_open_runs(MlflowClient(), parent_run_id, "KILLED"),
        )
    if recorder.failure is not None:  # say so where the reader looks, if the disk allows
        recorder.mark_failed(recorder.failure)
        recorder.write()
    if kind == "training":
        held = None if recorder.store_failed else held_aliases(manifest.data)
        for line in terminal.run_verdict(manifest.data, folder, held):
            echo(line)
    echo(f"run folder: {folder}\nreport:     {folder / 'index.html'}")
    if recorder.failure is not None:
        also = one_line(recorder.failure) + recorder.suffix()
        if isinstance(outcome, StageError):
            raise StageError(
                outcome.stage, f"{outcome.detail}; recording it failed: {also}", outcome.cell_index
            )
        if isinstance(outcome, RunInterrupted):
            raise RunInterrupted(outcome.signum, f"{outcome}; recording it failed: {also}")
        raise type(recorder.failure)(also)
    if outcome is not None:
        raise outcome
    return manifest


def _log_headline(parent_run_id: str, manifest: Manifest, folder: Path) -> None:
    """The candidate's scores, the gate, the promoted version and the key parameters on
    the parent run, so MLflow compares pipeline runs at the top level."""
    from mlflow.exceptions import MlflowException

    from mlfolio import products, tracking

    kinds = {
        name: model.kind
        for product in (products.TRAIN, products.TUNE)
        if (doc := product.load(folder)) is not None
        for name, model in doc.models.items()
    }
    candidate = (manifest.data.get("candidate") or {}).get("name")
    try:
        tracking.log_headline(parent_run_id, manifest.data, kinds.get(candidate))
    except MlflowException as exc:  # the run folder's record is complete without it
        log.warning("headline metrics not logged on run %s: %s", parent_run_id, exc)


def held_aliases(manifest: dict[str, Any]) -> list[str] | None:
    """The aliases the version register recorded holds now (None: none registered, or the
    registry cannot say; the verdict then names the moves register made). Every engine's
    verdict reads them here."""
    from mlflow.tracking import MlflowClient

    from mlfolio.tracking import store_errors as tracking_errors

    model = manifest.get("model") or {}
    name, version = model.get("model_name"), model.get("version")
    if not version:
        return None
    try:
        return list(MlflowClient().get_model_version(name, version).aliases)
    except tracking_errors() as exc:
        log.warning("could not read the aliases of %s v%s: %s", name, version, exc)
        return None


def _champion(cfg: Config) -> str | None:
    """The version the champion alias points at now (an input of evaluate and register)."""
    from mlfolio import registry, tracking

    with tracking.guard(cfg.tracking_uri(), "reading the champion alias"):
        ref = registry.get_alias(cfg.model_name, registry.CHAMPION)
    return ref.version if ref else None


def _reused(
    stage: Stage, label: str, reuser: Reuser, inputs: dict[str, Any], manifest: Manifest
) -> str | None:
    """Take ``stage`` over from an earlier run when one has it with these inputs; returns
    the runner's line, or None when the stage must execute."""
    source = reuser.find(stage, inputs)
    if source is None:
        return None
    entry = reuser.take(stage, source)
    parameters = stage_parameters(stage, reuser.cfg.to_dict())
    entry.ran(parameters, manifest.data.get("overrides") or {}, inputs)
    manifest.put(stage.name, entry)
    manifest.save()
    _tag_parent(manifest, f"mlfolio.reused.{stage.name}", str(source.run_dir))
    return f"{label} reused from {source.run_dir.name}"


def _tag_parent(manifest: Manifest, key: str, value: str) -> None:
    from mlflow.tracking import MlflowClient

    from mlfolio import tracking

    mlf = manifest.mlflow
    with tracking.guard(mlf["tracking_uri"], f"tagging the pipeline run with {key}"):
        MlflowClient().set_tag(mlf["parent_run_id"], key, value)


def _run_stages(
    selected: list[Stage],
    cfg: Config,
    nb_params: dict[str, Any],
    manifest: Manifest,
    reuser: Reuser,
    engine: StageEngine,
    sigs: Signals,
    echo: Callable[[str], None],
    progress: Callable[[str], None] | None = None,
) -> StageError | RunInterrupted | None:
    """Execute stages in order on ``engine``, unless an earlier run has one with the same
    inputs (then it is reused); a failed attempt is retried up to the stage's
    ``stages.<name>.retries``. Stops at the first failure or signal."""
    folder = reuser.folder
    params = cfg.to_dict()
    overrides = manifest.data.get("overrides") or {}
    for i, stage in enumerate(selected, 1):
        label = f"[{i}/{len(selected)}] {stage.name:<10}"
        if sigs.signum is not None:
            echo(f"{label} not started: {sigs.name}")
            return record_interruption(manifest, folder, selected[i - 1 :], None, sigs)
        champion = _champion(cfg) if stage.reads_champion else None
        inputs = reuser.inputs(stage, champion)
        if line := _reused(stage, label, reuser, inputs, manifest):
            echo(line)
            continue
        echo(f"{label} running ...")
        ran_with = {"parameters": stage_parameters(stage, params), "overrides": overrides}
        policy = _policy(cfg, stage)
        earlier: list[dict[str, Any]] = []  # the failed attempts, kept
        detach(stage, folder)
        while True:
            manifest.put(stage.name, StageEntry.running(stage.notebook, **ran_with))
            manifest.stages[stage.name].follows(earlier)
            manifest.save()
            with _watch_progress(stage, folder, label, progress):
                entry = engine.execute(stage, nb_params, policy.timeout_s, len(selected) - i)
            if entry is None or entry.status == "succeeded" or sigs.signum is not None:
                break
            if len(earlier) >= policy.retries:
                break
            earlier.append(set_aside(folder, entry, len(earlier) + 1))
            _end_attempt(manifest, stage)
            echo(
                f"{label} attempt {len(earlier)} FAILED after {entry.duration_s:.1f}s: "
                f"{_why(entry)}; retrying ({len(earlier)} of stages.{stage.name}.retries "
                f"= {policy.retries})"
            )
        if entry is None:  # the signal came while kernels were starting
            echo(f"{label} not started: {sigs.name}")
            return record_interruption(manifest, folder, selected[i - 1 :], None, sigs)
        entry.follows(earlier)
        if entry.status == "succeeded":
            entry.outputs = outputs(stage, folder)
            inputs = _as_read(stage, reuser, inputs, folder)
        entry.ran(ran_with["parameters"], ran_with["overrides"], inputs)
        manifest.put(stage.name, entry)
        if entry.status != "succeeded" and sigs.signum is not None:
            stopped = record_interruption(manifest, folder, selected[i - 1 :], entry, sigs)
            cell = entry.interrupted["cell_index"]
            echo(
                f"{label} INTERRUPTED by {sigs.name} after "
                f"{entry.duration_s:.1f}s" + (f" in cell {cell}" if cell is not None else "")
            )
            return stopped
        tries = f" (attempt {len(earlier) + 1})" if earlier else ""
        if entry.status != "succeeded":
            tries = f" (after {len(earlier) + 1} attempts)" if earlier else ""
            err = entry.error
            failed = StageError(stage.name, _why(entry) + tries, err["cell_index"])
            manifest.stage_failed(stage.name, err["cell_index"], selected[i:])
            echo(
                f"{label} FAILED after {entry.duration_s:.1f}s in cell {err['cell_index']}: "
                f"{_why(entry)}{tries}"
            )
            manifest.save()
            return failed
        note = terminal.tune_summary(folder, cfg.tuning.n_trials) if stage.progress else ""
        echo(f"{label} ok in {entry.duration_s:.1f}s{note}{tries}")
        manifest.save()
    return None


def _policy(cfg: Config, stage: Stage) -> StageRunConfig:
    """The stage's ``stages:`` settings; a monitor stage (none there) runs once, unbounded."""
    try:
        return cfg.stages.of(stage.name)
    except KeyError:
        return StageRunConfig()


def _why(entry: StageEntry) -> str:
    """A failed entry's error in one line (a database's or a notebook's message can run to
    hundreds)."""
    err = entry.error or {}
    first = str(err.get("evalue") or "").strip().splitlines()
    return f"{err.get('ename')}: {first[0] if first else ''}"


def _end_attempt(manifest: Manifest, stage: Stage) -> None:
    """A failed attempt's MLflow run FAILED before the next attempt opens its own (the
    kernel's exit closed it as FINISHED)."""
    from mlfolio import tracking

    mlf = manifest.mlflow
    with tracking.guard(mlf["tracking_uri"], f"marking a failed attempt of {stage.name} FAILED"):
        fail_stage_run(mlf["parent_run_id"], stage.name)


def _watch_progress(
    stage: Stage, folder: Path, label: str, emit: Callable[[str], None] | None
) -> AbstractContextManager[None]:
    """While tune runs, its trials done / total and best so far, from the progress file
    its workers write (a file from an earlier attempt is removed first)."""
    if stage.progress is None or emit is None:
        return nullcontext()
    path = folder / stage.progress
    path.unlink(missing_ok=True)
    return progress_file.watch(path, lambda doc: f"{label} {terminal.tune_progress(doc)}", emit)


def _as_read(stage: Stage, reuser: Reuser, inputs: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Ingest's inputs as it read the source: when the source changed between the runner's
    hash and ingest's read, the record names what ingest really read."""
    if not stage.reads_source:
        return inputs
    from mlfolio import products

    doc = products.INGEST.load(folder)
    read = getattr(doc, "source_hash", None) if doc is not None else None
    if read is None or read == inputs["external"].get("data"):
        return inputs
    log.warning("the data source changed while ingest read it: recording what it read")
    return reuser.inputs(stage, source=read)


def _collect_results(manifest: Manifest, folder: Path) -> None:
    """Copy the headline facts of the stage products into the manifest (each product
    declares its own summary in :mod:`mlfolio.products`)."""
    from mlfolio import products

    manifest.set(**products.collect(folder))
