"""HTML for reviewers: each executed notebook, and the run's ``index.html``."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import yaml

from mlfolio import cost, model_card, products
from mlfolio.errors import MlfolioError
from mlfolio.files import read_json, write_text
from mlfolio.pipeline import diff, gate_status

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
log = logging.getLogger(__name__)


def notebook_to_html(notebook: Path, target: Path) -> Path:
    """Render an executed notebook (inputs, outputs, plots inline) to standalone HTML that
    loads nothing from the web (lab's require.js and MathJax come from a CDN)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(
        template_name="lab",
        extra_template_paths=[str(TEMPLATES / "nbconvert")],
        template_file="offline.html.j2",
    )
    exporter.log.setLevel(logging.ERROR)  # not "alternative text is missing" per plot
    # resources name the page: without them every stage's <title> is "Notebook"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    write_text(target, body)  # never half a page (a full disk), and its space given back
    return target


def _metric_rows(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:

    cols = ("roc_auc", "pr_auc", "log_loss", "brier", "f1")
    rows: list[dict[str, Any]] = []
    for product in (products.TRAIN, products.TUNE):
        doc = product.load(run_dir)
        for model, result in (doc.models if doc else {}).items():
            rows.append(
                {"model": model, "split": "valid", **{c: result.valid.get(c) for c in cols}}
            )
    comparison = None
    ev = products.EVALUATE.load(run_dir)
    if ev is not None:
        rows.append(
            {
                "model": f"{ev.candidate.name} (candidate)",
                "split": "test",
                **{c: ev.candidate.test.get(c) for c in cols},
            }
        )
        if ev.champion:
            seen_rows = getattr(ev.champion, "test_rows", None)
            rows.append(
                {
                    "model": f"champion v{ev.champion.version}",
                    # since evaluate left out the rows it saw: on how many it was scored
                    "split": f"test ({seen_rows} rows)" if seen_rows is not None else "test",
                    **{c: ev.champion.test.get(c) for c in cols},
                }
            )
        comparison = ev.comparison
    return rows, comparison


def _rows_compared(run_dir: Path) -> dict[str, Any] | None:
    """On which rows candidate and champion were compared (evaluate.json's overlap and
    row sets; None without a champion, or for a run evaluated before they were written)."""

    ev = products.EVALUATE.load(run_dir)
    if ev is None or ev.champion is None or ev.row_sets is None:
        return None
    sets = []
    for key, found in ev.row_sets.items():
        c = found.get("comparison")
        sets.append(
            {
                "id": key,
                "label": found.get("label", key.replace("_", " ")),
                "rows": found["rows"],
                "positives": found["positives"],
                "candidate": found.get("candidate_roc_auc"),
                "champion": found.get("champion_roc_auc"),
                "comparison": c,
                "decides": key == ev.decided_by,
            }
        )
    return {
        "version": ev.champion.version,
        "unseen": ev.rows_unseen_by_champion,
        "overlap": ev.champion_overlap,
        "sets": sets,
        "recent": ev.recent_rows,
    }


def _why_model_decides(run_dir: Path, top: int = 5) -> dict[str, Any] | None:
    """The candidate's top features next to the champion's, the flagged segments and the
    model card, from evaluate.json (None when it has no explanation)."""

    ev = products.EVALUATE.load(run_dir)
    if ev is None or not ev.explain:
        return None
    labels = {"candidate": f"{ev.candidate.name} (candidate)"}
    if ev.champion:
        labels["champion"] = f"champion v{ev.champion.version}"
    models = [name for name in labels if name in ev.explain]
    ranked = {}
    for name in models:
        values, by = model_card.ranking(ev.explain[name])
        label = "mean |SHAP|" if by == "mean_abs" else "permutation"
        ranked[name] = [
            {"column": col, "value": value, "by": label}
            for col, value in list(values.items())[:top]
        ]
    segments = ev.segments or {}
    return {
        "models": models,
        "labels": labels,
        "notes": {n: ev.explain[n].get("note") for n in models if ev.explain[n].get("note")},
        "top": [
            {n: (ranked[n][i] if i < len(ranked[n]) else None) for n in models} for i in range(top)
        ],
        "segments": segments,
        "flagged": [r for r in segments.get("rows", []) if r.get("flagged")],
        # with a champion: segments too small to tell a difference from noise
        "judged": [r for r in segments.get("rows", []) if r.get("judged")],
        "unjudged": [
            r for r in segments.get("rows", []) if r.get("champion") and not r.get("judged")
        ],
        "threshold": ev.threshold,
        "champion": ev.champion.model_dump(mode="json") if ev.champion else None,
        "card": products.MODEL_CARD.path
        if (run_dir / products.MODEL_CARD.path).is_file()
        else None,
    }


def _champion_diff(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The diff against the champion's run (written beside the index), or where it is."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return diff.champion_diff(run_dir, manifest)
    except (MlfolioError, MlflowException, SQLAlchemyError, OSError) as exc:  # written anyway
        log.warning("no diff against the champion's run for %s: %s", run_dir, exc)
        return None


def _mlflow_ui(manifest: dict[str, Any], ui: str) -> dict[str, str]:
    """How to open the MLflow links: the command serving the run's store at ``ui``."""
    from mlfolio import tracking

    uri = (manifest.get("mlflow") or {}).get("tracking_uri")
    return tracking.ui_hint(uri, ui) if uri and ui else {}


def _mlflow_links(manifest: dict[str, Any], ui: str) -> dict[str, Any]:
    """The index's MLflow links (experiment, pipeline run, stage runs), built from the ids
    at render time so that an older manifest's stored URL cannot miss the model-training
    view (:data:`mlfolio.tracking.UI_VIEW`)."""
    from mlfolio import tracking

    mlf = manifest.get("mlflow") or {}
    exp = mlf.get("experiment_id")
    if not (ui and exp):
        return {"stages": {}}
    parent = mlf.get("parent_run_id")
    return {
        "experiment": tracking.ui_link(ui, exp),
        "parent": tracking.ui_link(ui, exp, parent) if parent else None,
        "stages": {
            name: tracking.ui_link(ui, exp, stage["mlflow_run_id"])
            for name, stage in (manifest.get("stages") or {}).items()
            if stage.get("mlflow_run_id")
        },
    }


def _deployments(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each deploy target: its status, what happened in words, whether something serves
    now, and the facts it recorded."""

    out = []
    for target, doc in ((manifest.get("deploy") or {}).get("targets") or {}).items():
        status = products.deploy_status(target, doc)
        out.append(
            {
                "target": target,
                "status": status,
                "outcome": products.deploy_outcome(target, doc),
                "live": status in products.LIVE,
                "facts": {k: v for k, v in doc.items() if k not in ("status", "outcome")},
            }
        )
    return out


def _cost(run_dir: Path) -> dict[str, Any] | None:
    """``cost.json`` (written by :mod:`mlfolio.pipeline.costing`; None: none, unreadable)."""
    path = run_dir / cost.COST_FILE
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable: %s", path, exc)
        return None


def write_index(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The page a reviewer opens first: verdict, metrics, stages, data, parameters."""
    import jinja2

    rows, comparison = _metric_rows(run_dir)
    champion_diff = _champion_diff(run_dir, manifest)
    ui = manifest.get("parameters", {}).get("tracking", {}).get("ui_url", "").rstrip("/")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    page = env.from_string((TEMPLATES / "index.html.j2").read_text()).render(
        m=manifest,
        run_name=html.escape(run_dir.name),
        metrics=rows,
        metric_cols=("roc_auc", "pr_auc", "log_loss", "brier", "f1"),
        comparison=comparison,
        rows_compared=_rows_compared(run_dir),
        champion_diff=champion_diff,
        deployments=_deployments(manifest),
        cost=_cost(run_dir),
        usd=cost.usd,
        why=_why_model_decides(run_dir),
        approval=gate_status.read_decision(run_dir),
        ui=ui,
        mlflow_ui=_mlflow_ui(manifest, ui),
        links=_mlflow_links(manifest, ui),
        params_yaml=yaml.safe_dump(manifest.get("parameters", {}), sort_keys=False),
    )
    target = run_dir / "index.html"
    write_text(target, page)
    return target
