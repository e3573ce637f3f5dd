"""The search: each model kind's space, the CV folds (feature transform fitted once per
fold) and the objective (mean validation ROC AUC, reported to the pruner per checked
boosting round, the folds' mean, or per fold for other model kinds)."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from mlfolio.config import FeaturesConfig, SchemaConfig
from mlfolio.features import build_preprocessor, xy
from mlfolio.train import make_estimator
from mlfolio.tune.lockstep import Lockstep


def tuning_row_count(n_train: int, rows: int | None) -> int:
    """How many of ``n_train`` training rows :func:`tuning_rows` tunes on."""
    return n_train if rows is None else min(n_train, rows)


def tuning_rows(
    train: pd.DataFrame, schema: SchemaConfig, rows: int | None, seed: int
) -> pd.DataFrame:
    """The rows the study tunes on: ``train`` itself, or, when it has more than ``rows``
    (``tuning.subsample_rows``), a seeded sample of ``rows`` of them stratified on the
    target (each class keeps its share)."""
    if tuning_row_count(len(train), rows) == len(train):
        return train
    from sklearn.model_selection import StratifiedShuffleSplit

    # The rows train_test_split(train, train_size=rows, stratify=target, random_state=seed)
    # keeps, without its copy of the rows it leaves out (6M rows: 1 GB of pointers) and
    # with the classes as sorted codes (the same classes in the same order as its
    # np.unique, without sorting millions of texts; a target read as categories sorts
    # by its text, not by its categories' order).
    classes = pd.factorize(np.asarray(train[schema.target], dtype=object), sort=True)[0]
    cv = StratifiedShuffleSplit(train_size=rows, test_size=len(train) - rows, random_state=seed)
    picked, _ = next(cv.split(np.zeros(len(train)), classes))
    return train.take(picked).reset_index(drop=True)


def suggest_params(trial: optuna.Trial, kind: str) -> dict[str, Any]:
    """The search space of each model kind."""
    if kind == "xgboost":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 500, step=25),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 7),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
    if kind == "logreg":
        return {"C": trial.suggest_float("C", 1e-3, 100.0, log=True), "max_iter": 2000}
    raise ValueError(f"no search space for model kind {kind!r}")


class Dimension(NamedTuple):
    """One parameter of a search space, as ``suggest_params`` asks for it."""

    type: type
    low: float
    high: float
    step: float | None
    log: bool


class _SpaceProbe:
    """Answers ``suggest_params``'s questions with the lower bounds, recording each
    parameter's range (the search space, without a study)."""

    def __init__(self) -> None:
        self.space: dict[str, Dimension] = {}

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.space[name] = Dimension(int, low, high, step, log)
        return low

    def suggest_float(
        self, name: str, low: float, high: float, step: float | None = None, log: bool = False
    ) -> float:
        self.space[name] = Dimension(float, low, high, step, log)
        return low


def search_space(kind: str) -> dict[str, Dimension]:
    """``kind``'s search space (what :func:`suggest_params` asks), e.g. to give another
    search the same one."""
    probe = _SpaceProbe()
    suggest_params(probe, kind)  # type: ignore[arg-type]
    return probe.space


def space_values(params: dict[str, Any], kind: str) -> dict[str, Any]:
    """``params`` (e.g. a registered model's logged parameters, values as text) as values
    of ``kind``'s search space, for :meth:`optuna.Study.enqueue_trial`: only the space's
    parameters, converted to its types, clipped to its ranges and, on a grid (n_estimators
    in steps of 25), rounded up to it. Parameters it does not name are left to the sampler.
    """
    out: dict[str, Any] = {}
    for name, (kind_type, low, high, step, _) in search_space(kind).items():
        if name not in params or params[name] in (None, "None", ""):
            continue
        value = min(max(float(params[name]), low), high)
        if step:
            value = low + np.ceil((value - low) / step - 1e-9) * step
        out[name] = kind_type(round(value) if kind_type is int else value)
    return out


