"""The tune module on the real Telco data: search spaces, resumable journal storage,
parallel workers, reproducibility, the cached-matrix xgboost path, tables and plots."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score

from mlfolio import config, data, features, train, tune, views
from mlfolio.config import TuningConfig

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
DONE = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@pytest.fixture(scope="module")
def churn():
    cfg = config.load(ROOT / "parameters" / "churn.yaml")
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    return cfg.schema, features.split(df, cfg.schema, cfg.split, cfg.seed)["train"]


@pytest.fixture(scope="module")
def folds(churn):
    schema, train_df = churn
    return tune.Folds.build(train_df, schema, 2, SEED)


def tuning(**overrides) -> TuningConfig:
    base = {
        "model": "xgboost",
        "n_trials": 4,
        "cv_folds": 2,
        "timeout": None,
        "pruner": "median",
        "n_workers": 1,
    }
    return TuningConfig(**{**base, **overrides})


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=DONE)


# -- search spaces ----------------------------------------------------------------------
def test_xgboost_space_within_bounds():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        p = tune.suggest_params(study.ask(), "xgboost")
        assert set(p) == {
            "n_estimators",
            "learning_rate",
            "max_depth",
            "min_child_weight",
            "subsample",
            "colsample_bytree",
            "reg_lambda",
        }
        assert 50 <= p["n_estimators"] <= 500 and p["n_estimators"] % 25 == 0
        assert 0.01 <= p["learning_rate"] <= 0.3
        assert p["max_depth"] in range(2, 8)
        assert 1.0 <= p["min_child_weight"] <= 20.0
        assert 0.5 <= p["subsample"] <= 1.0
        assert 0.4 <= p["colsample_bytree"] <= 1.0
        assert 1e-3 <= p["reg_lambda"] <= 10.0


def test_logreg_space_and_unknown_kind():
    p = tune.suggest_params(optuna.trial.FixedTrial({"C": 0.5}), "logreg")
    assert p == {"C": 0.5, "max_iter": 2000}
    with pytest.raises(ValueError, match="no search space"):
        tune.suggest_params(optuna.trial.FixedTrial({}), "forest")


def test_best_params_rebuild_the_full_parameters():
    # stages.tune_model refits with suggest_params(FixedTrial(study.best_params)).
    values = {
        "n_estimators": 125,
        "learning_rate": 0.05,
        "max_depth": 3,
        "min_child_weight": 2.0,
        "subsample": 0.8,
        "colsample_bytree": 0.7,
        "reg_lambda": 1.0,
    }
    assert tune.suggest_params(optuna.trial.FixedTrial(values), "xgboost") == values


# -- the objective ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {
            "n_estimators": 50,
            "learning_rate": 0.1,
            "max_depth": 3,
            "min_child_weight": 1.0,
            "subsample": 1.0,
            "colsample_bytree": 1.0,
            "reg_lambda": 1.0,
        },
        {
            "n_estimators": 75,
            "learning_rate": 0.2,
            "max_depth": 6,
            "min_child_weight": 5.0,
            "subsample": 0.6,
            "colsample_bytree": 0.5,
            "reg_lambda": 0.01,
        },
    ],
)
def test_fold_scores_equal_the_estimators_own_fit(folds, params):
    """The cached-matrix xgboost path grows the same trees as XGBClassifier.fit."""
    for step, (X_fit, y_fit, X_val, _) in enumerate(folds.parts):
        model = train.make_estimator("xgboost", params, SEED).fit(X_fit, y_fit)
        np.testing.assert_array_equal(
            tune.fold_scores(folds, step, "xgboost", params, SEED), model.predict_proba(X_val)[:, 1]
        )


def test_objective_is_the_pipelines_cross_validated_auc(churn, folds):
    """Same folds, same preprocessing: the CV AUC of the servable pipeline."""
    schema, train_df = churn
    params = {
        "n_estimators": 50,
        "learning_rate": 0.1,
        "max_depth": 3,
        "min_child_weight": 1.0,
        "subsample": 0.9,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
    }
    X, y = features.xy(train_df, schema)
    pipe = features.build_model_pipeline(schema, train.make_estimator("xgboost", params, SEED))
    expected = cross_val_score(
        pipe, X, y, scoring="roc_auc", cv=StratifiedKFold(2, shuffle=True, random_state=SEED)
    ).mean()
    objective = tune.make_objective(folds, "xgboost", SEED, prune=False)
    assert objective(optuna.trial.FixedTrial(params)) == pytest.approx(expected, abs=1e-12)


def test_folds_pickle_without_their_xgboost_matrices(folds):
    params = {"n_estimators": 50}
    tune.fold_scores(folds, 0, "xgboost", params, SEED)  # builds a cached matrix
    copy = pickle.loads(pickle.dumps(folds))
    assert copy._matrices == {}
    np.testing.assert_array_equal(copy.parts[0][0], folds.parts[0][0])
    np.testing.assert_array_equal(
        tune.fold_scores(copy, 0, "xgboost", params, SEED),
        tune.fold_scores(folds, 0, "xgboost", params, SEED),
    )


# -- storage, resume, failures ------------------------------------------------------------
def test_journal_study_resumes_with_its_finished_trials(churn, tmp_path):
    schema, train_df = churn
    progress = tmp_path / "logs" / "tune_progress.json"
    first = tune.run_study(
        tuning(n_trials=3), train_df, schema, SEED, tmp_path, "resume", progress_path=progress
    )
    assert (tmp_path / "tune" / "study.journal").is_file()
    kept = [(t.number, t.params, t.value) for t in finished(first)]
    assert len(kept) == 3
    # each finished trial updates what the runner shows: done / total, best so far
    best = first.best_trial
    assert json.loads(progress.read_text()) == {
        "done": 3,
        "total": 3,
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in first.trials),
        "failed": 0,
        "best": best.value,
        "best_trial": best.number,
    }

    again = tune.run_study(
        tuning(n_trials=5), train_df, schema, SEED, tmp_path, "resume", progress_path=progress
    )
    done = finished(again)
    assert len(done) == 5
    assert json.loads(progress.read_text())["done"] == 5  # counts the resumed study's trials
    assert [(t.number, t.params, t.value) for t in done[:3]] == kept
    # A resumed study samples new points, not the first trials again (same seed twice).
    params = [t.params for t in done]
    assert all(p not in params[:3] for p in params[3:]), params
    # Already complete: nothing more runs.
    same = tune.run_study(tuning(n_trials=5), train_df, schema, SEED, tmp_path, "resume")
    assert len(same.trials) == 5


def test_trial_left_running_is_marked_failed_on_reopen(churn, tmp_path):
    schema, train_df = churn
    cfg = tuning(n_trials=2)
    storage = tune.storage_for(cfg, tmp_path)
    study = tune.open_study(cfg, storage, "crash", SEED)
    orphan = study.ask()  # a killed process leaves its trial RUNNING
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING

    reopened = tune.open_study(cfg, tune.storage_for(cfg, tmp_path), "crash", SEED)
    assert reopened.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert tune.remaining_trials(reopened, 2) == 2

    resumed = tune.run_study(cfg, train_df, schema, SEED, tmp_path, "crash")
    states = [t.state for t in resumed.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert len(finished(resumed)) == 2


# -- workers -------------------------------------------------------------------------------
def test_two_worker_processes_finish_exactly_n_trials(churn, tmp_path):
    schema, train_df = churn
    cfg = tuning(n_trials=7, n_workers=2)
    progress = tmp_path / "progress.json"
    study = tune.run_study(
        cfg, train_df, schema, SEED, tmp_path, "parallel", progress_path=progress
    )
    assert len(study.trials) == 7
    # both workers report as they go; the study's final count is written last
    assert json.loads(progress.read_text())["done"] == 7
    assert len(finished(study)) == 7
    assert sorted(t.number for t in study.trials) == list(range(7))
    # Resuming a finished parallel study runs nothing.
    again = tune.run_study(cfg, train_df, schema, SEED, tmp_path, "parallel")
    assert len(again.trials) == 7


def test_two_workers_share_one_study(churn, folds, tmp_path):
    """Two workers (here threads, so both surely start at once) on one journal: each runs
    trials, the other sees them, and the shared slots stop them at exactly n_trials."""
    import multiprocessing as mp

    cfg = tuning(n_trials=8, pruner="none")
    storage = tune.storage_for(cfg, tmp_path)
    tune.open_study(cfg, storage, "shared", SEED)
    slots = mp.get_context("spawn").Value("i", cfg.n_trials)
    # Each worker its own storage handle and its own copy of the folds, as a process has.
    workers = [
        threading.Thread(
            target=tune.workers._worker,
            args=(
                cfg,
                tune.storage_for(cfg, tmp_path),
                "shared",
                SEED,
                i,
                pickle.loads(pickle.dumps(folds)),
                slots,
            ),
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    study = optuna.load_study(study_name="shared", storage=tune.storage_for(cfg, tmp_path))
    assert len(finished(study)) == 8 == len(study.trials)
    assert {t.user_attrs["worker_seed"] for t in study.trials} == {SEED + 1, SEED + 2}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8


def test_a_trials_value_does_not_depend_on_the_worker_that_ran_it(churn, folds, tmp_path):
    """Workers differ in their sampler seed only: each trial's value is the objective
    with the study's seed (the one the tune stage refits the best parameters with)."""
    schema, train_df = churn
    cfg = tuning(n_trials=4, n_workers=2, pruner="none")
    study = tune.run_study(cfg, train_df, schema, SEED, tmp_path, "values")
    objective = tune.make_objective(
        folds, "xgboost", SEED, prune=False, early_stopping_rounds=cfg.early_stopping_rounds
    )
    assert len(finished(study)) == 4
    for t in study.trials:
        assert t.value == objective(optuna.trial.FixedTrial(t.params)), t.number


