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
