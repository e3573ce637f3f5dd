"""Reusing unchanged stages: what invalidates which stage, finding and taking over a stage
of an earlier run, register's duplicate check, and the runner end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlfolio import config as config_mod
from mlfolio import pipeline, registry
from mlfolio.graph import STAGES
from mlfolio.pipeline import provenance, reuse

from .conftest import CHURN_CSV, tracking_section

BY_NAME = {s.name: s for s in STAGES}
QUIET = {"echo": lambda line: None}


@pytest.fixture
def data_copy(tmp_path) -> Path:
    path = tmp_path / "data" / "churn.csv"
    path.parent.mkdir()
    shutil.copy(CHURN_CSV, path)
    return path


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def _hashes(cfg, folder: Path, **kwargs) -> dict[str, str]:
    """Every training stage's inputs hash in ``folder`` (``kwargs`` go to the Reuser)."""
    champion = kwargs.pop("champion", "1")
    r = reuse.Reuser(cfg, folder, enabled=False, **kwargs)
    return {s.name: r.inputs(s, champion=champion)["hash"] for s in STAGES}


# -- what invalidates what -------------------------------------------------------------
def test_each_input_kind_invalidates_exactly_the_stages_that_read_it(
    write_params, data_copy, tmp_path, monkeypatch
):
    folder = tmp_path / "runs" / "run"
    folder.mkdir(parents=True)
    cfg = config_mod.load(write_params(data={"uri": str(data_copy)}))
    base = _hashes(cfg, folder)
    assert base == _hashes(cfg, folder)  # stable

    # a parameter of one section: only the stages reading that section
    tuned = config_mod.load(write_params(data={"uri": str(data_copy)}, tuning={"n_trials": 3}))
    assert _changed(base, _hashes(tuned, folder)) == {"tune"}
    gated = config_mod.load(write_params(data={"uri": str(data_copy)}, gate={"min_roc_auc": 0.7}))
    assert _changed(base, _hashes(gated, folder)) == {"evaluate"}

    # the champion alias moved: the stages comparing with it
    assert _changed(base, _hashes(cfg, folder, champion="2")) == {"evaluate", "register"}

    # the data's content (same path): ingest; later stages follow through its products
    text = data_copy.read_text().splitlines()
    data_copy.write_text("\n".join([text[0], *reversed(text[1:])]) + "\n")
    assert _changed(base, _hashes(cfg, folder)) == {"ingest"}

    # an upstream product: exactly the stages that declare they read it (ingest from the
    # data change above; register and deploy follow through evaluate.json and the alias)
    (folder / "data").mkdir()
    pd.DataFrame({"a": [1]}).to_parquet(folder / "data" / "train.parquet")
    after = _hashes(cfg, folder)
    assert _changed(base, after) == {"ingest", "train", "tune", "evaluate"}
    readers = {s.name for s in BY_NAME.values() if "data/train.parquet" in s.reads}
    assert readers == {"train", "tune", "evaluate"}

    # the mlfolio source, a package version: every stage
    monkeypatch.setattr(reuse, "package_source_hash", lambda: "edited")
    assert _changed(after, _hashes(cfg, folder)) == set(BY_NAME)
    monkeypatch.undo()
    versions = {**provenance.package_versions(), "scikit-learn": "0.0"}
    assert _changed(after, _hashes(cfg, folder, packages=versions)) == set(BY_NAME)

    # one notebook's source: that stage
    real = provenance.notebook_source_hash
    monkeypatch.setattr(
        provenance,
        "notebook_source_hash",
        lambda path: "edited" if path.name == "03_train.ipynb" else real(path),
    )
    assert _changed(after, _hashes(cfg, folder)) == {"train"}


def test_tracking_store_is_an_input_and_a_pinned_champion_replaces_the_alias(
    write_params, tmp_path
):
    folder = tmp_path / "run"
    folder.mkdir()
    cfg = config_mod.load(write_params())
    other = config_mod.load(
        write_params(tracking={"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"})
    )
    assert _changed(_hashes(cfg, folder), _hashes(other, folder)) == set(BY_NAME)
    if "champion_version" in type(cfg.evaluation).model_fields:
        pinned = config_mod.load(write_params(evaluation={"champion_version": 1}))
        assert _hashes(pinned, folder, champion="1") == _hashes(pinned, folder, champion="7")