# -- reproducibility -------------------------------------------------------------------------
@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_same_seed_gives_the_same_study(churn, tmp_path, pruner):
    """One worker, a fixed seed: the same trials, states and values, pruned inside boosting
    and early-stopped included."""
    schema, train_df = churn
    cfg = tuning(n_trials=10, pruner=pruner)  # past TPE's 8 random start-up trials
    runs = [
        tune.run_study(cfg, train_df, schema, SEED, tmp_path / name, "repro") for name in ("a", "b")
    ]
    assert runs[0].best_params == runs[1].best_params
    assert runs[0].best_value == runs[1].best_value
    assert [(t.params, t.state, t.value, t.user_attrs) for t in runs[0].trials] == [
        (t.params, t.state, t.value, t.user_attrs) for t in runs[1].trials
    ]
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in runs[0].trials)
    assert any("n_estimators" in t.user_attrs for t in runs[0].trials)


# -- reporting ----------------------------------------------------------------------------
def test_trials_table_and_plot(churn, tmp_path):
    schema, train_df = churn
    study = tune.run_study(
        tuning(n_trials=4, pruner="none"), train_df, schema, SEED, tmp_path, "report"
    )
    table = views.trials_table(study)
    assert list(table.columns[:4]) == ["number", "state", "value", "duration"]
    assert set(table.columns[4:]) == set(study.best_params)
    assert len(table) == 4 and (table["state"] == "COMPLETE").all()
    assert table["duration"].dtype == float

    fig = views.plot_study(study)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


