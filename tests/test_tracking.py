"""tracking.log_model: the logged signature names the declared schema's columns (typed
``Any``; the metadata says which are numeric and which categorical), the input example is
typed as declared, the model records the schema's id column, and MLflow's own scoring
accepts rows as a client holds them."""

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
def _store(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    exp = mlflow.MlflowClient(uri).create_experiment(
        "tracking", artifact_location=(folder / "a").as_uri()
    )
    return uri, exp


@pytest.fixture
def store(_store):
    """The module's store, set as the tracking URI for this test (others in the module
    set their own and reset it: the order tests run in must not matter)."""
    uri, exp = _store
    mlflow.set_tracking_uri(uri)
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
    return {
        spec.name: getattr(spec.type, "name", str(spec.type))
        for spec in model_meta.signature.inputs.inputs
    }


def test_signature_follows_the_pipelines_schema(fitted, store):
    cfg, model, example = fitted
    uri, messages = _log(store, model, example)
    meta = Model.load(uri)
    # MLflow checks the columns; their types are the metadata's (MLflow's clients then take
    # raw rows: tests/test_tracking_clients.py)
    assert _types(meta) == {c: "Any" for c in cfg.schema.features}
    assert [c.name for c in meta.signature.inputs.inputs] == cfg.schema.features
    assert meta.metadata["mlfolio"]["numeric"] == cfg.schema.numeric
    assert meta.metadata["mlfolio"]["categorical"] == cfg.schema.categorical
    assert not [m for m in messages if "integer column" in m], messages


def test_signature_id_column_and_example_from_the_declared_schema(fitted, store, tmp_path):
    cfg, model, example = fitted
    uri, messages = _log(store, model, example, schema=cfg.schema)
    meta = Model.load(uri)
    assert set(_types(meta).values()) == {"Any"}
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


# -- the experiment, the parent run and the UI ----------------------------------------------
def _config(tmp_path, monkeypatch, tracking_uri: str | None, **tracking: str):
    """The churn parameters with this tracking section, loaded with the project root at
    ``tmp_path/project`` (where relative paths resolve)."""
    import yaml

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(project))
    raw = yaml.safe_load(CHURN_PARAMS.read_text())
    raw["data"]["uri"] = str(CHURN_CSV)
    raw["tracking"] = {"tracking_uri": tracking_uri, **tracking}
    return config.from_mapping(raw, "params.yaml", base=project), project


