"""Stages register (compare-and-set promotion) and deploy (through deploy.TARGETS)."""

from __future__ import annotations

import logging
from typing import Any

import mlflow

from mlfolio import approval, products, registry
from mlfolio.context import StageContext
from mlfolio.errors import RegistryError
from mlfolio.stages import explaining

log = logging.getLogger(__name__)


# -- register -------------------------------------------------------------------------
def register_model(ctx: StageContext) -> dict[str, Any]:
    """Register the candidate as a new version, alias it challenger, and move champion
    only when the gate passed. A candidate whose model is identical to an existing version
    (same :func:`registry.model_hash`) registers nothing: that version stands for it, and
    its aliases move only when the gate passed."""
    cfg = ctx.cfg
    ev = ctx.read(products.EVALUATE)
    ingest_info = ctx.read(products.INGEST)
    candidate = ev.candidate
    passed = ev.gate.passed
    if ctx.interactive and not cfg.registry.interactive_writes:
        # Exploring in JupyterLab must not change what production serves.
        why = (
            "interactive run (no run folder): nothing registered and no alias moved; "
            "run `mlfolio run`, or pass overrides={'registry.interactive_writes': True}"
        )
        mlflow.set_tags({"mlfolio.registered": False, "mlfolio.why_not_registered": why})
        result = {
            "model_name": cfg.model_name,
            "version": None,
            "model_uri": None,
            "source": candidate.model_uri,
            "registered": False,
            "promoted": False,
            "why_not_promoted": why,
            "compared_against": None,
            "alias_events": [],
            "champion": (
                c.version if (c := registry.get_alias(cfg.model_name, registry.CHAMPION)) else None
            ),
        }
        explaining.write_model_card(ctx, ev.model_dump(mode="json"))
        result["model_card"] = None  # written to the run folder only: nothing registered
        ctx.write(products.REGISTER, result)
        return result
    tags = {
        "mlfolio.run_dir": str(ctx.run_dir),
        "mlfolio.data_hash": ingest_info.data_hash,
        registry.PIPELINE_RUN_TAG: ctx.parent_run_id,
        "mlfolio.candidate": candidate.name,
        "mlfolio.gate_passed": str(passed),
        "mlfolio.test_roc_auc": f"{candidate.test['roc_auc']:.6f}",
        registry.THRESHOLD_TAG: f"{ev.threshold:.6f}",
    }
    try:
        tags[registry.MODEL_HASH_TAG] = registry.model_hash(candidate.model_uri)
        # A retry (or a resume) of this run's register takes over the version an earlier
        # attempt created: one run never registers its model twice.
        ref = registry.version_of_run(
            cfg.model_name, tags[registry.MODEL_HASH_TAG], ctx.parent_run_id
        )
        taken_over = ref is not None
        # An identical model (e.g. an unchanged re-run that reused train and tune) gets no
        # second version: the existing one stands for it.
        if ref is None:
            ref = registry.version_with_hash(cfg.model_name, tags[registry.MODEL_HASH_TAG])
        if ref is None and ev.gate.same_model_as:  # a champion registered without the tag
            ref = registry.get_version(cfg.model_name, ev.gate.same_model_as)
        duplicate_of = ref.version if ref and not taken_over else None
        if ref is None:
            ref = registry.register(cfg.model_name, candidate.model_uri, candidate.run_id, tags)
    except Exception as exc:
        raise RegistryError(
            f"registering {candidate.model_uri} as {cfg.model_name} failed: {exc}"
        ) from exc
    compared_against = ev.champion.version if ev.champion else None
    moved: list[tuple[str, str | None]] = []  # (alias, its version before): undone on failure
    try:
        result = _aliases_and_record(ctx, ref, duplicate_of, compared_against, moved, taken_over)
    except Exception as exc:
        raise _failed_register(
            ctx, ref, duplicate_of, compared_against, moved, exc, taken_over
        ) from exc
    ctx.write(products.REGISTER, result)
    return result


