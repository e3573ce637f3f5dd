"""``mlfolio approve``, ``mlfolio reject`` and ``mlfolio approvals``: the person between
the gate and the champion (``registry.require_approval``), from the command line.

The decision itself is :func:`mlfolio.approval.decide` (the compare-and-set under the
promotion lock). Here: connecting to the registry (``--params`` for a project's tracking
store and ``registry.lock_uri``, else ``--tracking-uri`` / ``$MLFLOW_TRACKING_URI`` /
the project's SQLite store), and, when the run folder that asked for the approval is on
this machine, recording the decision there too: ``approval.json`` (read by ``mlfolio
gate-status``), the model card and the index page.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfolio import config
from mlfolio.errors import ConfigError
from mlfolio.files import write_json, write_text
from mlfolio.pipeline import gate_status

if TYPE_CHECKING:  # the registry client loads on use: `mlfolio --help` stays instant
    from mlfolio.approval import Decision

log = logging.getLogger(__name__)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="the project's parameter file: its tracking store, registry.lock_uri and "
        "registry.lock_timeout_s (give it when the project sets registry.lock_uri: "
        "approvals must take the lock promotions take)",
    )
    config.add_override_option(parser, "override a parameter of --params (repeatable)")
    parser.add_argument(
        "--tracking-uri",
        help="without --params: the MLflow registry (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<project>/mlflow.db)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for action, words in (
        (
            "approve",
            "Make VERSION of MODEL champion: it must be the version pending approval "
            "(registry.require_approval), and champion must still be the version its gate "
            "compared against (the same compare-and-set and lock as a promotion). Records "
            "who (--by), when and why (--note) in the alias history and the model card. "
            "Exit 0: approved; 1: refused, nothing changed (not pending, or the champion "
            "moved since the gate: the message says who moved it); 2: bad arguments.",
        ),
        (
            "reject",
            "Refuse VERSION of MODEL: removes the pending-approval alias, tags the version "
            "rejected, records who, when and why. The champion does not move. Exit 0: "
            "rejected; 1: refused (not pending); 2: bad arguments.",
        ),
    ):
        cmd = sub.add_parser(
            action, help=f"{action} the model version pending approval", description=words
        )
        cmd.add_argument(
            "model", metavar="MODEL", help="the registered model, e.g. churn-classifier"
        )
        cmd.add_argument("version", metavar="VERSION", help="the version pending approval")
        cmd.add_argument("--by", required=True, metavar="NAME", help="who decides (recorded)")
        cmd.add_argument("--note", default="", metavar="TEXT", help="why (recorded)")
        _connection(cmd)
    ls = sub.add_parser(
        "approvals",
        help="the version of MODEL pending approval, its age; Prometheus gauges",
        description="Show the version of MODEL pending approval (since when, against which "
        "champion, whether the champion moved since), and with --prometheus write "
        "mlfolio_approvals_pending and mlfolio_approval_oldest_pending_timestamp_seconds "
        "for node_exporter's textfile collector (alert: MlfolioApprovalOverdue). Exit 0.",
    )
    ls.add_argument("model", metavar="MODEL", help="the registered model")
    ls.add_argument(
        "--prometheus", metavar="FILE", help="write the gauges here (e.g. .../approvals.prom)"
    )
    _connection(ls)


def _connect(args: argparse.Namespace) -> tuple[str | None, float]:
    """Point MLflow at the registry; (registry.lock_uri, registry.lock_timeout_s)."""
    import mlflow

    from mlfolio import config, tracking

    if args.params:
        cfg = config.load(args.params, config.parse_overrides(args.param))
        tracking.apply_limits(cfg)
        uri = cfg.tracking_uri()
        lock = (cfg.registry.lock_uri, cfg.registry.lock_timeout_s)
    else:
        if args.param:
            raise ConfigError("-p/--param: give --params FILE too (the overrides are of it)")
        uri = (
            args.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{config.project_dir() / 'mlflow.db'}"
        )
        lock = (None, 60.0)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return lock


def decide(args: argparse.Namespace, echo: Callable[[str], None]) -> Decision:
    """``mlfolio approve``/``reject``: decide, then record it in the run folder."""
    from mlfolio import approval

    lock_uri, timeout_s = _connect(args)
    decision = approval.decide(
        args.command, args.model, args.version, args.by, args.note, lock_uri, timeout_s
    )
    where = record_in_run_folder(decision)
    if args.json:
        print(json.dumps({**decision.to_dict(), "run_folder": where}, indent=2))
    words = "approved" if decision.action == "approve" else "rejected"
    line = f"{decision.model_name} version {decision.version} {words} by {decision.by}"
    if decision.action == "approve":
        was = f"v{decision.compared_against}" if decision.compared_against else "none"
        line += f": champion now v{decision.version} (was {was})"
    else:
        line += f"; champion stays {'v' + decision.champion if decision.champion else 'unset'}"
    (echo if args.json else print)(line)
    if decision.model_card is None:
        echo("model card: not updated (the version has no card in MLflow, or see the warning)")
    if where:
        echo(f"run folder: {where} (approval.json, model_card.md, index.html)")
    elif decision.run_dir:
        echo(
            f"run folder {decision.run_dir} not here (no register.json): only the registry "
            "and the card in MLflow record it"
        )
    return decision


def record_in_run_folder(decision: Decision) -> str | None:
    """Write the decision into the run folder that asked for it, when it is here:
    approval.json (gate-status reads it), the model card's Approval section and the
    index page. Returns the folder, None when it is not on this machine."""
    from mlfolio import model_card, products
    from mlfolio.pipeline import report
    from mlfolio.pipeline.manifest import Manifest

    folder = Path(decision.run_dir) if decision.run_dir else None
    if folder is None or not (folder / products.REGISTER.path).is_file():
        return None
    write_json(folder / gate_status.APPROVAL_FILE, decision.to_dict())
    card = folder / products.MODEL_CARD.path
    if card.is_file():
        write_text(card, model_card.with_approval(card.read_text(), decision.to_dict()))
    if (folder / "manifest.json").is_file():
        try:
            report.write_index(folder, Manifest.load(folder).data)
        except Exception as exc:  # noqa: BLE001 - the decision stands; the page shows it
            log.warning("%s: index.html not rewritten: %s", folder, exc)
    return str(folder)


def show(args: argparse.Namespace, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """``mlfolio approvals``: the pending version (or none) and, with --prometheus, the
    gauges."""
    from mlfolio import approval
    from mlfolio.monitor import prometheus

    _connect(args)
    found = approval.pending(args.model)
    if args.prometheus:
        prometheus.write_approvals_textfile(args.model, found, args.prometheus)
    if args.json:
        print(json.dumps(found, indent=2))
    elif found is None:
        print(f"{args.model}: no version pending approval")
    else:
        hours = (found["age_s"] or 0) / 3600
        print(
            f"{args.model} version {found['version']} pending approval for {hours:.1f} h "
            f"(since {found['requested_at']}), gate compared against "
            f"{'v' + found['compared_against'] if found['compared_against'] else 'no champion'}"
            + (
                f"; STALE: champion is now v{found['champion']}, approve will refuse"
                if found["stale"]
                else ""
            )
        )
        print(f"  {found['command']}   (or: mlfolio reject ...)")
    if args.prometheus:
        echo(f"wrote {args.prometheus}")
    return found
