"""What the evaluate notebook shows about why the models decide: importance (bar and
beeswarm), permutation importance, the threshold curve, segments and the model card.

Like :mod:`mlfolio.views`, each function renders what the evaluate stage wrote
(``evaluate.json``, ``data/attributions.parquet``) and computes nothing a later stage
relies on; matplotlib and IPython are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlfolio import model_card
from mlfolio.config import SchemaConfig
from mlfolio.products import MODEL_CARD

METHODS = {
    "tree_shap": "SHAP values from XGBoost's own TreeSHAP (`pred_contribs`)",
    "linear": "exact linear attribution coef × (x − mean of the training rows)",
}


def thresholds(result: dict[str, Any]) -> dict[str, float]:
    """Each model's own threshold: the candidate's, and the champion's when there is one
    (the candidate's when evaluate.json predates per-model thresholds: None or absent)."""
    out = {"candidate": result["threshold"]}
    champion = result.get("champion")
    if champion:
        own = champion.get("threshold")
        out["champion"] = result["threshold"] if own is None else own
    return out


def thresholds_markdown(result: dict[str, Any]) -> Any:
    """Which threshold each model is scored at, and where the champion's comes from."""
    from IPython.display import Markdown

    lines = [f"- candidate `{result['candidate']['name']}`: **{result['threshold']:.4f}**"]
    champion = result.get("champion")
    if champion:
        t = champion.get("threshold")
        lines.append(
            f"- champion v{champion['version']}: **{t:.4f}** "
            f"({champion.get('threshold_source') or 'source not recorded'})"
            if t is not None
            else f"- champion v{champion['version']}: at the candidate's threshold "
            "(this evaluate.json predates per-model thresholds)"
        )
    return Markdown("\n".join(lines))


def importance_markdown(result: dict[str, Any]) -> Any:
    """How each model was explained (method, rows) and what a kind without exact
    attribution gets instead."""
    from IPython.display import Markdown

    lines = []
    for name, summary in (result.get("explain") or {}).items():
        how = METHODS.get(summary.get("method") or "", "no exact attribution")
        lines.append(
            f"- **{name}**: {how}; permutation importance with "
            f"{summary['permutation_repeats']} repeats; {summary['rows']} test rows"
            + (f". *{summary['note']}.*" if summary.get("note") else "")
        )
    return Markdown("\n".join(lines) or "No explanation in evaluate.json.")


def _swarm_offsets(x: np.ndarray, width: float = 0.38, bins: int = 60) -> np.ndarray:
    """Vertical offsets that spread points sharing an x-bin, alternately up and down."""
    if len(x) == 0:
        return np.zeros(0)
    span = np.ptp(x) or 1.0
    idx = np.minimum(((x - x.min()) / span * bins).astype(int), bins - 1)
    offsets = np.zeros(len(x))
    counts = np.bincount(idx, minlength=bins)
    scale = width / max(int(counts.max()), 1)
    for b in np.flatnonzero(counts):
        members = np.flatnonzero(idx == b)
        k = np.arange(len(members))
        offsets[members] = np.where(k % 2, -1, 1) * ((k + 1) // 2) * scale * 2
    return np.clip(offsets, -width, width)


def _colour_values(rows: pd.DataFrame, col: str, schema: SchemaConfig) -> np.ndarray | None:
    """A numeric column's values as percentiles in [0, 1] (None: categorical, drawn grey)."""
    if col not in schema.numeric:
        return None
    values = pd.to_numeric(rows[col].astype("string").str.strip(), errors="coerce")
    return values.rank(pct=True).to_numpy()


def plot_importance(
    result: dict[str, Any],
    attributions: pd.DataFrame,
    test: pd.DataFrame,
    schema: SchemaConfig,
    top: int = 10,
) -> Any:
    """Per model (rows): mean |attribution| per raw column (bar) and the beeswarm of the
    per-row attributions (colour: a numeric column's value, low blue to high red;
    categorical columns grey). A model without exact attribution shows its permutation
    importance instead."""
    import matplotlib.pyplot as plt

    explained = result.get("explain") or {}
    names = list(explained)
    fig, axes = plt.subplots(
        max(1, len(names)), 2, figsize=(15, 0.42 * top * max(1, len(names)) + 1.5), squeeze=False
    )
    for (bar_ax, swarm_ax), name in zip(axes, names, strict=False):
        values, by = model_card.ranking(explained[name])
        if by == "mean_abs":
            bar_ax.set_xlabel("mean |attribution| (log-odds)")
            bar_ax.set_title(f"{name}: global importance")
        else:
            bar_ax.set_xlabel("drop in ROC AUC when shuffled")
            bar_ax.set_title(f"{name}: permutation importance (no exact attribution)")
        cols = list(values)[:top]
        bar_ax.barh(cols[::-1], [values[c] for c in cols[::-1]], color="tab:blue")
        rows = attributions[attributions["model"] == name]
        if rows.empty:
            swarm_ax.text(0.5, 0.5, "no per-row attributions", ha="center", va="center")
            swarm_ax.axis("off")
            continue
        values_of = test.loc[rows["row"].astype(int).to_numpy()].reset_index(drop=True)
        for pos, col in enumerate(cols[::-1]):
            x = rows[col].to_numpy()
            y = pos + _swarm_offsets(x)
            colour = _colour_values(values_of, col, schema)
            if colour is None:
                swarm_ax.scatter(x, y, s=5, color="grey", alpha=0.5, linewidths=0)
            else:
                swarm_ax.scatter(
                    x, y, s=5, c=colour, cmap="coolwarm", vmin=0, vmax=1, alpha=0.8, linewidths=0
                )
        swarm_ax.axvline(0, color="black", lw=0.8)
        swarm_ax.set_yticks(range(len(cols)), cols[::-1])
        swarm_ax.set_xlabel(
            "attribution to the margin (log-odds; > 0 pushes towards positive)\n"
            "colour: a numeric column's value, blue low → red high; categorical grey"
        )
        swarm_ax.set_title(f"{name}: per-row attributions ({len(rows)} test rows)")
    fig.tight_layout()
    return fig


def permutation_table(result: dict[str, Any]) -> pd.DataFrame:
    """Permutation importance (drop in ROC AUC, mean ± std) per raw column and model,
    ordered by the candidate's."""
    explained = result.get("explain") or {}
    table = pd.DataFrame(
        {
            f"{name} (mean ± std)": {
                col: f"{v['mean']:+.4f} ± {v['std']:.4f}" for col, v in s["permutation"].items()
            }
            for name, s in explained.items()
        }
    )
    if "candidate" in explained:
        order = list(explained["candidate"]["permutation"])
        table = table.loc[order]
    table.index.name = "column"
    return table


def plot_threshold_curve(result: dict[str, Any]) -> Any:
    """Precision, recall and F1 against the threshold on the validation rows, with the
    chosen threshold marked (a matplotlib Figure); None when evaluate.json has no curve."""
    import matplotlib.pyplot as plt

    curve = result.get("threshold_curve")
    if not curve:
        return None
    t = result["threshold"]
    x = np.asarray(curve["threshold"], dtype=float)
    # None (undefined) becomes NaN: the line stops there instead of dropping to 0
    y = {k: np.asarray(curve[k], dtype=float) for k in ("precision", "recall", "f1")}
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, colour in (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green")):
        ax.plot(x, y[key], label=key, color=colour)
    undefined = np.isnan(y["precision"])
    if undefined.any():
        start = float(x[undefined][0])
        ax.axvspan(start, 1, color="0.9", zorder=0)
        ax.text(
            start,
            0.5,
            f" precision n/a from {start:.2f}: no validation row predicted positive",
            rotation=90,
            va="center",
            fontsize=8,
        )
    known = ~np.isnan(y["f1"])
    f1_at = float(np.interp(t, x[known], y["f1"][known]))
    ax.axvline(t, color="black", ls="--", lw=1)
    ax.plot([t], [f1_at], "o", color="tab:green")
    ax.annotate(
        f"chosen {t:.3f} (F1 {f1_at:.3f})",
        (t, f1_at),
        textcoords="offset points",
        xytext=(8, 8),
    )
    ax.set_xlabel("threshold")
    ax.set_ylabel("score on validation rows")
    ax.set_title("Why this threshold (validation rows, where it was chosen)")
    ax.legend()
    fig.tight_layout()
    return fig


def segments_table(result: dict[str, Any]) -> pd.DataFrame | str:
    """One row per segment: rows, positives, positive rate, each model's ROC AUC, recall
    and precision (at its own threshold); with a champion, the ROC AUC difference with its
    interval and the verdict (candidate worse only when the interval lies below 0)."""
    seg = result.get("segments")
    if not seg or not seg.get("rows"):
        return "No segment had enough test rows (evaluation.segment_min_rows)."
    records = []
    for r in seg["rows"]:
        rec: dict[str, Any] = {
            "segment": f"{r['column']} = {r['value']}",
            "rows": r["rows"],
            "positives": r.get("positives"),
            "positive rate": round(r["positive_rate"], 3),
        }
        for model in ("candidate", "champion"):
            for metric, value in (r.get(model) or {}).items():
                # undefined (None): no predicted positive, one class only
                rec[f"{model} {metric}"] = "n/a" if value is None else round(value, 3)
        if r.get("champion"):
            level = f"{(seg.get('confidence') or 0.95):.0%}"
            rec[f"ROC AUC difference ({level} CI)"] = model_card.segment_interval(r)
            rec["verdict"] = model_card.segment_verdict(r)
        records.append(rec)
    return pd.DataFrame(records).set_index("segment")


def segments_markdown(result: dict[str, Any]) -> Any:
    """Which columns the segments come from, and the flag rule."""
    from IPython.display import Markdown

    seg = result.get("segments") or {}
    if not seg:
        return Markdown("No error analysis by segment in evaluate.json.")
    flagged = [f"`{r['column']} = {r['value']}`" for r in seg["rows"] if r.get("flagged")]
    unjudged = [
        f"`{r['column']} = {r['value']}`"
        for r in seg["rows"]
        if r.get("champion") and not r.get("judged")
    ]
    text = (
        f"Columns {', '.join(f'`{c}`' for c in seg['columns'])} ({seg['chosen_by']}); "
        f"segments of at least {seg['min_rows']} test rows. "
    )
    if not any(r.get("champion") for r in seg["rows"]):
        text += "No champion to compare with: nothing flagged."
    else:
        text += f"Flagged where {seg['flag_rule']}: " + (", ".join(flagged) or "none") + "."
        if unjudged:
            text += (
                f" Not judged (fewer than {seg.get('min_positives')} positive or negative "
                f"rows: a difference there cannot be told from noise): {', '.join(unjudged)}."
            )
    return Markdown(text)


def model_card_markdown(result: dict[str, Any]) -> Any:
    """A link to the run's model card."""
    from IPython.display import Markdown

    return Markdown(
        f"The model card: [{MODEL_CARD.path}]({MODEL_CARD.path}) (intended use, data, "
        "metrics with intervals, threshold, segments, limitations, lineage). The register "
        "stage completes it with the version and logs it to the version's MLflow run."
    )