# -- subsample-then-refit ------------------------------------------------------------------
def test_tuning_rows_is_a_seeded_stratified_sample_above_the_threshold(churn):
    schema, train_df = churn
    assert tune.tuning_rows(train_df, schema, None, SEED) is train_df
    assert tune.tuning_rows(train_df, schema, len(train_df), SEED) is train_df
    sample = tune.tuning_rows(train_df, schema, 1000, SEED)
    assert len(sample) == 1000
    assert set(sample["customerid"]) <= set(train_df["customerid"])
    assert sample["customerid"].is_unique
    share = train_df[schema.target].value_counts(normalize=True)
    got = sample[schema.target].value_counts(normalize=True)
    assert (got - share).abs().max() < 1e-3  # stratified: each class keeps its share
    again = tune.tuning_rows(train_df, schema, 1000, SEED)
    assert again["customerid"].tolist() == sample["customerid"].tolist()
    other = tune.tuning_rows(train_df, schema, 1000, SEED + 1)
    assert other["customerid"].tolist() != sample["customerid"].tolist()


def test_tuning_rows_are_the_rows_train_test_split_keeps(churn):
    """The sample is the one tuning drew before it stopped calling train_test_split (the
    same studies on the same rows)."""
    from sklearn.model_selection import train_test_split

    schema, train_df = churn
    for rows, seed in ((1000, SEED), (1777, SEED + 5)):
        want, _ = train_test_split(
            train_df, train_size=rows, stratify=train_df[schema.target], random_state=seed
        )
        got = tune.tuning_rows(train_df, schema, rows, seed)
        pd.testing.assert_frame_equal(got, want.reset_index(drop=True))


