"""The register stage under a promotion race, and stage notebooks run by hand (no run
folder): on the real Telco data, one small pipeline run shared by the module."""

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

pytestmark = pytest.mark.slow
QUIET = {"echo": lambda line: None}
MODEL = "churn-race"
FAST = {"training": {"models": ["logreg"]}, "tuning": {"enabled": False},
        "deploy": {"targets": ["kubernetes"]}, "registry": {"model_name": MODEL}}
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
        raw = deep_update(raw, {"data": {"uri": str(CHURN_CSV)},
                                "tracking": tracking_section(root / "tracking")})
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
    other = registry.register(MODEL, ev["candidate"]["model_uri"], ev["candidate"]["run_id"],
                              {})
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


def test_interactive_register_changes_nothing_unless_asked(env, tmp_path, monkeypatch):
    params = _interactive(env, tmp_path, monkeypatch, "churn-lab")
    folder = tmp_path / "runs" / "interactive-churn-lab"
    folder.mkdir(parents=True)
    for name in ("ingest.json", "evaluate.json"):
        shutil.copy(env.run_dir / name, folder / name)
    versions = len(env.client().search_model_versions(f"name = '{MODEL}'"))
    aliases = (env.alias(registry.CHAMPION), env.alias(registry.CHALLENGER))
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "06_register.ipynb"

    pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                        parameters={"params_file": str(params)}, progress_bar=False)
    reg = json.loads((folder / "register.json").read_text())
    assert reg["registered"] is False and "interactive run" in reg["why_not_promoted"]
    assert len(env.client().search_model_versions(f"name = '{MODEL}'")) == versions
    assert (env.alias(registry.CHAMPION), env.alias(registry.CHALLENGER)) == aliases
    (run,) = _stage_runs(env, "churn-lab", "register")
    assert run.data.tags["mlfolio.interactive"] == "true" and run.info.status == "FINISHED"

    # The user says so: then an interactive run registers (champion only through the gate).
    pm.execute_notebook(str(notebook), str(tmp_path / "out2.ipynb"), progress_bar=False,
                        parameters={"params_file": str(params),
                                    "overrides": {"registry.interactive_writes": True}})
    reg = json.loads((folder / "register.json").read_text())
    assert reg["registered"] is True and env.alias(registry.CHALLENGER) == reg["version"]


def test_failed_interactive_stage_names_the_missing_stage_and_ends_failed(
        env, tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    params = _interactive(env, tmp_path, monkeypatch, "churn-lab-empty")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "05_evaluate.ipynb"
    with pytest.raises(PapermillExecutionError) as failed:
        pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                            parameters={"params_file": str(params)}, progress_bar=False)
    assert "data/train.parquet is missing: run the preprocess stage (02_preprocess.ipynb) " \
           "first" in failed.value.evalue
    (run,) = _stage_runs(env, "churn-lab-empty", "evaluate")
    assert run.info.status == "FAILED" and run.data.tags["mlfolio.interactive"] == "true"
