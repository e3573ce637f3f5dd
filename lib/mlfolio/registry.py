"""The MLflow model registry: versions, the challenger/champion aliases, alias history.

MLflow keeps only where an alias points now. Every move is also written as a tag on the
registered model (``mlfolio.alias_event.<time>`` = JSON), so the history lives in the
same store as the aliases, whatever backend the tracking server uses.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlfolio.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
EVENT_PREFIX = "mlfolio.alias_event."


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def get_alias(name: str, alias: str) -> ModelRef | None:
    """The version an alias points at, or None when the model or alias does not exist."""
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"registry lookup of {name}@{alias} failed: {exc}") from exc
    return ModelRef(name, str(mv.version), mv.run_id, mv.source)


def register(name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelRef:
    """Register ``model_uri`` as a new version of ``name`` with tags linking to its run."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Registered by mlfolio.")
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=tags)
    return ModelRef(name, str(mv.version), run_id, mv.source)


def set_alias(ref: ModelRef, alias: str, reason: str, run_dir: str = "") -> dict[str, Any]:
    """Point ``alias`` at ``ref`` and record who moved it, when, why and from where."""
    client = MlflowClient()
    previous = get_alias(ref.name, alias)
    now = datetime.now(UTC)
    event = {
        "alias": alias,
        "version": ref.version,
        "previous_version": previous.version if previous else None,
        "at": now.isoformat(timespec="seconds"),
        "by": os.environ.get("MLFOLIO_USER") or getpass.getuser(),
        "reason": reason,
        "run_dir": run_dir,
    }
    client.set_registered_model_alias(ref.name, alias, ref.version)
    key = f"{EVENT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%f')}.{alias}"
    client.set_registered_model_tag(ref.name, key, json.dumps(event))
    if alias == CHAMPION:
        client.set_model_version_tag(ref.name, ref.version, "mlfolio.promoted_at", event["at"])
        client.set_model_version_tag(ref.name, ref.version, "mlfolio.promoted_by", event["by"])
        client.set_model_version_tag(ref.name, ref.version, "mlfolio.promotion_reason", reason)
    return event


def alias_history(name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of ``name``, oldest first."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(EVENT_PREFIX)]


def act_on_ab(name: str, report: dict[str, Any], run_dir: str = "") -> dict[str, Any]:
    """Carry out an A/B report's recommendation (:func:`mlfolio.abtest.ab_report`).

    "promote" moves ``champion`` to the challenger's version and removes ``challenger``;
    "roll back" removes ``challenger`` (the experiment stops, the champion stays);
    "keep" changes nothing. Refuses when the aliases no longer point at the versions the
    report compared. Every move is recorded in the alias history.
    """
    rec = report["recommendation"]
    action = rec["action"]
    if action not in ("promote", "keep", "roll back"):
        raise RegistryError(
            f"A/B report: unknown action {action!r} (expected promote, keep or roll back)"
        )
    if report.get("model_name") and report["model_name"] != name:
        raise RegistryError(f"A/B report is about {report['model_name']!r}, not {name!r}")
    result: dict[str, Any] = {
        "model_name": name,
        "action": action,
        "events": [],
        "champion": rec.get("champion_version"),
        "challenger": rec.get("challenger_version"),
        "summary": rec.get("summary", ""),
    }
    if action == "keep":
        return result
    champion, challenger = get_alias(name, CHAMPION), get_alias(name, CHALLENGER)
    now_champion = champion.version if champion else None
    now_challenger = challenger.version if challenger else None
    if (now_champion, now_challenger) != (rec["champion_version"], rec["challenger_version"]):
        raise RegistryError(
            f"A/B report is stale: it compared champion v{rec['champion_version']} with "
            f"challenger v{rec['challenger_version']}, but {name} now has champion "
            f"v{now_champion} and challenger v{now_challenger}; re-run the A/B report"
        )
    reason = f"A/B {action}: {rec['summary']}"
    if action == "promote":
        result["events"].append(set_alias(challenger, CHAMPION, reason, run_dir))
    client = MlflowClient()
    now = datetime.now(UTC)
    event = {
        "alias": CHALLENGER,
        "version": None,
        "previous_version": challenger.version,
        "at": now.isoformat(timespec="seconds"),
        "by": os.environ.get("MLFOLIO_USER") or getpass.getuser(),
        "reason": reason,
        "run_dir": run_dir,
        "removed": True,
    }
    client.delete_registered_model_alias(name, CHALLENGER)
    key = f"{EVENT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%f')}.{CHALLENGER}"
    client.set_registered_model_tag(name, key, json.dumps(event))
    if action == "roll back":
        client.set_model_version_tag(
            name, challenger.version, "mlfolio.rolled_back_at", event["at"]
        )
        client.set_model_version_tag(name, challenger.version, "mlfolio.rolled_back_reason", reason)
    result["events"].append(event)
    result["champion"] = c.version if (c := get_alias(name, CHAMPION)) else None
    result["challenger"] = None
    return result
