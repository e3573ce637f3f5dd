"""What the stage notebooks show: Markdown, display tables and matplotlib figures.

Every function takes what a stage returned (or wrote) and renders it for a reader; none
computes a result a later stage or the registry relies on. matplotlib, IPython, sklearn,
optuna and MLflow are imported inside the functions that need them, so importing this
module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlfolio.config import SchemaConfig
from mlfolio.products import deploy_outcome

if TYPE_CHECKING:
    import optuna

    from mlfolio.context import StageContext


# -- ingest ------------------------------------------------------------------------------
def ingest_markdown(info: dict[str, Any], schema: SchemaConfig) -> Any:
    """What ingest kept and dropped, in a sentence (for the notebook)."""
    from IPython.display import Markdown

    dropped = info["dropped_missing_target"]
    kept = info["source_rows"] - dropped
    lines = [
        f"**{info['source_rows']:,} rows read**, "
        + (
            f"**{dropped:,} dropped** with no value in the target `{schema.target}` "
            f"(`schema.missing_target: {schema.missing_target}`), {kept:,} kept."
            if dropped
            else f"all with a value in the target `{schema.target}`."
        )
    ]
    if info["rows"] < kept:
        lines.append(
            f"A seeded sample of {info['rows']:,} of them (`data.sample_rows`) is the snapshot."
        )
    for col, n in info.get("non_finite_as_missing", {}).items():
        lines.append(
            f"Column `{col}`: {n:,} non-finite value(s) treated as missing "
            "(`schema.non_finite: missing`)."
        )
    return Markdown("\n\n".join(lines))


def data_quality(info: dict[str, Any]) -> Any:
    """The ingest's data-quality counts: a sentence on duplicates and dropped rows, and a
    table of the columns with missing values (blank text and non-finite numbers among them)."""
    from IPython.display import Markdown, display

    q = info.get("quality")
    if not q:
        return Markdown("_No data-quality counts (an ingest from before they were recorded)._")
    dup = f"**{q['duplicate_rows']:,} duplicate row(s)**"
    if q["duplicate_ids"] is not None:
        dup += (
            f", {q['duplicate_ids']:,} duplicate id(s), "
            f"**{q['duplicate_rows_but_id']:,} row(s) equal to another but for the id**"
        )
    dropped = q["dropped"]
    lines = [
        f"{dup} among the {q['source_rows']:,} source rows; dropped: "
        f"{dropped['missing_target']:,} without a target, {dropped['sampled_out']:,} left out "
        "of the sample.",
        f"**{q['missing_cells']:,} missing value(s)** in {len(q['missing'])} of the "
        f"{q['columns']} columns" + (":" if q["missing"] else "."),
    ]
    display(Markdown("\n\n".join(lines)))
    if not q["missing"]:
        return None
    table = pd.DataFrame(
        [
            {
                "column": col,
                "missing": n,
                "share": f"{n / q['source_rows']:.2%}",
                "blank text": q["blank_as_missing"].get(col, 0),
                "non-finite": q["non_finite_as_missing"].get(col, 0),
            }
            for col, n in q["missing"].items()
        ]
    )
    return table.set_index("column")


# -- preprocess --------------------------------------------------------------------------
def profile(df: pd.DataFrame, schema: SchemaConfig) -> pd.DataFrame:
    """One row per feature: kind, missing values, distinct values and a short summary."""
    from mlfolio.data import target_vector
    from mlfolio.features import MISSING_CATEGORY, RawColumnCoercer

    coerced = RawColumnCoercer(list(schema.numeric), list(schema.categorical)).fit(df)
    clean = coerced.transform(df)
    y = target_vector(df, schema)
    rows = []
    for col in schema.features:
        values = clean[col]
        is_num = col in schema.numeric
        missing = values.isna() if is_num else values.eq(MISSING_CATEGORY)
        row: dict[str, Any] = {
            "column": col,
            "kind": "numeric" if is_num else "categorical",
            "missing": int(missing.sum()),
            "distinct": int(values.nunique()),
        }
        if is_num:
            row["summary"] = f"mean {values.mean():.3g}, std {values.std():.3g}"
        else:
            rates = y.groupby(values).mean().sort_values(ascending=False)
            row["summary"] = f"highest positive rate: {rates.index[0]} ({rates.iloc[0]:.0%})"
        rows.append(row)
    return pd.DataFrame(rows).set_index("column")


MAX_BARS = 20  # levels plotted per categorical column


def plot_features(
    df: pd.DataFrame, schema: SchemaConfig, max_categorical: int | None = None
) -> Any:
    """Numeric histograms by class and positive rate per category, one panel per feature
    (a matplotlib Figure); with ``max_categorical``, the figure names the ones left out."""
    import matplotlib.pyplot as plt

    from mlfolio.data import target_vector
    from mlfolio.features import RawColumnCoercer

    clean = RawColumnCoercer(list(schema.numeric), list(schema.categorical)).fit(df).transform(df)
    y = target_vector(df, schema)
    cats = list(schema.categorical)[:max_categorical]
    left_out = list(schema.categorical)[len(cats) :]
    panels = [*schema.numeric, *cats]
    ncols = 4
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels, strict=False):
        if col in schema.numeric:
            for label, color in ((0, "tab:blue"), (1, "tab:red")):
                ax.hist(
                    clean.loc[y == label, col].dropna(),
                    bins=30,
                    alpha=0.5,
                    color=color,
                    label=str(schema.positive_label if label else schema.negative_label),
                )
            ax.legend(fontsize=7)
        else:
            # the most frequent levels only: a bar per level of a 50,000-level column
            # took minutes to draw (and could not be read)
            counts = clean[col].value_counts()
            shown = counts.index[:MAX_BARS]
            rate = y.groupby(clean[col]).mean()[shown].sort_values()
            ax.barh([str(i)[:18] for i in rate.index], rate.values, color="tab:red")
            ax.set_xlabel("positive rate")
            if len(counts) > MAX_BARS:
                ax.set_xlabel(f"positive rate ({MAX_BARS} most frequent of {len(counts)} levels)")
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if left_out:
        fig.suptitle(f"Not plotted (max_categorical={max_categorical}): {', '.join(left_out)}")
    fig.tight_layout()
    return fig


# -- tune --------------------------------------------------------------------------------
def trials_table(study: optuna.Study | None, top: int | None = None) -> pd.DataFrame:
    """Complete trials ranked by value (best first): state, value, duration, parameters;
    ``top``: the best ``top``. Pruned trials carry a partial score (fewer folds) and failed
    ones none, so neither is ranked: :func:`pruned_table` shows them. A note when tuning is
    off (no study)."""
    if study is None:
        return pd.DataFrame({"note": ["tuning.enabled is false: no study was run"]})
    df = _trials_frame(study)
    df = df[df["state"] == "COMPLETE"].sort_values("value", ascending=False, kind="stable")
    df.index = pd.RangeIndex(1, len(df) + 1, name="rank")
    return df.head(top) if top else df


def _trials_frame(study: optuna.Study) -> pd.DataFrame:
    df = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    if df.empty:
        return pd.DataFrame(columns=["number", "state", "value", "duration"])
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds().round(2)
    return df.rename(columns=lambda c: c.removeprefix("params_"))


def trials_summary(study: optuna.Study | None) -> Any:
    """How many trials completed, were pruned and failed, in a sentence (Markdown)."""
    from IPython.display import Markdown

    if study is None:
        return Markdown("`tuning.enabled` is false: no study was run.")
    states = pd.Series([t.state.name for t in study.trials], dtype=object).value_counts()
    complete, pruned, failed = (int(states.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL"))
    text = f"**{len(study.trials)} trials**: {complete} complete (ranked above)"
    text += f", {pruned} pruned" + (
        " (stopped by the pruner, at a boosting round of every fold or after a fold, when "
        "their validation ROC AUC was behind the earlier trials' at the same point: their "
        "score is partial, so they are not ranked)"
        if pruned
        else ""
    )
    return Markdown(text + f", {failed} failed.")


def tune_markdown(info: dict[str, Any]) -> Any:
    """What the study started from and saw, and what was refitted (Markdown): the warm
    start (champion version, or why not), rows tuned on / refitted on, early stopping."""
    from IPython.display import Markdown

    if not info.get("enabled"):
        return Markdown("`tuning.enabled` is false: no study was run.")
    warm = info.get("warm_start") or {}
    if "version" in warm:
        start = f"first trial = champion version {warm['version']}'s parameters"
    elif "baseline" in warm:
        start = f"first trial = the train stage's model (`{warm['baseline']}`)" + (
            f"; not the champion: {warm['because']}" if warm.get("because") else ""
        )
    else:
        start = f"skipped ({warm.get('skipped', 'not recorded')})"
    lines = [f"- **Warm start**: {start}"]
    tuned, refit = info.get("rows_tuned_on"), info.get("rows_refitted_on")
    if tuned is not None and tuned < refit:
        lines.append(
            f"- **Rows**: tuned on a stratified sample of {tuned:,} of the {refit:,} training "
            f"rows (`tuning.subsample_rows`); the best parameters were refitted on all {refit:,}"
        )
    elif refit is not None:
        lines.append(f"- **Rows**: tuned and refitted on all {refit:,} training rows")
    if info.get("early_stopped_n_estimators") is not None:
        lines.append(
            f"- **Early stopping**: the best trial's folds stopped after "
            f"{info['early_stopped_n_estimators']} boosting rounds on average; the refit "
            "uses that n_estimators"
        )
    return Markdown("\n".join(lines))


def pruned_table(study: optuna.Study | None) -> Any:
    """Pruned and failed trials apart: the folds each got through and its partial score
    (a DataFrame; Markdown saying so when there are none)."""
    from IPython.display import Markdown

    if study is None or not study.trials:
        return Markdown("No trials.")
    stopped = [t for t in study.trials if t.state.name in ("PRUNED", "FAIL")]
    if not stopped:
        return Markdown("No trial was pruned or failed.")
    df = _trials_frame(study).set_index("number").loc[[t.number for t in stopped]]
    df.insert(1, "stopped at", [_stopped_at(t) for t in stopped])
    return df.rename(columns={"value": "partial value"}).reset_index()


def _stopped_at(trial: optuna.trial.FrozenTrial) -> str:
    """Where a pruned trial stopped: a boosting round (xgboost reports the folds' mean
    AUC after round r at step r - 1) or the folds it finished."""
    from mlfolio.tune.search import STEPS_ROUNDS

    if not trial.intermediate_values:
        return "before its first check"
    last = max(trial.intermediate_values)
    if trial.user_attrs.get("steps") == STEPS_ROUNDS:
        return f"round {last + 1}"
    return f"after {len(trial.intermediate_values)} fold(s)"


# fANOVA fits a random forest on the complete trials: on fewer than this, the importances
# it reports are mostly noise, so the figure omits them and says why.
FANOVA_MIN_TRIALS = 20


def plot_study(study: optuna.Study | None) -> Any:
    """Optimization history and parameter importances side by side (a matplotlib Figure);
    importance only with at least :data:`FANOVA_MIN_TRIALS` complete trials, else a
    sentence saying why it is omitted. None when tuning is off."""
    import matplotlib.pyplot as plt
    import optuna

    if study is None:
        return None

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    fig, (hist_ax, imp_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    values = [t.value for t in complete]
    numbers = [t.number for t in complete]
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    hist_ax.scatter(numbers, values, s=14, label="trial (complete)")
    scored = [t for t in pruned if t.value is not None]
    if scored:  # apart: a partial score over fewer folds, not part of the best so far
        hist_ax.scatter(
            [t.number for t in scored],
            [t.value for t in scored],
            s=14,
            marker="x",
            color="grey",
            label="pruned (partial score)",
        )
    hist_ax.plot(
        numbers,
        np.maximum.accumulate(values) if values else [],
        color="tab:red",
        label="best so far",
    )
    hist_ax.set_xlabel("trial")
    hist_ax.set_ylabel("CV ROC AUC")
    failed = len(study.trials) - len(complete) - len(pruned)
    hist_ax.set_title(
        f"Optimization history ({len(complete)} complete, {len(pruned)} pruned, "
        f"{failed} failed or running)"
    )
    hist_ax.legend()
    importances = None
    why_not = (
        f"Parameter importance (fANOVA) omitted: {len(complete)} complete trials, it needs "
        f"at least {FANOVA_MIN_TRIALS} (on fewer, the importances are mostly noise)"
    )
    if len(complete) >= FANOVA_MIN_TRIALS and len(set(values)) == 1:
        # fANOVA would split no variance (or call one parameter 100 % important)
        why_not = f"no importance: all {len(complete)} complete trials scored {values[0]:.4f}"
    elif len(complete) >= FANOVA_MIN_TRIALS:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        except RuntimeError as exc:  # every complete trial scored the same: no variance
            why_not = f"no importance: {exc}"
    if importances:
        names = list(importances)[::-1]
        imp_ax.barh(names, [importances[n] for n in names])
        imp_ax.set_title(f"Parameter importance (fANOVA, {len(complete)} complete trials)")
    else:
        imp_ax.text(0.5, 0.5, why_not, ha="center", wrap=True)
        imp_ax.axis("off")
    fig.tight_layout()
    return fig


# -- evaluate ----------------------------------------------------------------------------
def metrics_frame(result: dict[str, Any]) -> Any:
    """Candidate (valid and test) and champion (test) metrics as one table."""
    import pandas as pd

    rows = {
        f"{result['candidate']['name']} · valid": result["candidate"]["valid"],
        f"{result['candidate']['name']} · test": result["candidate"]["test"],
    }
    if result.get("champion"):
        rows[f"champion v{result['champion']['version']} · test"] = result["champion"]["test"]
    frame = pd.DataFrame(rows).T.astype(float).round(4)
    # undefined (None: e.g. precision with no predicted positive) reads n/a, not NaN or 0
    return frame.astype(object).where(frame.notna(), "n/a")


def verdict_markdown(result: dict[str, Any]) -> Any:
    """The gate's verdict and reasons, rendered as Markdown in the notebook."""
    from IPython.display import Markdown

    gate_result = result["gate"]
    head = (
        f"**SAME MODEL** as champion v{gate_result['same_model_as']} — nothing to promote"
        if gate_result.get("same_model_as")
        else "**PASSED** — eligible for champion"
        if gate_result["passed"]
        else "**NOT PASSED** — stays challenger"
    )
    lines = [f"Gate: {head}", ""] + [f"- {r}" for r in gate_result["reasons"]]
    overlap = result.get("champion_overlap")
    if overlap:
        lines += [
            "",
            f"Compared with the champion on {result['rows_unseen_by_champion']} of "
            f"{overlap['test_rows']} test rows: {overlap['excluded']} it had trained or chosen "
            f"its threshold on left out ({overlap['remaining']} remain; its rows from "
            f"{overlap['lineage']}).",
            "",
        ]
        for key, found in result["row_sets"].items():
            auc = (
                f"candidate ROC AUC {found['candidate_roc_auc']:.4f} vs champion "
                f"{found['champion_roc_auc']:.4f}"
                if found.get("candidate_roc_auc") is not None
                else "ROC AUC not measurable (too few rows of a class)"
            )
            decides = " — **decides the gate**" if key == result["decided_by"] else ""
            lines.append(f"- {key.replace('_', ' ')}: {found['rows']} rows, {auc}{decides}")
    return Markdown("\n".join(lines))