def test_source_hash_is_the_file_bytes_or_the_rows(tmp_path, data_copy):
    from mlfolio import data
    from mlfolio.config import DataConfig

    src = DataConfig(uri=str(data_copy))
    assert provenance.source_hash(src) == provenance.file_hash(data_copy)
    rows = pd.read_csv(data_copy)
    sql = DataConfig(uri=f"sqlite:///{tmp_path / 'x.db'}", query="select 1")
    assert data.source_hash(sql, rows) == data.content_hash(rows)
    with pytest.raises(ValueError, match="needs its rows"):
        data.source_hash(sql)


# -- finding and taking over an earlier stage ------------------------------------------
def _fake_run(root: Path, name: str, cfg, stage_name: str, inputs_hash: str, **entry) -> Path:
    """A run folder whose ``stage_name`` succeeded with ``inputs_hash`` and left its files."""
    stage = BY_NAME[stage_name]
    folder = root / name
    for rel in reuse.stage_files(stage):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps({"run": name, "file": rel}))
    (folder / "tune").mkdir(exist_ok=True)
    (folder / "tune" / "study.journal").write_text(f"{name} journal")
    stages = {
        stage_name: {
            "status": "succeeded",
            "inputs_hash": inputs_hash,
            "started": entry.pop("started", "2026-01-01T00:00:00+00:00"),
            "mlflow_run_id": f"mlf-{name}",
            "outputs": reuse.outputs(stage, folder),
            **entry,
        }
    }
    manifest = {"experiment": cfg.experiment, "kind": "training", "stages": stages}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_find_takes_the_newest_intact_succeeded_stage_with_the_same_inputs(write_params, tmp_path):
    cfg = config_mod.load(write_params())
    root = tmp_path / "runs"
    tune = BY_NAME["tune"]
    old = _fake_run(root, "a-old", cfg, "tune", "h1", started="2026-01-01T00:00:00+00:00")
    new = _fake_run(root, "b-new", cfg, "tune", "h1", started="2026-02-01T00:00:00+00:00")
    _fake_run(root, "c-other-inputs", cfg, "tune", "h2", started="2026-03-01T00:00:00+00:00")
    _fake_run(root, "d-stale", cfg, "tune", "h1", started="2026-04-01T00:00:00+00:00", stale=["x"])
    failed = _fake_run(root, "e-failed", cfg, "tune", "h1", started="2026-05-01T00:00:00+00:00")
    m = json.loads((failed / "manifest.json").read_text())
    m["stages"]["tune"]["status"] = "failed"
    (failed / "manifest.json").write_text(json.dumps(m))
    foreign = _fake_run(root, "f-foreign", cfg, "tune", "h1", started="2026-06-01T00:00:00+00:00")
    m = json.loads((foreign / "manifest.json").read_text())
    m["experiment"] = "another"
    (foreign / "manifest.json").write_text(json.dumps(m))
    (root / "g-garbage").mkdir()
    (root / "g-garbage" / "manifest.json").write_text("{not json")

    here = root / "z-new-run"
    here.mkdir()
    r = reuse.Reuser(cfg, here, enabled=True, ingest_selected=False)
    assert r.find(tune, {"hash": "h1"}).run_dir == new
    assert r.find(tune, {"hash": "h9"}) is None

    # a changed or missing file disqualifies a run: the next one is taken
    (new / "tune.json").write_text("edited by hand")
    assert r.find(tune, {"hash": "h1"}).run_dir == old
    (old / tune.notebook).unlink()
    assert r.find(tune, {"hash": "h1"}) is None

    # side-effecting stages are never taken over; nothing is when reuse is off
    _fake_run(root, "h-reg", cfg, "register", "h3")
    assert (
        reuse.Reuser(cfg, here, enabled=True, ingest_selected=False).find(
            BY_NAME["register"], {"hash": "h3"}
        )
        is None
    )
    off = reuse.Reuser(cfg, here, enabled=False, ingest_selected=False)
    assert off.find(BY_NAME["preprocess"], {"hash": "h1"}) is None


