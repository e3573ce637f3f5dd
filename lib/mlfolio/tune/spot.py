"""The tune stage as a SageMaker training job, on managed spot capacity if asked: the
request, and what runs in the container.

The study lives in the job's checkpoint folder (``/opt/ml/checkpoints``, a journal file
synced to ``sagemaker.checkpoint_s3_uri``) or in ``tuning.storage``'s database. A spot
interruption is a SIGTERM with two minutes' notice, then a restart of the same job with
the checkpoint folder restored. On SIGTERM the running trial is failed at once (Optuna
records it FAIL; it does not count) and the process exits 143; every finished trial is
already in the journal, written and fsynced when it finished. On restart the study is
loaded, trials left RUNNING by a kill are failed, and only the missing trials run
(:func:`mlfolio.tune.run_study` counts ``n_trials`` from the finished ones): no finished
trial runs again. Each attempt appends a line to ``tune/attempts.jsonl`` in the checkpoint
folder (when it ran, what it finished, how it ended).

The container reads two input channels, written by ``mlfolio tune-job`` at submission:
``spec`` (``spec.json``: the sections the study needs, see :func:`job_spec`) and
``train`` (the preprocess stage's ``train.parquet``); it writes ``tune-job.json`` (best
trial and parameters, trial counts) to ``/opt/ml/model``, which SageMaker uploads.
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mlfolio.config import Config, FeaturesConfig, SchemaConfig, TuningConfig
from mlfolio.errors import ConfigError, MlfolioError, RunInterrupted, masked
from mlfolio.tune.storage import FINISHED
from mlfolio.tune.workers import run_study

log = logging.getLogger(__name__)
OPT_ML = Path("/opt/ml")  # SageMaker's folder in a training container
CHECKPOINT_PATH = "/opt/ml/checkpoints"
ENTRYPOINT = ["mlfolio", "tune-job", "--in-container"]
SPEC_VERSION = 1
NO_LIMIT_S = 5 * 24 * 3600  # SageMaker's longest MaxRuntimeInSeconds
SUMMARY = "tune-job.json"
ATTEMPTS = "tune/attempts.jsonl"  # in the checkpoint folder, next to study.journal


@dataclass(frozen=True)
class JobPaths:
    """Where a training container finds its inputs and puts its outputs (``/opt/ml``)."""

    root: Path = OPT_ML

    @property
    def spec(self) -> Path:
        return self.root / "input" / "data" / "spec" / "spec.json"

    @property
    def train(self) -> Path:
        return self.root / "input" / "data" / "train" / "train.parquet"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def failure(self) -> Path:  # SageMaker shows its text as the job's FailureReason
        return self.root / "output" / "failure"

    @property
    def attempts(self) -> Path:
        return self.checkpoints / ATTEMPTS


# -- the request --------------------------------------------------------------------------
def job_name(study: str, now: float | None = None) -> str:
    """A training job name for the study: SageMaker's pattern, at most 63 characters."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    base = re.sub(r"[^A-Za-z0-9]+", "-", study).strip("-")[: 63 - len(stamp) - 1] or "tune"
    return f"{base.rstrip('-')}-{stamp}"


def checkpoint_uri(cfg: Config, study: str) -> str | None:
    """The study's own folder under ``sagemaker.checkpoint_s3_uri``: a job resubmitted for
    the same study (after MaxWait ran out, say) resumes it too."""
    root = cfg.sagemaker.checkpoint_s3_uri
    return None if root is None else f"{root.rstrip('/')}/{study}/"


def max_runtime_s(cfg: Config) -> int:
    """MaxRuntimeInSeconds: ``stages.tune.timeout_s``; without one, spot's ``max_wait_s``
    or SageMaker's longest run."""
    bound = cfg.stages.tune.timeout_s
    if bound is not None:
        return math.ceil(bound)
    return cfg.sagemaker.max_wait_s if cfg.sagemaker.spot else NO_LIMIT_S


def require_job_settings(cfg: Config) -> tuple[str, str, str]:
    """The image, role and bucket a tune job needs: (image_uri, role_arn, bucket), or a
    ConfigError naming each key that is missing."""
    sm, aws = cfg.sagemaker, cfg.deploy.aws
    role = sm.role_arn or aws.role_arn
    missing = [
        key
        for key, value in (
            ("sagemaker.image_uri (the project image in ECR)", sm.image_uri),
            ("sagemaker.role_arn or deploy.aws.role_arn (the job's execution role)", role),
            ("deploy.aws.bucket (where the job's inputs and outputs go)", aws.bucket),
        )
        if not value
    ]
    if missing:
        raise ConfigError("a SageMaker tune job needs " + "; ".join(missing))
    storage = cfg.tuning.storage
    if storage and masked(storage) != storage:
        raise ConfigError(
            f"tuning.storage {masked(storage)}: a password in the URL would be written to "
            "the job's spec in S3; give the job's image credentials another way (e.g. IAM "
            "database authentication or a ~/.pgpass)"
        )
    assert sm.image_uri and role and aws.bucket
    return sm.image_uri, role, aws.bucket


