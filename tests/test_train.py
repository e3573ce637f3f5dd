"""The train module on the real Telco data: estimators, and the threads a fit uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost

from mlfolio import config, data, features, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def churn():
    cfg = config.load(ROOT / "parameters" / "churn.yaml")
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    return cfg, features.split(df, cfg.schema, cfg.split, cfg.seed)


def test_fit_threads_follow_the_rows_and_the_models_own_setting():
    big = train.THREADED_FIT_ROWS
    assert train.fit_threads("xgboost", {}, big - 1, cores=2) == 1
    assert train.fit_threads("xgboost", {}, big, cores=2) == 2
    assert train.fit_threads("xgboost", {}, big, cores=8) == 8
    # the parameter file's n_jobs wins either way
    assert train.fit_threads("xgboost", {"n_jobs": 1}, 10 * big, cores=2) == 1
    assert train.fit_threads("xgboost", {"n_jobs": 3}, 10, cores=2) == 3
    assert train.fit_threads("logreg", {}, 10 * big, cores=2) == 1


def test_available_cores_are_the_affinity_or_else_the_cpu_count(monkeypatch):
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert train.available_cores() == 3
    monkeypatch.delattr(train.os, "sched_getaffinity", raising=False)  # as on macOS
    monkeypatch.setattr(train.os, "cpu_count", lambda: 6)
    assert train.available_cores() == 6
    monkeypatch.setattr(train.os, "cpu_count", lambda: None)
    assert train.available_cores() == 1


class _Threads(xgboost.callback.TrainingCallback):
    """Records the booster's nthread as each round trains."""

    def __init__(self):
        self.seen: set[int] = set()

    def after_iteration(self, model, epoch, evals_log):
        self.seen.add(int(json.loads(model.save_config())["learner"]["generic_param"]["nthread"]))
        return False


def _nthread(model) -> int:
    booster = model[-1].get_booster()
    return int(json.loads(booster.save_config())["learner"]["generic_param"]["nthread"])


def test_a_threaded_xgboost_fit_grows_the_same_trees_and_predicts_on_one_thread(churn, monkeypatch):
    """Above THREADED_FIT_ROWS the fit runs on 2 threads (seen by the booster as it
    trains): its trees, hence its scores, are those of a 1-thread fit bit for bit, and the
    fitted model is left predicting on one thread, as make_estimator set it."""
    cfg, parts = churn
    params = {**cfg.training.xgboost}
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: {0, 1})

    single, threaded = _Threads(), _Threads()
    one = train.fit(cfg.schema, "xgboost", {**params, "callbacks": [single]}, parts["train"], 42)
    monkeypatch.setattr(train, "THREADED_FIT_ROWS", 1)
    two = train.fit(cfg.schema, "xgboost", {**params, "callbacks": [threaded]}, parts["train"], 42)

    assert single.seen == {1} and threaded.seen == {2}
    assert one[-1].get_booster().get_dump() == two[-1].get_booster().get_dump()
    scores = [train.predict_scores(m, parts["test"], cfg.schema) for m in (one, two)]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert two[-1].n_jobs == 1 and _nthread(two) == 1


def test_models_fitted_together_are_those_pipeline_fit_fits_one_by_one(churn):
    """fit_models fits the feature step once for all models: each pipeline is what
    ``Pipeline.fit`` gives for its model alone (same features, coefficients, trees and
    scores), and holds its own copy of the feature step."""
    cfg, parts = churn
    specs = [("logreg", dict(cfg.training.logreg)), ("xgboost", dict(cfg.training.xgboost))]
    together = train.fit_models(cfg.schema, specs, parts["train"], 42, cfg.features)
    y = data.target_vector(parts["train"], cfg.schema)
    for (kind, params), model in zip(specs, together, strict=True):
        alone = features.build_model_pipeline(
            cfg.schema, train.make_estimator(kind, params, 42), cfg.features
        ).fit(parts["train"], y)
        assert [name for name, _ in model.steps] == [name for name, _ in alone.steps]
        assert list(model[:-1].get_feature_names_out()) == list(alone[:-1].get_feature_names_out())
        np.testing.assert_array_equal(
            model[:-1].transform(parts["valid"]), alone[:-1].transform(parts["valid"])
        )
        if kind == "logreg":
            np.testing.assert_array_equal(model[-1].coef_, alone[-1].coef_)
        else:
            assert model[-1].get_booster().get_dump() == alone[-1].get_booster().get_dump()
        np.testing.assert_array_equal(
            train.predict_scores(model, parts["test"], cfg.schema),
            train.predict_scores(alone, parts["test"], cfg.schema),
        )
    assert together[0][0] is not together[1][0]
