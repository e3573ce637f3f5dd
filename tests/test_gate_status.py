"""``mlfolio gate-status``: the deploy decision read from a run's manifest, and its exit
codes. The manifests are written as the runner writes them: the gate and model summaries
through the products' own declarations, the file through manifest.Manifest (real runs
are checked in tests/test_pipeline.py and tests/test_interrupt.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlfolio import cli, products
from mlfolio.pipeline import STAGE_NAMES, gate_status
from mlfolio.pipeline.manifest import Manifest

PASSED = ["PASS test ROC AUC 0.8412 >= 0.8", "PASS no champion yet: nothing to beat"]
FAILED = [
    "PASS test ROC AUC 0.8392 >= 0.8",
    "FAIL ROC AUC gain over champion v1 -0.0027 (95% CI -0.0141 .. +0.0088): needs its lower "
    "bound above +0.0",
]


def _register(version: str, promoted: bool, why: str | None, champion: str | None) -> dict:
    doc = products.RegisterDoc(
        model_name="churn-classifier",
        version=version,
        model_uri=f"models:/churn-classifier/{version}",
        promoted=promoted,
        why_not_promoted=why,
        compared_against="1",
        champion=champion,
        alias_events=[],
    )
    return products.REGISTER.summary(doc)


def _write(run_dir: Path, **data) -> Path:
    """A training run's manifest: every stage succeeded unless ``stages`` says otherwise."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "experiment": "churn",
        "kind": "training",
        "run_dir": str(run_dir),
        "created": "2026-12-01T01:58:51+00:00",
        "stages": {name: {"status": "succeeded"} for name in STAGE_NAMES},
        "status": "succeeded",
        "interrupted": None,
        "failed_stage": None,
        "failed_cell": None,
    }
    record.update(data)
    Manifest(run_dir / "manifest.json", record).save()
    return run_dir