def training_job_request(
    cfg: Config, name: str, study: str, inputs: dict[str, str], output_s3_uri: str
) -> dict[str, Any]:
    """CreateTrainingJob's arguments for the tune stage's job ``name`` on study ``study``.

    ``inputs``: channel name → S3 prefix (``spec`` and ``train``); ``output_s3_uri``:
    where SageMaker puts ``<name>/output/model.tar.gz``. With ``sagemaker.spot`` the job
    runs on managed spot capacity, waiting at most ``max_wait_s`` (run time included).
    """
    image, role, _ = require_job_settings(cfg)
    sm = cfg.sagemaker
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": max_runtime_s(cfg)}
    if sm.spot:
        stopping["MaxWaitTimeInSeconds"] = sm.max_wait_s
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ENTRYPOINT,
        },
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for channel, uri in inputs.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_s3_uri},
        "ResourceConfig": {
            "InstanceType": sm.instance_types.get("tune", sm.instance_type),
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": sm.spot,
        "Tags": [
            {"Key": "mlfolio:experiment", "Value": cfg.experiment},
            {"Key": "mlfolio:stage", "Value": "tune"},
            {"Key": "mlfolio:study", "Value": study},
        ],
    }
    ckpt = checkpoint_uri(cfg, study)
    if ckpt:
        request["CheckpointConfig"] = {"S3Uri": ckpt, "LocalPath": CHECKPOINT_PATH}
    return request


# -- the spec the container reads ---------------------------------------------------------
def job_spec(
    cfg: Config,
    study: str,
    first_trial: dict[str, Any] | None = None,
    first_trial_note: str | None = None,
) -> dict[str, Any]:
    """What the job's study needs, and nothing else (no data location, no secrets): the
    ``tuning``, ``schema`` and ``features`` sections, the seed and the study's name."""
    return {
        "version": SPEC_VERSION,
        "experiment": cfg.experiment,
        "study_name": study,
        "seed": cfg.seed,
        "tuning": cfg.tuning.model_dump(mode="json"),
        "schema": cfg.schema.model_dump(mode="json"),
        "features": cfg.features.model_dump(mode="json"),
        "first_trial": first_trial,
        "first_trial_note": first_trial_note,
    }


@dataclass(frozen=True)
class Spec:
    study_name: str
    seed: int
    tuning: TuningConfig
    schema: SchemaConfig
    features: FeaturesConfig
    first_trial: dict[str, Any] | None
    first_trial_note: str | None


def read_spec(path: Path) -> Spec:
    """``spec.json`` validated section by section; errors name the file and the key."""
    from pydantic import ValidationError

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no job spec (the 'spec' input channel)") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("version") != SPEC_VERSION:
        got = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{path}: version: expected {SPEC_VERSION} (got {got!r})")
    sections: dict[str, Any] = {}
    for key, model in (
        ("tuning", TuningConfig),
        ("schema", SchemaConfig),
        ("features", FeaturesConfig),
    ):
        try:
            sections[key] = model.model_validate(raw.get(key, {}))
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"])
            msg = exc.errors()[0]["msg"]
            raise ConfigError(f"{path}: {key}.{where}: {msg}") from None
    for key, kind in (("study_name", str), ("seed", int)):
        if not isinstance(raw.get(key), kind):
            raise ConfigError(f"{path}: {key}: expected {kind.__name__} (got {raw.get(key)!r})")
    return Spec(
        raw["study_name"],
        raw["seed"],
        sections["tuning"],
        sections["schema"],
        sections["features"],
        raw.get("first_trial"),
        raw.get("first_trial_note"),
    )


# -- in the container ---------------------------------------------------------------------
class _Notice:
    """SIGTERM's handler. It raises :class:`RunInterrupted` where the main thread is when
    that is safe: inside a trial's own work (the objective: Optuna records the trial FAIL
    and re-raises) or in mlfolio's code before the study runs. Inside a storage write, or
    in Optuna's bookkeeping between trials, it looks again every ``RETRY_S`` (SIGALRM)
    instead: a journal line or lock cut in half would outlive the process."""

    RETRY_S = 0.05
    OBJECTIVE = ("mlfolio/tune/search.py", "objective")  # the trial's own work

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM:
            self.signum = signum
        if self.signum is None:
            return
        if self._safe(frame):
            signal.setitimer(signal.ITIMER_REAL, 0)
            raise RunInterrupted(
                self.signum, "SIGTERM: the tune job was stopped (spot interruption?)"
            )
        signal.setitimer(signal.ITIMER_REAL, self.RETRY_S)

    def _safe(self, frame: Any) -> bool:
        objective_file, objective_name = self.OBJECTIVE
        in_objective = in_optuna = False
        while frame is not None:
            code = frame.f_code
            where = code.co_filename.replace("\\", "/")
            if "/optuna/storages/" in where:
                return False
            in_objective |= where.endswith(objective_file) and code.co_name == objective_name
            in_optuna |= "/optuna/" in where
            frame = frame.f_back
        return in_objective or not in_optuna


