"""XGBoost's trees as arrays (mlfolio.serve.trees): bit for bit XGBoost's probabilities on
the real Telco rows one small batch at a time, checked when a model loads, and refused for
what they do not cover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfolio import config, data, serve, tracking, train
from mlfolio.errors import NotCompilable
from mlfolio.serve.scorer import pipeline_steps, probe_rows, verify
from mlfolio.serve.trees import XGBoostTrees, _depth

from .conftest import CHURN_PARAMS


@pytest.fixture(scope="module")
def telco() -> tuple[config.SchemaConfig, pd.DataFrame]:
    cfg = config.load(CHURN_PARAMS)
    return cfg.schema, data.validate(data.load_source(cfg.data), cfg.schema)


def _fitted(telco, **params):
    schema, df = telco
    pipeline = train.fit(schema, "xgboost", params, df.iloc[:2500], seed=0)
    coercer = pipeline_steps(pipeline)[0]
    signature = tracking.model_signature(coercer.numeric, coercer.categorical)
    columns = serve.columns_from_signature(signature, coercer.numeric, coercer.categorical)
    return pipeline, columns, df.iloc[2500:]


def _batch(columns, rows: pd.DataFrame) -> serve.Batch:
    values = {
        c.name: [None if isinstance(v, float) and v != v else v for v in rows[c.name].tolist()]
        for c in columns
    }
    return serve.Batch.of(columns, values)


@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 4},  # churn.yaml's
        {"n_estimators": 40, "max_depth": 8, "base_score": 0.3, "min_child_weight": 0.1},
    ],
)
def test_small_batches_through_the_trees_equal_xgboost_bit_for_bit(telco, params):
    pipeline, columns, held_out = _fitted(telco, **params)
    compiled = serve.CompiledScorer(pipeline, columns)
    assert isinstance(compiled._trees, XGBoostTrees)
    reference = serve.PipelineScorer(pipeline, columns)
    batch = _batch(columns, held_out)  # 1,500 rows the model did not see
    expected = reference.predict_proba(batch)
    assert expected.dtype == np.float32
    step = compiled._trees.max_rows
    parts = [
        compiled.predict_proba(batch.take(range(i, min(i + step, batch.n))))
        for i in range(0, batch.n, step)
    ]
    got = np.concatenate(parts)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert np.array_equal(compiled.predict_proba(batch), expected)  # many rows: XGBoost
    # the probe rows (unseen categories, missing and extreme values) pass the load check
    assert verify(compiled, reference, probe_rows(columns, compiled, None)) is None


def test_a_tree_path_that_differs_is_caught_when_the_model_loads(telco):
    pipeline, columns, held_out = _fitted(telco, n_estimators=30, max_depth=3)
    compiled = serve.CompiledScorer(pipeline, columns)
    compiled._trees.base = np.nextafter(compiled._trees.base, np.float32(1))  # one ulp off
    problem = verify(
        compiled, serve.PipelineScorer(pipeline, columns), _batch(columns, held_out.head(50)).values
    )
    assert problem is not None and "XGBoost trees as arrays differ" in problem


def test_what_the_trees_do_not_cover_is_left_to_xgboost():
    width = 3
    Z, target = np.random.default_rng(0).normal(size=(200, width)), np.arange(200) % 2
    from xgboost import XGBClassifier

    for model, why in [
        (XGBClassifier(n_estimators=3, objective="binary:logitraw"), "objective"),
        (XGBClassifier(n_estimators=3, booster="dart"), "booster dart"),
        (XGBClassifier(n_estimators=3, missing=0.0), "missing=0.0"),
    ]:
        model.fit(Z, target)
        with pytest.raises(NotCompilable, match=why):
            XGBoostTrees(model, width)
    with pytest.raises(NotCompilable, match="feature"):
        XGBoostTrees(XGBClassifier(n_estimators=3).fit(Z, target), width + 1)


def test_depth_counts_splits_on_the_longest_path():
    # root -> (leaf, node -> (leaf, leaf))
    assert _depth([-1], [-1]) == 0
    assert _depth([1, -1, 3, -1, -1], [2, -1, 4, -1, -1]) == 2
