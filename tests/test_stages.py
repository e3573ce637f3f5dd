"""The register stage under a promotion race, and stage notebooks run by hand (no run
folder): on the real Telco data, one small pipeline run shared by those (slow) tests.
At the end, the stage functions called directly, without papermill (default suite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import papermill as pm
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlfolio import pipeline, registry

from .conftest import CHURN_CSV, CHURN_PARAMS, SMALL, deep_update, tracking_section

QUIET = {"echo": lambda line: None}
MODEL = "churn-race"
FAST = {
    "training": {"models": ["logreg"]},
    "tuning": {"enabled": False},
    "deploy": {"targets": ["kubernetes"]},
    "registry": {"model_name": MODEL},
}
UP_TO_EVALUATE = ["ingest", "preprocess", "train", "tune", "evaluate"]


class Env:
    def __init__(self, root: Path):
        self.root = root
        (root / "tracking").mkdir()
        self.runs = root / "runs"
        self.runs.mkdir()
        self.uri = tracking_section(root / "tracking")["tracking_uri"]
        raw = yaml.safe_load(CHURN_PARAMS.read_text())
        raw = deep_update(deep_update(raw, SMALL), FAST)
        raw = deep_update(
            raw, {"data": {"uri": str(CHURN_CSV)}, "tracking": tracking_section(root / "tracking")}
        )
        self.params = root / "params.yaml"
        self.params.write_text(yaml.safe_dump(raw, sort_keys=False))

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client().get_model_version_by_alias(MODEL, alias).version)
        except Exception:
            return None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    env = Env(tmp_path_factory.mktemp("register"))
    # Evaluate ran while the registry had no champion: its gate compared against none.
    first = pipeline.run(env.params, stages=UP_TO_EVALUATE, runs_root=env.runs, **QUIET)
    env.run_dir = Path(first.data["run_dir"])
    return env


def _champion_moves_match_their_gates(env: Env) -> None:
    """The invariant: every champion move made by a pipeline run replaced exactly the
    version its evaluate stage compared against."""
    import mlflow

    mlflow.set_tracking_uri(env.uri)
    mlflow.set_registry_uri(env.uri)
    moves = [e for e in registry.alias_history(MODEL) if e["alias"] == registry.CHAMPION]
    checked = 0
    for move in moves:
        evaluated = Path(move["run_dir"]) / "evaluate.json"
        if move["run_dir"] and evaluated.exists():
            gate_saw = (json.loads(evaluated.read_text())["champion"] or {}).get("version")
            assert move["previous_version"] == gate_saw, move
            checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_register_does_not_promote_past_a_champion_its_gate_never_saw(env):
    ev = json.loads((env.run_dir / "evaluate.json").read_text())
    assert ev["gate"]["passed"] and ev["champion"] is None
    # Between evaluate and register, another run promotes its own candidate.
    import mlflow

    mlflow.set_tracking_uri(env.uri)
    mlflow.set_registry_uri(env.uri)
    other_dir = env.root / "other-run"
    other_dir.mkdir()
    (other_dir / "evaluate.json").write_text(json.dumps({"champion": None}))
    other = registry.register(MODEL, ev["candidate"]["model_uri"], ev["candidate"]["run_id"], {})
    registry.set_alias(other, registry.CHAMPION, "gate passed (other run)", str(other_dir))

    manifest = pipeline.run(env.params, stages=["register"], run_dir=env.run_dir, **QUIET)
    reg = json.loads((env.run_dir / "register.json").read_text())
    assert env.alias(registry.CHAMPION) == "1" and reg["promoted"] is False
    assert reg["registered"] and reg["version"] == "2"
    assert reg["compared_against"] is None and reg["champion"] == other.version == "1"
    assert "champion moved: the gate compared against no champion" in reg["why_not_promoted"]
    assert "is now v1" in reg["why_not_promoted"] and str(other_dir) in reg["why_not_promoted"]
    assert env.alias(registry.CHAMPION) == "1" and env.alias(registry.CHALLENGER) == "2"
    assert manifest.data["model"]["why_not_promoted"] == reg["why_not_promoted"]
    index = (env.run_dir / "index.html").read_text()
    assert 'id="why-not-promoted"' in index and "Champion now: v1" in index
    html = (env.run_dir / "06_register.html").read_text()
    assert "Not promoted" in html and "champion moved" in html
    _champion_moves_match_their_gates(env)

    # Evaluate again: it now compares against v1, and register may promote over it.
    pipeline.run(env.params, stages=["evaluate", "register"], run_dir=env.run_dir, **QUIET)
    reg = json.loads((env.run_dir / "register.json").read_text())
    ev = json.loads((env.run_dir / "evaluate.json").read_text())
    assert ev["champion"]["version"] == "1" and reg["compared_against"] == "1"
    assert reg["promoted"] is (ev["gate"]["passed"] is True)
    _champion_moves_match_their_gates(env)


def _interactive(env: Env, tmp_path: Path, monkeypatch, experiment: str) -> Path:
    """A project folder where notebooks run without a run folder, as in JupyterLab."""
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(tmp_path))
    raw = yaml.safe_load(env.params.read_text())
    raw["experiment"] = experiment
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


def _stage_runs(env: Env, experiment: str, stage: str):
    exp = env.client().get_experiment_by_name(experiment)
    return env.client().search_runs([exp.experiment_id], f"tags.`mlfolio.stage` = '{stage}'")


@pytest.mark.slow
def test_interactive_register_changes_nothing_unless_asked(env, tmp_path, monkeypatch):
    params = _interactive(env, tmp_path, monkeypatch, "churn-lab")
    folder = tmp_path / "runs" / "interactive-churn-lab"
    folder.mkdir(parents=True)
    for name in ("ingest.json", "evaluate.json"):
        shutil.copy(env.run_dir / name, folder / name)
    versions = len(env.client().search_model_versions(f"name = '{MODEL}'"))
    aliases = (env.alias(registry.CHAMPION), env.alias(registry.CHALLENGER))
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "06_register.ipynb"

    pm.execute_notebook(
        str(notebook),
        str(tmp_path / "out.ipynb"),
        parameters={"params_file": str(params)},
        progress_bar=False,
    )
    reg = json.loads((folder / "register.json").read_text())
    assert reg["registered"] is False and "interactive run" in reg["why_not_promoted"]
    assert len(env.client().search_model_versions(f"name = '{MODEL}'")) == versions
    assert (env.alias(registry.CHAMPION), env.alias(registry.CHALLENGER)) == aliases
    (run,) = _stage_runs(env, "churn-lab", "register")
    assert run.data.tags["mlfolio.interactive"] == "true" and run.info.status == "FINISHED"

    # The user says so: then an interactive run reaches the registry. It registers the
    # candidate, unless an earlier test of this module registered the same model already
    # (then that version stands for it); a second time it is always that version.
    asked = {"params_file": str(params), "overrides": {"registry.interactive_writes": True}}
    pm.execute_notebook(
        str(notebook), str(tmp_path / "out2.ipynb"), progress_bar=False, parameters=asked
    )
    reg = json.loads((folder / "register.json").read_text())
    assert "interactive run" not in (reg["why_not_promoted"] or "")
    if reg["registered"]:
        assert env.alias(registry.CHALLENGER) == reg["version"]
    else:
        assert reg["duplicate_of"] == reg["version"] is not None
    versions = len(env.client().search_model_versions(f"name = '{MODEL}'"))
    pm.execute_notebook(
        str(notebook), str(tmp_path / "out3.ipynb"), progress_bar=False, parameters=asked
    )
    again = json.loads((folder / "register.json").read_text())
    assert again["registered"] is False and again["duplicate_of"] == reg["version"]
    assert len(env.client().search_model_versions(f"name = '{MODEL}'")) == versions


@pytest.mark.slow
def test_failed_interactive_stage_names_the_missing_stage_and_ends_failed(
    env, tmp_path, monkeypatch
):
    from papermill.exceptions import PapermillExecutionError

    params = _interactive(env, tmp_path, monkeypatch, "churn-lab-empty")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "05_evaluate.ipynb"
    with pytest.raises(PapermillExecutionError) as failed:
        pm.execute_notebook(
            str(notebook),
            str(tmp_path / "out.ipynb"),
            parameters={"params_file": str(params)},
            progress_bar=False,
        )
    assert (
        "data/valid.parquet is missing: run the preprocess stage (02_preprocess.ipynb) "
        "first" in failed.value.evalue
    )
    (run,) = _stage_runs(env, "churn-lab-empty", "evaluate")
    assert run.info.status == "FAILED" and run.data.tags["mlfolio.interactive"] == "true"


# -- the stage functions called directly, without papermill (default suite) -------------------
UNIT_MODEL = "churn-stage-units"


class Stages:
    """One run folder and MLflow store; ``run(stage, fn)`` does what a stage notebook does
    (open the stage, call, finish) without papermill."""

    def __init__(self, root: Path):
        raw = deep_update(deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL), FAST)
        raw = deep_update(
            raw,
            {
                "data": {"uri": str(CHURN_CSV)},
                "registry": {"model_name": UNIT_MODEL},
                "tracking": tracking_section(root),
            },
        )
        self.root = root
        self.params = root / "params.yaml"
        self.params.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.run_dir = root / "run"

    def run(
        self, stage: str, fn, run_dir: Path | None = None, parent_run_id: str = "", **overrides
    ):
        from mlfolio.context import open_stage

        ctx = open_stage(
            stage,
            str(self.params),
            str(run_dir or self.run_dir),
            parent_run_id,
            overrides=overrides or None,
        )
        try:
            return ctx, fn(ctx)
        finally:
            ctx.finish()


@pytest.fixture(scope="module")
def split_run(tmp_path_factory) -> tuple[Stages, dict]:
    """ingest and preprocess, run once for the module."""
    from mlfolio import stages

    units = Stages(tmp_path_factory.mktemp("stage-units"))
    _, (df, info) = units.run("ingest", stages.ingest)
    ctx, parts = units.run("preprocess", stages.preprocess)
    return units, {"df": df, "info": info, "parts": parts, "ctx": ctx}


@pytest.fixture(scope="module")
def registered_run(split_run) -> tuple[Stages, dict]:
    """train (logreg), tune (disabled), evaluate and register on top of ``split_run``."""
    from mlfolio import stages

    units, out = split_run
    _, out["baselines"] = units.run("train", stages.train_baselines)
    _, out["tuned"] = units.run("tune", stages.tune_model)
    out["evaluate_ctx"], out["evaluated"] = units.run("evaluate", stages.evaluate_candidate)
    out["register_ctx"], out["registered"] = units.run("register", stages.register_model)
    return units, out


def test_ingest_and_preprocess_write_the_snapshot_and_stratified_splits(split_run):
    import mlflow
    import pandas as pd

    from mlfolio import data, features, rowkeys, stages

    units, out = split_run
    df, info, parts, ctx = out["df"], out["info"], out["parts"], out["ctx"]
    assert info["source_rows"] == len(df) == 4000 and info["dropped_missing_target"] == 0
    snapshot = pd.read_parquet(units.run_dir / stages.SNAPSHOT)
    assert data.content_hash(snapshot) == info["data_hash"]
    assert json.loads((units.run_dir / "ingest.json").read_text())["data_hash"] == info["data_hash"]
    # split.method hash: each row's part from its id's hash, the configured shares up to
    # sampling noise (rowkeys is the independent path to the same assignment)
    sizes = {name: len(part) for name, part in parts.items()}
    where = rowkeys.hash_assignment(rowkeys.row_keys(df, ctx.cfg.schema), ctx.cfg.split)
    assert sizes == {name: int((where == name).sum()) for name in sizes}
    assert sizes["test"] == pytest.approx(800, abs=3 * (4000 * 0.2 * 0.8) ** 0.5)
    rate = data.target_vector(df, ctx.cfg.schema).mean()
    for part in parts.values():
        noise = 3 * (rate * (1 - rate) / len(part)) ** 0.5
        assert data.target_vector(part, ctx.cfg.schema).mean() == pytest.approx(rate, abs=noise)
    # the seen rows' keys, kept from the split's own: those of the train and valid rows
    import numpy as np

    from mlfolio import lineage, products

    written = lineage.read_keys(units.run_dir / products.SEEN_ROWS.path)
    np.testing.assert_array_equal(written, lineage.seen_keys(parts, ctx.cfg.schema))
    reread = stages.load_splits(ctx)
    for name, part in parts.items():
        pd.testing.assert_frame_equal(reread[name], part)
    # read as categories (train, tune): the same text, and the same fitted model
    from mlfolio import train
    from mlfolio.stages.training import _as_read

    schema = ctx.cfg.schema
    as_cats = stages.load_splits(ctx, ("train", "valid"), categories=True)
    assert all(
        isinstance(as_cats["train"][c].dtype, pd.CategoricalDtype)
        for c in schema.categorical
        if parts["train"][c].dtype == object
    )
    for name in ("train", "valid"):
        pd.testing.assert_frame_equal(_as_read(as_cats[name]), part := parts[name])
        assert data.target_vector(as_cats[name], schema).equals(data.target_vector(part, schema))
    params = {"n_estimators": 20, "max_depth": 3}
    scores = [
        train.predict_scores(
            train.fit(schema, "xgboost", params, rows["train"], 0, ctx.cfg.features),
            rows["valid"],
            schema,
        )
        for rows in (parts, as_cats)
    ]
    assert (scores[0] == scores[1]).all()
    written = json.loads((units.run_dir / "preprocess.json").read_text())
    assert written["splits"] == features.split_summary(parts, ctx.cfg.schema).to_dict(
        orient="index"
    )
    run = mlflow.get_run(ctx.mlflow_run_id)
    assert run.data.metrics["train_rows"] == sizes["train"] and run.info.status == "FINISHED"
    assert run.data.params["split.test_size"] == str(ctx.cfg.split.test_size)


def test_train_evaluate_and_register_without_papermill(registered_run):
    from mlfolio import registry, stages, views

    units, out = registered_run
    assert list(out["baselines"].index) == ["logreg"]
    assert out["baselines"].loc["logreg", "roc_auc"] > 0.8
    assert out["tuned"] == (None, {"enabled": False})
    ev = out["evaluated"]
    assert ev["candidate"]["name"] == "logreg" and ev["champion"] is None
    assert ev["gate"]["passed"] and ev["candidate"]["test"]["roc_auc"] > 0.8
    y, scores = stages.test_scores(out["evaluate_ctx"])
    test_rows = out["evaluate_ctx"].read_parquet(stages.SPLITS["test"]).shape[0]
    assert len(y) == test_rows and list(scores) == ["candidate"]
    reg = out["registered"]
    assert reg["registered"] and reg["version"] == "1" and reg["promoted"]
    assert registry.get_alias(UNIT_MODEL, registry.CHAMPION).version == "1"
    history = views.alias_history_table(out["register_ctx"])
    assert history["alias"].tolist() == [registry.CHALLENGER, registry.CHAMPION]


def test_evaluate_scores_the_champion_at_its_own_threshold(registered_run, tmp_path):
    from mlfolio import evaluate, stages

    units, out = registered_run
    v1_threshold = out["evaluated"]["threshold"]  # max_f1 on validation; register tagged v1
    run_dir = tmp_path / "again"
    shutil.copytree(units.run_dir, run_dir)
    ctx, ev = units.run(
        "evaluate", stages.evaluate_candidate, run_dir=run_dir, **{"evaluation.threshold": 0.3}
    )
    assert ev["threshold"] == 0.3 and ev["candidate"]["test"]["threshold"] == 0.3
    champion = ev["champion"]
    assert champion["version"] == "1" and abs(v1_threshold - 0.3) > 0.01
    assert champion["test"]["threshold"] == pytest.approx(v1_threshold, abs=1e-6)
    y, scores = stages.test_scores(ctx)
    own = evaluate.classification_metrics(y, scores["champion"], v1_threshold)
    for metric in ("precision", "recall", "f1", "accuracy"):
        assert champion["test"][metric] == pytest.approx(own[metric]), metric
    written = json.loads((run_dir / "evaluate.json").read_text())["champion"]
    assert written["test"]["threshold"] == pytest.approx(v1_threshold, abs=1e-6)


def test_evaluate_compares_with_the_champion_only_on_rows_it_never_saw(registered_run, tmp_path):
    """Test rows champion v1 trained on (planted here: 150 of its train rows added to the
    test split) are left out of the comparison, counted, and the gate needs
    gate.min_unseen_rows of the rest; evaluation.recent_rows adds the out-of-time set."""
    import numpy as np
    import pandas as pd

    from mlfolio import evaluate, lineage, rowkeys, stages

    units, out = registered_run
    run_dir = tmp_path / "overlap"
    shutil.copytree(units.run_dir, run_dir)
    test, train = out["parts"]["test"], out["parts"]["train"]
    planted = pd.concat([train.head(150), test], ignore_index=True)
    planted.to_parquet(run_dir / stages.SPLITS["test"], index=False)
    schema = out["ctx"].cfg.schema
    recent = test.sample(300, random_state=0)
    recent_file = lineage.write_keys(
        tmp_path / "recent.parquet",
        rowkeys.row_keys(pd.concat([recent, train.head(20)]), schema),  # 20 seen: not counted
    )
    ctx, ev = units.run(
        "evaluate",
        stages.evaluate_candidate,
        run_dir=run_dir,
        **{"evaluation.recent_rows": str(recent_file), "gate.min_unseen_rows": 1000},
    )
    assert ev["champion_overlap"]["found"] == ev["champion_overlap"]["excluded"] == 150
    assert ev["champion_overlap"]["remaining"] == 0
    assert ev["champion_overlap"]["test_rows"] == len(planted)
    assert ev["rows_unseen_by_champion"] == len(test)
    y = (planted[schema.target] == schema.positive_label).to_numpy().astype(int)
    _, scores = stages.test_scores(ctx)
    fair = np.arange(len(planted)) >= 150
    unseen = ev["row_sets"]["unseen_test"]
    assert unseen["rows"] == len(test)
    assert unseen["champion_roc_auc"] == pytest.approx(
        evaluate.classification_metrics(y[fair], scores["champion"][fair])["roc_auc"]
    )
    assert ev["champion"]["test_rows"] == len(test)
    assert ev["champion"]["test"]["roc_auc"] == pytest.approx(unseen["champion_roc_auc"])
    # its own training rows flatter the champion: on all rows it would look better
    flattered = evaluate.classification_metrics(y, scores["champion"])["roc_auc"]
    assert flattered > unseen["champion_roc_auc"]
    assert ev["recent_rows"] == {
        "file": str(recent_file),
        "rows": 320,
        "in_test": 320,
        "unseen_by_both": 300,
    }
    assert ev["row_sets"]["out_of_time"]["rows"] == 300
    # 300 out-of-time rows < gate.min_unseen_rows 1000: the random unseen rows decide,
    # and they are too few too: refused, naming the key and the numbers
    assert ev["decided_by"] == "unseen_test" and not ev["gate"]["passed"]
    assert (
        f"FAIL compared with champion v1 on {len(test)} test rows the champion never saw "
        "(150 test rows it trained or chose its threshold on left out): needs "
        "gate.min_unseen_rows 1000"
    ) in ev["gate"]["reasons"]
    ctx, ev = units.run(
        "evaluate",
        stages.evaluate_candidate,
        run_dir=run_dir,
        **{"evaluation.recent_rows": str(recent_file), "gate.min_unseen_rows": 300},
    )
    assert ev["decided_by"] == "out_of_time" and ev["comparison"]["rows"] == 300
    assert any(
        r.startswith("PASS compared with champion v1 on 300 out-of-time rows")
        for r in ev["gate"]["reasons"]
    )


def test_champion_threshold_falls_back_and_says_so(registered_run):
    from mlflow.tracking import MlflowClient

    from mlfolio.stages import explaining

    units, out = registered_run
    ref = registry.get_version(UNIT_MODEL, "1")
    tagged = out["evaluated"]["threshold"]
    assert explaining.champion_threshold(ref, 0.3) == (
        pytest.approx(tagged, abs=1e-6),
        "tag mlfolio.threshold",
        True,
    )
    client = MlflowClient()
    client.delete_model_version_tag(UNIT_MODEL, "1", registry.THRESHOLD_TAG)
    try:
        # an older version without the tag: the run folder that registered it knows
        value, source, known = explaining.champion_threshold(ref, 0.3)
        assert known and value == pytest.approx(tagged) and source.startswith("evaluate.json of")
        # a version no run folder speaks for: the candidate's threshold, said plainly
        stranger = registry.ModelRef(ref.name, ref.version, "another-run", ref.source)
        value, source, known = explaining.champion_threshold(stranger, 0.3)
        assert (value, known) == (0.3, False)
        assert source.startswith("unknown (version 1 has no mlfolio.threshold tag")
    finally:
        client.set_model_version_tag(UNIT_MODEL, "1", registry.THRESHOLD_TAG, f"{tagged:.6f}")


def test_register_completes_the_model_card_and_links_it_from_the_version(registered_run):
    from mlflow.tracking import MlflowClient

    units, out = registered_run
    reg = out["registered"]
    card = (units.run_dir / "model_card.md").read_text()
    assert card.startswith(f"# Model card: {UNIT_MODEL} version 1")
    for heading in ("Intended use", "Data", "Metrics", "Threshold", "Segments", "Limitations"):
        assert f"\n## {heading}\n" in card, heading
    ingest = json.loads((units.run_dir / "ingest.json").read_text())
    assert ingest["data_hash"] in card and "4,000" in card
    ev = out["evaluated"]
    assert f"**{ev['threshold']:.4f}**" in card
    low = ev["intervals"]["metrics"]["roc_auc"]["low"]
    assert f"| roc_auc | {ev['candidate']['test']['roc_auc']:.4f} | {low:.4f} … " in card
    assert "contract = Month-to-month" in card and "| tenure |" in card
    assert ev["candidate"]["model_uri"] in card and str(units.run_dir) in card
    assert reg["model_card"] == f"runs:/{ev['candidate']['run_id']}/model_card/model_card.md"
    version = MlflowClient().get_model_version(UNIT_MODEL, "1")
    assert version.tags["mlfolio.model_card"] == reg["model_card"]
    assert reg["model_card"] in version.description
    import mlflow

    logged = mlflow.artifacts.download_artifacts(reg["model_card"])
    assert Path(logged).read_text() == card


def test_register_with_require_approval_leaves_the_version_pending(registered_run, tmp_path):
    """registry.require_approval: the gate passed, but the version gets @pending-approval
    and register.json, the card and the deploy stage say so; `mlfolio approve` then moves
    champion and writes the decision into the run folder."""
    import mlflow

    from mlfolio import approval, cli, deploy, stages
    from mlfolio.pipeline import gate_status

    units, _ = registered_run
    run_dir = tmp_path / "approval"
    shutil.copytree(units.run_dir, run_dir)
    model = "churn-approval-units"  # no champion yet: the copied gate passed against none
    knobs = {"registry.model_name": model, "registry.require_approval": True}
    _, reg = units.run("register", stages.register_model, run_dir=run_dir, **knobs)
    assert reg["version"] == "1" and not reg["promoted"] and reg["pending_approval"]
    assert reg["why_not_promoted"].startswith(
        f"pending approval (registry.require_approval): `mlfolio approve {model} 1 --by NAME`"
    )
    assert reg["champion"] is None and reg["approval"]["status"] == "pending"
    written = json.loads((run_dir / "register.json").read_text())
    assert written["pending_approval"] and written["promoted"] is False
    assert registry.get_alias(model, registry.CHAMPION) is None
    assert registry.get_alias(model, approval.PENDING).version == "1"
    card = (run_dir / "model_card.md").read_text()
    assert "**pending approval**" in card and "\n## Approval\n" in card
    # deploy ships the champion: there is none, and a pending version is never deployed
    _, shipped = units.run("deploy", stages.deploy_model, run_dir=run_dir, **knobs)
    why = f"no {model}@champion yet: version 1 is pending approval (`mlfolio approve {model} 1"
    assert shipped["model"].startswith(f"nothing deployed: {why}") and not shipped["targets"]
    written = json.loads((run_dir / "deploy.json").read_text())
    assert written["version"] is None and written["why_not_deployed"].startswith(why)
    with pytest.raises(deploy.DeployError, match="deploy.alias: 'pending-approval' is a version"):
        units.run(
            "deploy",
            stages.deploy_model,
            run_dir=run_dir,
            **knobs,
            **{"deploy.alias": approval.PENDING},
        )

    argv = ["approve", model, "1", "--by", "carol", "--note", "segments fine"]
    assert cli.main([*argv, "--params", str(units.params)]) == 0
    assert registry.get_alias(model, registry.CHAMPION).version == "1"
    decision = gate_status.read_decision(run_dir)
    assert decision["action"] == "approve" and decision["by"] == "carol"
    local = (run_dir / "model_card.md").read_text()
    assert "- **Approved** by carol at " in local and ": segments fine" in local
    assert "**Pending approval**" not in local
    logged = mlflow.artifacts.download_artifacts(reg["model_card"], dst_path=str(tmp_path))
    assert Path(logged).read_text() == local  # the card in MLflow says the same
    tags = MlflowClient().get_model_version(model, "1").tags
    assert tags[approval.STATUS_TAG] == "approved"


def test_deploy_stage_ships_each_target_through_deploy_targets(registered_run):
    from mlfolio import stages, views

    units, _ = registered_run
    _, result = units.run("deploy", stages.deploy_model)
    k8s = result["targets"]["kubernetes"]
    assert result["model"] == f"{UNIT_MODEL} v1 (@champion)" and k8s["status"] == "written"
    assert k8s["outcome"] == "manifests written (not applied)"  # nothing was applied
    out = units.run_dir / "deploy" / "kubernetes"
    for name in ("kubernetes.yaml", "servicemonitor.yaml", "prometheusrule.yaml"):
        assert (out / name).is_file()
    assert "PrometheusRule" in k8s["resources"]  # the run's monitoring.alerts, validated
    written = json.loads((units.run_dir / "deploy.json").read_text())
    assert written["targets"]["kubernetes"]["status"] == "written"
    assert views.deploy_table(result).loc["kubernetes", "status"] == (
        "manifests written (not applied)"
    )


def test_deploy_stage_names_a_target_missing_from_deploy_targets(registered_run, monkeypatch):
    from mlfolio import deploy, stages

    units, _ = registered_run
    # A copy without it: deleting from the shared dict would re-add the key at its end on
    # undo and reorder deploy.TARGETS for the tests after this one.
    others = {n: f for n, f in deploy.TARGETS.items() if n != "kubernetes"}
    monkeypatch.setattr(deploy, "TARGETS", others)
    with pytest.raises(
        deploy.DeployError,
        match="kubernetes: deploy.targets: unknown target 'kubernetes'; "
        "expected one of local, lambda, sagemaker",
    ):
        units.run("deploy", stages.deploy_model)
    written = json.loads((units.run_dir / "deploy.json").read_text())
    assert written["targets"]["kubernetes"]["status"] == "failed"


def test_monitor_stage_publishes_drift_json_for_the_server_of_the_log(registered_run):
    import dataclasses

    import numpy as np
    import pandas as pd

    from mlfolio import predlog, stages

    units, out = registered_run
    schema = out["ctx"].cfg.schema
    rows = out["parts"]["test"].copy()
    rows["monthlycharges"] = rows["monthlycharges"] * 1.5 + 20  # a price rise
    Column = dataclasses.make_dataclass("Column", ["name", "kind"])
    columns = [Column(c, "double") for c in schema.numeric] + [
        Column(c, "string") for c in schema.categorical
    ]
    values = {
        c: [None if pd.isna(v) else float(v) for v in pd.to_numeric(rows[c], errors="coerce")]
        for c in schema.numeric
    }
    values.update({c: rows[c].astype(str).tolist() for c in schema.categorical})
    log_dir = units.root / "prediction-log"
    with predlog.PredictionLog(log_dir, columns) as log:
        log.append(
            values,
            np.full(len(rows), 0.5),
            request_id="unit",
            model_name=UNIT_MODEL,
            model_version="1",
            variant="champion",
            threshold=0.5,
            entity_id=rows[schema.id_column].tolist(),
        )
    monitor_dir = units.root / "monitor-run"
    _, result = units.run(
        "monitor",
        stages.monitor_model,
        run_dir=monitor_dir,
        **{"monitoring.prediction_log": str(log_dir)},
    )
    assert result["current"]["kind"] == "prediction_log"
    assert result["current"]["rows"] == len(rows)
    assert "monthlycharges" in result["drifted_columns"]
    ours = json.loads((monitor_dir / "drift.json").read_text())
    published = json.loads((log_dir / "drift.json").read_text())
    # The run folder's copy also names the stage and its MLflow run; the rest is the same.
    assert published == {k: v for k, v in ours.items() if k not in ("stage", "mlflow_run_id")}
    assert published["model"]["version"] == "1" and ours["stage"] == "monitor"
    assert (monitor_dir / "drift.prom").is_file()
    assert (monitor_dir / stages.DRIFT_REPORT).stat().st_size > 10_000


def test_tune_stage_warm_starts_from_the_champion_subsamples_and_refits_early_stopped(
    registered_run, tmp_path
):
    """Champion v1 is a logreg: tuning logreg starts from its C (trial 0); tuning xgboost
    skips the warm start and says why, tunes on a sample, and refits on every row with the
    rounds early stopping chose."""
    import pandas as pd

    from mlfolio import stages, tracking, views
    from mlfolio.errors import StageError

    units, _ = registered_run
    champion = registry.get_alias(UNIT_MODEL, registry.CHAMPION)
    champion_c = float(MlflowClient().get_run(champion.run_id).data.params["C"])
    run_dir = tmp_path / "logreg"
    shutil.copytree(units.run_dir, run_dir)
    on = {"tuning.enabled": True, "tuning.n_trials": 3, "tuning.timeout": None}
    _, (study, info) = units.run(
        "tune", stages.tune_model, run_dir=run_dir, **on, **{"tuning.model": "logreg"}
    )
    assert info["warm_start"] == {"version": "1", "params": {"C": champion_c}}
    first = study.trials[0]
    assert first.params == {"C": champion_c}
    assert first.user_attrs["enqueued"] == f"champion {UNIT_MODEL} v1"
    assert "champion version 1's parameters" in views.tune_markdown(info).data
    assert json.loads((run_dir / "tune.json").read_text())["warm_start"]["version"] == "1"

    run_dir = tmp_path / "xgboost"
    shutil.copytree(units.run_dir, run_dir)
    _, (study, info) = units.run(
        "tune",
        stages.tune_model,
        run_dir=run_dir,
        **on,
        **{"tuning.model": "xgboost", "tuning.subsample_rows": 1000},
    )
    # not the champion's (another kind): the train stage's model, over xgboost's defaults
    baseline = {
        "n_estimators": 300,
        "learning_rate": 0.05,
        "max_depth": 4,
        "min_child_weight": 1.0,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "reg_lambda": 1.0,
    }
    assert info["warm_start"] == {
        "baseline": "training.xgboost",
        "params": baseline,
        "because": f"champion {UNIT_MODEL} v1 is a logreg model, not xgboost",
    }
    assert study.trials[0].params == baseline
    assert study.trials[0].user_attrs["enqueued"] == "baseline training.xgboost"
    assert "the train stage's model (`training.xgboost`); not the champion" in (
        views.tune_markdown(info).data
    )
    train_rows = len(pd.read_parquet(run_dir / stages.SPLITS["train"]))
    assert (info["rows_tuned_on"], info["rows_refitted_on"]) == (1000, train_rows)
    rounds = study.best_trial.user_attrs["n_estimators"]
    assert info["early_stopped_n_estimators"] == rounds
    tuned = info["models"]["xgboost-tuned"]
    assert tuned["params"]["n_estimators"] == rounds
    booster = tracking.load_model(tuned["model_uri"]).named_steps["model"]
    assert booster.n_estimators == rounds and booster.get_booster().num_boosted_rounds() == rounds
    written = json.loads((run_dir / "tune.json").read_text())
    assert (written["rows_tuned_on"], written["rows_refitted_on"]) == (1000, train_rows)
    # off: no champion lookup, said so
    _, (_, info) = units.run(
        "tune",
        stages.tune_model,
        run_dir=tmp_path / "xgboost",
        **{**on, "tuning.model": "xgboost", "tuning.warm_start": False, "tuning.n_trials": 4},
    )
    assert info["warm_start"] == {"skipped": "tuning.warm_start is off"}
    # 'baseline' (what reproduce pins when the original started from it): no lookup
    shutil.copytree(units.run_dir, tmp_path / "baseline")
    _, (study, info) = units.run(
        "tune",
        stages.tune_model,
        run_dir=tmp_path / "baseline",
        **{**on, "tuning.model": "logreg", "tuning.warm_start": "baseline", "tuning.n_trials": 4},
    )
    assert info["warm_start"] == {"baseline": "training.logreg", "params": {"C": 1.0}}
    # a pinned version (what mlfolio reproduce sets): that version, or a clear error
    logreg = {**on, "tuning.model": "logreg"}
    shutil.copytree(units.run_dir, tmp_path / "pinned")
    _, (_, info) = units.run(
        "tune",
        stages.tune_model,
        run_dir=tmp_path / "pinned",
        **{**logreg, "tuning.warm_start": 1},
    )
    assert info["warm_start"]["version"] == "1"
    with pytest.raises(StageError, match="tuning.warm_start: churn-stage-units has no version 9"):
        units.run(
            "tune",
            stages.tune_model,
            run_dir=tmp_path / "pinned",
            **{**logreg, "tuning.warm_start": 9},
        )


def test_a_retried_register_takes_over_the_version_its_failed_attempt_created(
    registered_run, tmp_path
):
    """A register attempt that died once the version existed (its kernel killed past
    stages.register.timeout_s, a lost pod) left it without aliases: the retry, in the same
    pipeline run, takes that version over (one version, then challenger and champion); a
    further retry changes nothing. Another pipeline run with the same model still gets
    the existing version as a duplicate, as before."""
    from mlflow.tracking import MlflowClient

    from mlfolio import registry, stages, tracking

    units, _ = registered_run
    model = "churn-stage-retry"
    run_dir = tmp_path / "retry"
    shutil.copytree(units.run_dir, run_dir)
    ctx, ev = units.run(
        "evaluate", stages.evaluate_candidate, run_dir=run_dir, **{"registry.model_name": model}
    )
    assert ev["gate"]["passed"] and ev["champion"] is None
    parent = tracking.start_parent_run(ctx.cfg, run_dir)
    uri, digest = ev["candidate"]["model_uri"], registry.model_hash(ev["candidate"]["model_uri"])
    run_tags = {registry.MODEL_HASH_TAG: digest, registry.PIPELINE_RUN_TAG: parent}
    died = registry.register(model, uri, ev["candidate"]["run_id"], run_tags)  # attempt 1

    def attempt(pipeline_run: str) -> dict:
        over = {"registry.model_name": model}
        return units.run("register", stages.register_model, run_dir, pipeline_run, **over)[1]

    def versions() -> list[str]:
        return sorted(
            str(v.version) for v in MlflowClient().search_model_versions(f"name = '{model}'")
        )

    retry = attempt(parent)
    assert versions() == [died.version] == ["1"]
    assert (retry["registered"], retry["version"], retry["duplicate_of"]) == (True, "1", None)
    assert retry["promoted"] and registry.get_alias(model, registry.CHAMPION).version == "1"
    assert [e["alias"] for e in retry["alias_events"]] == [registry.CHALLENGER, registry.CHAMPION]

    again = attempt(parent)  # the retry's kernel died after all that: a third attempt
    assert versions() == ["1"] and again["registered"] and again["promoted"]
    assert again["alias_events"] == [] and again["why_not_promoted"] is None

    other = attempt(tracking.start_parent_run(ctx.cfg, tmp_path / "another-run"))
    assert versions() == ["1"] and other["duplicate_of"] == "1" and not other["registered"]
