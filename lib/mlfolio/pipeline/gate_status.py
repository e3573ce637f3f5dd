"""``mlfolio gate-status RUN_DIR``: may CI deploy what this run produced?

Read from the run's ``manifest.json`` alone (no tracking server needed): the run's status,
the gate verdict evaluate recorded and register's promotion. :func:`decide` is pure; the
exit codes are CI's contract: 0 deploy (or: the candidate is the champion's own model,
which already serves; or: the version pending approval was approved), 1 do not (the run
finished, the gate or the promotion said no, or the approval was rejected), 3 the run did
not finish (failed or interrupted), 4 the gate passed and the version waits for ``mlfolio
approve`` (registry.require_approval: not yet, rather than no), 2 no readable run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mlfolio import products
from mlfolio.errors import ApprovalPending, ConfigError, GateNotPassed, RunNotFinished
from mlfolio.pipeline.manifest import Manifest

Require = Literal["promoted", "passed"]
# The stages whose products the verdict is read from (the gate in evaluate.json, the
# promotion in register.json): a stale one makes the verdict stale. A stage after them
# (deploy) does not: CI deploys what the verdict allows itself.
VERDICT_STAGES = (products.EVALUATE.stage, products.REGISTER.stage)
# Written into the run folder by `mlfolio approve`/`reject` (the version's decision).
APPROVAL_FILE = "approval.json"


@dataclass(frozen=True)
class GateStatus:
    """One run's answer: ``status`` is promoted, passed, same model, pending approval,
    approved, rejected, not promoted, not passed, failed or interrupted; ``reason`` the
    line that says why."""

    status: str
    exit_code: int
    reason: str
    gate_passed: bool | None
    version: str | None
    promoted: bool | None
    champion: str | None
    model_uri: str | None
    run_dir: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def load(run_dir: str | Path) -> dict[str, Any]:
    """The training run's manifest; ConfigError (exit 2) naming the folder or file when
    there is none, it is not JSON, or it is not a training run's manifest."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    data = Manifest.load(folder).data
    path = folder / "manifest.json"
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ConfigError(f"{path}: not an mlfolio run manifest (no 'stages')")
    if data.get("kind", "training") != "training":
        raise ConfigError(
            f"{path}: a {data['kind']} run, not a training run: it has no gate to read"
        )
    return data


def decide(
    manifest: dict[str, Any], run_dir: str | Path, require: Require = "promoted"
) -> GateStatus:
    """The deploy decision for a training run's manifest (see the module's exit codes).
    ``require="passed"`` accepts a passed gate without a promotion (registry.promote
    false, or register not run)."""
    gate = manifest.get("gate") or {}
    model = manifest.get("model") or {}
    facts = {
        "gate_passed": gate.get("passed"),
        "version": model.get("version"),
        "promoted": model.get("promoted"),
        "champion": model.get("champion"),
        "model_uri": model.get("model_uri"),
        "run_dir": str(run_dir),
    }
    status = manifest.get("status")
    if status != "succeeded":
        unfinished, why = _unfinished(manifest)
        return GateStatus(unfinished, 3, why, **facts)
    stale = [name for name in VERDICT_STAGES if (manifest["stages"].get(name) or {}).get("stale")]
    if stale:
        why = f"stage {stale[0]} is stale: {'; '.join(manifest['stages'][stale[0]]['stale'])}"
        return GateStatus("not passed", 1, f"{why} (re-run it)", **facts)
    if not gate:
        return GateStatus("not passed", 1, "no gate verdict: evaluate did not run", **facts)
    failed = [r for r in gate.get("reasons", []) if r.startswith("FAIL")]
    if gate.get("same_model_as") and not failed:
        # an unchanged re-run: the candidate is the champion's model, which already serves
        version = gate["same_model_as"]
        why = f"same model as champion v{version}: nothing new to deploy, v{version} stays"
        return GateStatus("same model", 0, why, **facts)
    if not gate.get("passed"):
        why = failed[0] if failed else "; ".join(gate.get("reasons", []))
        return GateStatus("not passed", 1, f"gate not passed: {why}", **facts)
    if model.get("pending_approval"):
        verdict = _approval(Path(run_dir), model, facts)
        if require == "passed" and verdict.exit_code == 4:
            return GateStatus("passed", 0, f"gate passed ({verdict.reason})", **facts)
        return verdict
    if model.get("promoted"):
        return GateStatus(
            "promoted",
            0,
            f"gate passed; {model.get('model_name')} version {model.get('version')} "
            "promoted to champion",
            **facts,
        )
    why = (
        f"not promoted: {model['why_not_promoted']}"
        if model.get("why_not_promoted")
        else "not promoted: register did not run"
        if not model
        else "not promoted"
    )
    if require == "passed":
        return GateStatus("passed", 0, f"gate passed ({why})", **facts)
    return GateStatus("not promoted", 1, f"gate passed but {why}", **facts)


