"""The MLflow model registry: versions, the challenger/champion aliases, alias history.

MLflow keeps only where an alias points now. Every move is also written as a tag on the
registered model (``mlfolio.alias_event.<time>`` = JSON), so the history lives in the
same store as the aliases, whatever backend the tracking server uses.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlfolio import locks
from mlfolio.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EVENT_PREFIX = "mlfolio.alias_event."
RETRAIN_CLAIM_TAG = "mlfolio.retrain_claim"
MODEL_HASH_TAG = "mlfolio.model_hash"
PIPELINE_RUN_TAG = "mlfolio.pipeline_run_id"  # the pipeline run that registered a version
THRESHOLD_TAG = "mlfolio.threshold"  # the decision threshold evaluate chose for the version
MODEL_CARD_TAG = "mlfolio.model_card"  # where the version's model card is (an artifact URI)
# A version whose register failed and could not be deleted: never reused, never aliased.
STATUS_TAG = "mlfolio.status"
FAILED_REGISTER = "failed-register"


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


def get_version(name: str, version: str | int) -> ModelRef | None:
    """Version ``version`` of ``name``, or None when the model or version does not exist."""
    try:
        mv = MlflowClient().get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"registry lookup of {name} version {version} failed: {exc}") from exc
    return ModelRef(name, str(mv.version), mv.run_id, mv.source)


def version_tags(ref: ModelRef) -> dict[str, str]:
    """The tags of a registered version (empty when it has none or is gone)."""
    try:
        return dict(MlflowClient().get_model_version(ref.name, ref.version).tags or {})
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}
        raise RegistryError(f"registry lookup of {ref.name} v{ref.version} failed: {exc}") from exc


def link_model_card(ref: ModelRef, card_uri: str, description: str) -> None:
    """Point a version at its model card: a tag with the card's URI and the description."""
    client = MlflowClient()
    client.set_model_version_tag(ref.name, ref.version, MODEL_CARD_TAG, card_uri)
    client.update_model_version(ref.name, ref.version, description=description)