def test_study_above_subsample_rows_tunes_on_the_sample(churn, tmp_path):
    """The study's trials are those of a study on the sample itself: same values."""
    schema, train_df = churn
    cfg = tuning(n_trials=3, pruner="none", subsample_rows=1200)
    sampled = tune.run_study(cfg, train_df, schema, SEED, tmp_path / "a", "sub")
    sample = tune.tuning_rows(train_df, schema, 1200, SEED)
    direct = tune.run_study(
        tuning(n_trials=3, pruner="none"), sample, schema, SEED, tmp_path / "b", "sub"
    )
    full = tune.run_study(
        tuning(n_trials=3, pruner="none"), train_df, schema, SEED, tmp_path / "c", "sub"
    )
    assert [t.value for t in sampled.trials] == [t.value for t in direct.trials]
    assert [t.value for t in sampled.trials] != [t.value for t in full.trials]


# -- inside a model's training: pruning and early stopping -----------------------------------
GOOD = {
    "n_estimators": 200,
    "learning_rate": 0.1,
    "max_depth": 3,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
}
BAD = {  # learns slowly: behind GOOD at the early rounds (not at the end, on this data)
    "n_estimators": 500,
    "learning_rate": 0.01,
    "max_depth": 2,
    "min_child_weight": 20.0,
    "subsample": 0.5,
    "colsample_bytree": 0.4,
    "reg_lambda": 10.0,
}


def test_pruner_sees_the_folds_mean_auc_and_stops_a_trial_inside_boosting(folds):
    from sklearn.metrics import roc_auc_score

    from mlfolio.tune.search import CHECK_EVERY

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    study.enqueue_trial(GOOD)
    study.enqueue_trial(BAD)
    study.optimize(tune.make_objective(folds, "xgboost", SEED, prune=True, threads=2), n_trials=2)
    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    # each check reported once, at step round - 1: the folds' mean validation AUC
    assert sorted(good.intermediate_values) == [r - 1 for r in range(CHECK_EVERY, 201, CHECK_EVERY)]
    for rounds in (CHECK_EVERY, 200):
        aucs = []
        for X_fit, y_fit, X_val, y_val in folds.parts:
            model = train.make_estimator("xgboost", {**GOOD, "n_estimators": rounds}, SEED)
            aucs.append(roc_auc_score(y_val, model.fit(X_fit, y_fit).predict_proba(X_val)[:, 1]))
        assert good.intermediate_values[rounds - 1] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert bad.state == optuna.trial.TrialState.PRUNED
    # stopped early inside its 500 rounds, behind the good trial at that round
    last = max(bad.intermediate_values)
    assert last < 100 and len(bad.intermediate_values) == (last + 1) // CHECK_EVERY
    assert bad.intermediate_values[last] < good.intermediate_values[last]


@pytest.fixture(scope="module")
def three_folds(churn):
    schema, train_df = churn
    return tune.Folds.build(train_df.iloc[:2400], schema, 3, SEED)