def _approval(run_dir: Path, model: dict[str, Any], facts: dict[str, Any]) -> GateStatus:
    """A version register left pending approval: 4 while it waits; once ``mlfolio
    approve``/``reject`` wrote its decision into the run folder (approval.json), 0 when
    approved (it is champion), 1 when rejected."""
    name, version = model.get("model_name"), model.get("version")
    decision = read_decision(run_dir)
    if decision and str(decision.get("version")) == str(version) and decision.get("done"):
        who = f"by {decision.get('by')} at {decision.get('at')}"
        note = f": {decision['note']}" if decision.get("note") else ""
        if decision.get("action") == "approve":
            why = f"gate passed; {name} version {version} approved {who}{note}: now champion"
            return GateStatus("approved", 0, why, **{**facts, "champion": str(version)})
        why = f"gate passed but {name} version {version} was rejected {who}{note}"
        return GateStatus("rejected", 1, why, **facts)
    command = (model.get("approval") or {}).get("command") or (
        f"mlfolio approve {name} {version} --by NAME"
    )
    why = (
        f"gate passed; {name} version {version} is pending approval (champion stays "
        f"{'v' + str(model['champion']) if model.get('champion') else 'unset'}): {command}"
    )
    return GateStatus("pending approval", 4, why, **facts)


def read_decision(run_dir: Path) -> dict[str, Any] | None:
    """The approval decision ``mlfolio approve``/``reject`` wrote into the run folder
    (:data:`APPROVAL_FILE`), or None."""
    path = run_dir / APPROVAL_FILE
    try:
        doc = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _unfinished(manifest: dict[str, Any]) -> tuple[str, str]:
    """(status, reason) of a run that did not finish, naming the stage."""
    status = manifest.get("status")
    if status == "failed" and not manifest.get("failed_stage") and manifest.get("failure"):
        return "failed", f"run failed: {manifest['failure'].get('cause')}"
    if status == "failed":
        stage, cell = manifest.get("failed_stage"), manifest.get("failed_cell")
        where = f" (cell {cell})" if cell is not None else ""
        return "failed", f"run failed in stage {stage}{where}"
    if status == "interrupted":
        info = manifest.get("interrupted") or {}
        where = f"during stage {info['stage']}" if info.get("stage") else "between stages"
        resume = f"; resume with --from {info['resume_from']}" if info.get("resume_from") else ""
        return "interrupted", f"run interrupted by {info.get('signal', 'a signal')} {where}{resume}"
    running = [n for n, e in manifest["stages"].items() if (e or {}).get("status") == "running"]
    at = f" (stage {running[0]} still says running)" if running else ""
    return "interrupted", f"run did not finish: status {status or 'never started'}{at}"


def check(run_dir: str | Path, require: Require = "promoted") -> GateStatus:
    """Load and decide; ConfigError (exit 2) when there is no run to read."""
    return decide(load(run_dir), Path(run_dir).resolve(), require)


def raise_for(verdict: GateStatus) -> None:
    """The error that carries a non-zero verdict's exit code to the CLI's one wrapper."""
    if verdict.exit_code == 1:
        raise GateNotPassed(f"{verdict.run_dir}: {verdict.reason}")
    if verdict.exit_code == 3:
        raise RunNotFinished(f"{verdict.run_dir}: {verdict.reason}")
    if verdict.exit_code == 4:
        raise ApprovalPending(f"{verdict.run_dir}: {verdict.reason}")