def test_take_links_the_files_and_detach_keeps_the_source_unchanged(write_params, tmp_path):
    cfg = config_mod.load(write_params())
    root = tmp_path / "runs"
    src = _fake_run(root, "a", cfg, "tune", "h1", reused_from={"executed_in": "/runs/first"})
    here = root / "b"
    here.mkdir()
    r = reuse.Reuser(cfg, here, enabled=True, ingest_selected=False)
    tune = BY_NAME["tune"]
    entry = r.take(tune, r.find(tune, {"hash": "h1"})).to_json()
    assert entry["status"] == "succeeded" and entry["mlflow_run_id"] == "mlf-a"
    assert entry["reused_from"] == {
        "run_dir": str(src),
        "mlflow_run_id": "mlf-a",
        "executed_in": "/runs/first",
        "duration_s": None,
    }
    for rel in reuse.stage_files(tune):
        assert json.loads((here / rel).read_text()) == {"run": "a", "file": rel}
        assert os.path.samefile(here / rel, src / rel)  # hard links
    journal = here / "tune" / "study.journal"  # appended to in place: a copy
    assert journal.read_text() == "a journal" and journal.stat().st_nlink == 1

    reuse.detach(tune, here)
    (here / "tune.json").write_text("executed again")
    assert json.loads((src / "tune.json").read_text())["run"] == "a"
    assert not os.path.samefile(here / tune.notebook, src / tune.notebook)


def test_plan_foresees_the_leading_reused_stages(write_params, tmp_path, data_copy):
    cfg = config_mod.load(write_params(data={"uri": str(data_copy)}))
    root = tmp_path / "runs"
    first = root / "a"
    first.mkdir(parents=True)
    r = reuse.Reuser(cfg, first, enabled=True)
    h_ingest = r.inputs(BY_NAME["ingest"])["hash"]
    _fake_run(root, "a", cfg, "ingest", h_ingest)
    here = root / "b"
    here.mkdir()
    r = reuse.Reuser(cfg, here, enabled=True)
    # ingest foreseen from run a; preprocess then has a's products upstream: no run has it
    assert r.plan(list(STAGES)) == 1
    assert reuse.Reuser(cfg, here, enabled=False).plan(list(STAGES)) == 0


def test_plan_counts_evaluate_when_a_run_has_it_for_a_champion_it_recorded(
    write_params, tmp_path, data_copy
):
    cfg = config_mod.load(write_params(data={"uri": str(data_copy)}))
    root = tmp_path / "runs"
    done = root / "a"
    done.mkdir(parents=True)
    r = reuse.Reuser(cfg, done, enabled=False)
    entries = {}
    for stage in STAGES[:5]:  # ingest ... evaluate, each on the products before it
        for rel in reuse.stage_files(stage):
            (done / rel).parent.mkdir(parents=True, exist_ok=True)
            (done / rel).write_text(json.dumps({"file": rel}))
        inputs = r.inputs(stage, champion="1" if stage.name == "evaluate" else None)
        entries[stage.name] = {
            "status": "succeeded",
            "inputs": inputs,
            "inputs_hash": inputs["hash"],
            "outputs": reuse.outputs(stage, done),
        }
    manifest = {"experiment": cfg.experiment, "kind": "training", "stages": entries}
    (done / "manifest.json").write_text(json.dumps(manifest))
    here = root / "b"
    here.mkdir()
    assert reuse.Reuser(cfg, here, enabled=True).plan(list(STAGES)) == 5


def test_no_reuse_flag_reaches_the_runner(monkeypatch, tmp_path):
    from mlfolio import cli

    assert cli._parser().parse_args(["run", "p.yaml"]).reuse is True
    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda *a, **kw: seen.update(kw))
    cli._run(cli._parser().parse_args(["run", "p.yaml", "--no-reuse"]))
    assert seen["reuse"] is False