def _aliases_and_record(
    ctx: StageContext,
    ref: registry.ModelRef,
    duplicate_of: str | None,
    compared_against: str | None,
    moved: list[tuple[str, str | None]],
    taken_over: bool = False,
) -> dict[str, Any]:
    """Register's steps after the version exists: challenger, the compare-and-set
    promotion, the stage run's tags and the model card. Each alias it moves is appended
    to ``moved`` as it moves, so a failure later can move it back. ``taken_over``: the
    version is an earlier attempt's of this run; an alias that attempt moved to it stays."""
    cfg = ctx.cfg
    ev = ctx.read(products.EVALUATE)
    candidate = ev.candidate
    passed = ev.gate.passed
    already_champion = duplicate_of is not None and duplicate_of == compared_against
    events = []
    before = registry.get_alias(ref.name, registry.CHALLENGER)
    again = taken_over and before is not None and before.version == ref.version
    if not again and (
        duplicate_of is None or (passed and cfg.registry.promote and not already_champion)
    ):
        events.append(
            registry.set_alias(
                ref, registry.CHALLENGER, "new candidate from pipeline run", str(ctx.run_dir)
            )
        )
        moved.append((registry.CHALLENGER, before.version if before else None))
    # The gate judged the candidate against the champion of evaluate's moment: champion
    # moves only if it still is that version (compare-and-set under the registry lock).
    why_not = None
    pending: dict[str, Any] | None = None
    if already_champion and ev.gate.same_model_as:
        why_not = f"same model as champion v{duplicate_of}, which it already is"
    elif not passed:
        why_not = "gate failed"
    elif not cfg.registry.promote:
        why_not = "registry.promote is false"
    elif already_champion:
        why_not = f"the candidate is version {duplicate_of}, which already is champion"
    elif taken_over and _champion_version(ref.name) == ref.version:
        why_not = None  # the earlier attempt promoted it (its move is in the alias history)
    elif cfg.registry.require_approval:
        reason = "gate passed: " + "; ".join(ev.gate.reasons)
        waiting = registry.get_alias(ref.name, approval.PENDING)
        asked = approval.request(
            ref,
            compared_against,
            reason,
            str(ctx.run_dir),
            cfg.registry.lock_uri,
            cfg.registry.lock_timeout_s,
        )
        why_not = asked.why_not
        if asked.done:
            events += asked.events
            moved.append((approval.PENDING, waiting.version if waiting else None))
            pending = {
                "status": approval.PENDING_STATUS,
                "requested_at": asked.at,
                "compared_against": compared_against,
                "command": approval.command(ref.name, ref.version),
            }
            why_not = (
                f"pending approval (registry.require_approval): `{pending['command']}` makes "
                f"it champion while champion is still "
                f"{'v' + compared_against if compared_against else 'unset'}"
            )
    else:
        reason = "gate passed: " + "; ".join(ev.gate.reasons)
        promotion = registry.promote(
            ref,
            compared_against,
            reason,
            str(ctx.run_dir),
            cfg.registry.lock_uri,
            cfg.registry.lock_timeout_s,
        )
        if promotion.event:
            events.append(promotion.event)
            moved.append((registry.CHAMPION, compared_against))
        why_not = promotion.why_not
    promoted = why_not is None
    if duplicate_of:
        mlflow.set_tags({"mlfolio.registered": False, "mlfolio.duplicate_of": duplicate_of})
    mlflow.set_tags({"mlfolio.model_version": ref.version, "mlfolio.promoted": promoted})
    if why_not:
        mlflow.set_tag("mlfolio.why_not_promoted", why_not[:5000])
    result = {
        "model_name": ref.name,
        "version": ref.version,
        "model_uri": ref.uri,
        "source": candidate.model_uri,
        "status": "registered",
        "registered": duplicate_of is None,
        "duplicate_of": duplicate_of,
        "why_not_registered": (
            f"The candidate's model is identical to version {duplicate_of} (same content "
            f"hash, tag {registry.MODEL_HASH_TAG}): no new version registered"
            if duplicate_of
            else None
        ),
        "promoted": promoted,
        "why_not_promoted": why_not,
        "pending_approval": pending is not None,
        "approval": pending,
        "compared_against": compared_against,
        "alias_events": events,
        "champion": (c.version if (c := registry.get_alias(ref.name, registry.CHAMPION)) else None),
    }
    # A duplicate's version keeps the card of the run that registered it.
    result["model_card"] = explaining.complete_model_card(
        ctx, ref, result, log_to_version=duplicate_of is None
    )
    return result


def _champion_version(name: str) -> str | None:
    ref = registry.get_alias(name, registry.CHAMPION)
    return ref.version if ref else None


