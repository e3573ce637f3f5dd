"""The tune stage as a SageMaker training job (mlfolio.tune.spot): the request's spot
settings, the spec the container reads, and the container's entry surviving a SIGTERM (a
spot interruption) by resuming the study in its checkpoint folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from mlfolio import config
from mlfolio.errors import ConfigError, RunInterrupted
from mlfolio.tune import spot

from .conftest import CHURN_PARAMS

TEAM = {
    "sagemaker.image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlfolio:1",
    "sagemaker.role_arn": "arn:aws:iam::123456789012:role/mlfolio-train",
    "deploy.aws.bucket": "team-bucket",
}
SPOT = {
    **TEAM,
    "sagemaker.spot": True,
    "sagemaker.max_wait_s": 7200,
    "sagemaker.checkpoint_s3_uri": "s3://team-bucket/checkpoints/",
    "stages.tune.timeout_s": 3599.5,
}
INPUTS = {"spec": "s3://team-bucket/in/spec/", "train": "s3://team-bucket/in/train/"}
SMALL = {"tuning.n_trials": 6, "tuning.cv_folds": 2, "tuning.timeout": None}


def request(overrides: dict) -> dict:
    cfg = config.load(CHURN_PARAMS, overrides)
    return spot.training_job_request(
        cfg, "churn-job", "churn-run1", INPUTS, "s3://team-bucket/out/"
    )


def test_spot_request_waits_runs_and_checkpoints_per_study():
    req = request({**SPOT, "sagemaker.instance_types": {"tune": "ml.c5.2xlarge"}})
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert req["CheckpointConfig"] == {
        "S3Uri": "s3://team-bucket/checkpoints/churn-run1/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert req["AlgorithmSpecification"]["ContainerEntrypoint"] == spot.ENTRYPOINT
    assert req["AlgorithmSpecification"]["TrainingImage"] == TEAM["sagemaker.image_uri"]
    assert req["ResourceConfig"]["InstanceType"] == "ml.c5.2xlarge"
    assert req["RoleArn"] == TEAM["sagemaker.role_arn"]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]
    }
    assert channels == INPUTS


def test_on_demand_request_has_no_wait_and_a_bounded_run():
    req = request({**TEAM, "stages.tune.timeout_s": None, "deploy.aws.role_arn": "arn:x"})
    assert req["EnableManagedSpotTraining"] is False
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": spot.NO_LIMIT_S}
    assert "CheckpointConfig" not in req
    assert req["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"


def test_missing_job_settings_are_named_together():
    cfg = config.load(CHURN_PARAMS)
    with pytest.raises(ConfigError) as info:
        spot.require_job_settings(cfg)
    msg = str(info.value)
    for key in (
        "sagemaker.image_uri",
        "sagemaker.role_arn or deploy.aws.role_arn",
        "deploy.aws.bucket",
    ):
        assert key in msg
    cfg = config.load(CHURN_PARAMS, {**TEAM, "tuning.storage": "postgresql://u:secret@db:5432/o"})
    with pytest.raises(ConfigError, match=r"tuning.storage postgresql://u:\*\*\*@db.*password"):
        spot.require_job_settings(cfg)


def test_job_name_fits_sagemakers_pattern():
    name = spot.job_name("churn_exp.v2-" + "x" * 80, now=0)
    assert len(name) <= 63 and name.endswith("-19700101-000000")
    assert all(c.isalnum() or c == "-" for c in name) and "--" not in name


# -- the container --------------------------------------------------------------------------
def job_root(root: Path, parts, overrides: dict, first_trial: dict | None = None) -> spot.JobPaths:
    """A folder laid out as /opt/ml is in a training job: the two input channels."""
    cfg = config.load(CHURN_PARAMS, overrides)
    paths = spot.JobPaths(root)
    for path in (paths.spec, paths.train):
        path.parent.mkdir(parents=True, exist_ok=True)
    paths.spec.write_text(json.dumps(spot.job_spec(cfg, "churn-spot", first_trial, "given")))
    parts["train"].to_parquet(paths.train, index=False)
    return paths


def journal_study(paths: spot.JobPaths) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(paths.checkpoints / "tune" / "study.journal"))
    return optuna.load_study(
        study_name="churn-spot", storage=optuna.storages.JournalStorage(backend)
    )


def test_spec_carries_the_study_not_the_data(tmp_path, parts):
    paths = job_root(tmp_path, parts, {**SMALL, "tuning.pruner": "none"}, {"max_depth": 3})
    raw = json.loads(paths.spec.read_text())
    assert "data" not in raw and "deploy" not in raw
    spec = spot.read_spec(paths.spec)
    assert spec.tuning.n_trials == 6 and spec.tuning.pruner == "none"
    assert spec.first_trial == {"max_depth": 3} and spec.study_name == "churn-spot"
    raw["tuning"]["n_trials"] = 0
    paths.spec.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"spec.json: tuning.n_trials: Input should be greater"):
        spot.read_spec(paths.spec)
    with pytest.raises(ConfigError, match=r"no job spec \(the 'spec' input channel\)"):
        spot.read_spec(tmp_path / "nothing.json")


def test_a_restarted_job_runs_only_the_missing_trials(tmp_path, parts):
    paths = job_root(tmp_path, parts, {**SMALL, "tuning.n_trials": 3})
    first = spot.run_job(paths)
    assert first["finished"] == 3 and first["resumed_with"] == 0
    values = {t.number: t.value for t in journal_study(paths).trials}
    # the same job restarted (the checkpoint folder as it was): nothing to run
    again = spot.run_job(paths)
    assert again["finished"] == 3 and again["resumed_with"] == 3
    assert {t.number: t.value for t in journal_study(paths).trials} == values
    attempts = spot.read_attempts(paths.checkpoints)
    assert [a["outcome"] for a in attempts] == ["done", "done"]
    # a lock a killed process left (restored with the checkpoint folder) is released at
    # start instead of waited out (Optuna's 30 s grace period)
    lock = paths.checkpoints / "tune" / "study.journal.lock"
    lock.write_text("")
    raw = json.loads(paths.spec.read_text())
    raw["tuning"]["n_trials"] = 4
    paths.spec.write_text(json.dumps(raw))
    started = time.monotonic()
    assert spot.run_job(paths)["finished"] == 4
    assert time.monotonic() - started < 25 and not lock.exists()
    assert attempts[0]["finished_here"] == [0, 1, 2] and attempts[1]["finished_here"] == []
    assert json.loads((paths.model / spot.SUMMARY).read_text())["finished"] == 4


def test_a_restart_loads_the_folds_from_the_checkpoint_folder(tmp_path, parts, monkeypatch):
    from mlfolio import tune

    paths = job_root(tmp_path, parts, {**SMALL, "tuning.n_trials": 2})
    spot.run_job(paths)
    (kept,) = (paths.checkpoints / "tune").glob("folds-*.npz")
    spec = spot.read_spec(paths.spec)
    built = tune.Folds.build(parts["train"], spec.schema, 2, spec.seed, spec.features)
    loaded = tune.Folds.load(kept)
    assert len(loaded.parts) == 2
    for got, want in zip(loaded.parts, built.parts, strict=True):
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))

    def refit(*args, **kwargs):
        raise AssertionError("the folds were rebuilt instead of loaded")

    # the job restarted with more trials to run: the folds come from the file
    raw = json.loads(paths.spec.read_text())
    raw["tuning"]["n_trials"] = 3
    paths.spec.write_text(json.dumps(raw))
    monkeypatch.setattr(tune.Folds, "build", refit)
    assert spot.run_job(paths)["finished"] == 3
    # other folds (another cv_folds) are another file, built
    raw["tuning"].update(n_trials=4, cv_folds=3)
    paths.spec.write_text(json.dumps(raw))
    with pytest.raises(AssertionError, match="rebuilt instead of loaded"):
        spot.run_job(paths)
    assert spot.read_attempts(paths.checkpoints)[-1]["outcome"] == "failed"


def frame_through(*chain: tuple[str, str]):
    """A real frame whose callers are functions compiled from the given (file, name)
    pairs, outermost first: what the SIGTERM handler sees when the signal arrives there."""
    captured = []

    def call(level: int) -> None:
        if level == len(chain):
            captured.append(sys._getframe(1))
            return
        filename, name = chain[level]
        ns: dict = {}
        exec(compile(f"def {name}(go, level):\n    go(level)\n", filename, "exec"), ns)
        ns[name](call, level + 1)

    call(0)
    return captured[0]


OBJECTIVE = ("/app/lib/mlfolio/tune/search.py", "objective")
OPTIMIZE = ("/venv/site-packages/optuna/study/_optimize.py", "_run_trial")
JOURNAL = ("/venv/site-packages/optuna/storages/journal/_file.py", "append_logs")


def test_sigterm_waits_for_a_safe_point():
    notice = spot._Notice()
    safe, unsafe = notice._safe, lambda *c: not notice._safe(frame_through(*c))
    assert safe(frame_through(OPTIMIZE, OBJECTIVE))  # in a trial's own work
    assert safe(frame_through(("/app/lib/mlfolio/tune/spot.py", "run_job")))  # before the study
    assert unsafe(OPTIMIZE, OBJECTIVE, JOURNAL)  # a trial reporting to the journal
    assert unsafe(OPTIMIZE)  # Optuna's bookkeeping between trials
    assert unsafe(JOURNAL)
    try:
        notice.handle(signal.SIGALRM, frame_through(OPTIMIZE, OBJECTIVE))  # no SIGTERM yet
        notice.handle(signal.SIGTERM, frame_through(OPTIMIZE, JOURNAL))  # deferred...
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # ...to a look again soon
        with pytest.raises(RunInterrupted, match="SIGTERM: the tune job was stopped") as info:
            notice.handle(signal.SIGALRM, frame_through(OPTIMIZE, OBJECTIVE))
        assert info.value.exit_code == 143
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def finished_trials(paths: spot.JobPaths) -> list[optuna.trial.FrozenTrial]:
    journal = paths.checkpoints / "tune" / "study.journal"
    if not journal.is_file():
        return []
    try:
        trials = journal_study(paths).trials
    except KeyError:
        return []
    return [t for t in trials if t.state in spot.FINISHED]


@pytest.mark.slow
def test_sigterm_then_restart_reruns_no_finished_trial(tmp_path, parts):
    """SageMaker's spot interruption: SIGTERM to the container's process, then the job
    started again on the same checkpoint folder."""
    paths = job_root(tmp_path, parts, {**SMALL, "tuning.pruner": "none"})
    cmd = [
        sys.executable,
        "-m",
        "mlfolio.cli",
        "tune-job",
        "--in-container",
        "--opt-ml",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    deadline = time.time() + 120
    while len(finished_trials(paths)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert "SIGTERM: the tune job was stopped" in err.decode()
    before = {t.number: (t.value, t.params) for t in finished_trials(paths)}
    assert 2 <= len(before) < 6
    interrupted = journal_study(paths).trials
    # the trial the SIGTERM stopped is FAIL (it does not count), not left RUNNING
    assert [t.state for t in interrupted if t.number not in before] == [
        optuna.trial.TrialState.FAIL
    ]

    done = subprocess.run(cmd, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = finished_trials(paths)
    assert len(after) == 6
    # the trials finished before the SIGTERM are untouched, and none was run again
    assert {t.number: (t.value, t.params) for t in after if t.number in before} == before
    params = [json.dumps(t.params, sort_keys=True) for t in after]
    assert len(set(params)) == len(params)
    first, second = spot.read_attempts(paths.checkpoints)
    assert (first["outcome"], second["outcome"]) == ("interrupted", "done")
    assert set(first["finished_here"]) == set(before)
    assert second["finished_before"] == len(before)
    assert not set(first["finished_here"]) & set(second["finished_here"])
    assert len(second["finished_here"]) == 6 - len(before)
