"""The verdict lines ``mlfolio run`` ends with (pipeline.terminal), from a manifest as the
runner writes it (real runs are checked in tests/test_pipeline.py)."""

from __future__ import annotations

from mlfolio.pipeline import terminal


def test_a_refused_gate_states_the_requirement_it_missed(tmp_path):
    gate = {
        "passed": False,
        "reasons": [
            "PASS test ROC AUC 0.8392 >= 0.8",
            "FAIL ROC AUC gain over champion v1 -0.0027 (95% CI -0.0141 .. +0.0088): needs its "
            "lower bound above +0.0",
        ],
    }
    assert terminal.run_verdict({"gate": gate}, tmp_path) == [
        "gate:       NOT passed: ROC AUC gain over champion v1 -0.0027 (95% CI -0.0141 .. "
        "+0.0088): needs its lower bound above +0.0"
    ]
    passed = {"passed": True, "reasons": ["PASS test ROC AUC 0.84 >= 0.8", "PASS no champion yet"]}
    assert terminal.run_verdict({"gate": passed}, tmp_path) == [
        "gate:       passed: no champion yet"
    ]


def test_the_same_model_as_the_champion_says_so_not_a_zero_gain(tmp_path):
    gate = {
        "passed": False,
        "same_model_as": "1",
        "reasons": [
            "PASS test ROC AUC 0.8392 >= 0.8",
            "SAME model as champion v1 (identical model files, mlfolio.model_hash): no gain "
            "to measure, nothing to promote",
        ],
    }
    assert terminal.run_verdict({"gate": gate}, tmp_path) == [
        "gate:       same model as champion v1 (identical model files, mlfolio.model_hash): "
        "no gain to measure, nothing to promote"
    ]


def test_the_deployed_line_says_what_each_target_did_never_deployed_for_a_stopped_server(
    tmp_path,
):
    import json

    (tmp_path / "register.json").write_text(
        json.dumps({"alias_events": [{"alias": "champion", "version": "1"}], "champion": "1"})
    )
    manifest = {
        "gate": {"passed": True, "reasons": ["PASS no champion yet: nothing to beat"]},
        "model": {"model_name": "churn", "version": "1", "promoted": True, "champion": "1"},
        "stages": {"deploy": {"status": "succeeded"}},
        "deploy": {
            "version": "1",
            "alias": "champion",
            "targets": {
                "local": {"status": "checked", "url": "http://127.0.0.1:41234"},
                "kubernetes": {"status": "written"},
            },
        },
    }
    expected = (
        "deployed:   version 1 (@champion): local checked, then stopped; "
        "kubernetes manifests written (not applied)"
    )
    assert terminal.run_verdict(manifest, tmp_path)[-1] == expected
    # a deploy.json from before the targets said so: both were "deployed", neither was
    legacy = {t: {"status": "deployed"} for t in ("local", "kubernetes")}
    manifest["deploy"]["targets"] = legacy
    assert terminal.run_verdict(manifest, tmp_path)[-1] == expected
    manifest["deploy"]["targets"] = {
        "local": {"status": "serving", "url": "http://127.0.0.1:8080"},
        "lambda": {"status": "deployed"},
    }
    assert terminal.run_verdict(manifest, tmp_path)[-1] == (
        "deployed:   version 1 (@champion): local serving at http://127.0.0.1:8080; lambda deployed"
    )


def test_a_gate_that_held_back_register_and_deploy_says_so(tmp_path):
    """--engine kfp-local runs register and deploy inside dsl.If: when the gate does not
    pass they are skipped, and the verdict still names the model, champion and deploy."""
    manifest = {
        "gate": {"passed": False, "reasons": ["FAIL test ROC AUC 0.61 >= 0.8"]},
        "candidate": {"name": "logreg"},
        "stages": {
            "evaluate": {"status": "succeeded"},
            "register": {"status": "skipped", "reason": "the gate did not pass (dsl.If)"},
            "deploy": {"status": "skipped", "reason": "the gate did not pass (dsl.If)"},
        },
    }
    (tmp_path / "evaluate.json").write_text('{"champion": {"version": "3"}}')
    assert terminal.run_verdict(manifest, tmp_path) == [
        "gate:       NOT passed: test ROC AUC 0.61 >= 0.8",
        "model:      logreg not registered: register skipped (the gate did not pass (dsl.If))",
        "champion:   version 3 (unchanged)",
        "deployed:   nothing: deploy skipped (the gate did not pass (dsl.If))",
    ]


def test_a_version_pending_approval_holds_its_alias_and_nothing_is_deployed(tmp_path):
    import json

    events = [
        {"alias": "challenger", "version": "1"},
        {"alias": "pending-approval", "version": "1"},
    ]
    (tmp_path / "register.json").write_text(json.dumps({"alias_events": events}))
    why = "pending approval (registry.require_approval): `mlfolio approve churn 1 --by NAME`"
    nothing = "no churn@champion yet: version 1 is pending approval (`mlfolio approve churn 1`)"
    manifest = {
        "gate": {"passed": True, "reasons": ["PASS no champion yet: nothing to beat"]},
        "model": {
            "model_name": "churn",
            "version": "1",
            "promoted": False,
            "why_not_promoted": why,
            "pending_approval": True,
            "champion": None,
        },
        "stages": {"deploy": {"status": "succeeded"}},
        "deploy": {
            "version": None,
            "alias": "champion",
            "targets": {},
            "why_not_deployed": nothing,
        },
    }
    assert terminal.run_verdict(manifest, tmp_path)[1:] == [
        f"model:      churn version 1 (registered), holds @challenger, @pending-approval; "
        f"not promoted: {why}",
        "champion:   none: churn has no @champion",
        f"deployed:   nothing: {nothing}",
    ]