def plot_curves(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    threshold: float | dict[str, float],
    bins: int = 10,
) -> Any:
    """ROC, precision-recall and calibration of every model, and one confusion matrix per
    model at its own threshold (``threshold``: one for all, or by model); each model's
    operating point is marked on its ROC and PR curves (a matplotlib Figure)."""
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    from mlfolio.evaluate import calibration

    thresholds = threshold if isinstance(threshold, dict) else dict.fromkeys(scores, threshold)
    fig, axes = plt.subplots(1, 3 + len(scores), figsize=(4.4 * (3 + len(scores)), 4.2))
    roc_ax, pr_ax, cal_ax = axes[:3]
    for name, score in scores.items():
        t = thresholds[name]
        pred = score >= t
        fpr, tpr, _ = skm.roc_curve(y, score)
        (line,) = roc_ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(y, score):.3f})")
        roc_ax.plot(pred[y == 0].mean(), pred[y == 1].mean(), "o", color=line.get_color())
        prec, rec, _ = skm.precision_recall_curve(y, score)
        pr_ax.plot(rec, prec, label=f"{name} (AP {skm.average_precision_score(y, score):.3f})")
        pr_ax.plot(
            pred[y == 1].mean(),
            y[pred].mean() if pred.any() else 0,
            "o",
            color=line.get_color(),
            label=f"{name} at threshold {t:.2f}",
        )
        cal = calibration(y, score, bins)
        cal_ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o", label=name)
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey")
    cal_ax.plot([0, 1], [0, 1], ls="--", color="grey")
    for ax, title, xl, yl in (
        (roc_ax, "ROC (dot: the model's threshold)", "false positive rate", "true positive rate"),
        (pr_ax, "Precision-recall", "recall", "precision"),
        (cal_ax, "Calibration", "mean predicted", "fraction positive"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=8)
    for cm_ax, (name, score) in zip(axes[3:], scores.items(), strict=True):
        t = thresholds[name]
        skm.ConfusionMatrixDisplay.from_predictions(
            y, (score >= t).astype(int), labels=[0, 1], ax=cm_ax, cmap="Blues", colorbar=False
        )
        cm_ax.set_title(f"{name}: confusion at its threshold {t:.2f}")
    fig.tight_layout()
    return fig


# -- register ----------------------------------------------------------------------------
def registration_markdown(result: dict[str, Any]) -> Any:
    """What the register stage did, in a sentence or two (for the notebook)."""
    from IPython.display import Markdown

    from mlfolio import registry

    name = result["model_name"]
    if result.get("duplicate_of"):
        moved = "" if result["promoted"] else f" No alias moved: {result['why_not_promoted']}."
        return Markdown(
            f"**No new version.** {result['why_not_registered']}.{moved}"
            + (
                f" Promoted **{name} v{result['version']}** to `{registry.CHAMPION}`."
                if result["promoted"]
                else ""
            )
        )
    if not result.get("registered", True):
        return Markdown(f"**Not registered.** {result['why_not_promoted']}")
    head = f"Registered **{name} v{result['version']}** as `{registry.CHALLENGER}`."
    if result["promoted"]:
        was = result.get("compared_against")
        return Markdown(
            f"{head} Promoted to `{registry.CHAMPION}` (replacing "
            f"{'v' + was if was else 'no champion'}, the version the gate "
            "compared against)."
        )
    champion = f"v{result['champion']}" if result.get("champion") else "none"
    why = f"**Not promoted**: {result.get('why_not_promoted')}"
    if result.get("pending_approval"):  # registry.require_approval
        why = f"**Pending approval**: `{result['approval']['command']}` makes it champion"
    return Markdown(f"{head} {why}.\n\nChampion now: {champion}.")


def alias_history_table(ctx: StageContext) -> pd.DataFrame:
    """Every recorded alias move of the experiment's registered model."""
    from mlfolio import registry

    return pd.DataFrame(registry.alias_history(ctx.cfg.model_name))


# -- deploy ------------------------------------------------------------------------------
def deploy_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per target: what happened there (``checked, then stopped``, ``manifests
    written (not applied)``, ``serving at URL``, ``deployed``) and the main facts it
    recorded."""
    rows = {}
    for target, r in result["targets"].items():
        facts = {
            k: v
            for k, v in r.items()
            if isinstance(v, str | int | float) and k not in ("status", "outcome")
        }
        rows[target] = {
            "status": deploy_outcome(target, r),
            "details": "; ".join(f"{k}={v}" for k, v in list(facts.items())[:4]),
        }
    return pd.DataFrame(rows).T


# -- monitor -----------------------------------------------------------------------------
def monitor_summary(result: dict[str, Any]) -> pd.DataFrame:
    """The headline facts of a monitor run, as a one-column table."""
    q = result.get("quality") or {}
    rows = {
        "champion": f"{result['model']['name']} v{result['model']['version']}",
        "reference rows": result["reference"]["rows"],
        "current rows": result["current"]["rows"],
        "current source": result["current"]["uri"],
        "labelled current rows": result["current"]["labelled_rows"],
        "drifted columns": ", ".join(result["drifted_columns"]) or "none",
        "share drifted": round(result["share_drifted"], 3),
        "dataset drift": result["dataset_drift"],
        "prediction drift": result["prediction_drift"],
        "ROC AUC (reference → current)": (
            f"{q['reference']['roc_auc']:.4f} → {q['current']['roc_auc']:.4f}" if q else "n/a"
        ),
        "retrain": result["decision"]["retrain"],
    }
    return pd.DataFrame({"value": rows})


def verdict_table(verdict: dict[str, Any]) -> pd.DataFrame:
    """One row per column (method, score, threshold, drifted), for display."""
    return pd.DataFrame.from_dict(verdict["columns"], orient="index")[
        ["kind", "method", "score", "threshold", "drifted"]
    ]


def plot_drift(verdict: dict[str, Any]) -> Any:
    """Bar chart of each column's drift score against its threshold (drifted in red)."""
    import matplotlib.pyplot as plt

    from mlfolio.monitor import METHODS

    table = verdict_table(verdict)
    # Distances drift above the threshold, p-values below: plot "how far past" uniformly.
    ratio = [
        row.score / row.threshold
        if METHODS[row.method][2]
        else row.threshold / max(row.score, 1e-12)
        for row in table.itertuples()
    ]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(table) + 1))
    colors = ["tab:red" if d else "tab:blue" for d in table["drifted"]]
    ax.barh(table.index, np.minimum(ratio, 10), color=colors)
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.set_xlabel("score relative to its threshold (≥ 1: drifted; capped at 10)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def quality_table(result: dict[str, Any]) -> pd.DataFrame | str:
    """Reference (champion's test rows) against current labelled rows, with deltas."""
    q = result.get("quality")
    if not q:
        return "No ground-truth labels for the current rows yet: quality not compared."
    return pd.DataFrame(
        {"reference": q["reference"], "current": q["current"], "delta": q["delta"]}
    ).round(4)


def estimate_table(result: dict[str, Any]) -> pd.DataFrame | str:
    """The label-free estimate (CBPE) per metric with its interval and, once labels came,
    estimated vs realised on the labelled rows."""
    est = result.get("performance_estimate")
    if not est:
        return "No performance estimate (monitoring.estimate.enabled false, or no calibration)."
    side = est.get("realised") or {}
    table = pd.DataFrame(
        {
            "estimated": {k: est.get(k) for k in est["intervals"]},
            "interval": {k: v and f"{v[0]:.4f} – {v[1]:.4f}" for k, v in est["intervals"].items()},
            **{f"{c} (labelled rows)": side[c] for c in ("estimated", "realised", "error") if side},
        }
    )
    return table.round(4)


def decision_markdown(result: dict[str, Any]) -> Any:
    from IPython.display import Markdown

    d = result["decision"]
    head = "**Retraining fires**" if d["retrain"] else "**No retraining**"
    lines = [head, ""] + [f"- `{r}`" for r in d["reasons"]]
    if result.get("retrain_data"):
        lines += ["", f"Training data for the retraining run: `{result['retrain_data']}`"]
    for kind, name in result["reports"].items():
        lines.append(f"\n[Evidently {kind} report]({name})")
    return Markdown("\n".join(lines))


# -- A/B report --------------------------------------------------------------------------
def variant_table(report: dict[str, Any]) -> pd.DataFrame:
    """The report's per-variant metrics, one row per variant."""
    table = pd.DataFrame(report["variants"])
    table.index = [
        f"{r.variant} v{r.model_version}" + (" (shadow)" if r.shadow else "")
        for r in table.itertuples()
    ]
    return table.drop(columns=["variant", "model_version", "shadow"]).round(4)


def comparison_table(report: dict[str, Any]) -> pd.DataFrame:
    """Challenger − champion: the mean loss by the always-valid sequential test (its
    confidence sequence and always-valid p-value), ROC AUC by DeLong (and its bootstrap
    cross-check) and accuracy."""
    c = report["comparison"]
    keys = ("difference", "ci_low", "ci_high", "p_value")
    rows: dict[str, dict[str, Any]] = {}
    if seq := c.get("sequential"):  # absent from reports before issue 24
        rows[f"{seq['metric']} (always valid)"] = {
            **{k: seq[k] for k in keys},
            "test": f"{seq['test']}, {seq['method']}",
        }
    if c["difference"] is None and not rows:
        return pd.DataFrame({"note": [c["note"]]}, index=["comparison"])
    if c["difference"] is not None:
        rows["ROC AUC"] = {**{k: c[k] for k in keys}, "test": c["test"]}
    if c["bootstrap"]:
        rows["ROC AUC (bootstrap)"] = {
            "difference": c["difference"],
            "ci_low": c["bootstrap"]["ci_low"],
            "ci_high": c["bootstrap"]["ci_high"],
            "p_value": None,
            "test": c["bootstrap"]["test"],
        }
    if c["accuracy"]:
        rows["accuracy"] = {k: c["accuracy"][k] for k in (*keys, "test")}
    table = pd.DataFrame(rows).T
    numeric = ["difference", "ci_low", "ci_high", "p_value"]
    table[numeric] = table[numeric].astype(float).round(4)
    return table


def recommendation_markdown(report: dict[str, Any]) -> Any:
    """The recommendation and its reasons, rendered as Markdown in the notebook."""
    from IPython.display import Markdown

    rec = report["recommendation"]
    lines = [f"Recommendation: **{rec['action'].upper()}** ({report['design']} design)", ""]
    lines += [f"- {r}" for r in rec["reasons"]]
    return Markdown("\n".join(lines))


def plot_variants(log: pd.DataFrame) -> Any:
    """ROC curves (labelled rows) and score distributions (all rows) per variant."""
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    from mlfolio.abtest import validate_log

    validate_log(log)
    fig, (roc_ax, dist_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for (variant, shadow, version), g in log.groupby(
        ["variant", "shadow", "model_version"], sort=False
    ):
        name = f"{variant} v{version}" + (" (shadow)" if shadow else "")
        labelled = g[g["actual"].notna()]
        y = labelled["actual"].to_numpy().astype(int)
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = skm.roc_curve(y, labelled["score"])
            auc = skm.roc_auc_score(y, labelled["score"])
            roc_ax.plot(fpr, tpr, label=f"{name}: AUC {auc:.3f} ({len(y)} labelled)")
        dist_ax.hist(
            g["score"],
            bins=30,
            range=(0, 1),
            histtype="step",
            density=True,
            label=f"{name} ({len(g)} rows)",
        )
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey")
    for ax, title, xl, yl in (
        (roc_ax, "ROC per variant", "false positive rate", "true positive rate"),
        (dist_ax, "Score distribution", "score", "density"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
