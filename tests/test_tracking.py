"""tracking.log_model: the logged signature follows the declared schema (numeric columns
double, categorical columns string), the input example matches it, the model records the
schema's id column, and MLflow's own scoring accepts rows as a client holds them."""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, tracking
from mlfolio.errors import MlfolioError

from .conftest import CHURN_CSV, CHURN_PARAMS


@pytest.fixture(scope="module")
def fitted():
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=1000))
    model.fit(X.head(800), y.head(800))
    blank = X.index[X["totalcharges"].str.strip() == ""][0]
    # the example starts with a new customer's row: a blank totalcharges
    example = pd.concat([X.loc[[blank]], X.head(4)]).reset_index(drop=True)
    return cfg, model, example


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracking")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    exp = mlflow.create_experiment("tracking", artifact_location=(folder / "a").as_uri())
    try:
        yield exp
    finally:
        mlflow.set_tracking_uri(None)


def _log(store: str, model, example, **kw) -> tuple[str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mlflow.start_run(experiment_id=store):
            uri = tracking.log_model(model, example, **kw)
    return uri, [str(w.message) for w in caught]


def client_rows(n: int = 8) -> pd.DataFrame:
    """Rows of the raw CSV as a client holds them: pandas.read_csv, the id column kept,
    the label dropped, totalcharges as a number."""
    raw = pd.read_csv(CHURN_CSV).drop(columns=["churn"])
    rows = raw[raw["totalcharges"].str.strip() != ""].head(n).copy()
    rows["totalcharges"] = rows["totalcharges"].astype(float)
    return rows.reset_index(drop=True)


def _types(model_meta: Model) -> dict[str, str]:
    return {spec.name: spec.type.name for spec in model_meta.signature.inputs.inputs}


def test_signature_follows_the_pipelines_schema(fitted, store):
    cfg, model, example = fitted
    uri, messages = _log(store, model, example)
    meta = Model.load(uri)
    want = {
        **{c: "double" for c in cfg.schema.numeric},
        **{c: "string" for c in cfg.schema.categorical},
    }
    assert _types(meta) == want
    assert [c.name for c in meta.signature.inputs.inputs] == cfg.schema.features
    assert not [m for m in messages if "integer column" in m], messages


def test_signature_id_column_and_example_from_the_declared_schema(fitted, store, tmp_path):
    cfg, model, example = fitted
    uri, messages = _log(store, model, example, schema=cfg.schema)
    meta = Model.load(uri)
    assert set(_types(meta).values()) == {"double", "string"}
    assert not [m for m in messages if "integer column" in m], messages
    assert meta.metadata["mlfolio"]["id_column"] == "customerid"
    assert meta.metadata["mlfolio"]["numeric"] == cfg.schema.numeric
    assert meta.metadata["mlfolio"]["categorical"] == cfg.schema.categorical
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "m"))
    logged = Model.load(local).load_input_example(local)
    for col in cfg.schema.numeric:
        assert logged[col].dtype == np.float64, col
    assert np.isnan(logged.loc[0, "totalcharges"])  # the blank is a missing value
    for col in cfg.schema.categorical:
        assert all(isinstance(v, str) for v in logged[col]), col
    assert logged.loc[1, "seniorcitizen"] == str(example.loc[1, "seniorcitizen"])


def test_mlflow_scoring_accepts_rows_as_a_client_holds_them(fitted, store):
    """What ``mlflow models serve`` does with a JSON body: parse it against the signature,
    then predict (the id column is ignored, integers read as doubles)."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    cfg, model, example = fitted
    uri, _ = _log(store, model, example, schema=cfg.schema)
    rows = client_rows()
    pyfunc = mlflow.pyfunc.load_model(uri)
    body = json.loads(json.dumps({"dataframe_records": rows.to_dict(orient="records")}))
    got = np.asarray(pyfunc.predict(infer_and_parse_data(body, pyfunc.metadata.get_input_schema())))
    want = model.predict_proba(rows.drop(columns=["customerid"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_log_model_without_a_coercer_or_schema_is_refused(store):
    from sklearn.pipeline import Pipeline

    plain = Pipeline([("m", LogisticRegression())]).fit(pd.DataFrame({"a": [0.0, 1.0]}), [0, 1])
    with pytest.raises(MlfolioError, match="schema"):
        _log(store, plain, pd.DataFrame({"a": [0.0, 1.0]}))
