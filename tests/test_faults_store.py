"""Issue 21, the stores: faults injected for real into the registry lock, the tracking
server's lease, and the Optuna database of a tuning study (PostgreSQL database per test,
a real ``mlflow server``, a real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from mlfolio import cli, config, data, features, locks, products, registry, tune
from mlfolio.errors import RegistryError
from mlfolio.pipeline import report

from . import team as team_services
from .test_stages import Stages

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "parameters" / "churn.yaml"
PG = "postgresql+psycopg://postgres:hunter2@127.0.0.1:5432"  # trust auth: any password
RUNNING = optuna.trial.TrialState.RUNNING


def new_database(prefix: str) -> str:
    """A fresh database on the local PostgreSQL; a missing server fails the test."""
    import secrets

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        team_services._admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - say which service is missing
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not usable: {str(exc).splitlines()[0]}")
    return name


@pytest.fixture
def pg_db():
    name = new_database("mlfolio_faults")
    yield name
    team_services.drop_database(name)


@pytest.fixture(scope="module")
def churn_train():
    cfg = config.load(PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    return cfg, features.split(df, cfg.schema, cfg.split, cfg.seed)["train"].head(800)


def worker_args(url: str, train: Path, study: str, worker: int, *params: str) -> list[str]:
    args = ["tune-worker", str(PARAMS), "--study", study, "--train", str(train)]
    args += ["--worker", str(worker), "-p", f"tuning.storage={url}", "-p", "tuning.cv_folds=2"]
    for p in params:
        args += ["-p", p]
    return args


def _count(url: str, sql: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(sql)).scalar() or 0)
    except sqlalchemy.exc.SQLAlchemyError:
        return 0  # tables not created yet
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _forget_tracking_uris():
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


# -- row 6: registry.lock_uri unreachable ----------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """ingest .. evaluate (logreg, no tuning) on a SQLite store, once for the module."""
    from mlfolio import stages

    units = Stages(tmp_path_factory.mktemp("faults-register"))
    for name, fn in [
        ("ingest", stages.ingest),
        ("preprocess", stages.preprocess),
        ("train", stages.train_baselines),
        ("tune", stages.tune_model),
        ("evaluate", stages.evaluate_candidate),
    ]:
        units.run(name, fn)
    return units


def test_unreachable_lock_uri_leaves_no_registered_version_and_aliases_unchanged(evaluated):
    """Before: the lock failed with an OperationalError after version 2 was registered and
    challenger moved to it (the registry said more than what happened)."""
    from mlfolio import stages

    units = evaluated
    cfg = config.load(units.params)
    name = cfg.registry.model_name
    ev = products.EVALUATE.load(units.run_dir)
    uri = cfg.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # The registry already serves v1 (champion and challenger).
    v1 = registry.register(name, ev.candidate.model_uri, ev.candidate.run_id, {})
    registry.set_alias(v1, registry.CHAMPION, "earlier run")
    registry.set_alias(v1, registry.CHALLENGER, "earlier run")
    history = len(registry.alias_history(name))

    lock_uri = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/locks"  # nothing listens
    with pytest.raises(RegistryError) as err:
        units.run(
            "register",
            stages.register_model,
            **{"registry.lock_uri": lock_uri, "registry.lock_timeout_s": 5},
        )
    message = str(err.value)
    assert "registry.lock_uri" in message and "postgres:***@127.0.0.1:1" in message
    assert "hunter2" not in message and "v2 deleted" in message

    versions = client.search_model_versions(f"name = '{name}'")
    assert [str(v.version) for v in versions] == ["1"]  # no orphan version
    assert registry.get_alias(name, registry.CHAMPION).version == "1"
    assert registry.get_alias(name, registry.CHALLENGER).version == "1"
    moves = registry.alias_history(name)[history:]
    assert [(e["alias"], e["previous_version"], e["version"]) for e in moves] == [
        ("challenger", "1", "2"),
        ("challenger", "2", "1"),
    ]
    assert "register failed" in moves[-1]["reason"]

    doc = json.loads((units.run_dir / "register.json").read_text())
    assert doc["status"] == "failed-register" and doc["registered"] is False
    assert doc["version"] is None and doc["promoted"] is False
    assert doc["rolled_back"]["version"] == "2" and doc["rolled_back"]["action"] == "deleted"
    assert doc["rolled_back"]["aliases"] == {"challenger": "1"}
    assert "registry.lock_uri" in doc["error"]
    # The manifest's summary and the index say the same.
    collected = products.collect(units.run_dir)
    summary = collected["model"]
    assert summary["status"] == "failed-register" and summary["rolled_back"]["action"] == "deleted"
    manifest = {"run_dir": str(units.run_dir), "status": "failed", "stages": {}, **collected}
    html = report.write_index(units.run_dir, manifest).read_text()
    assert 'id="register-failed"' in html and "version 2 deleted" in html
    assert "registered as <b>challenger</b>" not in html


# -- row 8: the lease lock on a tracking server, 8 promoters at once --------------------------
@pytest.mark.slow  # the team services start in the slow tier only
def test_lease_lock_survives_its_own_write_conflicts(team_env):
    """Before: 1-4 of 8 holders crashed with UniqueViolation on registered_model_tag_pk
    (the server's INSERT of the lease tag raced another holder's)."""
    name = f"lease-race-{os.getpid()}-{time.monotonic_ns()}"
    mlflow.set_tracking_uri(team_env.tracking_uri)
    mlflow.set_registry_uri(team_env.tracking_uri)
    try:
        MlflowClient().create_registered_model(name)
        inside, most, errors = [0], [0], []
        guard = threading.Lock()

        def holder(barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                with locks.registry_lock(team_env.tracking_uri, name, "promote", 60):
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.05)
                    with guard:
                        inside[0] -= 1
            except Exception as exc:  # noqa: BLE001 - counted below
                errors.append(exc)

        for _ in range(2):  # two rounds: the race is frequent, not certain, in one
            barrier = threading.Barrier(8)
            threads = [threading.Thread(target=holder, args=(barrier,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert errors == [], [str(e).splitlines()[0] for e in errors]
        assert most[0] == 1  # the invariant: one holder at a time
        tags = MlflowClient().get_registered_model(name).tags
        assert not [k for k in tags if k.startswith(locks.LEASE_TAG_PREFIX)]
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


# -- row 7: the Optuna database dropped mid-tune -------------------------------------------
def test_dropped_study_database_is_a_study_storage_error(churn_train, pg_db, tmp_path, capsys):
    """Before: ``UnboundLocalError: cannot access local variable 'updated_state'`` (Optuna's
    own bookkeeping failing after the storage did); the cause only in the log."""
    cfg, train = churn_train
    path = tmp_path / "train.parquet"
    train.to_parquet(path)
    url = f"{PG}/{pg_db}"

    def drop_after_a_trial() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if _count(url, "SELECT count(*) FROM trials WHERE state = 'COMPLETE'") >= 1:
                team_services._admin(f'DROP DATABASE "{pg_db}" WITH (FORCE)')
                return
            time.sleep(0.1)

    dropper = threading.Thread(target=drop_after_a_trial)
    dropper.start()
    try:
        code = cli.main(worker_args(url, path, "dropped", 1, "tuning.n_trials=200"))
    finally:
        dropper.join()
    err = capsys.readouterr().err
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mlfolio: tuning.storage: the study storage postgresql+psycopg://")
    assert "postgres:***@127.0.0.1" in last and "hunter2" not in err
    assert "UnboundLocalError" not in last and pg_db in last


# -- row 9: a tuning worker SIGKILLed mid-trial -----------------------------------------------
@pytest.mark.slow
def test_surviving_worker_fails_the_killed_trial_and_runs_the_budget(
    churn_train, pg_db, tmp_path, capsys
):
    """A worker is SIGKILLed inside the trial that claimed the study's last slot. Before:
    the surviving worker exited 0 at n-1/n with that trial still RUNNING."""
    cfg, train = churn_train
    path = tmp_path / "train.parquet"
    train.to_parquet(path)
    url = f"{PG}/{pg_db}"
    beat = ("tuning.heartbeat_interval=1", "tuning.grace_period=3")
    args = worker_args(url, path, "killed", 1, "tuning.n_trials=200", *beat)
    proc = subprocess.Popen([sys.executable, "-m", "mlfolio.cli", *args])
    try:
        deadline = time.time() + 120
        while _count(url, "SELECT count(*) FROM trial_heartbeats") == 0:
            assert proc.poll() is None and time.time() < deadline, "no trial beat"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no chance to tidy up, as with a lost machine
        proc.wait()
    study = optuna.load_study(study_name="killed", storage=url)
    (dead,) = study.get_trials(deepcopy=False, states=(RUNNING,))
    n = len(study.get_trials(deepcopy=False, states=tune.FINISHED)) + 1  # the dead one's slot

    started = time.monotonic()
    code = cli.main(worker_args(url, path, "killed", 2, f"tuning.n_trials={n}", *beat))
    assert code == 0
    assert "tune-worker 2: ran 1 trial(s)" in capsys.readouterr().err
    study = optuna.load_study(study_name="killed", storage=url)
    assert len(study.get_trials(deepcopy=False, states=tune.FINISHED)) == n
    assert study.trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert study.get_trials(deepcopy=False, states=(RUNNING,)) == []
    assert time.monotonic() - started < 60
