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


# -- error analysis by segment ----------------------------------------------------------------
@pytest.fixture(scope="module")
def segment_case(cfg, parts, models):
    """The real test rows with "No" cut to 3 positives; the champion's real scores;
    a candidate clearly worse on "Fiber optic" (noise), 0.003 ROC AUC lower on "DSL"
    (one positive moved below a few negatives) and lower on "No" (one of its 3
    positives below every negative)."""
    from mlfolio.features import RawColumnCoercer

    cfg = config.load(CHURN_PARAMS, overrides={"evaluation.segment_columns": ["internetservice"]})
    test = parts["test"]
    y = data.target_vector(test, cfg.schema).to_numpy()
    service = (
        RawColumnCoercer([], ["internetservice"]).fit(test).transform(test)["internetservice"]
    ).to_numpy()
    no_service_positives = np.flatnonzero((service == "No") & (y == 1))
    keep = np.setdiff1d(np.arange(len(y)), no_service_positives[3:])
    test, y, service = test.iloc[keep], y[keep], service[keep]
    champion = train.predict_scores(models["logreg"], test, cfg.schema)
    candidate = champion.copy()
    fiber = service == "Fiber optic"
    noise = np.random.default_rng(0).normal(0, 0.3, fiber.sum())
    candidate[fiber] = np.clip(champion[fiber] + noise, 0, 1)
    one = np.flatnonzero(service == "DSL")
    ys, ss = y[one], champion[one]
    pairs = int(ys.sum()) * int((1 - ys).sum())
    top = one[np.argmax(np.where(ys == 1, ss, -1))]  # its highest-scored positive
    below = np.sort(champion[one][(ys == 0) & (ss < champion[top])])[::-1]
    moved = round(0.003 * pairs)
    candidate[top] = below[moved - 1] - 1e-9  # now ranked below `moved` more negatives
    few = np.flatnonzero((service == "No") & (y == 1))
    candidate[few[0]] = champion[service == "No"].min() / 2  # below every negative
    scored = {"candidate": (candidate, 0.4), "champion": (champion, 0.4)}
    return cfg, test, scored


def test_segments_flag_only_a_difference_its_interval_says_is_real(segment_case):
    from mlfolio.stages import explaining

    cfg, test, scored = segment_case
    assert cfg.evaluation.segment_min_positives == 20
    seg = explaining.segments(cfg, test, scored, None)
    rows = {r["value"]: r for r in seg["rows"]}
    assert set(rows) == {"Fiber optic", "DSL", "No"}
    # the noisy segment: ROC AUC clearly lower, its paired interval below 0: flagged
    worse = rows["Fiber optic"]
    assert worse["judged"] and worse["flagged"]
    assert worse["difference"]["ci_high"] < 0
    assert worse["difference"]["difference"] == pytest.approx(
        worse["candidate"]["roc_auc"] - worse["champion"]["roc_auc"]
    )
    # a 0.003 gap: lower, but its interval holds 0: judged, not flagged
    small = rows["DSL"]
    gap = small["candidate"]["roc_auc"] - small["champion"]["roc_auc"]
    assert -0.004 < gap < -0.002
    assert small["judged"] and not small["flagged"]
    assert small["difference"]["ci_low"] < 0 <= small["difference"]["ci_high"]
    # 3 positives: not judged, and it says why
    few = rows["No"]
    assert few["positives"] == 3 and few["negatives"] > 20
    assert not few["judged"] and not few["flagged"] and few["difference"] is None
    assert few["why_not_judged"] == (
        f"3 positive and {few['negatives']} negative test rows: needs at least 20 of each "
        "(evaluation.segment_min_positives)"
    )
    assert seg["min_positives"] == 20 and "interval" in seg["flag_rule"]


def test_segment_pages_show_the_interval_and_why_a_segment_is_not_judged(segment_case):
    from mlfolio import explain_views
    from mlfolio.stages import explaining

    cfg, test, scored = segment_case
    seg = explaining.segments(cfg, test, scored, None)
    result = {"segments": seg, "champion": {"version": "3"}}
    table = explain_views.segments_table(result)
    worse = table.loc["internetservice = Fiber optic"]
    d = next(r for r in seg["rows"] if r["value"] == "Fiber optic")["difference"]
    assert worse["ROC AUC difference (95% CI)"] == (
        f"{d['difference']:+.3f} ({d['ci_low']:+.3f} .. {d['ci_high']:+.3f})"
    )
    assert worse["verdict"] == "candidate worse"
    assert table.loc["internetservice = DSL", "verdict"] == "no clear difference"
    assert table.loc["internetservice = No", "verdict"].startswith("not judged: 3 positive and ")
    assert table.loc["internetservice = No", "ROC AUC difference (95% CI)"] == "n/a"
    text = explain_views.segments_markdown(result).data
    assert "`internetservice = Fiber optic`" in text and "DSL`" not in text.split("Flagged")[1]
    card = model_card._segments({"segments": seg})
    assert any("internetservice = No" in line and "not judged: 3 positive" in line for line in card)
    assert any("Fiber optic" in line and "**worse**" in line for line in card)
