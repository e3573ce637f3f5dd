"""The registry path (versions, aliases, alias history) on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import mlflow
import pytest
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, locks, registry, tracking
from mlfolio.errors import LockTimeoutError

from . import team
from .conftest import CHURN_PARAMS


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        yield uri
    else:
        name = team.create_database("mlfolio_test")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        mlflow.set_tracking_uri(None)
        team.drop_database(name)


@pytest.fixture(scope="module")
def fitted():
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema).head(600)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=500))
    return cfg, model.fit(X, y), X


def test_register_alias_and_history(store, tmp_path, fitted):
    cfg, model, X = fitted
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={"tracking_uri": store, "artifact_location": (tmp_path / "art").as_uri()}
            )
        }
    )
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
    assert [(e["version"], e["reason"]) for e in history] == [
        ("1", "first model"),
        ("2", "beats v1"),
    ]
    assert all(e["by"] == "pytest" for e in history)

    loaded = tracking.load_model("models:/m@champion")
    assert (loaded.predict_proba(X.head(5)) == model.predict_proba(X.head(5))).all()
    client = mlflow.MlflowClient()
    assert client.get_model_version("m", "2").tags["mlfolio.promotion_reason"] == "beats v1"
    assert client.get_model_version("m", "1").tags["mlfolio.data_hash"] == "abc"


# -- compare-and-set promotion and the locks behind it ----------------------------------
def _versions(store, tmp_path, fitted, n: int) -> list[registry.ModelRef]:
    cfg, model, X = fitted
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={"tracking_uri": store, "artifact_location": (tmp_path / "art").as_uri()}
            )
        }
    )
    tracking.configure(cfg)
    with mlflow.start_run() as run:
        uri = tracking.log_model(model, X)
    return [registry.register("m", uri, run.info.run_id, {}) for _ in range(n)]


def test_promote_refuses_when_champion_moved_since_the_gate(store, tmp_path, fitted):
    v1, v2, v3 = _versions(store, tmp_path, fitted, 3)
    first = registry.promote(v1, None, "first model", "/runs/a")
    assert first.promoted and first.event["compared_against"] is None
    # Run B's gate compared v3 with v1, but run C promoted v2 in between.
    assert registry.promote(v2, "1", "beats v1", "/runs/c").promoted
    late = registry.promote(v3, "1", "gain over champion v1", "/runs/b")
    assert not late.promoted and late.champion == "2"
    assert "compared against v1" in late.why_not and "now v2" in late.why_not
    assert "/runs/c" in late.why_not and "v3 stays challenger" in late.why_not
    assert registry.get_alias("m", registry.CHAMPION).version == "2"
    champion_moves = [e for e in registry.alias_history("m") if e["alias"] == "champion"]
    assert [(e["previous_version"], e["version"]) for e in champion_moves] == [
        (None, "1"),
        ("1", "2"),
    ]
    assert all(e["previous_version"] == e["compared_against"] for e in champion_moves)
    # A gate that saw no champion cannot promote over one.
    assert not registry.promote(v3, None, "first model", "/runs/d").promoted


def test_concurrent_promotions_from_one_gate_result_promote_once(store, tmp_path, fitted):
    """Eight promoters that all compared against v1: exactly one moves champion."""
    refs = _versions(store, tmp_path, fitted, 9)
    registry.promote(refs[0], None, "first", "/runs/0")
    barrier = threading.Barrier(8)
    results: list[registry.Promotion] = []

    def promoter(ref):
        barrier.wait()
        results.append(registry.promote(ref, "1", f"beats v1 ({ref.version})", "/runs/x"))

    threads = [threading.Thread(target=promoter, args=(r,)) for r in refs[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.promoted for r in results) == [False] * 7 + [True]
    champion_moves = [e for e in registry.alias_history("m") if e["alias"] == "champion"]
    assert len(champion_moves) == 2
    assert all(e["previous_version"] == e["compared_against"] for e in champion_moves)


def test_registry_lock_is_exclusive_and_names_the_holder(store, tmp_path, fitted):
    _versions(store, tmp_path, fitted, 1)  # the registered model carries lease tags
    held, release = threading.Event(), threading.Event()

    def holder():
        with registry.registry_lock("m", "promote"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(LockTimeoutError, match="still held"):
            with registry.registry_lock("m", "promote", timeout_s=0.3):
                pass
        # Another purpose or another model is a different lock.
        with registry.registry_lock("m", "retrain", timeout_s=0.3):
            pass
    finally:
        release.set()
        t.join(30)
    with registry.registry_lock("m", "promote", timeout_s=1):
        pass


def test_lock_kind_per_store():
    assert locks.lock_kind("sqlite:////tmp/mlflow.db") == "file"
    assert locks.lock_kind("postgresql+psycopg://u@h/db") == "postgres"
    assert locks.lock_kind("http://127.0.0.1:5000") == "lease"


def test_lease_lock_on_a_tracking_server(store, tmp_path, fitted):
    """The lease tag (used for HTTP tracking servers) excludes a second holder and is
    removed on release; an expired lease can be taken over."""
    _versions(store, tmp_path, fitted, 1)
    client = mlflow.MlflowClient()
    with locks.lease_lock("m", "k", timeout_s=5, settle_s=0.05):
        assert "mlfolio.lock.k" in client.get_registered_model("m").tags
        with pytest.raises(LockTimeoutError, match="mlfolio.lock.k"):
            with locks.lease_lock("m", "k", timeout_s=0.3, settle_s=0.05):
                pass
    assert "mlfolio.lock.k" not in client.get_registered_model("m").tags
    client.set_registered_model_tag(
        "m", "mlfolio.lock.k", '{"owner": "dead-host:1:x", "expires": 0}'
    )
    with locks.lease_lock("m", "k", timeout_s=2, settle_s=0.05):
        pass


def test_one_trigger_claims_one_retraining(store, tmp_path, fitted):
    from datetime import UTC, datetime, timedelta

    _versions(store, tmp_path, fitted, 1)
    started = datetime.now(UTC)
    ok, claim = registry.claim_retraining("m", "/runs/monitor-a", started, cooldown_hours=0)
    assert ok and claim["monitor_run_dir"] == "/runs/monitor-a"
    # A second monitor that started before the claim saw the same trigger: held.
    ok, holder = registry.claim_retraining("m", "/runs/monitor-b", started, cooldown_hours=0)
    assert not ok and holder["monitor_run_dir"] == "/runs/monitor-a"
    # A later monitor run, past the cool-down, may claim again.
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert registry.claim_retraining("m", "/runs/monitor-c", later, cooldown_hours=0)[0]
    # Within the cool-down, even a later monitor is held.
    much_later = datetime.now(UTC) + timedelta(seconds=2)
    ok, holder = registry.claim_retraining("m", "/runs/monitor-d", much_later, cooldown_hours=1)
    assert not ok and holder["monitor_run_dir"] == "/runs/monitor-c"


def test_a_pipeline_run_finds_the_version_it_registered_even_one_an_undo_could_only_tag(
    store, tmp_path, fitted
):
    """version_of_run: the version a run registered (hash and run tags); another run, or
    none, finds nothing. One its undo tagged failed-register is taken back untagged."""
    (ref,) = _versions(store, tmp_path, fitted, 1)
    client = mlflow.MlflowClient()
    for key, value in {registry.MODEL_HASH_TAG: "h1", registry.PIPELINE_RUN_TAG: "p1"}.items():
        client.set_model_version_tag("m", ref.version, key, value)
    client.set_model_version_tag("m", ref.version, registry.STATUS_TAG, registry.FAILED_REGISTER)
    assert registry.version_with_hash("m", "h1") is None  # a failed register is no duplicate
    assert registry.version_of_run("m", "h1", "p2") is None
    assert registry.version_of_run("m", "h2", "p1") is None
    assert registry.version_of_run("m", "h1", "") is None  # a notebook run by hand
    found = registry.version_of_run("m", "h1", "p1")
    assert found is not None and found.version == ref.version
    assert registry.STATUS_TAG not in client.get_model_version("m", ref.version).tags