# -- the runner, end to end ------------------------------------------------------------
@pytest.mark.slow
def test_runs_reuse_unchanged_stages_and_execute_exactly_the_invalidated_ones(
    write_params, runs_root, tracking_dir, data_copy, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_section(tracking_dir)["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    small = {"data": {"uri": str(data_copy)}, "deploy": {"targets": ["kubernetes"]}}
    params = write_params(**small)
    fewer_trials = write_params("fewer.yaml", **small, tuning={"n_trials": 3})
    name = "churn-classifier"

    def run(params_file: Path = params, **kwargs):
        lines: list[str] = []
        m = pipeline.run(params_file, runs_root=runs_root, echo=lines.append, **kwargs).data
        reused = {s: e["reused_from"] for s, e in m["stages"].items() if e.get("reused_from")}
        return m, reused, lines

    first, reused, _ = run()
    assert reused == {} and first["reuse"] is True and first["model"]["version"] == "1"
    d1 = Path(first["run_dir"])

    # unchanged: ingest ... tune reused; evaluate executes (the first run moved champion)
    second, reused, lines = run()
    d2 = Path(second["run_dir"])
    assert set(reused) == {"ingest", "preprocess", "train", "tune"}
    assert f"[2/7] preprocess reused from {d1.name}" in lines
    assert "[5/7] evaluate   running ..." in lines
    for stage in ("ingest", "preprocess", "train", "tune"):
        entry, before = second["stages"][stage], first["stages"][stage]
        assert entry["status"] == "succeeded" and entry["inputs_hash"] == before["inputs_hash"]
        assert reused[stage]["run_dir"] == str(d1)
        assert reused[stage]["mlflow_run_id"] == before["mlflow_run_id"]
        for rel in reuse.stage_files(BY_NAME[stage]):
            assert os.path.samefile(d2 / rel, d1 / rel)
    assert second["candidate"] == first["candidate"]
    # register executed, but an identical model gets no second version
    assert second["model"]["duplicate_of"] == "1" and second["model"]["registered"] is False
    assert second["model"]["version"] == "1" and second["model"]["promoted"] is False
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert client.get_model_version(name, "1").tags[registry.MODEL_HASH_TAG]
    page = (d2 / "index.html").read_text()
    assert 'id="reused-preprocess"' in page and d1.name in page and 'id="duplicate-of"' in page
    assert second["stages"]["deploy"].get("reused_from") is None

    # (register and deploy always execute: the runs below stop at evaluate)
    upto_evaluate = ["ingest", "preprocess", "train", "tune", "evaluate"]
    # unchanged again, champion unmoved: evaluate reused too, from the newest run
    third, reused, _ = run(stages=upto_evaluate)
    assert set(reused) == {"ingest", "preprocess", "train", "tune", "evaluate"}
    assert {r["run_dir"] for r in reused.values()} == {str(d2)}
    assert reused["train"]["executed_in"] == str(d1)

    # a parameter of one section: that stage and the ones reading its products
    fourth, reused, _ = run(fewer_trials, stages=upto_evaluate)
    assert set(reused) == {"ingest", "preprocess", "train"}

    # the champion alias moved: evaluate re-executes
    baseline = json.loads((d1 / "train.json").read_text())["models"]["logreg"]
    ref = registry.register(name, baseline["model_uri"], baseline["run_id"], {})
    registry.set_alias(ref, registry.CHAMPION, "test: move the champion")
    fifth, reused, _ = run(fewer_trials, stages=upto_evaluate)
    assert set(reused) == {"ingest", "preprocess", "train", "tune"}
    assert reused["tune"]["run_dir"] == fourth["run_dir"]

    # the mlfolio source changed: nothing reused; --no-reuse: nothing reused
    monkeypatch.setattr(reuse, "package_source_hash", lambda: "edited")
    sixth, reused, _ = run(stages=["ingest"])
    assert reused == {}
    monkeypatch.undo()
    seventh, reused, _ = run(stages=["ingest"], reuse=False)
    assert reused == {} and seventh["reuse"] is False
    assert "no stage reused" in (Path(seventh["run_dir"]) / "index.html").read_text()

    # the data's content changed under the same path: ingest and everything after it
    header, *rows = data_copy.read_text().splitlines()
    data_copy.write_text("\n".join([header, *reversed(rows)]) + "\n")
    eighth, reused, _ = run(stages=["ingest", "preprocess"])
    assert reused == {} and eighth["data_hash"] != first["data_hash"]
    ingested = json.loads((Path(eighth["run_dir"]) / "ingest.json").read_text())
    assert eighth["stages"]["ingest"]["inputs"]["external"]["data"] == ingested["source_hash"]
