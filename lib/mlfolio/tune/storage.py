"""Where a study lives, and opening it: a journal file in the run folder, or a shared RDB
(PostgreSQL) that workers on other machines join, with heartbeats so the trial of a
killed worker is failed instead of staying RUNNING forever."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from mlfolio.config import TuningConfig
from mlfolio.errors import StudyStorageError, masked
from mlfolio.tune.search import CHECK_EVERY, search_space

log = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Database servers other machines can reach; a SQLite file (or a journal) is one machine's.
SHARED_DIALECTS = ("postgresql", "mysql")
# pool_pre_ping: a worker's pooled connection can sit idle through a long trial and be
# dropped by the server or a proxy meanwhile; a ping before use replaces it instead of
# failing the trial's next write.
ENGINE_KWARGS: dict[str, Any] = {"pool_pre_ping": True}
CONNECT_TIMEOUT_S = 10  # an unreachable host fails in seconds instead of the OS's minutes
# pg_advisory_xact_lock key that serializes Optuna's CREATE TABLEs (stable across processes).
_SCHEMA_LOCK = int.from_bytes(
    hashlib.sha256(b"mlfolio.tune.schema").digest()[:8], "big", signed=True
)


def dialect(url: str) -> str:
    """``postgresql+psycopg://...`` → ``postgresql``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def is_shared(storage: str | None) -> bool:
    """True for a storage URL that workers on other machines can reach."""
    return storage is not None and dialect(storage) in SHARED_DIALECTS


def storage_for(cfg: TuningConfig, run_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: the configured RDB (with heartbeats), else a journal file in
    the run folder."""
    if cfg.storage:
        return rdb_storage(cfg)
    from optuna.storages.journal import JournalFileBackend

    path = run_dir / "tune" / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _log_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Module level: the storage is pickled into worker processes with this callback.
    log.warning(
        "study %s: trial %d sent no heartbeat for the grace period (its worker died): marked FAIL",
        study.study_name,
        trial.number,
    )


def rdb_storage(cfg: TuningConfig) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on ``cfg.storage`` with heartbeats; errors name the key."""
    import sqlalchemy

    url = cfg.storage
    assert url is not None
    kwargs = dict(ENGINE_KWARGS)
    if dialect(url) == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        with _schema_lock(url, kwargs), warnings.catch_warnings():
            # heartbeat_interval is marked experimental since Optuna 2.9; the warning on
            # every open says nothing to our users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=_log_stale_trial,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StudyStorageError(
            f"tuning.storage: cannot open the study storage {masked(url)}: "
            f"{reason[0] if reason else type(exc).__name__}"
        ) from exc


@contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables: two processes
    creating them at once fail with a duplicate key in ``pg_type``. (No-op elsewhere.)"""
    if dialect(url) != "postgresql":
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args=engine_kwargs["connect_args"]
    )
    try:
        with engine.begin() as conn:  # the lock ends with this transaction
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            yield
    finally:
        engine.dispose()


def sampler(seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: parallel workers treat each other's running trials as bad ones
    # instead of sampling next to them (no effect with one worker: nothing is running).
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=8, multivariate=True, constant_liar=True
    )


def resume_sampler(study: optuna.Study, seed: int) -> None:
    """A study reopened with trials in it gets a sampler seeded past them: the same seed
    would draw the same first points again (a resumed run repeating its own trials)."""
    if study.trials:
        study.sampler = sampler(seed + 1000 * len(study.trials))


def pruner(cfg: TuningConfig) -> optuna.pruners.BasePruner:
    """``tuning.pruner``. Steps are boosting rounds (xgboost: the folds' mean validation
    AUC after round ``r`` is step ``r - 1``) or folds (other kinds)."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        # Rungs from one check (10 rounds) up to the space's most rounds, fixed rather than
        # "auto" (the first finished trial's rounds, often under 50 with early stopping,
        # which left a single bracket that never pruned).
        if cfg.model == "xgboost":
            return optuna.pruners.HyperbandPruner(
                min_resource=CHECK_EVERY,
                max_resource=int(search_space("xgboost")["n_estimators"].high),
                reduction_factor=3,
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=cfg.cv_folds, reduction_factor=2
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: TuningConfig, storage: Any, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it with its finished trials when it already exists; fail
    the trials whose worker is gone."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler(seed),
        pruner=pruner(cfg),
    )
    resume_sampler(study, seed)
    if cfg.storage is None:
        # In the run folder's own journal, trials left RUNNING belong to a killed process
        # and will never finish.
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    else:
        # A shared storage holds trials other machines are running right now: only those
        # whose heartbeat stopped for the grace period are dead.
        fail_stale_trials(study)
    return study


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check: fail the RUNNING trials whose heartbeat stopped for the
    grace period (their worker is gone). No-op without heartbeats (a journal file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextmanager
def storage_errors(cfg: TuningConfig) -> Iterator[None]:
    """Turn a failure of the study's RDB storage while tuning into a
    :class:`StudyStorageError` naming ``tuning.storage`` (password masked). Optuna can
    bury it: when the database goes away during a trial's bookkeeping, its own clean-up
    fails next and raises ``UnboundLocalError: ... 'updated_state'`` with the real cause
    only in the exception's context."""
    try:
        yield
    except StudyStorageError:
        raise
    except Exception as exc:
        cause = _database_error(exc) if cfg.storage else None
        if cause is None:
            raise
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        raise StudyStorageError(
            f"tuning.storage: the study storage {masked(cfg.storage or '')} failed while "
            f"tuning: {reason[0] if reason else type(cause).__name__}"
        ) from exc


def _database_error(exc: BaseException) -> BaseException | None:
    """The database's own error in ``exc``'s chain (causes and contexts): the first one
    with the driver's words (``.orig``), else the first SQLAlchemy error; None if none."""
    import sqlalchemy

    found: list[BaseException] = []
    seen: set[int] = set()
    todo: BaseException | None = exc
    while todo is not None and id(todo) not in seen:
        seen.add(id(todo))
        if isinstance(todo, sqlalchemy.exc.SQLAlchemyError):
            found.append(todo)
        todo = todo.__cause__ or todo.__context__
    with_orig = [e for e in found if getattr(e, "orig", None) is not None]
    return (with_orig or found or [None])[0]


def load_study(cfg: TuningConfig, storage: Any, name: str, seed: int) -> optuna.Study:
    """An existing study (a worker joining it), with a sampler of its own seed."""
    try:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=sampler(seed), pruner=pruner(cfg)
        )
    except KeyError:
        raise StudyStorageError(f"tuning.storage: no study named {name!r} there") from None
    resume_sampler(study, seed)
    return study


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=FINISHED)))


def claimed_before(trial: optuna.Trial) -> int:
    """Trials created before ``trial`` that count against the budget: finished, running or
    waiting (failed ones do not). Trial numbers are handed out by the storage in creation
    order, so workers on different machines agree on this count without a lock."""
    states = (*FINISHED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    return sum(
        t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=states)
    )
