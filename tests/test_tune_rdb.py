"""Studies shared through PostgreSQL: local worker processes, ``mlfolio tune-worker``
processes joining one study, heartbeats failing a killed worker's trial, the schema
created by concurrent openers, and the errors that name ``tuning.storage``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from mlfolio import cli, config, data, features, tune
from mlfolio.config import TuningConfig
from mlfolio.errors import ConfigError, StudyStorageError

from . import team as team_services

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "parameters" / "churn.yaml"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL


@pytest.fixture(scope="module")
def churn():
    cfg = config.load(PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    return cfg, features.split(df, cfg.schema, cfg.split, cfg.seed)["train"].head(800)


@pytest.fixture
def pg_url():
    """A fresh database on the local PostgreSQL (dropped after); see team.create_database."""
    name = team_services.create_database("mlfolio_tune")
    yield f"{PG}/{name}"
    team_services.drop_database(name)


def team(cfg: config.Config, url: str, **tuning) -> config.Config:
    base = {"storage": url, "n_trials": 6, "cv_folds": 2, "n_workers": 1, "timeout": None}
    return cfg.model_copy(update={"tuning": cfg.tuning.model_copy(update={**base, **tuning})})


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=tune.FINISHED)


def worker_cmd(url: str, train: Path, study: str, worker: int, *params: str) -> list[str]:
    cmd = [sys.executable, "-m", "mlfolio.cli", "tune-worker", str(PARAMS), "--study", study]
    cmd += ["--train", str(train), "--worker", str(worker), "-p", f"tuning.storage={url}"]
    cmd += ["-p", "tuning.cv_folds=2"]
    for p in params:
        cmd += ["-p", p]
    return cmd


# -- parameters and errors (no database needed) -----------------------------------------
def test_tuning_parameters_are_validated():
    assert TuningConfig().heartbeat_interval == 10 and TuningConfig().grace_period is None
    with pytest.raises(ValidationError, match="grace_period .* must be longer"):
        TuningConfig(heartbeat_interval=5, grace_period=5)
    with pytest.raises(ValidationError, match="expected an RDB URL"):
        TuningConfig(storage="postgres://host/db")  # SQLAlchemy's dialect is postgresql
    with pytest.raises(ConfigError, match="tuning.grace_period"):
        config.load(PARAMS, {"tuning.grace_period": 0})


def test_password_is_masked():
    assert tune.masked("postgresql+psycopg://bob:s3cr%40t@db:5432/x") == (
        "postgresql+psycopg://bob:***@db:5432/x"
    )
    assert tune.masked("postgresql://bob@db/x") == "postgresql://bob@db/x"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:hunter2@127.0.0.1:5432/mlfolio_no_such_db",
        "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/db",  # nothing listens
    ],
)
def test_unusable_storage_names_the_key_and_masks_the_password(url):
    with pytest.raises(StudyStorageError) as err:
        tune.storage_for(TuningConfig(storage=url), Path("unused"))
    message = str(err.value)
    assert message.startswith("tuning.storage: cannot open the study storage postgresql")
    assert "postgres:***@127.0.0.1" in message and "hunter2" not in message


@pytest.mark.parametrize("storage", [None, "sqlite:////tmp/x.db"])
def test_tune_worker_refuses_a_storage_that_is_not_shared(storage, tmp_path, capsys):
    args = ["tune-worker", str(PARAMS), "--study", "s", "--train", str(tmp_path / "t.parquet")]
    if storage:
        args += ["-p", f"tuning.storage={storage}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "tuning.storage is " in err and "shared database" in err
    assert ("sqlite:////tmp/x.db" in err) if storage else ("journal file" in err)


def test_tune_worker_takes_the_rows_and_study_of_a_run_folder(churn, tmp_path, monkeypatch, capsys):
    cfg, train = churn
    run_dir = tmp_path / "20261130-120000-abcd"
    url = "postgresql+psycopg://u:pw@127.0.0.1:1/db"  # not opened: join_study is replaced
    args = ["tune-worker", str(PARAMS), "--run-dir", str(run_dir), "-p", f"tuning.storage={url}"]
    assert cli.main(args) == 2
    assert "--run-dir: no such file" in capsys.readouterr().err

    tune.train_path(run_dir).parent.mkdir(parents=True)
    train.to_parquet(tune.train_path(run_dir))
    calls = []
    monkeypatch.setattr(tune, "join_study", lambda *a: calls.append(a) or 3)
    assert cli.main([*args, "--worker", "7"]) == 0
    ((got_cfg, got_train, name, worker),) = calls
    assert name == f"{cfg.experiment}-{run_dir.name}" == tune.study_name(cfg, run_dir)
    assert worker == 7 and len(got_train) == len(train) and got_cfg.tuning.storage == url
    assert "tune-worker 7: ran 3 trial(s)" in capsys.readouterr().err


def test_trials_past_the_budget_end_failed_before_the_objective_runs(tmp_path):
    """Workers elsewhere claimed the budget (trials RUNNING there): a trial created past
    it fails at once; a failed trial gives its place back."""
    cfg = TuningConfig(n_trials=2)
    study = tune.open_study(cfg, tune.storage_for(cfg, tmp_path), "budget", 1)
    first, _ = study.ask(), study.ask()  # running on two other machines
    calls = []
    objective = tune.workers._budgeted(lambda t: calls.append(t.number) or 0.5, 2, 7)
    study.optimize(objective, n_trials=1, catch=(tune.OverBudget,))
    late = study.trials[2]
    assert late.state == FAIL and late.user_attrs == {"worker_seed": 7, "over_budget": True}
    assert calls == []

    study.tell(first, state=FAIL)  # that machine died: its trial no longer counts
    study.optimize(objective, n_trials=1, catch=(tune.OverBudget,))
    assert calls == [3] and study.trials[3].value == 0.5


# -- PostgreSQL ---------------------------------------------------------------------------
@pytest.mark.parametrize("locked", [True, False], ids=["schema-lock", "no-lock"])
def test_concurrent_openers_create_the_schema_once(pg_url, locked, monkeypatch):
    """Four openers of a fresh database at once: Optuna's CREATE TABLEs race (a duplicate
    key in pg_type) unless the advisory lock serializes them."""
    if not locked:
        monkeypatch.setattr(tune.storage, "_schema_lock", lambda url, kw: nullcontext())
    cfg = TuningConfig(storage=pg_url)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_storage() -> None:
        barrier.wait()
        try:
            tune.storage_for(cfg, Path("unused"))
        except StudyStorageError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_storage) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if locked:
        assert errors == []
        study = tune.open_study(cfg, tune.storage_for(cfg, Path("unused")), "s", 1)
        assert study.trials == []
    else:  # shows the lock is what prevents it (the race is reliable on 4 threads)
        assert errors and "duplicate key" in str(errors[0])


def test_two_local_workers_on_postgres_finish_exactly_n_trials(churn, pg_url, tmp_path):
    cfg, train = churn
    cfg = team(cfg, pg_url, n_trials=6, n_workers=2)
    study = tune.run_study(cfg.tuning, train, cfg.schema, cfg.seed, tmp_path, "local")
    assert len(finished(study)) == 6 == len(study.trials)
    assert {t.user_attrs["worker_seed"] for t in study.trials} <= {cfg.seed + 1, cfg.seed + 2}
    assert not (tmp_path / "tune").exists()  # nothing in the run folder: it is all in PostgreSQL


@pytest.mark.slow
def test_tune_worker_processes_share_one_study(churn, pg_url, tmp_path):
    """Two `mlfolio tune-worker` processes and the tune stage on one study at once:
    together exactly n_trials finished trials, and the stage returns only when the
    workers' running trials are done; run again, the stage only reads the study."""
    cfg, train = churn
    cfg = team(cfg, pg_url, n_trials=12)
    path = tmp_path / "train.parquet"
    train.to_parquet(path)
    procs = [
        subprocess.Popen(
            worker_cmd(pg_url, path, "shared", k, "tuning.n_trials=12"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (3, 4)
    ]
    try:
        _wait_for_finished_trials_of(pg_url, "shared", {cfg.seed + 4, cfg.seed + 5}, procs)
        study = tune.run_study(cfg.tuning, train, cfg.schema, cfg.seed, tmp_path, "shared")
        assert len(finished(study)) == 12
        assert [t.number for t in study.trials if t.state == RUNNING] == []
    finally:
        outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [int(out.split(" ran ")[1].split()[0]) for out in outputs]
    by_stage = sum(t.user_attrs["worker_seed"] == cfg.seed for t in finished(study))
    assert sum(ran) + by_stage == 12 and min(ran) >= 1, outputs

    study = optuna.load_study(study_name="shared", storage=pg_url)
    assert len(finished(study)) == 12
    # Surplus trials (workers racing for the last ones) end FAIL without fitting.
    assert all(t.user_attrs.get("over_budget") for t in study.trials if t.state == FAIL)
    count = len(study.trials)
    again = tune.run_study(cfg.tuning, train, cfg.schema, cfg.seed, tmp_path, "shared")
    assert len(again.trials) == count


def _wait_for_finished_trials_of(url: str, name: str, seeds: set[int], procs) -> None:
    """Until each worker (by sampler seed) has finished a trial of the study."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert all(p.poll() is None for p in procs), "a worker exited early"
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except KeyError:  # not created yet
            study = None
        if study and seeds <= {t.user_attrs["worker_seed"] for t in finished(study)}:
            return
        time.sleep(0.1)
    raise AssertionError(f"workers {seeds} did not each finish a trial within 120 s")


@pytest.mark.slow
def test_killed_workers_trial_is_failed_after_the_grace_period(churn, pg_url, tmp_path):
    cfg, train = churn
    path = tmp_path / "train.parquet"
    train.to_parquet(path)
    settings = ("tuning.n_trials=200", "tuning.heartbeat_interval=1", "tuning.grace_period=3")
    proc = subprocess.Popen(worker_cmd(pg_url, path, "killed", 1, *settings))
    storage = tune.storage_for(team(cfg, pg_url).tuning, tmp_path)
    try:
        running = _wait_for_beating_trial(storage, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no chance to tidy up, as with a lost machine
        proc.wait()
    cfg = team(cfg, pg_url, n_trials=200, heartbeat_interval=1, grace_period=3)
    # Within the grace period it may still be alive somewhere: left alone.
    study = tune.open_study(cfg.tuning, tune.storage_for(cfg.tuning, tmp_path), "killed", 1)
    assert study.trials[running].state == RUNNING
    time.sleep(3.5)
    study = tune.open_study(cfg.tuning, tune.storage_for(cfg.tuning, tmp_path), "killed", 1)
    assert study.trials[running].state == FAIL
    # The next worker finishes the study: the failed trial does not count.
    cfg = team(cfg, pg_url, n_trials=len(finished(study)) + 2, heartbeat_interval=1, grace_period=3)
    assert tune.join_study(cfg, train, "killed", 2) == 2
    study = optuna.load_study(study_name="killed", storage=pg_url)
    assert len(finished(study)) == cfg.tuning.n_trials
    assert [t.number for t in study.trials if t.state == RUNNING] == []


def _wait_for_beating_trial(storage, proc: subprocess.Popen) -> int:
    """The number of a RUNNING trial that has sent a heartbeat (the worker is inside it)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "the worker exited before it could be killed"
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.1)
            continue
        for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
            if _has_heartbeat(storage, trial._trial_id):
                return trial.number
        time.sleep(0.05)
    raise AssertionError("no running trial with a heartbeat within 120 s")


def _has_heartbeat(storage, trial_id: int) -> bool:
    import sqlalchemy

    with storage.engine.connect() as conn:
        row = conn.execute(
            sqlalchemy.text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :t"), {"t": trial_id}
        ).first()
    return row is not None
