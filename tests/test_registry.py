"""The registry path (versions, aliases, alias history) on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets

import mlflow
import pytest
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, registry, tracking

from .conftest import CHURN_PARAMS

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_database():
    """A throwaway database on the local PostgreSQL, or a skip saying why there is none."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"mlfolio_test_{secrets.token_hex(4)}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no server, or no right to create databases
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not usable: {str(exc).splitlines()[0]}")
    return engine, name


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        yield uri
    else:
        engine, name = _postgres_database()
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        mlflow.set_tracking_uri(None)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture(scope="module")
def fitted():
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema).head(600)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=500))
    return cfg, model.fit(X, y), X


def test_register_alias_and_history(store, tmp_path, fitted):
    cfg, model, X = fitted
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={
        "tracking_uri": store, "artifact_location": (tmp_path / "art").as_uri()})})
    tracking.configure(cfg)
    refs = []
    for _ in range(2):
        with mlflow.start_run() as run:
            uri = tracking.log_model(model, X)
        refs.append(registry.register("m", uri, run.info.run_id, {"mlfolio.data_hash": "abc"}))
    assert [r.version for r in refs] == ["1", "2"]
    assert registry.get_alias("m", registry.CHAMPION) is None
    assert registry.get_alias("absent-model", registry.CHAMPION) is None

    first = registry.set_alias(refs[0], registry.CHAMPION, "first model", "/runs/a")
    second = registry.set_alias(refs[1], registry.CHAMPION, "beats v1", "/runs/b")
    assert first["previous_version"] is None and second["previous_version"] == "1"
    assert registry.get_alias("m", registry.CHAMPION).version == "2"
    history = registry.alias_history("m")
    assert [(e["version"], e["reason"]) for e in history] == [("1", "first model"),
                                                               ("2", "beats v1")]
    assert all(e["by"] == "pytest" for e in history)

    loaded = tracking.load_model("models:/m@champion")
    assert (loaded.predict_proba(X.head(5)) == model.predict_proba(X.head(5))).all()
    client = mlflow.MlflowClient()
    assert client.get_model_version("m", "2").tags["mlfolio.promotion_reason"] == "beats v1"
    assert client.get_model_version("m", "1").tags["mlfolio.data_hash"] == "abc"