def _gate(reasons: list[str]) -> dict:
    verdict = products.GateVerdict(
        passed=all(r.startswith("PASS") for r in reasons), reasons=reasons
    )
    return verdict.model_dump(mode="json")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["gate-status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_passed_and_promoted_exits_0_with_the_facts_as_json(tmp_path, capsys):
    run = _write(tmp_path / "run", gate=_gate(PASSED), model=_register("2", True, None, "2"))
    code, out, err = _cli(capsys, str(run))
    assert code == 0
    assert out == f"{run}: gate passed; churn-classifier version 2 promoted to champion\n"
    code, out, err = _cli(capsys, str(run), "--json")
    assert code == 0 and json.loads(out) == {
        "status": "promoted",
        "exit_code": 0,
        "reason": "gate passed; churn-classifier version 2 promoted to champion",
        "gate_passed": True,
        "version": "2",
        "promoted": True,
        "champion": "2",
        "model_uri": "models:/churn-classifier/2",
        "run_dir": str(run),
    }
    assert "promoted to champion" in err  # the line stays readable in CI logs


def test_passed_not_promoted_is_1_unless_only_a_pass_is_required(tmp_path, capsys):
    model = _register("2", False, "registry.promote is false", "1")
    run = _write(tmp_path / "run", gate=_gate(PASSED), model=model)
    code, out, err = _cli(capsys, str(run))
    assert code == 1 and out == ""
    assert err == (f"mlfolio: {run}: gate passed but not promoted: registry.promote is false\n")
    code, out, _ = _cli(capsys, str(run), "--require", "passed")
    assert code == 0 and out == f"{run}: gate passed (not promoted: registry.promote is false)\n"
    # evaluate ran, register did not (--stages up to evaluate)
    run = _write(tmp_path / "no-register", gate=_gate(PASSED))
    verdict = gate_status.check(run)
    assert (verdict.exit_code, verdict.status) == (1, "not promoted")
    assert verdict.reason == "gate passed but not promoted: register did not run"
    assert gate_status.check(run, "passed").exit_code == 0


def test_failed_gate_exits_1_naming_the_failed_check(tmp_path, capsys):
    run = _write(
        tmp_path / "run", gate=_gate(FAILED), model=_register("2", False, "gate failed", "1")
    )
    code, out, err = _cli(capsys, str(run), "--json", "--require", "passed")
    assert code == 1
    doc = json.loads(out)
    assert doc["status"] == "not passed" and doc["gate_passed"] is False
    assert doc["promoted"] is False and doc["champion"] == "1" and doc["version"] == "2"
    assert err == f"mlfolio: {run}: gate not passed: {FAILED[1]}\n"
    # no gate at all: evaluate did not run
    run = _write(tmp_path / "no-gate", stages={"ingest": {"status": "succeeded"}})
    assert gate_status.check(run).reason == "no gate verdict: evaluate did not run"


@pytest.mark.parametrize(
    ("stale", "exit_code"),
    [
        ("evaluate", 1),  # a forced re-run left the gate's verdict from other parameters
        ("register", 1),  # the promotion was decided on other parameters
        ("deploy", 0),  # after the verdict: CI deploys what it allows itself
    ],
)
def test_a_stale_verdict_or_promotion_is_not_passed(tmp_path, stale, exit_code):
    stages = {name: {"status": "succeeded"} for name in STAGE_NAMES}
    stages[stale]["stale"] = [f"it ran with other parameters: {stale}"]
    run = _write(
        tmp_path / "stale", stages=stages, gate=_gate(PASSED), model=_register("2", True, None, "2")
    )
    verdict = gate_status.check(run)
    assert verdict.exit_code == exit_code
    assert (f"stage {stale} is stale" in verdict.reason) == (exit_code == 1)


SAME = (
    "SAME model as champion v1 (identical model files, mlfolio.model_hash): no gain to "
    "measure, nothing to promote"
)


def test_same_model_as_champion_exits_0_with_that_reason(tmp_path, capsys):
    gate = {**_gate([PASSED[0], SAME]), "passed": False, "same_model_as": "1"}
    model = _register("1", False, "same model as champion v1 (already champion)", "1")
    run = _write(tmp_path / "run", gate=gate, model=model)
    for require in ("promoted", "passed"):
        code, out, err = _cli(capsys, str(run), "--require", require)
        assert (code, err) == (0, "")
        assert out == f"{run}: same model as champion v1: nothing new to deploy, v1 stays\n"
    assert gate_status.check(run).status == "same model"
    # the same model below the bar (e.g. on other test rows) is still refused
    failing = ["FAIL test ROC AUC 0.7900: needs >= 0.8", SAME]
    run = _write(tmp_path / "below", gate={**_gate(failing), "same_model_as": "1"}, model=model)
    verdict = gate_status.check(run)
    assert verdict.exit_code == 1 and verdict.reason == f"gate not passed: {failing[0]}"


def test_failed_stage_exits_3_naming_it(tmp_path, capsys):
    stages = {name: {"status": "not run"} for name in STAGE_NAMES}
    stages.update(ingest={"status": "succeeded"}, preprocess={"status": "succeeded"})
    stages["train"] = {"status": "failed"}
    run = _write(
        tmp_path / "run", stages=stages, status="failed", failed_stage="train", failed_cell=5
    )
    code, out, err = _cli(capsys, str(run), "--require", "passed")
    assert code == 3 and out == ""
    assert err == f"mlfolio: {run}: run failed in stage train (cell 5)\n"


def test_interrupted_run_exits_3_naming_the_stage(tmp_path, capsys):
    interrupted = {
        "signal": "SIGTERM",
        "stage": "tune",
        "cell_index": 4,
        "resume_from": "tune",
        "at": "2026-12-01T02:00:00+00:00",
    }
    run = _write(tmp_path / "run", status="interrupted", interrupted=interrupted)
    code, out, err = _cli(capsys, str(run), "--json")
    assert code == 3 and json.loads(out)["status"] == "interrupted"
    assert err == (
        f"mlfolio: {run}: run interrupted by SIGTERM during stage tune; resume with --from tune\n"
    )
    # a runner killed with -9 leaves "running" behind
    stages = {"ingest": {"status": "succeeded"}, "preprocess": {"status": "running"}}
    run = _write(tmp_path / "killed", stages=stages, status="running")
    verdict = gate_status.check(run)
    assert verdict.exit_code == 3
    assert (
        verdict.reason == "run did not finish: status running (stage preprocess still says running)"
    )


def test_missing_folder_no_manifest_and_corrupt_manifest_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, out, err = _cli(capsys, str(missing))
    assert code == 2 and out == "" and err == f"mlfolio: {missing}: no such run folder\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, str(empty), "--json")
    assert code == 2 and "no manifest.json" in err and str(empty) in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text('{"status": "succ')
    code, _, err = _cli(capsys, str(corrupt))
    assert code == 2 and f"{corrupt / 'manifest.json'}: not valid JSON" in err
    (corrupt / "manifest.json").write_text("[1, 2]")
    code, _, err = _cli(capsys, str(corrupt))
    assert code == 2 and "not an mlfolio run manifest" in err


def test_a_monitor_run_has_no_gate(tmp_path, capsys):
    run = _write(tmp_path / "run", kind="monitor", stages={"monitor": {"status": "succeeded"}})
    code, _, err = _cli(capsys, str(run))
    assert code == 2 and "a monitor run, not a training run" in err


@pytest.mark.parametrize("require", ["promoted", "passed"])
def test_decide_is_pure(tmp_path, require):
    manifest = {"status": "succeeded", "stages": {}, "gate": _gate(PASSED), "model": {}}
    before = json.dumps(manifest)
    gate_status.decide(manifest, tmp_path, require)
    assert json.dumps(manifest) == before


def test_gate_status_reads_the_manifest_without_pandas(tmp_path):
    # CI asks after every run: the answer is a JSON file away, not a data stack's import
    import subprocess
    import sys

    run = _write(tmp_path / "run", gate=_gate(PASSED), model=_register("2", True, None, "2"))
    code = (
        "import sys\nfrom mlfolio import cli\n"
        f"assert cli.main(['gate-status', {str(run)!r}]) == 0\n"
        "print(sorted(m for m in ('pandas', 'mlflow', 'sklearn', 'papermill') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("[]")


def test_pending_approval_exits_4_until_approve_or_reject_decides(tmp_path, capsys):
    doc = products.RegisterDoc(
        model_name="churn-classifier",
        version="3",
        model_uri="models:/churn-classifier/3",
        promoted=False,
        why_not_promoted="pending approval (registry.require_approval)",
        pending_approval=True,
        approval={"status": "pending", "command": "mlfolio approve churn-classifier 3 --by NAME"},
        compared_against="1",
        champion="1",
        alias_events=[],
    )
    model = products.REGISTER.summary(doc)
    nothing = "no churn-classifier@champion yet: version 3 is pending approval"
    deploy = {"version": None, "alias": "champion", "targets": {}, "why_not_deployed": nothing}
    run = _write(tmp_path / "run", gate=_gate(PASSED), model=model, deploy=deploy)
    code, out, err = _cli(capsys, str(run))
    assert code == 4 and out == ""
    assert err == (
        f"mlfolio: {run}: gate passed; churn-classifier version 3 is pending approval "
        "(champion stays v1): mlfolio approve churn-classifier 3 --by NAME\n"
    )
    assert gate_status.check(run).status == "pending approval"
    code, out, _ = _cli(capsys, str(run), "--require", "passed")
    assert code == 0 and out.startswith(f"{run}: gate passed (gate passed; churn-classifier")
    page = _index(run)
    assert 'model <b>churn-classifier</b> version 3, <b id="pending-approval">' in page
    assert "champion stays v1 until someone runs <code>mlfolio approve churn-classifier 3" in page
    assert "registered as <b>challenger</b> only" not in page and "Not promoted" not in page
    assert f'<p id="deploy-none"><b>Nothing deployed:</b> {nothing}.</p>' in page
    # `mlfolio approve` wrote its decision into the run folder
    decision = {
        "action": "approve",
        "done": True,
        "version": "3",
        "by": "alice",
        "compared_against": "1",
    }
    (run / gate_status.APPROVAL_FILE).write_text(json.dumps({**decision, "at": "T", "note": "ok"}))
    code, out, err = _cli(capsys, str(run), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "approved" and doc["champion"] == "3"
    assert doc["reason"] == (
        "gate passed; churn-classifier version 3 approved by alice at T: ok: now champion"
    )
    assert "approved</span> by <b>alice</b> at T: ok; version 3 is champion (was v1)" in _index(run)
    # a decision about another version does not count; a rejection is a no
    (run / gate_status.APPROVAL_FILE).write_text(json.dumps({**decision, "version": "2"}))
    assert gate_status.check(run).exit_code == 4
    (run / gate_status.APPROVAL_FILE).write_text(json.dumps({**decision, "action": "reject"}))
    verdict = gate_status.check(run)
    assert (verdict.status, verdict.exit_code) == ("rejected", 1)
    assert "was rejected by alice" in verdict.reason


def _index(run: Path) -> str:
    from mlfolio.pipeline import report

    return report.write_index(run, Manifest.load(run).data).read_text()