@pytest.mark.parametrize("threads", [1, 2])
def test_folds_boost_side_by_side_at_most_threads_at_once(three_folds, monkeypatch, threads):
    from mlfolio.tune import search

    running, most, lock = 0, 0, threading.Lock()
    fold_scores = search.fold_scores

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return fold_scores(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(search, "fold_scores", counted)
    scored = search.boost_folds(three_folds, GOOD, SEED, early_stopping_rounds=20, threads=threads)
    assert most == threads
    monkeypatch.undo()
    for step, (scores, rounds) in enumerate(scored):  # each fold as if boosted alone
        alone = search.fold_scores(three_folds, step, "xgboost", GOOD, SEED, 20)
        np.testing.assert_array_equal(scores, alone[0])
        assert rounds == alone[1]


@pytest.mark.timeout(120)
def test_a_storage_that_fails_at_a_meeting_stops_every_fold(three_folds):
    from mlfolio.tune import search

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reports = []

    def report(value, step):
        reports.append(step)
        if step >= 19:
            raise OSError("the study's storage went away")

    trial.report = report
    with pytest.raises(OSError, match="storage went away"):
        search.boost_folds(three_folds, BAD, SEED, trial=trial, threads=3)
    assert reports == [9, 19]  # no meeting after the failed one
    assert not [t for t in threading.enumerate() if t.name.startswith("fold")]


@pytest.mark.timeout(60)
def test_a_storage_that_fails_when_a_leaving_fold_holds_the_meeting_wakes_the_others():
    from mlfolio.tune.lockstep import Lockstep

    class FailingTrial:
        def report(self, value, step):
            raise OSError("the study's storage went away")

    lockstep = Lockstep(2, threads=2, trial=FailingTrial())
    stopped = []

    def fold_0():
        lockstep.start()
        stopped.append(lockstep.meet(0, 10, 0.8, 0.8))  # waits for fold 1
        lockstep.leave(0)

    waiting = threading.Thread(target=fold_0)
    waiting.start()
    while not lockstep._waiting:  # fold 0 is at the meeting
        waiting.join(0.01)
    lockstep.start()
    with pytest.raises(OSError, match="storage went away"):
        lockstep.leave(1)  # fold 1 stopped early at round 10: the meeting is held now
    waiting.join(10)
    assert not waiting.is_alive() and stopped == [True]


@pytest.mark.timeout(120)
def test_ctrl_c_while_folds_boost_stops_them_at_their_next_check(three_folds, monkeypatch):
    import signal

    from mlfolio.tune import search

    rounds = []
    check = search.RoundCheck.check

    def interrupted(self, model, at):
        rounds.append(at)
        if at == 20 and self.fold == 0:  # a real SIGINT to the main thread, as Ctrl-C is
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return check(self, model, at)

    monkeypatch.setattr(search.RoundCheck, "check", interrupted)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        study = optuna.create_study(direction="maximize")
        with pytest.raises(KeyboardInterrupt):
            search.boost_folds(three_folds, BAD, SEED, trial=study.ask(), threads=3)
    finally:
        signal.signal(signal.SIGINT, before)
    assert max(rounds) < BAD["n_estimators"]  # every fold stopped at a check
    assert not [t for t in threading.enumerate() if t.name.startswith("fold")]


def test_fold_threads_are_all_folds_given_two_cores_per_worker(monkeypatch):
    from mlfolio.tune import workers

    for cores, n_workers, want in ((1, 1, 1), (2, 1, 5), (2, 2, 1), (3, 2, 1), (4, 2, 5)):
        monkeypatch.setattr(workers, "available_cores", lambda cores=cores: cores)
        assert workers.fold_threads(tuning(cv_folds=5), n_workers) == want, (cores, n_workers)
        assert workers.fold_threads(tuning(cv_folds=5, fold_threads=2), n_workers) == 2


def test_the_study_is_the_same_on_one_thread_or_several(churn, tmp_path):
    """The folds meet at every check: what the pruner sees, and so the trials, do not
    depend on how many folds boost at once."""
    schema, train_df = churn
    runs = []
    for threads in (1, 2, 3):
        cfg = tuning(n_trials=10, cv_folds=3, fold_threads=threads)
        study = tune.run_study(cfg, train_df, schema, SEED, tmp_path / str(threads), "threads")
        runs.append(
            [
                (t.params, t.state, t.value, t.intermediate_values, t.user_attrs)
                for t in study.trials
            ]
        )
    assert runs[0] == runs[1] == runs[2]
    assert any(state == optuna.trial.TrialState.PRUNED for _, state, *_ in runs[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("threads", [1, 3])
def test_a_fold_that_fails_stops_the_others_and_its_error_is_raised(
    three_folds, monkeypatch, threads
):
    from mlfolio.tune import search

    build = tune.Folds.xgboost_matrix

    def broken(self, step, model):
        if step == 1:
            raise MemoryError("fold 1's matrix")
        return build(self, step, model)

    monkeypatch.setattr(tune.Folds, "xgboost_matrix", broken)
    study = optuna.create_study(direction="maximize")
    rounds = []
    check = search.RoundCheck.check

    def recorded(self, model, at):
        rounds.append(at)
        return check(self, model, at)

    monkeypatch.setattr(search.RoundCheck, "check", recorded)
    with pytest.raises(MemoryError, match="fold 1's matrix"):
        search.boost_folds(three_folds, BAD, SEED, trial=study.ask(), threads=threads)
    assert max(rounds) < BAD["n_estimators"]  # the other folds stopped at a check


def test_early_stopping_records_the_rounds_each_fold_used(folds):
    from sklearn.metrics import roc_auc_score

    from mlfolio.tune.search import CHECK_EVERY

    fast = {**GOOD, "n_estimators": 500, "learning_rate": 0.3, "max_depth": 7}  # overfits soon
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(fast)
    objective = tune.make_objective(folds, "xgboost", SEED, prune=False, early_stopping_rounds=20)
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    rounds = trial.user_attrs["fold_rounds"]
    assert len(rounds) == 2 and all(r < 500 and r % CHECK_EVERY == 0 for r in rounds)
    assert trial.user_attrs["n_estimators"] == round(np.mean(rounds))
    # each fold's score is that of the model boosted for its best rounds only
    aucs = []
    for (X_fit, y_fit, X_val, y_val), used in zip(folds.parts, rounds, strict=True):
        model = train.make_estimator("xgboost", {**fast, "n_estimators": used}, SEED)
        aucs.append(roc_auc_score(y_val, model.fit(X_fit, y_fit).predict_proba(X_val)[:, 1]))
    assert trial.value == pytest.approx(np.mean(aucs), abs=1e-12)
    # no early stopping: every trial boosts its n_estimators and records nothing
    plain = tune.make_objective(folds, "xgboost", SEED, prune=True)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(fast)
    study.optimize(plain, n_trials=1)
    assert "n_estimators" not in study.trials[0].user_attrs
    assert study.trials[0].value < trial.value


def test_round_auc_is_sklearns(folds):
    from sklearn.metrics import roc_auc_score

    from mlfolio.tune.search import auc

    y = folds.parts[0][3]
    rng = np.random.default_rng(0)
    for score in (rng.random(len(y)), np.round(rng.random(len(y)), 1)):  # ties count half
        assert auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_hyperband_pruner_runs_and_prunes_inside_boosting(churn, tmp_path):
    from mlfolio.tune.search import CHECK_EVERY

    schema, train_df = churn
    cfg = tuning(n_trials=12, pruner="hyperband")
    assert isinstance(tune.storage.pruner(cfg), optuna.pruners.HyperbandPruner)
    study = tune.run_study(cfg, train_df, schema, SEED, tmp_path, "hyperband")
    assert len(finished(study)) == 12
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    # stopped at a round check, before the fold's last round
    for t in pruned:
        last = max(t.intermediate_values)
        assert (last + 1) % CHECK_EVERY == 0 and last + 1 < t.params["n_estimators"]
    assert pruned


# -- warm start -----------------------------------------------------------------------------
def test_space_values_turn_logged_params_into_the_spaces_values():
    logged = {"model": "xgboost", "n_estimators": "137", "learning_rate": "0.05", "max_depth": "9"}
    assert tune.space_values(logged, "xgboost") == {
        "n_estimators": 150,  # early stopping's rounds, up to the space's grid of 25
        "learning_rate": 0.05,
        "max_depth": 7,  # clipped to the space
    }
    assert tune.space_values({"C": "2.5", "max_iter": "2000"}, "logreg") == {"C": 2.5}


def test_first_trial_is_the_given_parameters_on_a_new_study_only(churn, tmp_path):
    schema, train_df = churn
    first = tune.space_values({k: str(v) for k, v in GOOD.items()}, "xgboost")
    note = "champion churn v3"
    study = tune.run_study(
        tuning(n_trials=3),
        train_df,
        schema,
        SEED,
        tmp_path,
        "warm",
        first_trial=first,
        first_trial_note=note,
    )
    trial0 = study.trials[0]
    assert trial0.params == GOOD and trial0.user_attrs["enqueued"] == note
    assert all("enqueued" not in t.user_attrs for t in study.trials[1:])
    # resumed: the study has trials, nothing is enqueued again
    again = tune.run_study(
        tuning(n_trials=5),
        train_df,
        schema,
        SEED,
        tmp_path,
        "warm",
        first_trial=first,
        first_trial_note=note,
    )
    assert [t.user_attrs.get("enqueued") for t in again.trials] == [note] + [None] * 4


def test_tuning_config_errors_name_the_key():
    from mlfolio.errors import ConfigError

    root = ROOT / "parameters" / "churn.yaml"
    for key, value, words in (
        ("tuning.pruner", "halving", "'median', 'hyperband' or 'none'"),
        ("tuning.subsample_rows", 10, "greater than or equal to 100"),
        ("tuning.early_stopping_rounds", 0, "greater than or equal to 1"),
        ("tuning.warm_start", "maybe", "expected true, false, 'baseline' or a registered version"),
        ("tuning.warm_start", 0, "expected true, false, 'baseline' or a registered version"),
    ):
        with pytest.raises(ConfigError) as err:
            config.load(root, {key: value})
        assert key in str(err.value) and words in str(err.value), str(err.value)
    cfg = config.load(root, {"tuning.subsample_rows": None, "tuning.pruner": "hyperband"})
    assert cfg.tuning.subsample_rows is None and cfg.tuning.pruner == "hyperband"
    assert config.load(root, {"tuning.warm_start": 3}).tuning.warm_start == 3
    assert config.load(root, {"tuning.warm_start": False}).tuning.warm_start is False
    assert config.load(root, {"tuning.warm_start": "baseline"}).tuning.warm_start == "baseline"
