"""A person between the gate and the champion (``registry.require_approval``).

A candidate that passed the gate is not made champion: :func:`request` points the
``pending-approval`` alias at it and tags the version ``mlfolio.approval=pending``, with
the champion its gate compared against. :func:`approve` then moves ``champion`` by the
same compare-and-set as :func:`mlfolio.registry.promote` (under the same ``promote``
lock, so approvals, promotions and A/B actions exclude each other): only if the champion
still is that version, and only if the version still is pending. :func:`reject` removes
the alias and tags the version rejected. Every move goes to the alias history with who,
when and why; the version's model card gets an Approval section.

One version per model is pending at a time (an alias points at one version): a newer
candidate that passes the gate takes the alias, and the older one is tagged
``superseded``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlfolio import model_card, registry
from mlfolio.errors import ApprovalRefused, ConfigError

log = logging.getLogger(__name__)

PENDING = "pending-approval"  # the alias of the version waiting for a person
STATUS_TAG = "mlfolio.approval"  # pending, approved, rejected, superseded
INFO_TAG = "mlfolio.approval_info"  # JSON: the request and, once decided, the decision
APPROVED, REJECTED, SUPERSEDED = "approved", "rejected", "superseded"
PENDING_STATUS = "pending"


@dataclass(frozen=True)
class Decision:
    """What :func:`request`, :func:`approve` or :func:`reject` did (``done``), or why not
    (``why_not``); ``champion`` is the champion after it."""

    action: str  # request, approve, reject
    done: bool
    model_name: str
    version: str
    compared_against: str | None
    champion: str | None
    by: str = ""
    at: str = ""
    note: str = ""
    why_not: str | None = None
    run_dir: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    model_card: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _info(tags: dict[str, str]) -> dict[str, Any]:
    try:
        info = json.loads(tags.get(INFO_TAG) or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def command(name: str, version: str) -> str:
    """The command that approves ``version`` (shown wherever it is pending)."""
    return f"mlfolio approve {name} {version} --by NAME"


def request(
    ref: registry.ModelRef,
    compared_against: str | None,
    reason: str,
    run_dir: str = "",
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
) -> Decision:
    """Make ``ref`` the version pending approval, if champion still is
    ``compared_against`` (the version its gate compared with): the same check a
    promotion makes, under the same lock. A version pending before is superseded."""
    client = MlflowClient()
    with registry.registry_lock(ref.name, "promote", lock_uri, timeout_s):
        current = registry.get_alias(ref.name, registry.CHAMPION)
        now = current.version if current else None
        base = Decision("request", False, ref.name, ref.version, compared_against, now)
        if now != compared_against:
            why = (
                f"{registry.champion_moved(ref.name, compared_against, now)}; "
                f"v{ref.version} stays {registry.CHALLENGER}, not pending approval (re-run "
                "evaluate and register to compare it with the new champion)"
            )
            return _replace(base, why_not=why)
        before = registry.get_alias(ref.name, PENDING)
        at = _now()
        info = {
            "requested_at": at,
            "requested_by": registry._user(),
            "compared_against": compared_against,
            "reason": reason,
            "run_dir": run_dir,
        }
        event = registry.set_alias(
            ref, PENDING, f"awaiting approval: {reason}", run_dir, compared_against=compared_against
        )
        client.set_model_version_tag(ref.name, ref.version, STATUS_TAG, PENDING_STATUS)
        client.set_model_version_tag(ref.name, ref.version, INFO_TAG, json.dumps(info))
        if before is not None and before.version != ref.version:
            old = _info(registry.version_tags(before))
            old.update(superseded_by=ref.version, decided_at=at)
            client.set_model_version_tag(ref.name, before.version, STATUS_TAG, SUPERSEDED)
            client.set_model_version_tag(ref.name, before.version, INFO_TAG, json.dumps(old))
        return _replace(base, done=True, at=at, run_dir=run_dir, events=[event])


def _replace(d: Decision, **changes: Any) -> Decision:
    return Decision(**{**d.to_dict(), **changes})


def status(name: str, version: str) -> tuple[str | None, dict[str, Any]]:
    """(the version's approval status, its request and decision); (None, {}) when it was
    never pending."""
    ref = registry.get_version(name, version)
    if ref is None:
        return None, {}
    tags = registry.version_tags(ref)
    return tags.get(STATUS_TAG), _info(tags)


def _not_pending(name: str, version: str, state: str | None, info: dict[str, Any]) -> str:
    if state == APPROVED:
        return (
            f"{name} v{version} is not pending approval: approved by {info.get('decided_by')} "
            f"at {info.get('decided_at')}"
        )
    if state == REJECTED:
        return (
            f"{name} v{version} is not pending approval: rejected by {info.get('decided_by')} "
            f"at {info.get('decided_at')}"
        )
    if state == SUPERSEDED:
        return (
            f"{name} v{version} is not pending approval: superseded by v"
            f"{info.get('superseded_by')}, which passed the gate after it"
        )
    if state == PENDING_STATUS:  # tagged pending, but the alias moved on (e.g. by hand)
        now = registry.get_alias(name, PENDING)
        return (
            f"{name} v{version} is not pending approval: {name}@{PENDING} is "
            f"{'v' + now.version if now else 'unset'}"
        )
    return (
        f"{name} v{version} is not pending approval (it never was: only a version that "
        "passed the gate with registry.require_approval true is)"
    )


def decide(
    action: str,
    name: str,
    version: str | int,
    by: str,
    note: str = "",
    lock_uri: str | None = None,
    timeout_s: float = 60.0,
) -> Decision:
    """Approve (``action`` "approve": champion moves to the version) or reject (the
    pending alias is removed, the version tagged rejected) the version pending approval.

    Under the promotion lock: refused (:class:`ApprovalRefused`, nothing changed) when
    the version is not pending, or, for an approval, when champion is no longer the
    version its gate compared against. The alias history and the version's tags record
    who decided, when and why."""
    if action not in ("approve", "reject"):
        raise ConfigError(f"approval: unknown action {action!r} (expected approve or reject)")
    by = (by or "").strip()
    if not by:
        raise ConfigError(f"mlfolio {action}: --by: give the name of who decides")
    version = str(version)
    client = MlflowClient()
    with registry.registry_lock(name, "promote", lock_uri, timeout_s):
        ref = registry.get_version(name, version)
        if ref is None:
            raise ApprovalRefused(f"{name} has no version {version}: nothing to {action}")
        tags = registry.version_tags(ref)
        state, info = tags.get(STATUS_TAG), _info(tags)
        pending = registry.get_alias(name, PENDING)
        if state != PENDING_STATUS or pending is None or pending.version != version:
            raise ApprovalRefused(_not_pending(name, version, state, info))
        expected = info.get("compared_against")
        current = registry.get_alias(name, registry.CHAMPION)
        now = current.version if current else None
        if action == "approve" and now != expected:
            raise ApprovalRefused(
                f"{registry.champion_moved(name, expected, now)}; v{version} not approved: "
                f"it stays @{PENDING} (reject it with `mlfolio reject {name} {version} --by "
                "NAME`, or re-run evaluate and register to compare it with the new champion)"
            )
        at = _now()
        words = "approved" if action == "approve" else "rejected"
        reason = f"{words} by {by}" + (f": {note}" if note else "")
        who = {"by": by, "user": registry._user(), "note": note, "decision": words}
        run_dir = info.get("run_dir") or ""
        events = []
        if action == "approve":
            events.append(
                registry.set_alias(
                    ref, registry.CHAMPION, reason, run_dir, compared_against=expected, **who
                )
            )
        client.delete_registered_model_alias(name, PENDING)
        events.append(
            registry.record_event(
                name, PENDING, None, version, reason, run_dir, removed=True, **who
            )
        )
        info.update(decision=words, decided_by=by, decided_at=at, note=note)
        client.set_model_version_tag(name, version, STATUS_TAG, words)
        client.set_model_version_tag(name, version, INFO_TAG, json.dumps(info))
        champion = version if action == "approve" else now
    decision = Decision(
        action, True, name, version, expected, champion, by, at, note, None, run_dir, events
    )
    return _replace(decision, model_card=record_in_model_card(ref, decision))


def record_in_model_card(ref: registry.ModelRef, decision: Decision) -> str | None:
    """Add the decision to the version's model card in MLflow (the card register logged
    and linked, tag ``mlfolio.model_card``); returns its URI, None when the version has
    no card or it could not be rewritten (logged as a warning: the decision stands)."""
    import mlflow

    card_uri = registry.version_tags(ref).get(registry.MODEL_CARD_TAG)
    if not card_uri:
        return None
    try:
        text = Path(mlflow.artifacts.download_artifacts(artifact_uri=card_uri)).read_text()
        with tempfile.TemporaryDirectory(prefix="mlfolio-card-") as tmp:
            path = Path(tmp) / Path(card_uri).name
            path.write_text(model_card.with_approval(text, decision.to_dict()))
            artifact_dir = card_uri.removeprefix(f"runs:/{ref.run_id}/").rsplit("/", 1)[0]
            MlflowClient().log_artifact(ref.run_id, str(path), artifact_path=artifact_dir)
    except (MlflowException, OSError, ValueError) as exc:
        log.warning("model card of %s v%s not updated: %s", ref.name, ref.version, exc)
        return None
    return card_uri


def pending(name: str) -> dict[str, Any] | None:
    """The version of ``name`` pending approval: version, requested_at, age_s,
    compared_against, champion (now), stale (champion moved since its gate: it cannot be
    approved), run_dir, reason; None when none is."""
    ref = registry.get_alias(name, PENDING)
    if ref is None:
        return None
    info = _info(registry.version_tags(ref))
    champion = registry.get_alias(name, registry.CHAMPION)
    now = champion.version if champion else None
    requested = info.get("requested_at")
    age = (
        (datetime.now(UTC) - datetime.fromisoformat(requested)).total_seconds()
        if requested
        else None
    )
    return {
        "model_name": name,
        "version": ref.version,
        "requested_at": requested,
        "age_s": age,
        "compared_against": info.get("compared_against"),
        "champion": now,
        "stale": now != info.get("compared_against"),
        "run_dir": info.get("run_dir") or "",
        "reason": info.get("reason") or "",
        "command": command(name, ref.version),
    }
