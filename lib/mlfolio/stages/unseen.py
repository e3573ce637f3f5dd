"""The rows a candidate may be compared with its champion on: test rows the champion never
trained, tuned or chose its threshold on (its lineage says which it saw), and, for a
retraining, the newest labelled rows among them (out-of-time).

The candidate never saw its own test rows; the champion may have, when it was trained on
other splits of overlapping data (``split.method: seeded`` after rows were added, other
split sizes, another data set): scores on rows a model was fitted on flatter it, so those
rows are left out of the comparison and counted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mlfolio import evaluate, lineage, rowkeys
from mlfolio.config import Config
from mlfolio.errors import StageError

log = logging.getLogger(__name__)


def champion_unseen(cfg: Config, champion: Any, test: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """A mask of the test rows ``champion`` never saw, and the record of the overlap:
    its lineage source, the test rows it had seen (found, then excluded) and the overlap
    left among the rows kept (0, checked after the exclusion)."""
    seen = lineage.seen_by(champion, cfg.schema)
    if seen is None:
        raise StageError(
            "evaluate",
            f"champion {champion.uri}: which rows it was trained on is unknown (no "
            f"{lineage.ARTIFACT_DIR}/{lineage.SEEN_FILE} in run {champion.run_id}, no readable "
            "run folder or data/ artifacts of its pipeline run), so the gate cannot compare "
            "on rows it never saw; set evaluation.champion_version: none to judge the "
            "candidate alone",
        )
    keys = rowkeys.row_keys(test, cfg.schema)
    was_seen = np.isin(keys, seen.keys)
    unseen = ~was_seen
    overlap = {
        "lineage": seen.source,
        "champion_seen_rows": int(len(seen.keys)),
        "test_rows": int(len(keys)),
        "found": int(was_seen.sum()),
        "excluded": int(was_seen.sum()),
        "remaining": int(np.isin(keys[unseen], seen.keys).sum()),
    }
    log.info(
        "champion v%s saw %d of %d test rows (lineage: %s); compared on the other %d",
        champion.version,
        overlap["found"],
        overlap["test_rows"],
        seen.source,
        int(unseen.sum()),
    )
    return unseen, overlap


def recent_mask(cfg: Config, test: pd.DataFrame, unseen: np.ndarray) -> tuple[np.ndarray, dict]:
    """Out-of-time rows: the test rows among ``evaluation.recent_rows`` (the newest labelled
    rows) that the champion never saw either, and what the file held."""
    path = cfg.evaluation.recent_rows
    recent = lineage.read_keys(path)
    in_test = np.isin(rowkeys.row_keys(test, cfg.schema), recent)
    return in_test & unseen, {
        "file": path,
        "rows": int(len(recent)),
        "in_test": int(in_test.sum()),
        "unseen_by_both": int((in_test & unseen).sum()),
    }


def compare(
    cfg: Config,
    champion: Any,
    test: pd.DataFrame,
    y: np.ndarray,
    score: np.ndarray,
    champ_score: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The unseen-rows mask and evaluate.json's record of the comparison: the overlap,
    each row set's ROC AUCs and bootstrap difference, which set decides the gate (see
    :func:`mlfolio.evaluate.deciding_row_set`), its comparison and the gate's ``compared``."""
    gate = cfg.gate

    def on(mask: np.ndarray) -> dict[str, Any]:
        return evaluate.row_set_comparison(
            y,
            score,
            champ_score,
            mask,
            gate.bootstrap_samples,
            gate.confidence,
            cfg.seed,
            gate.bootstrap_rows,
        )

    unseen, overlap = champion_unseen(cfg, champion, test)
    row_sets = {"unseen_test": on(unseen)}
    record: dict[str, Any] = {"rows_unseen_by_champion": int(unseen.sum())}
    if cfg.evaluation.recent_rows:
        recent, record["recent_rows"] = recent_mask(cfg, test, unseen)
        row_sets["out_of_time"] = on(recent)
    for key, found in row_sets.items():  # the pages show it without importing evaluate
        found["label"] = evaluate.ROW_SETS[key]
    decided_by = evaluate.deciding_row_set(row_sets, gate.min_unseen_rows)
    record.update(
        champion_overlap=overlap,
        row_sets=row_sets,
        decided_by=decided_by,
        comparison=(
            {**row_sets[decided_by]["comparison"], "row_set": decided_by}
            if row_sets[decided_by]["comparison"]
            else None
        ),
        compared={
            "row_set": decided_by,
            "rows": row_sets[decided_by]["rows"],
            "excluded": overlap["excluded"],
        },
    )
    return unseen, record
