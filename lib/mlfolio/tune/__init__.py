"""Hyperparameter search with Optuna: seeded TPE, pruning over CV folds, resumable and
shareable storage.

``search`` (the space, folds and objective) · ``lockstep`` (a trial's folds in threads) ·
``storage`` (where a study lives, opening it) · ``workers`` (running it: here, with local
worker processes, or joining from elsewhere).

The study lives in storage outside the process: a journal file in the run folder by
default, or an RDB URL (``tuning.storage: postgresql+psycopg://…``). A killed tuning
resumes with its finished trials. In the journal, trials left RUNNING are failed when the
study is next opened (only this run uses it). In a shared RDB other machines may be
running trials right now, so heartbeats decide instead: a worker's running trial beats
every ``tuning.heartbeat_interval`` seconds, and one silent for ``tuning.grace_period``
is failed by the next worker or opener of the study.

Where the time goes, and what saves it (``benchmarks/tune_bench.py`` measures it):

* the feature transformer has no hyperparameters, so :class:`Folds` fits it once per fold
  instead of once per trial and fold;
* xgboost folds are checked every few boosting rounds on the validation fold (only the
  trees added since the last check are predicted): with ``early_stopping_rounds`` boosting
  stops when the AUC has not improved for that many rounds, and the trial's
  ``n_estimators`` becomes the rounds used (the refit uses it);
* a trial's xgboost folds boost side by side, each in a thread, ``tuning.fold_threads``
  at once (default: all of them, given two cores per worker); they meet at every check
  (``lockstep``), where the pruner sees their mean validation AUC at that round, so the
  study does not depend on the number of threads;
* with ``pruner: median`` a trial whose mean validation AUC at a check is below the
  median of earlier trials at the same round stops there, inside the models' training;
  ``hyperband`` does successive halving on the same steps. Other model kinds report the
  running mean AUC after each fold and are pruned between folds (never after the last:
  a fully evaluated trial keeps its value). The median is over every trial in the
  storage, whichever worker or machine ran it;
* ``subsample_rows``: above that many training rows the study tunes on a seeded stratified
  sample of them (the tune stage refits the best parameters on all rows); ``warm_start``:
  the tune stage enqueues the registry champion's parameters as the first trial, or the
  train stage's model (``training.<model>``) when there is no champion of that kind;
* ``n_workers > 1`` runs that many workers on the same storage: the calling process and
  ``n_workers - 1`` child processes. The children start from a fork server, not by
  forking the caller: a process that has already run xgboost or any other OpenMP code
  (the notebook kernel, a benchmark) holds an OpenMP thread pool, and a forked copy of
  it deadlocks in its first parallel region. Each worker has its own sampler seed and a
  one-thread OpenMP limit; a shared counter hands out trial slots so the workers
  together run exactly the trials still missing;
* workers on other machines (:func:`join_study`, ``mlfolio tune-worker``) join a study in
  a shared RDB. Trial numbers come from the storage in creation order, so every worker
  knows how many trials were claimed before its own: when several race for the last
  ones, the surplus trials end FAIL at once (user attribute ``over_budget``), before any
  fitting, and the study still has exactly ``n_trials`` finished trials.

Seeds: every worker fits its models with ``seed`` (a trial's value does not depend on
who ran it) and samples with ``seed + 1 + worker``. With one worker, a fixed seed and no
timeout the study is reproducible (same trials, same best parameters); with several
workers, local or remote, the order in which trials finish, and so what TPE and the
pruner see, depends on timing: not reproducible, only each trial's value given its
parameters is.
"""

from mlfolio.tune.search import (
    Folds,
    fold_scores,
    make_objective,
    search_space,
    space_values,
    suggest_params,
    tuning_row_count,
    tuning_rows,
)
from mlfolio.tune.storage import (
    FINISHED,
    is_shared,
    masked,
    open_study,
    remaining_trials,
    storage_for,
)
from mlfolio.tune.workers import (
    OverBudget,
    join_study,
    require_shared,
    run_study,
    study_name,
    train_path,
)

__all__ = [
    "FINISHED",
    "Folds",
    "OverBudget",
    "fold_scores",
    "is_shared",
    "join_study",
    "make_objective",
    "masked",
    "open_study",
    "remaining_trials",
    "require_shared",
    "run_study",
    "search_space",
    "space_values",
    "storage_for",
    "study_name",
    "suggest_params",
    "train_path",
    "tuning_row_count",
    "tuning_rows",
]