def test_relative_sqlite_store_is_the_projects_wherever_a_kernel_runs(tmp_path, monkeypatch):
    """Kernels run in the run folder: a relative sqlite:///mlflow.db must not open a new,
    empty store there (parameter file, or MLFLOW_TRACKING_URI)."""
    cfg, project = _config(tmp_path, monkeypatch, "sqlite:///stores/mlflow.db")
    want = f"sqlite:///{project / 'stores' / 'mlflow.db'}"
    assert cfg.tracking.tracking_uri == want  # frozen absolute into parameters.yaml
    monkeypatch.chdir(tmp_path)
    assert cfg.tracking_uri() == want
    cfg, _ = _config(tmp_path, monkeypatch, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert cfg.tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    assert cfg.tracking_uri() == "http://127.0.0.1:5055"


def test_experiment_opens_as_model_development_in_mlflow_3(tmp_path, monkeypatch):
    """MLflow 3's UI shows an experiment without mlflow.experimentKind as GenAI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, _ = _config(tmp_path, monkeypatch, uri, experiment_name="new")
    try:
        exp_id = tracking.configure(cfg)
        client = MlflowClient(uri)
        assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == (
            "custom_model_development"
        )
        # an experiment an older mlfolio created, without the tag, gets it
        old = client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
        cfg, _ = _config(tmp_path, monkeypatch, uri, experiment_name="old")
        assert tracking.configure(cfg) == old
        assert client.get_experiment(old).tags["mlflow.experimentKind"] == (
            "custom_model_development"
        )
    finally:
        mlflow.set_tracking_uri(None)


def test_ui_hint_serves_the_runs_store_where_the_links_point():
    """The command is runnable as printed from the project root: the venv's own mlflow,
    one worker (mlflow ui starts four by default)."""
    root = str(config.project_dir())
    mlflow_ui = ".venv/bin/mlflow ui --backend-store-uri"  # this test runs in the venv
    db = "sqlite:////srv/churn/mlflow.db"
    assert tracking.ui_hint(db, "http://127.0.0.1:5000") == {
        "command": f"{mlflow_ui} sqlite:////srv/churn/mlflow.db --workers 1",
        "cwd": root,
    }
    assert tracking.ui_hint(db, "http://localhost:5055/")["command"] == (
        f"{mlflow_ui} sqlite:////srv/churn/mlflow.db --port 5055 --workers 1"
    )
    pg = "postgresql://mlflow@db:5432/mlflow"
    assert tracking.ui_hint(pg, "http://10.0.0.5:8080")["command"] == (
        f"{mlflow_ui} {pg} --host 10.0.0.5 --port 8080 --workers 1"
    )
    spaced = "sqlite:////tmp/my runs/mlflow.db"
    assert f"'{spaced}'" in tracking.ui_hint(spaced, "http://127.0.0.1:5000")["command"]
    server = "http://mlflow.internal:5000"
    assert tracking.ui_hint(server, server + "/") == {"server": server, "note": ""}
    assert tracking.ui_hint(server, "http://127.0.0.1:5000")["note"] == (
        f"tracking.ui_url is http://127.0.0.1:5000: set it to {server}"
    )


def test_ui_links_open_the_model_training_view():
    """MLflow 3.17's UI opens the GenAI view unless the link asks for model training."""
    ui = "http://127.0.0.1:5000/"
    assert tracking.ui_link(ui, "3") == (
        "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert tracking.ui_link(ui, "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    cfg = config.load(CHURN_PARAMS)
    assert tracking.run_url(cfg, "3", "abc") == tracking.ui_link(cfg.tracking.ui_url, "3", "abc")
    assert tracking.experiment_url(cfg, "3") == tracking.ui_link(cfg.tracking.ui_url, "3")


def test_parent_run_headline_from_the_manifest():
    from datetime import UTC, datetime
    from pathlib import Path

    name = tracking.parent_run_name(
        "churn",
        Path("runs/20261201T100215Z-churn-03a34d"),
        datetime(2026, 12, 1, 10, 2, 15, tzinfo=UTC),
        "pipeline",
    )
    assert name == "churn 2026-12-01 10:02 pipeline 03a34d"
    manifest = {
        "candidate": {"name": "xgboost-tuned", "test": {"roc_auc": 0.84, "pr_auc": 0.66}},
        "gate": {"passed": True, "reasons": []},
        "model": {"version": "3", "promoted": True},
        "data": {"rows": 4000},
        "data_hash": "73d3df2341900e8df7fe54055eef4c1b",
        "parameters": {
            "tuning": {"enabled": True, "model": "xgboost", "n_trials": 30},
            "training": {"models": ["logreg", "xgboost"]},
        },
    }
    metrics, params, tags = tracking.headline(manifest, "xgboost")
    assert metrics == {
        "test_roc_auc": 0.84,
        "test_pr_auc": 0.66,
        "gate_passed": 1.0,
        "promoted_version": 3.0,
    }
    assert params == {
        "candidate": "xgboost-tuned",
        "model_kind": "xgboost",
        "tuned_model": "xgboost",
        "n_trials": "30",
        "baseline_models": "logreg,xgboost",
        "data_rows": "4000",
        "data_hash": "73d3df234190",
    }
    assert tags == {
        "mlfolio.model_version": "3",
        "mlfolio.promoted_version": "3",
        "mlfolio.data_hash": "73d3df2341900e8df7fe54055eef4c1b",
    }
    refused = {**manifest, "gate": {"passed": False}, "model": {"version": "4", "promoted": False}}
    metrics, _, tags = tracking.headline(refused)
    assert metrics["gate_passed"] == 0.0 and "promoted_version" not in metrics
    assert tags["mlfolio.model_version"] == "4" and "mlfolio.promoted_version" not in tags
    assert tracking.headline({}) == ({}, {}, {})  # a run that failed in ingest


def test_log_headline_puts_it_on_the_parent_run_and_keeps_a_held_parameter(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        _log_headline_twice(MlflowClient(), tmp_path, caplog)
    finally:
        mlflow.set_tracking_uri(previous)


def _log_headline_twice(client, tmp_path, caplog) -> None:
    exp = client.create_experiment("headline", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(exp).info.run_id
    manifest = {
        "candidate": {"name": "logreg", "test": {"roc_auc": 0.84, "pr_auc": 0.66}},
        "gate": {"passed": True},
        "model": {"version": "2", "promoted": True},
        "data": {"rows": 4000},
    }
    tracking.log_headline(run_id, manifest, "logreg")
    data = client.get_run(run_id).data
    assert data.metrics == {
        "test_roc_auc": 0.84,
        "test_pr_auc": 0.66,
        "gate_passed": 1.0,
        "promoted_version": 2.0,
    }
    assert data.params == {"candidate": "logreg", "model_kind": "logreg", "data_rows": "4000"}
    assert data.tags["mlfolio.promoted_version"] == "2"
    # a stage re-run with --force: parameters cannot change, metrics and tags move
    rerun = {**manifest, "candidate": {"name": "xgboost", "test": {"roc_auc": 0.86}}}
    with caplog.at_level("WARNING", logger="mlfolio.tracking"):
        tracking.log_headline(run_id, rerun, "xgboost")
    data = client.get_run(run_id).data
    assert data.params["candidate"] == "logreg" and data.params["data_rows"] == "4000"
    assert data.metrics["test_roc_auc"] == 0.86
    assert f"parent run {run_id} keeps parameter candidate=logreg (now xgboost)" in caplog.text


def _dataset_frames() -> list[pd.DataFrame]:
    raw = pd.read_csv(CHURN_CSV)
    odd = pd.DataFrame(
        {
            "text_with_gaps": ["a", None, "b", np.nan],
            "lists": [[1], [2], None, [3]],
            "numbers": [1.0, np.nan, 2.0, 3.0],
            "ints": [1, 2, 3, 4],
            "flags": [True, False, True, True],
            "empty": [None, None, None, None],
        }
    )
    mixed = pd.DataFrame({"mixed": ["a", 1.5, "b", None]})  # MLflow infers no schema
    return [raw, odd, mixed]


@pytest.mark.parametrize("frame", _dataset_frames(), ids=["telco", "odd columns", "mixed"])
def test_dataset_schema_is_mlflows_own_inference(frame):
    """The logged dataset's schema is what MLflow's dataset infers value by value (types
    and the required flags; none at all where it cannot), without MLflow walking every
    value of every column in Python."""
    ours = tracking.pandas_dataset(frame, source="data/x.csv", name="x", digest="abc")
    theirs = mlflow.data.from_pandas(frame, source="data/x.csv", name="x", digest="abc")
    assert ours.to_dict() == theirs.to_dict()
    assert (ours.schema is None) == (theirs.schema is None)


def test_dataset_schema_skips_mlflows_walk_over_string_columns(monkeypatch):
    """Only columns that are not plain text reach MLflow's value-by-value inference: a
    string column of a million rows costs one vectorised type check, not a Python loop."""
    import mlflow.types.utils as mlflow_types

    walked = []
    original = mlflow_types._infer_colspec_type
    monkeypatch.setattr(
        mlflow_types, "_infer_colspec_type", lambda v: walked.append(list(v)) or original(v)
    )
    frame = _dataset_frames()[1]
    schema = tracking.pandas_dataset(frame, source="data/x.csv", name="x", digest="abc").schema
    assert schema is not None
    assert walked == [frame["lists"].to_list(), frame["empty"].to_list()]


def test_calibration_ships_with_the_models_run_and_reads_back(store):
    from mlfolio import estimate

    rng = np.random.default_rng(0)
    score = rng.random(400)
    cal = estimate.fit_calibration((rng.random(400) < score).astype(int), score, bootstraps=3)
    with mlflow.start_run(experiment_id=store) as run:
        pass
    assert tracking.load_calibration(run.info.run_id) is None  # a version from before
    assert tracking.load_calibration(None) is None
    uri = tracking.log_calibration(run.info.run_id, cal)
    assert uri == f"runs:/{run.info.run_id}/calibration.json"
    again = tracking.load_calibration(run.info.run_id)
    assert again == cal
    mlflow.MlflowClient().log_text(run.info.run_id, '{"method": "spline"}', "calibration.json")
    with pytest.raises(ValueError, match=f"runs:/{run.info.run_id}/calibration.json: key"):
        tracking.load_calibration(run.info.run_id)
