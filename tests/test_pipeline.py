"""End to end: the stage notebooks chained by the runner on the real Telco data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlfolio import pipeline, registry
from mlfolio.errors import ConfigError, StageError
from mlfolio.pipeline import gate_status

from .conftest import ROOT, tracking_section

pytestmark = pytest.mark.slow
QUIET = {"echo": lambda line: None}


def _pruned(tune_doc: dict) -> str:
    n = tune_doc["trial_states"].get("PRUNED", 0)
    return f" ({n} pruned)" if n else ""


def _client(tracking_dir: Path) -> MlflowClient:
    uri = tracking_section(tracking_dir)["tracking_uri"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def use_store(tracking_dir, monkeypatch):
    """Point this process's MLflow at the test's store (for registry reads in asserts)."""
    import mlflow

    uri = tracking_section(tracking_dir)["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri


def test_default_run_end_to_end_then_identical_rerun_is_not_promoted(
    write_params, runs_root, tracking_dir, use_store
):
    params_file = write_params()
    lines: list[str] = []
    shown: list[str] = []
    first = pipeline.run(params_file, runs_root=runs_root, echo=lines.append, progress=shown.append)
    run_dir = Path(first.data["run_dir"])
    m = json.loads((run_dir / "manifest.json").read_text())

    # the terminal: tuning progress while it ran, its totals on its line, then the verdict
    assert shown and all(
        re.fullmatch(r"\[4/7\] tune       [1-4]/4 trials.*", line) for line in shown
    ), shown
    tuned = next(line for line in lines if line.startswith("[4/7] tune       ok in"))
    best = json.loads((run_dir / "tune.json").read_text())
    assert tuned.endswith(
        f"4/4 trials{_pruned(best)}, best CV ROC AUC {best['best_cv_roc_auc']:.4f} "
        f"(trial {best['best_trial']})"
    ), tuned
    assert lines[-5:-1] == [
        "gate:       passed: no champion yet: nothing to beat",
        "model:      churn-classifier version 1 (registered), holds @champion, @challenger",
        "champion:   version 1 (the first)",
        "deployed:   version 1 (@champion): local checked, then stopped; kubernetes manifests "
        "written (not applied)",
    ]
    assert lines[-1] == f"run folder: {run_dir}\nreport:     {run_dir / 'index.html'}"

    # the audit folder: notebooks, HTML, products, manifest, index
    for stage in pipeline.STAGES:
        entry = m["stages"][stage.name]
        assert entry["status"] == "succeeded", entry
        assert (run_dir / stage.notebook).exists() and (run_dir / entry["html"]).exists()
        for product in stage.writes:
            assert (run_dir / product).exists(), product
        assert len(entry["inputs_hash"]) == 64 and entry["mlflow_run_id"]
        assert entry["duration_s"] > 0
        # the stage kernel's peak memory, read before it shut down (pandas alone: > 100 MB)
        assert 100 < entry["peak_rss_mb"] < 8000, entry
    assert (run_dir / "index.html").exists() and (run_dir / "parameters.yaml").exists()
    ingest_peak = m["stages"]["ingest"]["peak_rss_mb"] / 1024
    assert f"{ingest_peak:.2f} GB</td>" in (run_dir / "index.html").read_text()
    assert m["status"] == "succeeded" and len(m["data_hash"]) == 64
    assert m["git"]["commit"] and m["packages"]["mlflow"] != "not installed"
    assert m["data"]["rows"] == 4000 and m["seed"] == 42
    assert m["model"]["version"] == "1" and m["model"]["promoted"] is True
    # churn.yaml's gate.min_roc_auc; the test split (split.method hash, 811 rows) gives a
    # logistic regression 0.82 (seeded splits of this file: 0.81 .. 0.86 by seed)
    assert m["candidate"]["test"]["roc_auc"] >= 0.80
    # CI's deploy decision from the real manifest: passed and promoted
    verdict = gate_status.check(run_dir)
    assert (verdict.exit_code, verdict.status, verdict.version) == (0, "promoted", "1")

    # MLflow: one parent run, one child per stage, trials nested under the tune run
    client = _client(tracking_dir)
    parent = client.get_run(m["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["mlfolio.stage"] for r in children} == set(pipeline.STAGE_NAMES)
    tune_run = m["stages"]["tune"]["mlflow_run_id"]
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{tune_run}'")
    assert len(trials) == 4 and all("optuna.trial" in t.data.tags for t in trials)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "run")}
    assert "run/01_ingest.ipynb" in logged and "run/06_register.html" in logged
    # runs compare at the top level: a readable name, the headline metrics and parameters
    created = f"{m['created'][:10]} {m['created'][11:16]}"
    assert parent.info.run_name == f"churn {created} pipeline {run_dir.name[-6:]}"
    top, given = parent.data.metrics, parent.data.params
    assert top["test_roc_auc"] == pytest.approx(m["candidate"]["test"]["roc_auc"])
    assert top["test_pr_auc"] == pytest.approx(m["candidate"]["test"]["pr_auc"])
    assert top["gate_passed"] == 1.0 and top["promoted_version"] == 1.0
    assert given["candidate"] == m["candidate"]["name"]
    assert given["model_kind"] in ("logreg", "xgboost") and given["n_trials"] == "4"
    assert given["data_rows"] == "4000" and parent.data.tags["mlfolio.data_hash"] == m["data_hash"]
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {r.info.run_name for r in children} == set(pipeline.STAGE_NAMES)

    # registry: tags link back to the run folder and the data; alias history kept
    name = "churn-classifier"
    champion = registry.get_alias(name, registry.CHAMPION)
    assert champion is not None and champion.version == "1"
    mv = client.get_model_version(name, "1")
    assert mv.tags["mlfolio.run_dir"] == str(run_dir)
    assert mv.tags["mlfolio.data_hash"] == m["data_hash"]
    history = registry.alias_history(name)
    assert [(e["alias"], e["version"]) for e in history] == [("challenger", "1"), ("champion", "1")]
    assert history[1]["by"] == "pytest" and history[1]["reason"].startswith("gate passed")

    # same parameters and data again, every stage executed: identical metrics, the same
    # model as the champion (said so, not a failed +0.0000 gain), no promotion, and no
    # second version of the identical model
    lines.clear()
    second = pipeline.run(params_file, runs_root=runs_root, reuse=False, echo=lines.append)
    assert lines[-5:-1] == [
        "gate:       same model as champion v1 (identical model files, mlfolio.model_hash): "
        "no gain to measure, nothing to promote",
        "model:      churn-classifier version 1 (identical to version 1, nothing new "
        "registered), holds @champion, @challenger; not promoted: same model as champion "
        "v1, which it already is",
        "champion:   version 1 (unchanged)",
        "deployed:   version 1 (@champion): local checked, then stopped; kubernetes manifests "
        "written (not applied)",
    ]
    assert second.data["candidate"] == m["candidate"]
    assert second.data["data_hash"] == m["data_hash"]
    assert second.data["gate"]["passed"] is False
    assert second.data["gate"]["same_model_as"] == "1"
    for require in ("promoted", "passed"):
        verdict = gate_status.check(second.data["run_dir"], require)
        assert (verdict.exit_code, verdict.status, verdict.champion) == (0, "same model", "1")
        assert verdict.reason == "same model as champion v1: nothing new to deploy, v1 stays"
    assert second.data["model"] == {
        **second.data["model"],
        "version": "1",
        "duplicate_of": "1",
        "registered": False,
        "promoted": False,
        "champion": "1",
    }
    assert registry.get_alias(name, registry.CHALLENGER).version == "1"
    assert registry.get_alias(name, registry.CHAMPION).version == "1"
    ev = json.loads((Path(second.data["run_dir"]) / "evaluate.json").read_text())
    assert ev["champion"]["version"] == "1"
    assert ev["comparison"]["difference"] == 0.0
    again = client.get_run(second.data["mlflow"]["parent_run_id"]).data.metrics
    assert again["gate_passed"] == 0.0 and "promoted_version" not in again

    # a stage replays with plain papermill from the run's own parameter file
    out = runs_root / "replayed.ipynb"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "papermill"),
            str(ROOT / "notebooks/02_preprocess.ipynb"),
            str(out),
            "-f",
            str(run_dir / "stage_parameters.yaml"),
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    train_rows = json.loads((run_dir / "preprocess.json").read_text())["splits"]["train"]["rows"]
    assert pd.read_parquet(run_dir / "data/train.parquet").shape[0] == train_rows


def test_failing_stage_keeps_partial_notebook_then_rerun_from_it(
    write_params, runs_root, tracking_dir, use_store
):
    params = write_params(training={"logreg": {"C": -1.0}})
    with pytest.raises(StageError, match="stage 'train' failed") as info:
        pipeline.run(params, runs_root=runs_root, **QUIET)
    assert info.value.stage == "train" and info.value.cell_index is not None
    (run_dir,) = runs_root.iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failed_stage"] == "train"
    assert m["failed_cell"] == info.value.cell_index
    assert gate_status.check(run_dir).reason.startswith("run failed in stage train (cell ")
    assert m["stages"]["train"]["error"]["ename"] == "InvalidParameterError"
    assert m["stages"]["train"]["peak_rss_mb"] > 100  # read after the failing cell too
    assert [m["stages"][s]["status"] for s in pipeline.STAGE_NAMES] == [
        "succeeded",
        "succeeded",
        "failed",
        "not run",
        "not run",
        "not run",
        "not run",
    ]
    partial = json.loads((run_dir / "03_train.ipynb").read_text())
    assert any(
        o.get("output_type") == "error" for c in partial["cells"] for o in c.get("outputs", [])
    )
    assert "InvalidParameterError" in (run_dir / "03_train.html").read_text()
    assert "train" in (run_dir / "index.html").read_text()
    assert not (run_dir / "register.json").exists()
    client = _client(tracking_dir)
    assert client.search_registered_models() == []
    assert client.get_run(m["mlflow"]["parent_run_id"]).info.status == "FAILED"
    train_run = client.search_runs(
        [client.get_experiment_by_name("churn").experiment_id], "tags.`mlfolio.stage` = 'train'"
    )[0]
    assert train_run.info.status == "FAILED"

    # fix the parameter and re-run from the failed stage into the same folder
    snapshot = run_dir / "data/snapshot.parquet"
    before = (snapshot.stat().st_mtime_ns, (run_dir / "01_ingest.ipynb").stat().st_mtime_ns)
    fixed = write_params("fixed.yaml")
    pipeline.run(fixed, from_stage="train", run_dir=run_dir, **QUIET)
    after = (snapshot.stat().st_mtime_ns, (run_dir / "01_ingest.ipynb").stat().st_mtime_ns)
    assert before == after  # earlier outputs untouched
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["failed_stage"] is None
    assert all(s["status"] == "succeeded" for s in m["stages"].values())
    assert registry.get_alias("churn-classifier", registry.CHAMPION).version == "1"


def test_bad_parameters_fail_before_any_notebook(write_params, runs_root):
    params = write_params(tuning={"n_trials": "many"})
    with pytest.raises(ConfigError, match="tuning.n_trials"):
        pipeline.run(params, runs_root=runs_root, **QUIET)
    assert list(runs_root.iterdir()) == []
    with pytest.raises(ConfigError, match="unknown stage 'trian'"):
        pipeline.run(write_params(), stages=["trian"], runs_root=runs_root, **QUIET)
    with pytest.raises(ConfigError, match="no manifest.json"):
        pipeline.run(write_params(), from_stage="train", run_dir=runs_root, **QUIET)


def test_cli_exit_codes_and_messages(write_params, tmp_path):
    exe = str(Path(sys.executable).parent / "mlfolio")
    env = {**os.environ, "MLFOLIO_PROJECT_DIR": str(ROOT)}
    bad = write_params(gate={"min_roc_auc": 2})
    proc = subprocess.run([exe, "run", str(bad)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "gate.min_roc_auc" in proc.stderr and str(bad) in proc.stderr
    proc = subprocess.run(
        [exe, "run", str(bad), "--from", "train"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "--run-dir" in proc.stderr
    proc = subprocess.run(
        [exe, "run", str(write_params()), "-p", "tuning.n_trails=3"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "tuning.n_trails: unknown key" in proc.stderr


def test_cli_output_on_a_fresh_store_starts_with_the_first_stage(
    write_params, tracking_dir, runs_root
):
    """MLflow's "Creating initial MLflow database tables" and alembic's INFO lines, printed
    when a new SQLite store is created, go to the run's log, not the terminal. (Train is
    made to fail so the run stays short: what is printed before it is the point.)"""
    exe = str(Path(sys.executable).parent / "mlfolio")
    env = {**os.environ, "MLFOLIO_PROJECT_DIR": str(ROOT), "MLFOLIO_USER": "pytest"}
    env.pop("MLFLOW_TRACKING_URI", None)
    params = write_params(training={"models": ["logreg"], "logreg": {"C": -1}})
    assert not (tracking_dir / "mlflow.db").exists()
    proc = subprocess.run(
        [exe, "run", str(params), "--runs-root", str(runs_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    assert out.startswith("[1/7] ingest     running ..."), out[:2000]
    assert "database tables" not in out and "alembic" not in out, out[:2000]
    (run_dir,) = runs_root.iterdir()
    assert (
        "Creating initial MLflow database tables" in (run_dir / "logs" / "runner.log").read_text()
    )


def test_a_second_data_set_needs_only_a_parameter_file(
    tmp_path, write_params, runs_root, use_store
):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    df = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    df.insert(0, "patient", [f"p{i:04d}" for i in range(len(df))])
    df["diagnosis"] = df.pop("target").map({0: "malignant", 1: "benign"})
    csv = tmp_path / "breast_cancer.csv"
    df.to_csv(csv, index=False)
    numeric = [c for c in df.columns if c not in ("patient", "diagnosis")]
    raw = {
        "experiment": "breast-cancer",
        "seed": 7,
        "data": {"uri": str(csv)},
        "schema": {
            "target": "diagnosis",
            "positive_label": "malignant",
            "negative_label": "benign",
            "id_column": "patient",
            "numeric": numeric,
            "categorical": [],
        },
        "training": {"models": ["logreg"]},
        "evaluation": {"threshold": 0.5},
    }
    params = write_params("bc.yaml", base=raw)
    m = pipeline.run(params, runs_root=runs_root, **QUIET).data
    assert m["status"] == "succeeded" and m["data"]["rows"] == 569
    assert m["candidate"]["test"]["roc_auc"] > 0.95
    assert m["model"]["model_name"] == "breast-cancer-classifier"
    assert (
        yaml.safe_load((Path(m["run_dir"]) / "parameters.yaml").read_text())["schema"][
            "positive_label"
        ]
        == "malignant"
    )


def test_no_champion_means_a_clear_deploy_failure(write_params, runs_root, use_store):
    params = write_params(gate={"min_roc_auc": 0.99}, deploy={"targets": ["kubernetes"]})
    with pytest.raises(StageError, match="stage 'deploy' failed") as info:
        pipeline.run(params, runs_root=runs_root, **QUIET)
    assert "registry has no churn-classifier@champion" in str(info.value)
    (run_dir,) = runs_root.iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["failed_stage"] == "deploy" and m["gate"]["passed"] is False
    assert m["model"]["promoted"] is False and not (run_dir / "deploy.json").exists()
    assert registry.get_alias("churn-classifier", registry.CHALLENGER).version == "1"
