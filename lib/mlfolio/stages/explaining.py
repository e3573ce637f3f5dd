"""The evaluate stage's account of the models, and the model card (I/O at the stage edge).

``evaluate_candidate`` (:mod:`mlfolio.stages.training`) calls these for the champion's
own threshold, the attributions and permutation importance of both models, the error
analysis by segment and the first model card; ``register_model`` completes the card
with the version, logs it to the version's MLflow run and links it from the version.
The numbers come from the pure modules :mod:`mlfolio.explain` and :mod:`mlfolio.evaluate`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio import data, evaluate, explain, model_card, products, registry, tracking
from mlfolio.config import Config
from mlfolio.context import StageContext
from mlfolio.errors import MlfolioError
from mlfolio.files import write_text

log = logging.getLogger(__name__)

ATTRIBUTIONS = products.ATTRIBUTIONS.path
MODEL_CARD = products.MODEL_CARD.path
CARD_ARTIFACT_DIR = "model_card"


# -- the champion's threshold ---------------------------------------------------------------
def champion_threshold(champion: registry.ModelRef, fallback: float) -> tuple[float, str, bool]:
    """(threshold, where it comes from, known) for the champion: the ``mlfolio.threshold``
    tag register puts on every version, else the evaluate.json of the run that registered
    it; unknown → ``fallback`` (the candidate's), and the source says so."""
    tags = registry.version_tags(champion)
    if registry.THRESHOLD_TAG in tags:
        try:
            return float(tags[registry.THRESHOLD_TAG]), f"tag {registry.THRESHOLD_TAG}", True
        except ValueError:
            log.warning("champion v%s: unreadable %s tag", champion.version, registry.THRESHOLD_TAG)
    run_dir = tags.get("mlfolio.run_dir")
    if run_dir:
        try:
            doc = products.EVALUATE.load(Path(run_dir))
        except (MlfolioError, OSError, ValueError):
            doc = None
        if doc is not None and doc.candidate.run_id == champion.run_id:
            return float(doc.threshold), f"evaluate.json of {run_dir}", True
    return (
        fallback,
        f"unknown (version {champion.version} has no {registry.THRESHOLD_TAG} tag and no "
        "readable evaluate.json): scored at the candidate's threshold",
        False,
    )


# -- attributions and permutation importance ----------------------------------------------
def explain_models(
    ctx: StageContext, parts: dict[str, pd.DataFrame], models: dict[str, Any]
) -> dict[str, Any]:
    """Each model's attribution summary and permutation importance on the same seeded
    sample of test rows (``evaluation.explain_rows``) of ``parts`` against a sample of
    the training rows (read here, not held in ``parts``); per-row attributions go to
    ``data/attributions.parquet`` for the beeswarm."""
    cfg = ctx.cfg
    schema = cfg.schema
    rows = explain.sample_rows(parts["test"], cfg.evaluation.explain_rows, cfg.seed)
    y = data.target_vector(rows, schema).to_numpy()
    # the training rows' sample alone is read: not 60% of the data for 2,000 rows
    background = ctx.read_parquet_sample(
        products.SPLITS["train"].path, cfg.evaluation.explain_rows, cfg.seed
    )
    summaries: dict[str, Any] = {}
    frames = []
    for name, model in models.items():
        summary, attribution = explain.explain_model(
            model, rows, y, schema, background, cfg.evaluation.permutation_repeats, cfg.seed
        )
        summaries[name] = summary
        if attribution is not None:
            frame = attribution.values.copy()
            frame.insert(0, "base", attribution.base)
            frame.insert(0, "row", rows.index.to_numpy())
            frame.insert(0, "model", name)
            frames.append(frame)
    columns = ["model", "row", "base", *schema.features]
    table = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    ).astype({c: float for c in ["base", *schema.features]})
    ctx.write_parquet(ATTRIBUTIONS, table)
    return summaries