@dataclass(frozen=True)
class Folds:
    """CV folds with the feature transform already applied (it has no hyperparameters,
    so fitting it once per fold instead of once per trial and fold saves most of the
    per-trial overhead).

    For xgboost the training matrix of each fold (xgboost's quantile sketch of it) is
    built once per process and reused by every trial, instead of once per fit.
    """

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    _matrices: dict[tuple[int, Any, int], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        train: pd.DataFrame,
        schema: SchemaConfig,
        n_folds: int,
        seed: int,
        encoding: FeaturesConfig | None = None,
    ) -> Folds:
        X, y = xy(train, schema)
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = []
        for fit_idx, val_idx in cv.split(X, y):
            prep = build_preprocessor(schema, encoding).fit(X.iloc[fit_idx], y.iloc[fit_idx])
            parts.append(
                (
                    prep.transform(X.iloc[fit_idx]),
                    y.iloc[fit_idx].to_numpy(),
                    prep.transform(X.iloc[val_idx]),
                    y.iloc[val_idx].to_numpy(),
                )
            )
        return cls(parts)

    def save(self, path: Path) -> None:
        """The folds' arrays in one ``.npz`` file (numbers only, no pickle), written
        atomically: a process killed meanwhile leaves no half file."""
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {f"f{i}_{j}": a for i, part in enumerate(self.parts) for j, a in enumerate(part)}
        np.savez(tmp, n_folds=len(self.parts), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Folds:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n_folds"])
            return cls([tuple(z[f"f{i}_{j}"] for j in range(4)) for i in range(n)])  # type: ignore[misc]

    # xgboost matrices hold native handles: they are not sent to worker processes.
    def __getstate__(self) -> dict[str, Any]:
        return {"parts": self.parts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "parts", state["parts"])
        object.__setattr__(self, "_matrices", {})

    def xgboost_matrix(self, step: int, model: Any) -> Any:
        """Fold ``step``'s training rows as the QuantileDMatrix ``model.fit`` would build."""
        import xgboost as xgb

        key = (step, model.max_bin, model.n_jobs)
        if key not in self._matrices:
            X_fit, y_fit, _, _ = self.parts[step]
            self._matrices[key] = xgb.QuantileDMatrix(
                X_fit,
                label=y_fit,
                missing=model.missing,
                max_bin=model.max_bin,
                nthread=model.n_jobs,
            )
        return self._matrices[key]


def _reuses_matrix(model: Any) -> bool:
    """True for the xgboost setups whose ``fit`` trains on a QuantileDMatrix (CPU hist
    trees) and whose ``predict_proba`` predicts in place with every tree."""
    p = model.get_params()
    return (
        p.get("tree_method") in (None, "hist", "auto")
        and p.get("device") in (None, "cpu")
        and p.get("booster") in (None, "gbtree")
        and not p.get("enable_categorical")
        and p.get("callbacks") is None
        and p.get("early_stopping_rounds") is None
        and not callable(p.get("objective"))
    )


# A trial's user attribute "steps": its reported steps are boosting rounds (step = round - 1,
# the folds' mean AUC). Studies of mlfolio before the folds met at each check said
# "rounds" and reported fold f's round r at step f * 1000 + r - 1.
STEPS_ROUNDS = "mean-of-folds rounds"
# Rounds between validation checks (early stopping, pruning). xgboost's own ``evals``
# predicts the validation rows with every tree at every round here (the per-round cost
# grows with the model: it doubled a 300-round fit); a check instead adds only the trees
# grown since the last one to the validation margins it keeps.
CHECK_EVERY = 10


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of binary labels ``y`` (0/1) for ``score`` (ties count half), as
    :func:`sklearn.metrics.roc_auc_score` computes it, without its input checks."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@functools.cache
def _round_check_class() -> type:
    import xgboost as xgb  # lazily: xgb.train only takes subclasses of its TrainingCallback

    return type("RoundCheck", (RoundCheck, xgb.callback.TrainingCallback), {})


class RoundCheck:
    """An xgboost training callback: every :data:`CHECK_EVERY` rounds, the validation AUC
    of fold ``fold``'s model so far; boosting stops after ``early_stopping_rounds`` rounds
    without a better one, or when ``lockstep`` (the trial's folds meeting at each check,
    where the pruner sees their mean AUC) says the trial is stopped.
    :meth:`make` builds one (an instance of xgboost's ``TrainingCallback`` too)."""

    @classmethod
    def make(cls, *args: Any) -> RoundCheck:
        return _round_check_class()(*args)

    def __init__(
        self,
        X_val: np.ndarray,
        y_val: np.ndarray,
        missing: float,
        fold: int,
        early_stopping_rounds: int | None,
        lockstep: Lockstep | None = None,
    ) -> None:
        self.X_val, self.y_val, self.missing = X_val, y_val, missing
        self.fold, self.patience, self.lockstep = fold, early_stopping_rounds, lockstep
        self.margin = np.zeros(len(y_val))
        self.done = 0  # trees already in self.margin
        self.best_auc, self.best_rounds, self.best_margin = -np.inf, 0, self.margin

    def check(self, model: Any, rounds: int) -> bool:
        """Validation AUC after ``rounds`` rounds; True when boosting should stop."""
        if rounds > self.done:
            # The new trees' margins only; each call adds the base score once, a constant
            # that does not change the ranking (the AUC).
            self.margin = self.margin + model.inplace_predict(
                self.X_val,
                iteration_range=(self.done, rounds),
                predict_type="margin",
                missing=self.missing,
            )
            self.done = rounds
        value = auc(self.y_val, self.margin)
        if value > self.best_auc:
            self.best_auc, self.best_rounds, self.best_margin = value, rounds, self.margin
        patient = self.patience is None or rounds - self.best_rounds < self.patience
        if self.lockstep is not None:
            final = value if self.patience is None else self.best_auc
            if self.lockstep.meet(self.fold, rounds, value, final):
                return True
        return not patient

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        return (epoch + 1) % CHECK_EVERY == 0 and self.check(model, epoch + 1)

    def after_training(self, model: Any) -> Any:
        stopped = self.lockstep is not None and self.lockstep.stopped
        if model.num_boosted_rounds() != self.done and not stopped:
            self.check(model, model.num_boosted_rounds())  # the last rounds
        return model


def fold_scores(
    folds: Folds,
    step: int,
    kind: str,
    params: dict[str, Any],
    seed: int,
    early_stopping_rounds: int | None = None,
    lockstep: Lockstep | None = None,
) -> tuple[np.ndarray, int] | np.ndarray:
    """Positive-class probabilities on fold ``step``'s validation rows of the model
    ``make_estimator(kind, params, seed)`` fitted on its training rows.

    For xgboost this is what ``XGBClassifier.fit`` + ``predict_proba`` compute (same
    parameters, rounds and training matrix, so the same trees), but trained with
    ``xgboost.train`` on the fold's cached matrix: building that matrix costs as much as
    fitting the small models the search ends up in.

    With ``early_stopping_rounds`` or a ``lockstep`` (xgboost only), the model is checked
    on the fold's validation rows during boosting (:class:`RoundCheck`): boosting stops
    after ``early_stopping_rounds`` rounds without a better AUC, or when the lockstep's
    trial is pruned. Then the result is ``(validation margins, rounds)``: of the best
    round checked with early stopping, else of all rounds boosted (margins rank as the
    probabilities do, so their AUC is the same).
    """
    X_fit, y_fit, X_val, y_val = folds.parts[step]
    model = make_estimator(kind, params, seed)
    per_round = early_stopping_rounds is not None or lockstep is not None
    if kind == "xgboost" and _reuses_matrix(model):
        import xgboost as xgb

        check = RoundCheck.make(X_val, y_val, model.missing, step, early_stopping_rounds, lockstep)
        booster = xgb.train(
            {**model.get_xgb_params(), "eval_metric": model.eval_metric},
            folds.xgboost_matrix(step, model),
            num_boost_round=model.get_num_boosting_rounds(),
            callbacks=[check] if per_round else None,
        )
        if early_stopping_rounds is not None:
            return check.best_margin, check.best_rounds
        if per_round:
            return check.margin, check.done
        return np.asarray(booster.inplace_predict(X_val, missing=model.missing))
    if per_round:
        raise ValueError(f"per-round checks need the xgboost hist path (model kind {kind!r})")
    return model.fit(X_fit, y_fit).predict_proba(X_val)[:, 1]


def boost_folds(
    folds: Folds,
    params: dict[str, Any],
    seed: int,
    early_stopping_rounds: int | None = None,
    trial: optuna.Trial | None = None,
    threads: int = 1,
) -> list[tuple[np.ndarray, int]]:
    """Every fold's :func:`fold_scores` (xgboost, checked per round), the folds boosting
    side by side in threads, at most ``threads`` at once (:class:`Lockstep`). With a
    ``trial`` the folds meet at every check, where the pruner sees their mean validation
    AUC at that round (step ``round - 1``) and may stop them all
    (:class:`optuna.TrialPruned`). The result does not depend on ``threads``."""
    n = len(folds.parts)
    lockstep = Lockstep(n, threads, trial)

    def boost(step: int) -> tuple[np.ndarray, int]:
        lockstep.start()
        try:
            scores = fold_scores(
                folds, step, "xgboost", params, seed, early_stopping_rounds, lockstep
            )
        except BaseException:
            lockstep.leave(step, failed=True)
            raise
        lockstep.leave(step)
        return scores

    # Every fold has a thread (the lockstep waits for each), `threads` of them boosting.
    pool = ThreadPoolExecutor(n, thread_name_prefix="fold")
    try:
        futures = [pool.submit(boost, step) for step in range(n)]
        results = [f.result() for f in futures]  # the first fold's error, if any, is raised
    except BaseException:
        lockstep.abort()  # Ctrl-C here, or a fold failed: the others stop at their next check
        raise
    finally:
        pool.shutdown(wait=True)
    if lockstep.pruned_at is not None:
        raise optuna.TrialPruned(f"trial was pruned at round {lockstep.pruned_at + 1}")
    return results


def make_objective(
    folds: Folds,
    kind: str,
    seed: int,
    prune: bool,
    early_stopping_rounds: int | None = None,
    threads: int = 1,
):
    """Mean validation ROC AUC over folds.

    xgboost with ``prune`` or ``early_stopping_rounds``: the folds boost side by side in
    up to ``threads`` threads, evaluated round by round (:func:`boost_folds`); the pruner
    sees the folds' mean validation AUC at each checked round and may stop the trial
    inside their training. With early stopping the trial's ``n_estimators`` becomes the
    mean over folds of the rounds each used (user attribute ``n_estimators``, which the
    refit uses). Other kinds: the running mean AUC is reported after each fold, and a
    pruner may stop the trial between folds (never after its last).
    """
    in_training = kind == "xgboost" and (prune or early_stopping_rounds is not None)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, kind)
        if in_training:
            trial.set_user_attr("steps", STEPS_ROUNDS)  # what the reported steps count
            scored = boost_folds(
                folds, params, seed, early_stopping_rounds, trial if prune else None, threads
            )
            aucs = [
                roc_auc_score(y_val, scores)
                for (_, _, _, y_val), (scores, _) in zip(folds.parts, scored, strict=True)
            ]
            if early_stopping_rounds is not None:
                rounds = [used for _, used in scored]
                trial.set_user_attr("n_estimators", int(round(np.mean(rounds))))
                trial.set_user_attr("fold_rounds", [int(r) for r in rounds])
            return float(np.mean(aucs))
        aucs = []
        last = len(folds.parts) - 1
        for step, (_, _, _, y_val) in enumerate(folds.parts):
            aucs.append(roc_auc_score(y_val, fold_scores(folds, step, kind, params, seed)))
            trial.report(float(np.mean(aucs)), step)
            # After the last fold the work is done: keep the value instead of pruning it.
            if prune and step < last and trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(aucs))

    return objective
