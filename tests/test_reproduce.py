"""mlfolio reproduce: a finished run re-executed from its record and compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mlfolio import config, pipeline, registry
from mlfolio.cli import main
from mlfolio.errors import ConfigError
from mlfolio.pipeline import reproduce

from .conftest import CHURN_CSV, CHURN_PARAMS, SMALL, deep_update, tracking_section

QUIET = {"echo": lambda line: None}
UP_TO_REGISTER = ["ingest", "preprocess", "train", "tune", "evaluate", "register"]
NAME = "churn-classifier"


# -- fast: the pieces ------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(3, 3), ("4", 4), ("none", "none"), (None, None)])
def test_champion_version_accepts_a_version_or_none(value, expected):
    cfg = config.load(CHURN_PARAMS, {"evaluation.champion_version": value})
    assert cfg.evaluation.champion_version == expected


@pytest.mark.parametrize("value", [0, -1, "latest", True, 1.5])
def test_champion_version_rejects_anything_else_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"evaluation\.champion_version: expected a registered"):
        config.load(CHURN_PARAMS, {"evaluation.champion_version": value})


def test_numbers_flattens_every_number_but_not_booleans():
    doc = {"a": {"b": 1, "c": [0.5, {"d": 2.0}]}, "ok": True, "name": "x"}
    assert reproduce._numbers(doc, "p") == {"p.a.b": 1.0, "p.a.c[0]": 0.5, "p.a.c[1].d": 2.0}


def test_close_is_exact_without_tolerance_and_nan_equals_nan():
    assert reproduce._close(0.1, 0.1, 0.0) and not reproduce._close(0.1, 0.1 + 1e-15, 0.0)
    assert reproduce._close(0.80, 0.805, 0.01) and not reproduce._close(0.80, 0.82, 0.01)
    assert reproduce._close(float("nan"), float("nan"), 0.0)
    assert not reproduce._close(None, 1.0, 0.01)


def test_the_reproduction_warm_starts_from_what_the_original_did(tmp_path):
    """tuning.warm_start is pinned to the champion version the original's first trial
    came from, 'baseline' when it was the train stage's model, or off when it had none
    (the champion alias may have moved since)."""
    evaluated = {"champion": {"version": "2"}}
    tune_json = tmp_path / "tune.json"
    for doc, expected in (
        ({"enabled": True, "warm_start": {"version": "3", "params": {"C": 1.0}}}, 3),
        ({"enabled": True, "warm_start": {"skipped": "tuning.warm_start is off"}}, False),
        (
            {"enabled": True, "warm_start": {"baseline": "training.xgboost", "params": {}}},
            "baseline",
        ),
        ({"enabled": True}, False),  # a run from before warm starts were recorded
    ):
        tune_json.write_text(json.dumps(doc))
        out = reproduce._overrides(tmp_path, {}, evaluated)
        got = out["tuning.warm_start"]
        assert got == expected and type(got) is type(expected)  # False is not version 0
        assert out["evaluation.champion_version"] == 2
    tune_json.write_text(json.dumps({"enabled": False}))
    assert "tuning.warm_start" not in reproduce._overrides(tmp_path, {}, evaluated)


def test_tuning_is_unstable_with_workers_or_a_timeout_that_ended_it(tmp_path):
    (tmp_path / "tune.json").write_text(
        json.dumps({"enabled": True, "trial_states": {"COMPLETE": 7, "PRUNED": 1}})
    )
    base = {"tuning.n_trials": 8, "tuning.timeout": 60}
    assert reproduce._unstable(config.load(CHURN_PARAMS, base), tmp_path) == []
    short = config.load(CHURN_PARAMS, {**base, "tuning.n_trials": 30})
    assert "ended the study after 8 of 30 trials" in reproduce._unstable(short, tmp_path)[0]
    workers = config.load(CHURN_PARAMS, {**base, "tuning.n_workers": 2})
    assert "tuning.n_workers is 2" in reproduce._unstable(workers, tmp_path)[0]


def test_a_folder_without_a_manifest_is_refused_with_exit_2(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


# -- end to end: one original, reproduced twice ----------------------------------------
@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """Run A (promoted: version 1), run B (compared with version 1), then champion moved
    to version 2: reproducing B must still compare with version 1."""
    import mlflow

    root = tmp_path_factory.mktemp("reproduce")
    data = root / "churn.csv"
    shutil.copy(CHURN_CSV, data)
    raw = deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL)
    # one baseline (logreg) to keep it quick; tuning (xgboost) is what must reproduce
    raw = deep_update(raw, {"tracking": tracking_section(root), "data": {"uri": str(data)}})
    raw["training"]["models"] = ["logreg"]
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFOLIO_USER", "pytest")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        pipeline.run(params, stages=UP_TO_REGISTER, runs_root=runs, **QUIET)
        b = pipeline.run(params, stages=UP_TO_REGISTER[:-1], runs_root=runs, **QUIET)
        run_b = Path(b.data["run_dir"])
        ev = json.loads((run_b / "evaluate.json").read_text())
        assert ev["champion"]["version"] == "1"
        uri = tracking_section(root)["tracking_uri"]
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        v2 = registry.register(NAME, ev["candidate"]["model_uri"], ev["candidate"]["run_id"], {})
        registry.set_alias(v2, registry.CHAMPION, "test: the champion moves on")
    return {
        "root": root,
        "data": data,
        "run_b": run_b,
        "runs": runs,
        "uri": uri,
        "params": params,
    }


def _versions(uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def _new_folders(runs: Path, before: set[Path]) -> list[Path]:
    return sorted(set(runs.iterdir()) - before)


@pytest.mark.slow
def test_reproduce_says_reproduced_against_the_original_champion(original, capsys):
    runs, uri = original["runs"], original["uri"]
    before = set(runs.iterdir())
    assert main(["reproduce", str(original["run_b"])]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == "reproduced", out
    assert "(exact)" in out.out
    (new,) = _new_folders(runs, before)  # beside the original
    ev = json.loads((new / "evaluate.json").read_text())
    assert ev["champion"]["version"] == "1"  # not the champion alias's version 2
    record = json.loads((new / "reproduce.json").read_text())
    assert record["reproduced"] is True and record["reproduces"] == str(original["run_b"])
    whats = {c["what"] for c in record["checks"]}
    assert {"data_hash", "gate.passed", "evaluate.json.candidate.test.roc_auc"} <= whats
    assert "tune.json.best_cv_roc_auc" in whats
    scores = next(c for c in record["checks"] if c["what"].startswith("candidate scores"))
    assert scores["max_abs_difference"] == 0.0 and scores["rows"] > 0
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["reproduces"] == str(original["run_b"])
    assert manifest["reproduction"]["reproduced"] is True
    assert set(manifest["stages"]) == set(UP_TO_REGISTER[:-1])  # no register, no deploy
    # nothing written to the registry: still two versions, champion still version 2
    assert _versions(uri) == ["1", "2"]
    assert registry.get_alias(NAME, registry.CHAMPION).version == "2"
    assert 'id="reproduction"' in (new / "index.html").read_text()

    # A run on unchanged inputs after the reproduction still reuses tune: the train.json it
    # would read names the reproduction's MLflow models, which must not count (issue 20).
    after = pipeline.run(original["params"], stages=UP_TO_REGISTER[:-1], runs_root=runs, **QUIET)
    stages = after.data["stages"]
    assert stages["train"]["reused_from"]["run_dir"] == str(new)  # the newest
    assert "reused_from" in stages["tune"], stages["tune"]


@pytest.mark.slow
def test_a_tampered_metric_is_named_and_a_different_commit_warned(original, tmp_path, capsys):
    tampered = tmp_path / original["run_b"].name
    shutil.copytree(original["run_b"], tampered)
    ev = json.loads((tampered / "evaluate.json").read_text())
    ev["candidate"]["test"]["roc_auc"] += 0.001
    (tampered / "evaluate.json").write_text(json.dumps(ev))
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["git"]["commit"] = "0" * 40
    (tampered / "manifest.json").write_text(json.dumps(manifest))

    assert main(["reproduce", str(tampered), "--runs-root", str(tmp_path / "new")]) == 1
    err = capsys.readouterr().err
    assert f"warning: code commit differs: recorded {'0' * 40}, now " in err
    assert "NOT reproduced: 1 difference(s)" in err
    assert "evaluate.json.candidate.test.roc_auc: original" in err
    (new,) = (tmp_path / "new").iterdir()
    record = json.loads((new / "reproduce.json").read_text())
    assert [d["what"] for d in record["differences"]] == ["evaluate.json.candidate.test.roc_auc"]
    assert record["warnings"][0].startswith("code commit differs")


@pytest.mark.slow
def test_changed_data_is_refused_before_anything_runs(original, capsys):
    data, runs = original["data"], original["runs"]
    kept = data.read_bytes()
    before = set(runs.iterdir())
    recorded = json.loads((original["run_b"] / "manifest.json").read_text())["data_hash"]
    lines = kept.decode().splitlines(keepends=True)
    try:
        data.write_text("".join(lines[:-1]))  # one customer fewer
        assert main(["reproduce", str(original["run_b"])]) == 2
    finally:
        data.write_bytes(kept)
    err = capsys.readouterr().err
    assert f"data.uri {data}: content hash is " in err
    assert f"the run recorded {recorded}" in err
    assert _new_folders(runs, before) == []