def attributions(ctx: StageContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-row attributions, the test rows they are of), for the beeswarm."""
    return ctx.read_parquet(ATTRIBUTIONS), ctx.read_parquet(products.SPLITS["test"].path)


# -- error analysis by segment --------------------------------------------------------------
SEGMENT_METRICS = ("roc_auc", "recall", "precision")


def segments(
    cfg: Config,
    test: pd.DataFrame,
    scored: dict[str, tuple[np.ndarray, float]],
    ranking: dict[str, Any] | None,
) -> dict[str, Any]:
    """Metrics per value of the segment columns for each model at its own threshold
    (``scored``: name → (test scores, threshold)); with a champion, a segment is flagged
    only where the paired bootstrap interval of the candidate's ROC AUC difference lies
    below 0, and judged only with ``evaluation.segment_min_positives`` positive and
    negative rows (see :func:`evaluate.segment_difference`)."""
    from mlfolio.features import RawColumnCoercer

    schema = cfg.schema
    explicit = cfg.evaluation.segment_columns
    columns = (
        list(explicit)
        if explicit
        else model_card.top_categorical(
            ranking, list(schema.categorical), cfg.evaluation.segment_count
        )
    )
    # segment values as the model reads them (0/1 flags, blanks as missing)
    values = RawColumnCoercer([], columns).fit(test).transform(test)
    y = data.target_vector(test, schema).to_numpy()
    rows = []
    for col in columns:
        per = {
            name: evaluate.segment_metrics(
                y, score, threshold, values[col].to_numpy(), cfg.evaluation.segment_min_rows
            )
            for name, (score, threshold) in scored.items()
        }
        for value, cand in per["candidate"].items():
            champ = per["champion"].get(value) if "champion" in per else None
            mask = values[col].to_numpy().astype(str) == value
            judged: dict[str, Any] = {
                "positives": int(y[mask].sum()),
                "negatives": int((1 - y[mask]).sum()),
            }
            if champ:
                judged = evaluate.segment_difference(
                    y[mask],
                    scored["candidate"][0][mask],
                    scored["champion"][0][mask],
                    cfg.evaluation.segment_min_positives,
                    cfg.gate.bootstrap_samples,
                    cfg.gate.confidence,
                    cfg.seed,
                )
            rows.append(
                {
                    "column": col,
                    "value": value,
                    "rows": cand["rows"],
                    "positive_rate": cand["positive_rate"],
                    "candidate": {k: cand[k] for k in SEGMENT_METRICS},
                    "champion": {k: champ[k] for k in SEGMENT_METRICS} if champ else None,
                    **judged,
                }
            )
    return {
        "columns": columns,
        "chosen_by": (
            "evaluation.segment_columns"
            if explicit
            else "the categorical columns the candidate relies on most"
        ),
        "min_rows": cfg.evaluation.segment_min_rows,
        "min_positives": cfg.evaluation.segment_min_positives,
        "confidence": cfg.gate.confidence,
        "flag_rule": (
            f"the {cfg.gate.confidence:.0%} paired bootstrap interval of the candidate's ROC "
            "AUC minus the champion's, on the segment's rows, lies below 0 (judged only with "
            f"at least {cfg.evaluation.segment_min_positives} positive and negative rows)"
        ),
        "rows": rows,
    }


# -- the model card -------------------------------------------------------------------------
def _modified(path: Path) -> str:
    """When a file was written (UTC), or "unknown"."""
    if not path.exists():
        return "unknown"
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def card_facts(ctx: StageContext, ev: dict[str, Any]) -> dict[str, Any]:
    """What the card says besides the evaluate result: intent, data, lineage."""
    import mlflow

    cfg = ctx.cfg
    ingest = ctx.read(products.INGEST).model_dump(mode="json")
    ingest["snapshot_at"] = _modified(ctx.path(products.SNAPSHOT.path))
    preprocess = products.PREPROCESS.load(ctx.run_dir)
    if preprocess is not None:
        ingest["splits"] = preprocess.splits
    active = mlflow.active_run()
    exp_id = active.info.experiment_id if active else None
    return {
        "experiment": cfg.experiment,
        "description": cfg.description,
        "model_name": cfg.model_name,
        "target": cfg.schema.target,
        "positive_label": cfg.schema.positive_label,
        "inputs": {
            "numeric": list(cfg.schema.numeric),
            "categorical": list(cfg.schema.categorical),
            "id_column": cfg.schema.id_column,
        },
        "threshold_rule": (
            "max_f1: the F1-maximising threshold on the validation rows"
            if cfg.evaluation.threshold == "max_f1"
            else "fixed by evaluation.threshold"
        ),
        "data": ingest,
        "evaluated_at": _modified(ctx.path(products.EVALUATE.path)),
        "lineage": {
            "run_dir": str(ctx.run_dir),
            "pipeline_run_url": (
                tracking.run_url(cfg, exp_id, ctx.parent_run_id)
                if exp_id and ctx.parent_run_id
                else None
            ),
            "model_run_url": (
                tracking.run_url(cfg, exp_id, ev["candidate"]["run_id"]) if exp_id else None
            ),
        },
    }


def write_model_card(
    ctx: StageContext, ev: dict[str, Any], version: dict[str, Any] | None = None
) -> Path:
    """Render the card from ``ev`` (and the version, once registered) into the run folder."""
    facts = {**card_facts(ctx, ev), "version": version}
    path = ctx.path(MODEL_CARD)
    write_text(path, model_card.render(ev, facts))
    return path


def complete_model_card(
    ctx: StageContext,
    ref: registry.ModelRef,
    registration: dict[str, Any],
    log_to_version: bool = True,
) -> str | None:
    """Register's part: the card with the version; with ``log_to_version``, logged to the
    version's MLflow run and linked from the version (tag ``mlfolio.model_card`` and its
    description). Returns the card's artifact URI (None when not logged)."""
    from mlflow.exceptions import MlflowException

    ev = ctx.read(products.EVALUATE).model_dump(mode="json")
    card_uri = f"runs:/{ref.run_id}/{CARD_ARTIFACT_DIR}/{MODEL_CARD}" if log_to_version else None
    version = {
        "name": ref.name,
        "version": ref.version,
        "uri": ref.uri,
        "promoted": registration["promoted"],
        "champion": registration["champion"],
        "approval": registration.get("approval"),
        "card_uri": card_uri,
    }
    path = write_model_card(ctx, ev, version)
    if card_uri is None:
        return None
    try:
        tracking.log_artifacts(ref.run_id, [path], CARD_ARTIFACT_DIR)
        registry.link_model_card(
            ref,
            card_uri,
            f"Model card: {card_uri} (run folder: {ctx.path(MODEL_CARD)}). Candidate "
            f"{ev['candidate']['name']}, test ROC AUC "
            f"{ev['candidate']['test']['roc_auc']:.4f}, threshold {ev['threshold']:.4f}, "
            f"gate {'passed' if ev['gate']['passed'] else 'not passed'}.",
        )
    except (MlflowException, OSError) as exc:  # the version stands; its card is local only
        log.warning("model card of %s v%s not logged to MLflow: %s", ref.name, ref.version, exc)
        return None
    return card_uri
