"""The monitoring loop: ``mlfolio monitor`` runs the monitor notebooks, then acts on what
they recommend (the A/B action, a retraining run claimed under the registry lock)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlfolio import config as config_mod
from mlfolio import products
from mlfolio.config import Config
from mlfolio.errors import ConfigError, RecordError, StageError, TrackingError
from mlfolio.graph import MONITOR_STAGES, new_run_dir
from mlfolio.pipeline import terminal
from mlfolio.pipeline.manifest import Manifest
from mlfolio.pipeline.runner import run

log = logging.getLogger(__name__)


# -- the monitor run -------------------------------------------------------------------
def _link(target: Path, start: Path) -> str:
    """A relative link from one run folder's index page to another's."""
    return os.path.relpath(target / "index.html", start)


def _log_has_rows(cfg: Config) -> bool:
    from datetime import timedelta

    from mlfolio import predlog

    mon = cfg.monitoring
    if not mon.prediction_log:
        return False
    since = datetime.now(UTC) - timedelta(hours=mon.window_hours) if mon.window_hours else None
    return predlog.count(mon.prediction_log, since=since) > 0


def monitor_stages(cfg: Config) -> list[str]:
    """The monitor pipeline's stages to run: those that read only the prediction log
    (the A/B report compares the variants it logged) when it holds rows in the window."""
    logged = _log_has_rows(cfg)
    return [s.name for s in MONITOR_STAGES if logged or not s.needs_logged_rows]


def _claim_retraining(cfg: Config, manifest: Manifest, runs_root: Path | None) -> str | None:
    """Claim the retraining this monitor run decided on, under the registry's retraining
    lock: None when claimed (the new run folder goes to ``actions.claimed_run_dir``), else
    why it is held. Two monitors that saw one trigger start one retraining."""
    from mlfolio import registry, tracking

    tracking.configure(cfg)
    retrain_dir = new_run_dir(cfg, runs_root)
    granted, claim = registry.claim_retraining(
        cfg.model_name,
        manifest.data["run_dir"],
        datetime.fromisoformat(manifest.data["created"]),
        cfg.monitoring.retrain.cooldown_hours,
        cfg.registry.lock_uri,
        cfg.registry.lock_timeout_s,
        retrain_run_dir=str(retrain_dir),
    )
    if granted:
        manifest.actions["claimed_run_dir"] = str(retrain_dir)  # type: ignore[attr-defined]
        return None
    return f"held: retraining already started by {claim['monitor_run_dir']} at {claim['at']}" + (
        f" (run {claim['retrain_run_dir']})" if claim.get("retrain_run_dir") else ""
    )


def monitor(
    params_file: str | Path,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    runs_root: Path | None = None,
    echo: Callable[[str], None] = print,
    warm_kernels: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Manifest, Manifest | None]:
    """``mlfolio monitor``: the monitor notebooks into their own run folder, then what they
    recommend — act on the A/B report (when ``monitoring.ab.act``) and run the training
    pipeline on the champion's data plus the newly labelled rows when the retraining policy
    fires. The new model is promoted only through the usual gate. ``dry_run`` decides and
    reports without acting. Returns the monitor manifest and the retraining one (or None).
    Prints the drift verdict, then the retraining decision and the A/B recommendation;
    ``progress`` shows the retraining's tuning as it runs (see :func:`run`).
    """
    from mlfolio import registry, tracking
    from mlfolio.pipeline import report

    cfg = config_mod.load(params_file, overrides)
    if not (cfg.monitoring.current or cfg.monitoring.prediction_log):
        raise ConfigError(
            f"{params_file}: nothing to monitor: give --current FILE (CSV/"
            "Parquet) or set monitoring.prediction_log to the model server's "
            "--prediction-log folder"
        )
    manifest = run(
        params_file,
        overrides,
        stages=monitor_stages(cfg),
        runs_root=runs_root,
        echo=echo,
        warm_kernels=warm_kernels,
        kind="monitor",
    )
    folder = Path(manifest.data["run_dir"])
    # Typed from here on: the monitor stage's product, validated against its model.
    monitored = products.MONITOR.load(folder)
    decision = monitored.decision
    actions: dict[str, Any] = {"dry_run": dry_run}
    manifest.set(actions=actions)  # the same dict: filled in below
    for line in terminal.drift_verdict(products.DRIFT.load(folder)):
        echo(line)
    echo(f"monitor: {'retraining fires' if decision.retrain else 'no retraining'}")
    for reason in decision.reasons:
        echo(f"  {reason}")

    ab = products.AB.load(folder)
    action = ab.recommendation.action if ab else "keep"
    if ab:
        echo(terminal.ab_line(ab.model_dump(mode="json")))
    if ab and action != "keep":
        if not cfg.monitoring.ab.act:
            actions["ab"] = {
                "action": action,
                "done": False,
                "why": "monitoring.ab.act is false: recommendation only",
            }
        elif dry_run:
            actions["ab"] = {"action": action, "done": False, "why": "--dry-run"}
        else:
            tracking.configure(cfg)
            actions["ab"] = {
                "action": action,
                "done": True,
                **registry.act_on_ab(
                    cfg.model_name,
                    ab.model_dump(mode="json"),
                    str(folder),
                    cfg.registry.lock_uri,
                    cfg.registry.lock_timeout_s,
                ),
            }
        echo(f"A/B: {action} ({'done' if actions['ab']['done'] else actions['ab']['why']})")

    retrain_manifest: Manifest | None = None
    failure: StageError | TrackingError | RecordError | None = None
    if decision.retrain and dry_run:
        actions["retrain"] = {"fired": True, "run": False, "why": "--dry-run"}
        echo("retraining not started (--dry-run)")
    elif decision.retrain and (held := _claim_retraining(cfg, manifest, runs_root)):
        actions["retrain"] = {"fired": True, "run": False, "why": held}
        echo(f"retraining {held}")
    elif decision.retrain:
        retrain_dir = Path(actions.pop("claimed_run_dir"))
        retrain_dir.mkdir(parents=True)
        trigger = {
            "by": "monitor",
            "monitor_run_dir": str(folder),
            "monitor_index": _link(folder, retrain_dir),
            "reasons": decision.reasons,
            "champion_version": monitored.model["version"],
            "data": monitored.retrain_data,
            # the newly labelled rows: the retraining's out-of-time evaluation rows
            "new_rows": monitored.retrain_new_rows,
        }
        claimed = Manifest.new(retrain_dir, cfg.experiment, "training")
        claimed.set(trigger=trigger)
        claimed.save()
        actions["retrain"] = {
            "fired": True,
            "run": True,
            "run_dir": str(retrain_dir),
            "index": _link(retrain_dir, folder),
            "status": "running",
        }
        manifest.save()
        echo(f"retraining into {retrain_dir} on {trigger['data']}")
        retrain_overrides = {**(overrides or {}), "data.uri": trigger["data"]}
        if trigger["new_rows"]:
            retrain_overrides["evaluation.recent_rows"] = trigger["new_rows"]
        retrain_overrides.pop("data.sample_rows", None)
        try:
            retrain_manifest = run(
                params_file,
                retrain_overrides,
                run_dir=retrain_dir,
                echo=echo,
                warm_kernels=warm_kernels,
                progress=progress,
            )
            actions["retrain"]["status"] = "succeeded"
        except (StageError, TrackingError, RecordError) as exc:  # recorded in its folder
            failure = exc
            actions["retrain"].update(status="failed", error=str(exc))
            retrain_manifest = Manifest.load(retrain_dir)
        model = retrain_manifest.data.get("model") or {}
        actions["retrain"].update(
            gate_passed=(retrain_manifest.data.get("gate") or {}).get("passed"),
            version=model.get("version"),
            promoted=model.get("promoted"),
            pending_approval=bool(model.get("pending_approval")),
        )
        if model:
            gate = "passed" if actions["retrain"]["gate_passed"] else "not passed"
            verdict = (
                "promoted to champion"
                if model.get("promoted")
                else "pending approval (mlfolio approve)"
                if model.get("pending_approval")
                else "not promoted"
            )
            echo(f"retraining: gate {gate}; version {model.get('version')} {verdict}")
        from mlflow import MlflowClient

        with tracking.guard(cfg.tracking_uri(), "linking the retraining run"):
            tracking.configure(cfg)
            MlflowClient().set_tag(
                manifest.data["mlflow"]["parent_run_id"],
                "mlfolio.retrain_run_dir",
                str(retrain_dir),
            )
    else:
        actions["retrain"] = {"fired": False}
    manifest.save()
    report.write_index(folder, manifest.data)
    if failure is not None:
        raise failure
    return manifest, retrain_manifest
