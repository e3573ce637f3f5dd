"""The retraining policy: whether a monitor run fires a retraining, and on which rows.

:func:`retrain_decision` applies ``monitoring.retrain`` to a drift verdict and, when
ground truth has arrived, to the quality drop :func:`quality_comparison` measures;
:func:`retraining_rows` is the training data of the retraining run it fires.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.config import RetrainPolicyConfig, SchemaConfig
from mlfolio.errors import DataValidationError


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to retrain, and every check that led there (like the promotion gate)."""

    retrain: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain_decision(
    policy: RetrainPolicyConfig,
    verdict: dict[str, Any],
    current_rows: int,
    roc_auc_drop: float | None = None,
    last_retrain_at: datetime | None = None,
    now: datetime | None = None,
    labelled_rows: int | None = None,
    estimated_roc_auc_drop: float | None = None,
) -> RetrainDecision:
    """Apply the retraining policy to a drift verdict (and a quality drop, when labels
    exist; and the label-free estimate's drop, :mod:`mlfolio.estimate`, before they do).
    Guards first (enough rows, cool-down), then any trigger fires. With
    ``labelled_rows=0`` a firing trigger holds: retraining needs newly labelled rows."""
    decision = _retrain_decision(
        policy, verdict, current_rows, roc_auc_drop, last_retrain_at, now, estimated_roc_auc_drop
    )
    if decision.retrain and labelled_rows == 0:
        return RetrainDecision(
            False,
            [
                *decision.reasons,
                "HOLD no labelled current rows to retrain on (give monitoring.labels or --labels)",
            ],
        )
    return decision


def _retrain_decision(
    policy: RetrainPolicyConfig,
    verdict: dict[str, Any],
    current_rows: int,
    roc_auc_drop: float | None,
    last_retrain_at: datetime | None,
    now: datetime | None,
    estimated_roc_auc_drop: float | None = None,
) -> RetrainDecision:
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    if current_rows < policy.min_rows:
        return RetrainDecision(
            False, [f"HOLD only {current_rows} current rows (< min_rows {policy.min_rows})"]
        )
    if last_retrain_at is not None:
        hours = (now - last_retrain_at).total_seconds() / 3600
        if hours < policy.cooldown_hours:
            return RetrainDecision(
                False,
                [f"HOLD last retraining {hours:.1f} h ago (cool-down {policy.cooldown_hours} h)"],
            )
    fired = False

    def check(hit: bool, text: str) -> None:
        nonlocal fired
        fired |= hit
        reasons.append(("FIRE " if hit else "ok   ") + text)

    share = float(verdict["share_drifted"])
    if policy.min_drift_share is not None:
        check(
            share >= policy.min_drift_share,
            f"share of drifted columns {share:.2f} vs {policy.min_drift_share} "
            f"({', '.join(verdict['drifted_columns']) or 'none'})",
        )
    if policy.on_dataset_drift:
        check(
            bool(verdict["dataset_drift"]),
            f"dataset drift {'detected' if verdict['dataset_drift'] else 'not detected'}",
        )
    if policy.max_roc_auc_drop is not None:
        if roc_auc_drop is None:
            reasons.append("n/a  quality drop: no ground-truth labels yet")
        else:
            check(
                roc_auc_drop >= policy.max_roc_auc_drop,
                f"ROC AUC drop {roc_auc_drop:+.4f} vs {policy.max_roc_auc_drop}",
            )
    if policy.estimated_roc_auc_drop is not None:
        if estimated_roc_auc_drop is None:
            reasons.append("n/a  estimated quality drop: no label-free estimate")
        else:
            check(
                estimated_roc_auc_drop >= policy.estimated_roc_auc_drop,
                f"estimated ROC AUC drop {estimated_roc_auc_drop:+.4f} (label-free) vs "
                f"{policy.estimated_roc_auc_drop}",
            )
    return RetrainDecision(fired, reasons)


def quality_comparison(
    reference: dict[str, float], y: np.ndarray | None, scores: np.ndarray | None, threshold: float
) -> dict[str, Any] | None:
    """Current metrics on labelled rows next to the reference's, with deltas (current −
    reference). None when no labels, or only one class, among the current rows."""
    from mlfolio.evaluate import classification_metrics

    if y is None or scores is None or len(y) == 0 or len(np.unique(y)) < 2:
        return None
    current = classification_metrics(np.asarray(y, dtype=int), np.asarray(scores), threshold)
    keys = [k for k in current if k != "threshold" and k in reference]
    return {
        "reference": {k: reference[k] for k in keys},
        "current": {k: current[k] for k in keys},
        # None where either side is undefined (e.g. precision with no predicted positive)
        "delta": {
            k: None if current[k] is None or reference[k] is None else current[k] - reference[k]
            for k in keys
        },
        "labelled_rows": int(len(y)),
        "threshold": threshold,
    }


def retraining_rows(
    snapshot: pd.DataFrame, labelled: pd.DataFrame, schema: SchemaConfig
) -> pd.DataFrame:
    """The champion's data plus the newly labelled rows, in the snapshot's columns.

    A new row whose id is already in the snapshot replaces it (a newer observation of the
    same entity); rows without an id get one from their position.
    """
    return retraining_data(snapshot, labelled, schema)[0]


def retraining_data(
    snapshot: pd.DataFrame, labelled: pd.DataFrame, schema: SchemaConfig
) -> tuple[pd.DataFrame, int]:
    """:func:`retraining_rows`, and how many of its rows are the newly labelled ones (its
    last rows)."""
    missing = [c for c in [*schema.features, schema.target] if c not in labelled.columns]
    if missing:
        raise DataValidationError(f"newly labelled rows: missing column(s) {missing}")
    new = labelled.reindex(columns=snapshot.columns)
    id_col = schema.id_column
    if id_col:
        ids = new[id_col].astype("string")
        blank = ids.isna() | (ids.str.len() == 0)
        new.loc[blank, id_col] = [f"new-{i}" for i in range(int(blank.sum()))]
        new = new.drop_duplicates(subset=[id_col], keep="last")
        snapshot = snapshot[~snapshot[id_col].astype(str).isin(new[id_col].astype(str))]
    for col in snapshot.columns:
        # A text column of the source (totalcharges: blanks in the CSV) arrives from the
        # prediction log as numbers: write them as text too, or the column mixes types.
        if snapshot[col].dtype == object and new[col].dtype != object:
            new[col] = new[col].astype(object).map(lambda v: None if pd.isna(v) else str(v))
    out = pd.concat([snapshot, new], ignore_index=True)
    for col in snapshot.columns:  # keep the snapshot's dtypes where the values allow it
        try:
            out[col] = out[col].astype(snapshot[col].dtype)
        except (TypeError, ValueError):
            pass
    return out, len(new)