def logged_model_id(model_uri: str) -> str | None:
    """The logged model's id in an MLflow 3 ``models:/m-…`` URI (None for other URIs)."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri.removeprefix("models:/")
    return rest if rest.startswith("m-") and "/" not in rest and "@" not in rest else None


def register(name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelRef:
    """Register ``model_uri`` as a new version of ``name`` with tags linking to its run.

    A logged model (``models:/m-…``) is registered with its ``model_id``: a tracking
    server resolves the source through it (without it the REST API refuses the source as
    ``Invalid model version source``; a local store happens to resolve it either way).
    """
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Registered by mlfolio.")
    mv = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, model_id=logged_model_id(model_uri)
    )
    return ModelRef(name, str(mv.version), run_id, mv.source)


def same_model(ref: ModelRef, model_uri: str) -> bool:
    """Whether ``model_uri`` holds ``ref``'s model: equal :func:`model_hash` (the
    version's ``mlfolio.model_hash`` tag, else its files hashed now). The hash identifies
    the model itself, as register's duplicate check does; equal test scores would not
    (two models may agree on these rows and differ elsewhere)."""
    digest = version_tags(ref).get(MODEL_HASH_TAG) or model_hash(ref.uri)
    return model_hash(model_uri) == digest


# The MLmodel keys that differ between two loggings of the same model.
_VOLATILE_MLMODEL_KEYS = ("model_uuid", "utc_time_created", "run_id", "model_id", "artifact_path")


def model_hash(model_uri: str) -> str:
    """SHA-256 of a logged model's files (its MLmodel without the ids and times that
    differ between two loggings of the same model): equal for an identical model."""
    import tempfile
    from pathlib import Path

    import mlflow
    import yaml

    h = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="mlfolio-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            content = path.read_bytes()
            if rel == "MLmodel":
                meta = yaml.safe_load(content) or {}
                for key in _VOLATILE_MLMODEL_KEYS:
                    meta.pop(key, None)
                content = json.dumps(meta, sort_keys=True, default=str).encode()
            h.update(rel.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


def version_with_hash(name: str, digest: str) -> ModelRef | None:
    """The oldest version of ``name`` whose model has content hash ``digest`` (the
    ``mlfolio.model_hash`` tag register sets), or None."""
    try:
        found = MlflowClient().search_model_versions(
            f"name = '{name}' and tags.`{MODEL_HASH_TAG}` = '{digest}'"
        )
    except MlflowException as exc:
        raise RegistryError(f"registry search of {name} by model hash failed: {exc}") from exc
    found = [v for v in found if (v.tags or {}).get(STATUS_TAG) != FAILED_REGISTER]
    if not found:
        return None
    mv = min(found, key=lambda v: int(v.version))
    return ModelRef(name, str(mv.version), mv.run_id, mv.source)


def version_of_run(name: str, digest: str, pipeline_run_id: str) -> ModelRef | None:
    """The version of ``name`` with content hash ``digest`` that pipeline run
    ``pipeline_run_id`` registered already (tag ``mlfolio.pipeline_run_id``): an earlier
    attempt of its register stage that did not finish (a kernel killed past its time
    limit, a lost pod). A retry takes it over, so one run never registers one model
    twice; one an undo could only tag ``failed-register`` is taken back (tag removed).
    None without a run id (a notebook run by hand) or when there is none."""
    if not pipeline_run_id:
        return None
    client = MlflowClient()
    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.`{MODEL_HASH_TAG}` = '{digest}' "
            f"and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'"
        )
        if not found:
            return None
        mv = min(found, key=lambda v: int(v.version))
        if (mv.tags or {}).get(STATUS_TAG) == FAILED_REGISTER:
            client.delete_model_version_tag(name, mv.version, STATUS_TAG)
    except MlflowException as exc:
        raise RegistryError(f"registry search of {name} by pipeline run failed: {exc}") from exc
    return ModelRef(name, str(mv.version), mv.run_id, mv.source)


def _user() -> str:
    return os.environ.get("MLFOLIO_USER") or getpass.getuser()


def _record_event(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str | None,
    previous_version: str | None,
    reason: str,
    run_dir: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write one alias move (``version`` None: the alias was removed) to the history."""
    now = datetime.now(UTC)
    event = {
        "alias": alias,
        "version": version,
        "previous_version": previous_version,
        "at": now.isoformat(timespec="seconds"),
        "by": _user(),
        "reason": reason,
        "run_dir": run_dir,
        **extra,
    }
    key = f"{EVENT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%f')}.{alias}"
    client.set_registered_model_tag(name, key, json.dumps(event))
    return event


def set_alias(
    ref: ModelRef, alias: str, reason: str, run_dir: str = "", **extra: Any
) -> dict[str, Any]:
    """Point ``alias`` at ``ref`` and record who moved it, when, why and from where.

    This is a plain move: to move ``champion`` only if it still is the version a gate
    compared against, use :func:`promote`.
    """
    client = MlflowClient()
    previous = get_alias(ref.name, alias)
    client.set_registered_model_alias(ref.name, alias, ref.version)
    try:
        event = _record_event(
            client,
            ref.name,
            alias,
            ref.version,
            previous.version if previous else None,
            reason,
            run_dir,
            **extra,
        )
        if alias == CHAMPION:
            client.set_model_version_tag(ref.name, ref.version, "mlfolio.promoted_at", event["at"])
            client.set_model_version_tag(ref.name, ref.version, "mlfolio.promoted_by", event["by"])
            client.set_model_version_tag(ref.name, ref.version, "mlfolio.promotion_reason", reason)
    except Exception:
        # An unrecorded move is taken back: the alias never says more than its history.
        try:
            _point(client, ref.name, alias, previous.version if previous else None)
        except MlflowException as exc:
            log.warning("could not move %s@%s back after a failed move: %s", ref.name, alias, exc)
        raise
    return event


