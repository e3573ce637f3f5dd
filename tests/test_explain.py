"""Attributions and permutation importance on the real Telco data and fitted pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance

from mlfolio import config, data, explain, features, model_card, train

from .conftest import CHURN_PARAMS


@pytest.fixture(scope="module")
def cfg():
    return config.load(CHURN_PARAMS)


@pytest.fixture(scope="module")
def parts(cfg):
    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    return features.split(churn, cfg.schema, cfg.split, seed=cfg.seed)


@pytest.fixture(scope="module")
def models(cfg, parts):
    return {
        kind: train.fit(cfg.schema, kind, dict(getattr(cfg.training, kind)), parts["train"], 0)
        for kind in train.MODEL_KINDS
    }


def test_every_model_kind_has_an_exact_method(models):
    # a new kind in train.MODEL_KINDS must be handled here, or it silently gets
    # permutation importance only
    assert {k: explain.attribution_method(m) for k, m in models.items()} == {
        "logreg": explain.LINEAR,
        "xgboost": explain.TREE,
    }


@pytest.mark.parametrize("kind", train.MODEL_KINDS)
def test_attributions_sum_to_the_models_margin(cfg, parts, models, kind):
    model, rows = models[kind], parts["test"]
    attribution = explain.attributions(model, rows, cfg.schema, parts["train"])
    assert list(attribution.values.columns) == list(cfg.schema.features)
    assert attribution.values.index.equals(rows.index)
    margin = explain.margin(model, rows, cfg.schema)
    tol = 1e-9 if kind == "logreg" else 1e-4  # xgboost computes in float32
    np.testing.assert_allclose(attribution.margin(), margin, atol=tol)
    # the margin is the log-odds of the probability the pipeline serves
    proba = train.predict_scores(model, rows, cfg.schema)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), proba, atol=1e-5)


def test_xgboost_pred_contribs_rows_sum_to_the_raw_margin(cfg, parts, models):
    from xgboost import DMatrix

    model = models["xgboost"]
    X = model[:-1].transform(parts["test"][cfg.schema.features])
    contribs = model[-1].get_booster().predict(DMatrix(X), pred_contribs=True)
    np.testing.assert_allclose(
        contribs.sum(axis=1), model[-1].predict(X, output_margin=True), atol=1e-4
    )


def test_linear_attribution_is_coef_times_distance_from_the_background_mean(cfg, parts, models):
    model = models["logreg"]
    rows = parts["test"].head(50)
    attribution = explain.attributions(model, rows, cfg.schema, parts["train"])
    Xt = model[:-1].transform(rows[cfg.schema.features])
    mean = model[:-1].transform(parts["train"][cfg.schema.features]).mean(axis=0)
    expected = (Xt - mean) * model[-1].coef_[0]
    # tenure is one scaled column: its attribution is its own term
    owners = explain.raw_columns_of(model[:-1], Xt.shape[1])
    assert owners.count("tenure") == 1
    np.testing.assert_allclose(
        attribution.values["tenure"], expected[:, owners.index("tenure")], atol=1e-12
    )
    # contract is three one-hot columns: its attribution is their sum
    assert owners.count("contract") == churn_values(parts, "contract")
    cols = [i for i, o in enumerate(owners) if o == "contract"]
    np.testing.assert_allclose(
        attribution.values["contract"], expected[:, cols].sum(axis=1), atol=1e-12
    )


def churn_values(parts, column: str) -> int:
    return parts["train"][column].nunique()


def test_raw_columns_of_covers_every_transformed_column_in_order(cfg, models):
    features_step = models["xgboost"][:-1]
    names = features_step.get_feature_names_out()
    owners = explain.raw_columns_of(features_step, len(names))
    assert set(owners) == set(cfg.schema.features)
    for name, owner in zip(names, owners, strict=True):
        assert name == owner or name.startswith(owner + "_"), (name, owner)


def test_to_raw_columns_sums_blocks():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    frame = explain.to_raw_columns(values, ["a", "b", "b"], ["b", "a", "c"])
    assert frame.to_dict(orient="list") == {"b": [5.0, 11.0], "a": [1.0, 4.0], "c": [0.0, 0.0]}


def test_mean_abs_ranks_the_columns_churn_is_known_for(cfg, parts, models):
    # tenure and the contract type are the strongest churn signals in the Telco data
    for model in models.values():
        ranking = explain.mean_abs(explain.attributions(model, parts["test"], cfg.schema))
        assert {"tenure", "contract"} <= set(ranking.index[:3]), ranking.head()
        assert ranking.iloc[-1] < 0.05 * ranking.iloc[0]


def test_permutation_importance_ranks_an_informative_column_high(cfg, parts, models):
    rows = parts["test"]
    y = data.target_vector(rows, cfg.schema).to_numpy()
    table = explain.permutation(models["xgboost"], rows, y, cfg.schema, repeats=3, seed=1)
    assert list(table.columns) == ["mean", "std"] and len(table) == len(cfg.schema.features)
    assert "contract" in table.index[:2] and table.loc["contract", "mean"] > 0.02
    # gender carries no churn signal in this data: shuffling it costs next to nothing
    assert abs(table.loc["gender", "mean"]) < 0.01


def test_permutation_equals_sklearn_on_the_raw_pipeline(cfg, parts, models):
    # the fast path shuffles transformed blocks; it must give sklearn's numbers exactly
    rows = parts["test"].head(300)
    y = data.target_vector(rows, cfg.schema).to_numpy()
    for model in models.values():
        fast = explain.permutation(model, rows, y, cfg.schema, repeats=2, seed=7)
        slow = permutation_importance(
            model,
            rows[cfg.schema.features],
            y,
            scoring="roc_auc",
            n_repeats=2,
            random_state=7,
        )
        np.testing.assert_allclose(
            fast.reindex(cfg.schema.features)["mean"], slow.importances_mean, atol=1e-12
        )


def test_a_kind_without_exact_attribution_gets_permutation_only(cfg, parts):
    forest = features.build_model_pipeline(
        cfg.schema, RandomForestClassifier(n_estimators=20, random_state=0)
    )
    X, y = features.xy(parts["train"], cfg.schema)
    forest.fit(X, y)
    rows = explain.sample_rows(parts["test"], 300, 0)
    y_rows = data.target_vector(rows, cfg.schema).to_numpy()
    summary, attribution = explain.explain_model(
        forest, rows, y_rows, cfg.schema, parts["train"], repeats=2, seed=0
    )
    assert attribution is None and summary["method"] is None and summary["mean_abs"] is None
    assert "RandomForestClassifier has no exact attribution" in summary["note"]
    assert set(summary["permutation"]) == set(cfg.schema.features)
    assert model_card.top_features(summary, 3) == list(summary["permutation"])[:3]


def test_sample_rows_is_bounded_seeded_and_keeps_small_frames():
    df = pd.DataFrame({"a": range(100)})
    assert explain.sample_rows(df, 200, 0) is df
    sample = explain.sample_rows(df, 30, 1)
    assert len(sample) == 30 and sample.index.is_monotonic_increasing
    assert sample.equals(explain.sample_rows(df, 30, 1))


def test_top_categorical_prefers_explicit_columns(cfg):
    summary = {"mean_abs": {"tenure": 3.0, "contract": 2.0, "gender": 0.1, "partner": 1.0}}
    categorical = list(cfg.schema.categorical)
    assert model_card.top_categorical(summary, categorical, 2) == ["contract", "partner"]
    assert model_card.top_categorical(None, categorical, 2) == categorical[:2]


def test_each_models_threshold_falls_back_to_the_candidates_when_not_recorded():
    from mlfolio import explain_views

    result = {"threshold": 0.31, "champion": {"version": "2", "threshold": 0.42}}
    assert explain_views.thresholds(result) == {"candidate": 0.31, "champion": 0.42}
    # an evaluate.json from before per-model thresholds: the key is there, as null
    result["champion"]["threshold"] = None
    assert explain_views.thresholds(result) == {"candidate": 0.31, "champion": 0.31}
    assert explain_views.thresholds({"threshold": 0.31, "champion": None}) == {"candidate": 0.31}
