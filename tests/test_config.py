"""Parameter files are validated once, with errors naming the file, key path and expectation."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from mlfolio import config
from mlfolio.errors import ConfigError

from .conftest import CHURN_PARAMS, ROOT


def test_default_parameter_file_loads_with_absolute_paths():
    cfg = config.load(CHURN_PARAMS)
    assert cfg.experiment == "churn"
    assert cfg.schema.target == "churn" and cfg.schema.id_column == "customerid"
    assert cfg.data.kind == "file" and cfg.data.uri == str(ROOT / "data" / "telco_churn.csv")
    assert cfg.model_name == "churn-classifier"
    assert len(cfg.schema.features) == 19


def test_config_is_frozen(churn_raw):
    cfg = config.from_mapping(churn_raw)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 1  # type: ignore[misc]


def test_round_trip_through_dump(tmp_path):
    cfg = config.load(CHURN_PARAMS)
    config.dump(cfg, tmp_path / "p.yaml")
    assert config.load(tmp_path / "p.yaml") == cfg


def _error(tmp_path, raw) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return str(info.value)


def test_unknown_key_names_file_and_key_path(tmp_path, churn_raw):
    churn_raw["tuning"]["n_trails"] = 5
    msg = _error(tmp_path, churn_raw)
    assert str(tmp_path / "bad.yaml") in msg
    assert "tuning.n_trails: unknown key" in msg


def test_unknown_top_level_key(tmp_path, churn_raw):
    churn_raw["modles"] = {}
    assert "modles: unknown key" in _error(tmp_path, churn_raw)


def test_wrong_type_says_what_was_expected(tmp_path, churn_raw):
    churn_raw["tuning"]["n_trials"] = "ten"
    msg = _error(tmp_path, churn_raw)
    assert "tuning.n_trials" in msg and "integer" in msg and "'ten'" in msg


def test_missing_required_key(tmp_path, churn_raw):
    del churn_raw["schema"]["target"]
    assert "schema.target: required key is missing" in _error(tmp_path, churn_raw)


def test_missing_data_file(tmp_path, churn_raw):
    churn_raw["data"]["uri"] = "data/nope.csv"
    msg = _error(tmp_path, churn_raw)
    assert "data.uri: file not found" in msg and "nope.csv" in msg


def test_feature_listed_twice_and_target_as_feature(tmp_path, churn_raw):
    churn_raw["schema"]["numeric"].append("gender")
    assert "'gender' is listed twice" in _error(tmp_path, churn_raw)
    churn_raw["schema"]["numeric"] = ["tenure", "churn"]
    assert "target 'churn' must not also be a feature" in _error(tmp_path, churn_raw)


def test_threshold_out_of_range(tmp_path, churn_raw):
    churn_raw["evaluation"]["threshold"] = 1.5
    assert "evaluation.threshold" in _error(tmp_path, churn_raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        config.load(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load(tmp_path / "list.yaml")


def test_overrides_are_parsed_as_yaml_and_validated():
    parsed = config.parse_overrides(
        ["tuning.n_trials=5", "evaluation.threshold=0.4", "training.models=[logreg]"]
    )
    assert parsed == {
        "tuning.n_trials": 5,
        "evaluation.threshold": 0.4,
        "training.models": ["logreg"],
    }
    cfg = config.load(CHURN_PARAMS, parsed)
    assert cfg.tuning.n_trials == 5 and cfg.training.models == ["logreg"]
    with pytest.raises(ConfigError, match="tuning.n_trails: unknown key"):
        config.load(CHURN_PARAMS, {"tuning.n_trails": 5})
    with pytest.raises(ConfigError, match="expected key.path=value"):
        config.parse_overrides(["tuning.n_trials"])
    with pytest.raises(ConfigError, match="seed is not a mapping"):
        config.load(CHURN_PARAMS, {"seed.x": 1})


def test_sqlite_uri_resolves_relative_to_project(tmp_path, churn_raw):
    churn_raw["data"] = {"uri": "sqlite:///data/missing.db", "query": "select 1"}
    msg = _error(tmp_path, churn_raw)
    assert "SQLite database not found" in msg and str(ROOT / "data" / "missing.db") in msg


def test_deploy_targets_are_checked_at_load(tmp_path, churn_raw):
    churn_raw["deploy"] = {"targets": ["heroku"]}
    assert "deploy.targets.0: Input should be 'local', 'kubernetes'" in _error(tmp_path, churn_raw)
    churn_raw["deploy"] = {"targets": ["sagemaker"], "aws": {"role_arn": "arn:aws:iam::1:role/r"}}
    assert "target sagemaker needs aws.bucket" in _error(tmp_path, churn_raw)
    churn_raw["deploy"] = {"targets": ["lambda"]}
    assert "need aws.role_arn" in _error(tmp_path, churn_raw)
    churn_raw["deploy"] = {"lambda": {"memory_mb": 64}}
    assert "deploy.lambda.memory_mb" in _error(tmp_path, churn_raw)


@pytest.mark.parametrize(
    ("serverless", "message"),
    [
        (
            {"memory_mb": 1500, "max_concurrency": 5},
            "deploy.sagemaker.serverless.memory_mb: expected auto or one of 1024, 2048, 3072, "
            "4096, 5120, 6144 (MB) (got 1500)",
        ),
        ({"memory_mb": 7168, "max_concurrency": 5}, "serverless.memory_mb: expected auto or"),
        ({"memory_mb": "max", "max_concurrency": 5}, "serverless.memory_mb: expected auto or"),
        ({"memory_mb": 2048}, "deploy.sagemaker.serverless.max_concurrency: required key"),
        ({"max_concurrency": 201}, "deploy.sagemaker.serverless.max_concurrency: Input should"),
        (
            {"max_concurrency": 5, "provisioned_concurrency": 6},
            "deploy.sagemaker.serverless: provisioned_concurrency 6 is above max_concurrency 5",
        ),
        ({"max_concurrency": 5, "memory": 2048}, "deploy.sagemaker.serverless.memory: unknown"),
    ],
)
def test_sagemaker_serverless_is_checked_at_load(tmp_path, churn_raw, serverless, message):
    churn_raw["deploy"] = {"sagemaker": {"serverless": serverless}}
    assert message in _error(tmp_path, churn_raw)


def test_sagemaker_serverless_defaults_to_auto_and_takes_the_sizes(churn_raw):
    churn_raw["deploy"] = {"sagemaker": {"serverless": {"max_concurrency": 5}}}
    sl = config.from_mapping(churn_raw).deploy.sagemaker.serverless
    assert (sl.memory_mb, sl.max_concurrency, sl.provisioned_concurrency) == ("auto", 5, None)
    for size in (1024, 2048, 3072, 4096, 5120, 6144):
        churn_raw["deploy"]["sagemaker"]["serverless"] = {"memory_mb": size, "max_concurrency": 1}
        assert config.from_mapping(churn_raw).deploy.sagemaker.serverless.memory_mb == size
    assert config.from_mapping({**churn_raw, "deploy": {}}).deploy.sagemaker.serverless is None


def test_monitoring_files_resolve_and_must_exist(tmp_path, churn_raw):
    churn_raw["monitoring"].update(current="data/telco_churn.csv", prediction_log="runs/log")
    cfg = config.from_mapping(churn_raw, "p.yaml", base=ROOT)
    assert cfg.monitoring.current == str(ROOT / "data" / "telco_churn.csv")
    assert cfg.monitoring.prediction_log == str(ROOT / "runs" / "log")  # may not exist yet
    churn_raw["monitoring"]["labels"] = "no/such/labels.csv"
    with pytest.raises(
        ConfigError,
        match=r"p.yaml: monitoring.labels: file not found: .*"
        r"no/such/labels.csv",
    ):
        config.from_mapping(churn_raw, "p.yaml", base=ROOT)
    churn_raw["monitoring"].pop("labels")
    churn_raw["monitoring"]["ab"] = {"confidence": 1.5}
    with pytest.raises(ConfigError, match=r"monitoring.ab.confidence"):
        config.from_mapping(churn_raw, "p.yaml", base=ROOT)


def test_schema_missing_target_and_non_finite_defaults_and_choices(tmp_path, churn_raw):
    cfg = config.from_mapping(churn_raw)
    assert cfg.schema.missing_target == "drop" and cfg.schema.non_finite == "fail"
    churn_raw["schema"].update(missing_target="fail", non_finite="missing")
    cfg = config.from_mapping(churn_raw)
    assert cfg.schema.missing_target == "fail" and cfg.schema.non_finite == "missing"
    churn_raw["schema"]["missing_target"] = "skip"
    msg = _error(tmp_path, churn_raw)
    assert "schema.missing_target: Input should be 'drop' or 'fail' (got 'skip')" in msg
    churn_raw["schema"].update(missing_target="drop", non_finite="zero")
    msg = _error(tmp_path, churn_raw)
    assert "schema.non_finite: Input should be 'fail' or 'missing' (got 'zero')" in msg


def test_spot_needs_a_checkpoint_location_and_a_wait_that_covers_the_run(tmp_path, churn_raw):
    churn_raw["sagemaker"] = {"spot": True}
    msg = _error(tmp_path, churn_raw)
    assert "sagemaker: spot: true needs checkpoint_s3_uri" in msg
    churn_raw["sagemaker"] = {"checkpoint_s3_uri": "/tmp/checkpoints"}
    assert "checkpoint_s3_uri must be s3://bucket[/prefix] (got '/tmp/checkpoints')" in _error(
        tmp_path, churn_raw
    )
    # the tune stage's run bound (6 h by default) does not fit in the default 2 h wait
    churn_raw["sagemaker"] = {"spot": True, "checkpoint_s3_uri": "s3://team-bucket/ckpt"}
    msg = _error(tmp_path, churn_raw)
    assert "sagemaker.max_wait_s (7200) must be at least stages.tune.timeout_s (21600)" in msg
    churn_raw["stages"] = {"tune": {"timeout_s": 3600}}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(churn_raw))
    cfg = config.load(path)
    assert cfg.sagemaker.spot and cfg.sagemaker.max_wait_s >= cfg.stages.tune.timeout_s
    # without spot the wait is not SageMaker's: no refusal
    churn_raw["sagemaker"] = {"spot": False, "max_wait_s": 60}
    churn_raw["stages"] = {"tune": {"timeout_s": 7200}}
    path.write_text(yaml.safe_dump(churn_raw))
    assert config.load(path).sagemaker.max_wait_s == 60