def _point(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``, or remove it (None)."""
    if version is not None:
        client.set_registered_model_alias(name, alias, version)
    elif get_alias(name, alias) is not None:
        client.delete_registered_model_alias(name, alias)


def undo_register(
    ref: ModelRef,
    created: bool,
    moved: list[tuple[str, str | None]],
    why: str,
    run_dir: str = "",
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Take back what a register that failed part-way did: delete the version it created
    (or, when that fails too, tag it ``mlfolio.status=failed-register``) and move each
    alias in ``moved`` (alias, version it pointed at before) back where it was, unless
    someone moved it since. Returns what was done, for register.json; never raises."""
    client = MlflowClient()
    out: dict[str, Any] = {"version": ref.version, "aliases": {}, "errors": []}
    out["action"] = "kept (an existing version)"
    if created:
        try:
            client.delete_model_version(ref.name, ref.version)
            out["action"] = "deleted"
        except MlflowException as exc:
            out["errors"].append(f"delete v{ref.version}: {_first_line(exc)}")
            try:
                client.set_model_version_tag(ref.name, ref.version, STATUS_TAG, FAILED_REGISTER)
                out["action"] = f"tagged {STATUS_TAG}={FAILED_REGISTER}"
            except MlflowException as exc2:
                out["action"] = "left as is"
                out["errors"].append(f"tag v{ref.version}: {_first_line(exc2)}")
    for alias, previous in reversed(moved):
        try:
            if alias == CHAMPION:  # other promoters compare-and-set it under this lock
                with registry_lock(ref.name, "promote", lock_uri, timeout_s):
                    _restore(client, ref, alias, previous, why, run_dir, out)
            else:
                _restore(client, ref, alias, previous, why, run_dir, out)
        except Exception as exc:  # noqa: BLE001 - reported in register.json and the error
            out["errors"].append(f"move {alias} back to v{previous}: {_first_line(exc)}")
    return out


def _restore(
    client: MlflowClient,
    ref: ModelRef,
    alias: str,
    previous: str | None,
    why: str,
    run_dir: str,
    out: dict[str, Any],
) -> None:
    now = get_alias(ref.name, alias)
    if now is not None and now.version != ref.version:
        out["errors"].append(f"{alias} left at v{now.version}: moved by someone else since")
        return
    _point(client, ref.name, alias, previous)
    _record_event(
        client, ref.name, alias, previous, ref.version, f"register failed: {why}", run_dir
    )
    out["aliases"][alias] = previous


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def registry_lock(name: str, purpose: str, lock_uri: str | None = None, timeout_s: float = 60.0):
    """The lock guarding ``purpose`` on model ``name`` in the current registry (or on
    ``lock_uri``); see :mod:`mlfolio.locks` for which lock each store gets."""
    import mlflow

    source = "registry.lock_uri" if lock_uri else "the registry (tracking.tracking_uri)"
    uri = lock_uri or mlflow.get_registry_uri()
    return locks.registry_lock(uri, name, purpose, timeout_s, source)


def champion_moved(name: str, expected: str | None, now: str | None) -> str:
    """ "champion moved: the gate compared against vX, but NAME@champion is now vY (moved
    by WHO at WHEN, run DIR)": why a compare-and-set on champion refuses."""
    moved = next(
        (
            e
            for e in reversed(alias_history(name))
            if e.get("alias") == CHAMPION and e.get("version") == now
        ),
        None,
    )
    by = (
        f" (moved by {moved['by']} at {moved['at']}"
        f"{', run ' + moved['run_dir'] if moved.get('run_dir') else ''})"
        if moved
        else ""
    )
    was = f"v{expected}" if expected else "no champion"
    return (
        f"champion moved: the gate compared against {was}, but "
        f"{name}@{CHAMPION} is now {'v' + now if now else 'unset'}{by}"
    )


def record_event(
    name: str,
    alias: str,
    version: str | None,
    previous_version: str | None,
    reason: str,
    run_dir: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Write one alias move (``version`` None: the alias was removed) to the history."""
    return _record_event(
        MlflowClient(), name, alias, version, previous_version, reason, run_dir, **extra
    )


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: ``promoted``, or why not and who is champion now."""

    promoted: bool
    expected_champion: str | None
    champion: str | None
    event: dict[str, Any] | None = None
    why_not: str | None = None
    lock: str = ""


def promote(
    ref: ModelRef,
    expected_champion: str | None,
    reason: str,
    run_dir: str = "",
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
) -> Promotion:
    """Move ``champion`` to ``ref`` only if it still points at ``expected_champion``
    (the version the gate compared against; None: there was no champion).

    MLflow has no compare-and-set on aliases, so the re-check and the move happen under
    :func:`registry_lock`. When the champion moved in between, nothing changes and the
    result says which version is champion now and which move put it there.
    """
    with registry_lock(ref.name, "promote", lock_uri, timeout_s) as kind:
        current = get_alias(ref.name, CHAMPION)
        now = current.version if current else None
        if now != expected_champion:
            why = (
                f"{champion_moved(ref.name, expected_champion, now)}; v{ref.version} stays "
                f"{CHALLENGER} (re-run evaluate and register to compare it with the new "
                "champion)"
            )
            return Promotion(False, expected_champion, now, why_not=why, lock=kind)
        event = set_alias(ref, CHAMPION, reason, run_dir, compared_against=expected_champion)
        return Promotion(True, expected_champion, ref.version, event=event, lock=kind)


def claim_retraining(
    name: str,
    monitor_run_dir: str,
    monitor_started: datetime,
    cooldown_hours: float,
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
    retrain_run_dir: str = "",
) -> tuple[bool, dict[str, Any] | None]:
    """Claim the retraining a monitor run decided on: ``(True, claim)``, or ``(False,
    holder)`` when another monitor claimed one after this run started or within the
    cool-down. The check and the claim happen under one lock, so one trigger starts one
    retraining however many monitors saw it."""
    with registry_lock(name, "retrain", lock_uri, timeout_s):
        client = MlflowClient()
        tags = client.get_registered_model(name).tags or {}
        held = json.loads(tags[RETRAIN_CLAIM_TAG]) if RETRAIN_CLAIM_TAG in tags else None
        if held is not None:
            at = datetime.fromisoformat(held["at"])
            age_h = (datetime.now(UTC) - at).total_seconds() / 3600
            if at >= monitor_started or age_h < cooldown_hours:
                return False, held
        claim = {
            "monitor_run_dir": monitor_run_dir,
            "retrain_run_dir": retrain_run_dir,
            "by": _user(),
            "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        client.set_registered_model_tag(name, RETRAIN_CLAIM_TAG, json.dumps(claim))
        return True, claim


def alias_history(name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of ``name``, oldest first."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(EVENT_PREFIX)]


def act_on_ab(
    name: str,
    report: dict[str, Any],
    run_dir: str = "",
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
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
    # The staleness check and the moves under one lock: no promotion slips in between.
    with registry_lock(name, "promote", lock_uri, timeout_s):
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
            result["events"].append(
                set_alias(challenger, CHAMPION, reason, run_dir, compared_against=now_champion)
            )
        client = MlflowClient()
        client.delete_registered_model_alias(name, CHALLENGER)
        event = _record_event(
            client, name, CHALLENGER, None, challenger.version, reason, run_dir, removed=True
        )
        if action == "roll back":
            client.set_model_version_tag(
                name, challenger.version, "mlfolio.rolled_back_at", event["at"]
            )
            client.set_model_version_tag(
                name, challenger.version, "mlfolio.rolled_back_reason", reason
            )
        result["events"].append(event)
    result["champion"] = c.version if (c := get_alias(name, CHAMPION)) else None
    result["challenger"] = None
    return result
