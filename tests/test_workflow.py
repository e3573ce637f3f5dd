"""The GitHub Actions workflow users copy (.github/workflows/mlfolio.yml), checked offline:
GitHub's workflow schema, zizmor's security audits, and every command it runs exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlfolio import cli, config

from .conftest import ROOT

WORKFLOW = ROOT / ".github/workflows/mlfolio.yml"
BIN = Path(sys.executable).parent


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _scripts() -> list[str]:
    """Every ``run:`` script, continuation lines joined."""
    steps = [s for job in _workflow()["jobs"].values() for s in job["steps"]]
    return [s["run"].replace("\\\n", " ") for s in steps if "run" in s]


def _commands(program: str) -> list[list[str]]:
    """The argv of each line that calls ``program`` (``$VAR`` and ``"$VAR"`` kept as words)."""
    found = []
    for script in _scripts():
        for line in script.splitlines():
            if not re.search(rf"(^|[\s/]){program}\s", line):
                continue  # e.g. a line of an inline python3 -c script
            words = shlex.split(re.split(r"\|| > |;|&&", line)[0])  # the command alone
            for i, word in enumerate(words):
                if word == program or word.endswith(f"/{program}"):
                    found.append(words[i + 1 :])
    return found


def test_the_workflow_matches_githubs_schema():
    proc = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOW],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing():
    proc = subprocess.run(
        [BIN / "zizmor", "--offline", "--no-progress", WORKFLOW.parent],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


def test_least_privilege_pinned_actions_and_no_persisted_credentials():
    wf = _workflow()
    assert wf["permissions"] == {}
    for name, job in wf["jobs"].items():
        assert "permissions" in job, name
        assert not any(v == "write" for v in (job["permissions"] or {}).values()), name
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    text = WORKFLOW.read_text()
    # secrets only through the secret store
    assert not re.search(
        r"(?i)(password|token|secret)\s*[:=]\s*['\"]?[\w-]{8,}", text.replace("secrets.", "")
    )


def test_deploy_runs_only_after_gate_status_or_an_approval_said_yes():
    jobs = _workflow()["jobs"]
    assert jobs["deploy"]["needs"] == ["pipeline", "approval"]
    assert jobs["deploy"]["if"] == (
        "${{ !cancelled() && (needs.pipeline.outputs.deploy == 'true' || "
        "needs.approval.outputs.deploy == 'true') }}"
    )
    gate = next(s for s in jobs["pipeline"]["steps"] if s.get("id") == "gate")
    assert (
        '.venv/bin/mlfolio gate-status "$run_dir" --json > gate.json || status=$?' in (gate["run"])
    )
    assert 'if [ "$status" -eq 0 ]; then\n  echo "deploy=true"' in gate["run"]
    assert jobs["pipeline"]["outputs"]["deploy"] == "${{ steps.gate.outputs.deploy }}"
    # an approval deploys only what its own deploy step re-ran for the approved champion
    approval = jobs["approval"]
    assert approval["outputs"]["deploy"] == "${{ steps.deploy.outputs.deploy }}"
    decide = next(s for s in approval["steps"] if s.get("name", "").startswith("Decide"))
    assert '"$DECISION" churn-classifier "$VERSION" --by "$GITHUB_ACTOR"' in decide["run"]
    assert approval["env"]["VERSION"] == "${{ inputs.approve_version }}"  # no injection
    assert "inputs.approve_version == ''" in jobs["pipeline"]["if"]


def test_every_mlfolio_command_parses_and_its_overrides_validate():
    calls = _commands("mlfolio")
    assert {c[0] for c in calls} == {"run", "monitor", "gate-status", "$DECISION", "approvals"}
    calls = [["approve", *c[1:]] if c[0] == "$DECISION" else c for c in calls]
    parser = cli._parser()
    for argv in calls:
        # placeholders for the values CI fills in from its variables
        argv = [re.sub(r"\$\w+", "/tmp/example", a) for a in argv]
        args = parser.parse_args(argv)  # an unknown subcommand or flag exits 2
        if hasattr(args, "param"):
            params = getattr(args, "params_file", None) or args.params  # approve: --params
            config.load(ROOT / params, config.parse_overrides(args.param))


def test_every_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = {c[0] for c in _commands("make")}
    assert used and used <= targets, used - targets


@pytest.mark.parametrize("job", ["test", "monitor", "pipeline"])
def test_run_folders_are_uploaded(job):
    steps = _workflow()["jobs"][job]["steps"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "ci-runs/" and upload["if"] == "${{ !cancelled() }}"
