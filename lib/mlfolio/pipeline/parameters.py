"""Re-runs into a run folder with other parameters: each stage's parameter sections, the
differences from what its stages ran with (refused, or forced and marked stale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import ConfigError
from mlfolio.graph import PIPELINES, Stage
from mlfolio.pipeline.manifest import Manifest
from mlfolio.pipeline.provenance import upstream_hashes


def stage_parameters(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The parameter sections a stage reads (what its result depends on)."""
    return {key: params.get(key) for key in stage.sections}


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs; mappings compared per key."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            diff
            for key in sorted(set(old) | set(new), key=str)
            for diff in differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def backfill_parameters(manifest: Manifest, kind: str) -> None:
    """Folders recorded before stages kept their own parameters: a stage that ran did so
    with the run's parameters of that time."""
    recorded = manifest.data.get("parameters")
    if recorded is None:
        return
    for stage in PIPELINES[kind]:
        entry = manifest.stages.get(stage.name)
        if entry and entry.status != "not run" and "parameters" not in entry.model_fields_set:
            entry.parameters = stage_parameters(stage, recorded)


def check_parameters(
    folder: Path, manifest: Manifest, cfg: Config, selected: list[Stage], kind: str, force: bool
) -> list[str]:
    """Refuse a re-run whose parameters differ from the ones the folder's stages ran with
    when stages that keep their results would then disagree with the record: a stage that
    is not re-run but reads a changed key, or one downstream of a re-run stage whose keys
    changed. ``force`` runs anyway (they are marked stale). Returns the changed keys."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    recorded_stages = manifest.data.get("stages", {})
    upstream: list[tuple[str, Any, Any]] = []  # changes of re-run stages, seen downstream
    kept: dict[str, list[tuple[str, Any, Any]]] = {}
    changed: dict[str, tuple[str, Any, Any]] = {}
    for stage in PIPELINES[kind]:
        entry = recorded_stages.get(stage.name) or {}
        ran_with = entry.get("parameters")
        diff = [] if ran_with is None else differences(ran_with, stage_parameters(stage, params))
        if stage.name in names:
            upstream += diff
            changed.update({d[0]: d for d in diff})
        elif entry.get("status") == "succeeded" and (diff or upstream):
            kept[stage.name] = diff + upstream
            changed.update({d[0]: d for d in diff + upstream})
    if kept and not force:
        diffs = {d[0]: d for stage_diffs in kept.values() for d in stage_diffs}
        what = "; ".join(
            f"{key} (ran with {old!r}, now {new!r})"
            for key, old, new in (diffs[k] for k in sorted(diffs))
        )
        raise ConfigError(
            f"{folder}: parameters differ from the ones its stages ran with: {what}. "
            f"Stage(s) {', '.join(kept)} would keep results made with the old values. "
            f"Re-run them too (e.g. --from {selected[0].name}), or give --force to run "
            f"anyway and mark them stale"
        )
    return sorted(changed)


def mark_stale(
    manifest: Manifest, cfg: Config, folder: Path, selected: list[Stage], kind: str
) -> None:
    """A stage not re-run now is stale when its parameters or the upstream products it read
    changed since it ran; ``stale`` lists why (the index shows it)."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    stale: set[str] = set()
    for stage in PIPELINES[kind]:
        entry = manifest.stages.get(stage.name)
        if not entry or stage.name in names or entry.status != "succeeded":
            continue
        reasons = []
        # A stage after a stale one used (or deployed) what that one made: stale as well,
        # though the files it read directly may not have changed yet.
        behind = [n for n in (*stage.upstream, *stage.after) if n in stale]
        if behind:
            reasons.append(f"it follows stale stage(s): {', '.join(behind)}")
        if entry.parameters is not None:
            keys = [d[0] for d in differences(entry.parameters, stage_parameters(stage, params))]
            if keys:
                reasons.append(f"it ran with other parameters: {', '.join(keys)}")
        before = (entry.inputs or {}).get("upstream")
        if before is not None:
            now = upstream_hashes(stage, folder)
            changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
            if changed:
                reasons.append(f"its inputs changed since it ran: {', '.join(changed)}")
        entry.mark_stale(reasons)
        if reasons:
            stale.add(stage.name)