def _failed_register(
    ctx: StageContext,
    ref: registry.ModelRef,
    duplicate_of: str | None,
    compared_against: str | None,
    moved: list[tuple[str, str | None]],
    exc: Exception,
    taken_over: bool = False,
) -> RegistryError:
    """Undo what register did to the registry, write register.json saying so (status
    ``failed-register``), and return the error to raise: the record is never more
    optimistic than the registry."""
    cfg = ctx.cfg
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    undo = registry.undo_register(
        ref,
        duplicate_of is None and not taken_over,  # an earlier attempt's version stays
        moved,
        cause,
        str(ctx.run_dir),
        cfg.registry.lock_uri,
        cfg.registry.lock_timeout_s,
    )
    what = {
        "deleted": f"v{ref.version} deleted",
        "kept (an existing version)": f"v{ref.version} (an existing version) kept",
    }.get(undo["action"], f"v{ref.version} {undo['action']}")
    aliases = ", ".join(
        f"{alias} back to {'v' + str(v) if v else 'unset'}" for alias, v in undo["aliases"].items()
    )
    summary = "; ".join([what, *([aliases] if aliases else []), *undo["errors"]])
    try:
        champion = c.version if (c := registry.get_alias(ref.name, registry.CHAMPION)) else None
    except Exception:  # noqa: BLE001 - the registry may be the thing that failed
        champion = None
    ctx.write(
        products.REGISTER,
        {
            "model_name": ref.name,
            "version": None if undo["action"] == "deleted" else ref.version,
            "model_uri": None if undo["action"] == "deleted" else ref.uri,
            "source": ctx.read(products.EVALUATE).candidate.model_uri,
            "status": "failed-register",
            "registered": False,
            "duplicate_of": duplicate_of,
            "promoted": False,
            "why_not_promoted": f"register failed ({cause}); {summary}",
            "compared_against": compared_against,
            "alias_events": [],
            "champion": champion,
            "error": cause,
            "rolled_back": undo,
        },
    )
    return RegistryError(f"register failed: {cause} ({summary})")


# -- deploy ---------------------------------------------------------------------------
def _pending_here(ctx: StageContext) -> dict[str, Any] | None:
    """This run's register.json when it left its version pending approval, else None."""
    reg = products.REGISTER.load(ctx.run_dir)
    if reg is None or not reg.pending_approval:
        return None
    return reg.model_dump(mode="json")


def deploy_model(ctx: StageContext) -> dict[str, Any]:
    """Deploy the version behind ``deploy.alias`` to every target; each target's outcome is
    recorded as it happened (``status`` and ``outcome``: a checked local server that was
    stopped, manifests written but not applied), and the stage fails (after writing
    deploy.json) if any target failed."""
    from mlfolio.deploy import TARGETS, DeployError

    cfg = ctx.cfg
    alias = cfg.deploy.alias
    if alias == approval.PENDING:
        raise DeployError(
            f"deploy.alias: {alias!r} is a version nobody approved yet; deploy 'champion' "
            "(`mlfolio approve` makes the pending version champion)"
        )
    ref = registry.get_alias(cfg.model_name, alias)
    if ref is None:
        waiting = _pending_here(ctx)
        if waiting is None:
            raise DeployError(
                f"registry has no {cfg.model_name}@{alias}: nothing to deploy (did the gate "
                "ever pass?)"
            )
        # The first version of a model waits for approval: nothing approved to ship yet,
        # which is not a failure of this run.
        why = (
            f"no {cfg.model_name}@{alias} yet: version {waiting['version']} is pending "
            f"approval (`{(waiting.get('approval') or {}).get('command', 'mlfolio approve')}`)"
        )
        mlflow.set_tag("mlfolio.why_not_deployed", why)
        doc = {
            "model_name": cfg.model_name,
            "version": None,
            "alias": alias,
            "model_uri": None,
            "targets": {},
            "why_not_deployed": why,
        }
        ctx.write(products.DEPLOY, doc)
        return {"model": f"nothing deployed: {why}", "targets": {}}
    alias_uri = f"models:/{ref.name}@{alias}"
    results: dict[str, Any] = {}
    for target in cfg.deploy.targets:
        try:
            if target not in TARGETS:
                raise DeployError(
                    f"deploy.targets: unknown target {target!r}; expected one "
                    f"of {', '.join(TARGETS)}"
                )
            out_dir = ctx.path(f"deploy/{target}")
            out_dir.mkdir(parents=True, exist_ok=True)
            # The target says how far it went (checked, written, serving, deployed).
            done = {"status": "deployed", **TARGETS[target](ctx, ref, alias_uri, out_dir)}
            results[target] = {**done, "outcome": products.deploy_outcome(target, done)}
        except DeployError as exc:
            results[target] = {"status": "failed", "outcome": "failed", "error": str(exc)}
    failed = {t: r["error"] for t, r in results.items() if r["status"] == "failed"}
    mlflow.set_tags({f"mlfolio.deploy.{t}": r["status"] for t, r in results.items()})
    ctx.write(
        products.DEPLOY,
        {
            "model_name": ref.name,
            "version": ref.version,
            "alias": alias,
            "model_uri": alias_uri,
            "targets": results,
        },
    )
    if failed:
        raise DeployError("; ".join(f"{t}: {e}" for t, e in failed.items()))
    return {"model": f"{ref.name} v{ref.version} (@{alias})", "targets": results}