@contextmanager
def sigterm_interrupts() -> Iterator[_Notice]:
    """SIGTERM (SageMaker's notice of a spot interruption, or of MaxRuntime) raises
    :class:`RunInterrupted` in the main thread at the first safe point (:class:`_Notice`):
    the running trial ends FAIL; every finished trial is in the storage already."""
    notice = _Notice()
    previous = {sig: signal.signal(sig, notice.handle) for sig in (signal.SIGTERM, signal.SIGALRM)}
    try:
        yield notice
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finished(study: optuna.Study | None) -> list[int]:
    if study is None:
        return []
    return [t.number for t in study.get_trials(deepcopy=False, states=FINISHED)]


def _record(path: Path, entry: dict[str, Any]) -> None:
    """One line per attempt, fsynced: it is in the checkpoint folder SageMaker uploads."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_attempts(checkpoints: Path) -> list[dict[str, Any]]:
    """The attempts recorded in a checkpoint folder, oldest first."""
    path = checkpoints / ATTEMPTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_job(paths: JobPaths | None = None) -> dict[str, Any]:
    """The training container's work: run (or resume) the study in the checkpoint folder
    until ``tuning.n_trials`` trials have finished; write the summary to the model folder.
    A SIGTERM ends it with :class:`RunInterrupted` (exit 143) after recording the attempt;
    a failure writes SageMaker's failure file."""
    import pandas as pd

    paths = paths or JobPaths()
    started = time.time()
    spec: Spec | None = None
    before: list[int] = []
    study: optuna.Study | None = None
    entry: dict[str, Any] = {"started": started}
    try:
        with sigterm_interrupts():
            spec = read_spec(paths.spec)
            _release_stale_lock(paths)
            if not paths.train.is_file():
                raise ConfigError(f"{paths.train}: no training rows (the 'train' input channel)")
            before = _already_finished(spec, paths)
            train = pd.read_parquet(paths.train)
            study = run_study(
                spec.tuning,
                train,
                spec.schema,
                spec.seed,
                paths.checkpoints,
                spec.study_name,
                first_trial=spec.first_trial,
                first_trial_note=spec.first_trial_note,
                encoding=spec.features,
                folds_dir=paths.checkpoints / "tune",
            )
        entry["outcome"] = "done"
    except RunInterrupted:
        entry["outcome"] = "interrupted"
        raise
    except MlfolioError as exc:
        entry["outcome"] = "failed"
        _write_failure(paths, str(exc))
        raise
    except Exception:
        entry["outcome"] = "failed"
        _write_failure(paths, traceback.format_exc(limit=5))
        raise
    finally:
        if spec is not None:
            done = _finished(study) if study is not None else _already_finished(spec, paths)
            entry.update(
                ended=time.time(),
                finished_before=len(before),
                finished_here=sorted(set(done) - set(before)),
            )
            _record(paths.attempts, entry)
    summary = summarize(study, spec.tuning.n_trials, len(before))
    paths.model.mkdir(parents=True, exist_ok=True)
    (paths.model / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _release_stale_lock(paths: JobPaths) -> None:
    """Remove the journal's lock file a killed process left (a worker process stopped in
    a write, or restored with the checkpoint folder): nothing else uses this folder when
    the job starts (one instance), and Optuna would otherwise wait 30 s before breaking
    it."""
    lock = paths.checkpoints / "tune" / "study.journal.lock"
    if lock.is_symlink() or lock.exists():
        log.warning("removing %s, left by a stopped process", lock)
        lock.unlink()


def _already_finished(spec: Spec, paths: JobPaths) -> list[int]:
    """The finished trials in the study's storage now (none when it does not exist)."""
    from mlfolio.tune.storage import storage_for

    storage = storage_for(spec.tuning, paths.checkpoints)
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        return []
    return _finished(study)


def summarize(study: optuna.Study, n_trials: int, resumed_with: int) -> dict[str, Any]:
    """What the job leaves in its model folder: trial counts and the best trial."""
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in study.trials if t.state == FINISHED[0]]
    best = study.best_trial if complete else None
    return {
        "study_name": study.study_name,
        "n_trials": n_trials,
        "finished": len(_finished(study)),
        "resumed_with": resumed_with,
        "trial_states": states,
        "best_trial": best.number if best else None,
        "best_cv_roc_auc": best.value if best else None,
        "best_params": best.params if best else None,
        "best_n_estimators": best.user_attrs.get("n_estimators") if best else None,
    }


def _write_failure(paths: JobPaths, text: str) -> None:
    try:
        paths.failure.parent.mkdir(parents=True, exist_ok=True)
        paths.failure.write_text(text[:1024])
    except OSError as exc:  # outside a container /opt/ml may not be writable
        log.debug("could not write %s: %s", paths.failure, exc)
