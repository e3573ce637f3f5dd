"""What the notebooks show (mlfolio.views), on stage results computed from the Telco data."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from mlfolio import data, evaluate, monitor, train, views
from mlfolio.config import GateConfig, RetrainPolicyConfig

from .conftest import ROOT

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def scored(cfg, parts):
    """A logistic regression fitted on the training rows; (y, scores) of valid and test."""
    model = train.fit(cfg.schema, "logreg", {"C": 1.0, "max_iter": 2000}, parts["train"], cfg.seed)
    return {
        name: (
            data.target_vector(parts[name], cfg.schema).to_numpy(),
            train.predict_scores(model, parts[name], cfg.schema),
        )
        for name in ("valid", "test")
    }


def evaluate_result(scored, champion: bool) -> dict:
    """evaluate.json as evaluate_candidate writes it, from real scores."""
    y, score = scored["test"]
    valid = evaluate.classification_metrics(*scored["valid"], 0.35)
    test = evaluate.classification_metrics(y, score, 0.35)
    champ, comparison = None, None
    if champion:
        weak = np.clip(score + np.random.default_rng(0).normal(0, 0.3, len(score)), 0, 1)
        champ = {"version": "3", "test": evaluate.classification_metrics(y, weak, 0.35)}
        comparison = evaluate.bootstrap_auc_difference(y, score, weak, 200, 0.95, 0)
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.8), test, comparison, "3")
    return {
        "candidate": {"name": "logreg", "valid": valid, "test": test},
        "threshold": 0.35,
        "champion": champ,
        "comparison": comparison,
        "gate": verdict.to_dict(),
    }


# -- ingest ------------------------------------------------------------------------------
def test_ingest_markdown_says_what_was_sampled_and_read_as_missing(cfg):
    info = {
        "source_rows": 4000,
        "dropped_missing_target": 0,
        "rows": 1000,
        "non_finite_as_missing": {"tenure": 2},
    }
    assert views.ingest_markdown(info, cfg.schema).data == (
        "**4,000 rows read**, all with a value in the target `churn`.\n\n"
        "A seeded sample of 1,000 of them (`data.sample_rows`) is the snapshot.\n\n"
        "Column `tenure`: 2 non-finite value(s) treated as missing "
        "(`schema.non_finite: missing`)."
    )


# -- tune ---------------------------------------------------------------------------------
def test_tuning_views_without_a_study_say_tuning_is_off():
    assert views.trials_table(None)["note"].iloc[0] == "tuning.enabled is false: no study was run"
    assert views.plot_study(None) is None


def tuned_study():
    """A study as the tune stage leaves it: complete trials, and pruned ones whose partial
    score (after one fold, the pruner's running mean) is higher than any complete one."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction="maximize")
    dist = {"learning_rate": FloatDistribution(0.01, 0.3)}
    for value, state, folds in (
        (0.84, "COMPLETE", 3),
        (0.91, "PRUNED", 1),
        (0.85, "COMPLETE", 3),
        (0.83, "COMPLETE", 3),
        (0.90, "PRUNED", 2),
        (None, "FAIL", 0),
    ):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[state],
                value=value,
                params={"learning_rate": 0.1},
                distributions=dist,
                intermediate_values={step: value for step in range(folds)},
            )
        )
    return study


def test_trials_table_ranks_complete_trials_only():
    table = views.trials_table(tuned_study(), top=10)
    assert table["number"].tolist() == [2, 0, 3]  # pruned 0.91 and 0.90 are not ranked
    assert (table["state"] == "COMPLETE").all()
    assert table.index.name == "rank" and table.index.tolist() == [1, 2, 3]
    assert views.trials_table(tuned_study(), top=2)["number"].tolist() == [2, 0]


def test_pruned_trials_are_counted_and_shown_apart():
    import optuna

    study = tuned_study()
    summary = views.trials_summary(study).data
    assert summary.startswith("**6 trials**: 3 complete (ranked above), 2 pruned (stopped")
    assert summary.endswith(", 1 failed.")
    apart = views.pruned_table(study)
    assert apart["number"].tolist() == [1, 4, 5]
    assert apart["state"].tolist() == ["PRUNED", "PRUNED", "FAIL"]
    assert apart["stopped at"].tolist() == [
        "after 1 fold(s)",
        "after 2 fold(s)",
        "before its first check",
    ]
    assert apart["partial value"].iloc[0] == 0.91
    fig = views.plot_study(study)
    title = fig.axes[0].get_title()
    assert title == "Optimization history (3 complete, 2 pruned, 1 failed or running)"
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "pruned (partial score)" in labels
    matplotlib.pyplot.close(fig)
    empty = optuna.create_study(direction="maximize")
    assert views.pruned_table(empty).data == "No trials."
    complete = optuna.create_study(direction="maximize")
    complete.add_trial(study.trials[0])
    assert views.pruned_table(complete).data == "No trial was pruned or failed."
    assert views.trials_summary(None).data.startswith("`tuning.enabled` is false")


def test_a_trial_pruned_inside_boosting_says_the_round():
    import optuna

    from mlfolio.tune.search import STEPS_ROUNDS

    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            value=0.8,
            params={"learning_rate": 0.1},
            distributions={"learning_rate": optuna.distributions.FloatDistribution(0.01, 0.3)},
            # the folds' mean AUC after rounds 10, 20 and 30 (checks every 10 rounds)
            intermediate_values={29: 0.8, 9: 0.81, 19: 0.82},
            user_attrs={"steps": STEPS_ROUNDS},
        )
    )
    assert views.pruned_table(study)["stopped at"].tolist() == ["round 30"]


def test_tune_markdown_says_warm_start_rows_and_early_stopping():
    info = {
        "enabled": True,
        "warm_start": {"version": "3", "params": {"max_depth": 4}},
        "rows_tuned_on": 1000,
        "rows_refitted_on": 24000,
        "early_stopped_n_estimators": 137,
    }
    text = views.tune_markdown(info).data
    assert "champion version 3's parameters" in text
    assert "sample of 1,000 of the 24,000 training rows" in text
    assert "refitted on all 24,000" in text
    assert "137 boosting rounds" in text
    skipped = {
        "enabled": True,
        "warm_start": {"skipped": "no champion: m@champion does not exist"},
        "rows_tuned_on": 500,
        "rows_refitted_on": 500,
        "early_stopped_n_estimators": None,
    }
    text = views.tune_markdown(skipped).data
    assert "skipped (no champion: m@champion does not exist)" in text
    assert "tuned and refitted on all 500 training rows" in text
    assert "Early stopping" not in text
    baseline = {
        **skipped,
        "warm_start": {"baseline": "training.xgboost", "params": {}, "because": "no champion"},
    }
    text = views.tune_markdown(baseline).data
    assert "the train stage's model (`training.xgboost`); not the champion: no champion" in text


def test_plot_features_draws_every_feature_or_names_those_left_out(cfg, parts):
    train_rows = parts["train"]
    fig = views.plot_features(train_rows, cfg.schema)
    titles = [a.get_title() for a in fig.axes if a.has_data()]
    assert titles == [*cfg.schema.numeric, *cfg.schema.categorical]
    assert fig._suptitle is None
    matplotlib.pyplot.close(fig)
    fig = views.plot_features(train_rows, cfg.schema, max_categorical=14)
    assert len([a for a in fig.axes if a.has_data()]) == 3 + 14
    assert fig._suptitle.get_text() == (
        "Not plotted (max_categorical=14): paperlessbilling, paymentmethod"
    )
    matplotlib.pyplot.close(fig)


# -- evaluate -----------------------------------------------------------------------------
def test_metrics_frame_rows_and_verdict_markdown(scored):
    first = evaluate_result(scored, champion=False)
    table = views.metrics_frame(first)
    assert list(table.index) == ["logreg · valid", "logreg · test"]
    assert table.loc["logreg · test", "roc_auc"] == round(first["candidate"]["test"]["roc_auc"], 4)
    text = views.verdict_markdown(first).data
    assert text.startswith("Gate: **PASSED** — eligible for champion\n\n- PASS test ROC AUC 0.")
    assert text.endswith("- PASS no champion yet: nothing to beat")

    against = evaluate_result(scored, champion=True)
    assert list(views.metrics_frame(against).index)[-1] == "champion v3 · test"
    assert "ROC AUC gain over champion v3" in views.verdict_markdown(against).data


def test_undefined_precision_reads_n_a_never_zero(scored):
    from mlfolio import explain_views

    result = evaluate_result(scored, champion=True)
    y, score = scored["test"]
    result["candidate"]["test"] = evaluate.classification_metrics(y, 0.5 * score, 0.6)
    table = views.metrics_frame(result)
    assert table.loc["logreg · test", "precision"] == "n/a"
    assert table.loc["logreg · test", "recall"] == 0.0
    # the threshold curve: no precision where no validation row reaches the threshold
    yv, sv = scored["valid"]
    result["threshold_curve"] = evaluate.threshold_curve(yv, sv)
    fig = explain_views.plot_threshold_curve(result)
    ax = fig.axes[0]
    precision = next(line for line in ax.lines if line.get_label() == "precision")
    undefined = np.asarray(result["threshold_curve"]["threshold"]) > sv.max()
    assert undefined.any() and np.isnan(precision.get_ydata()[undefined]).all()
    notes = " ".join(t.get_text() for t in ax.texts)
    first = result["threshold_curve"]["threshold"][int(np.argmax(undefined))]
    assert f"precision n/a from {first:.2f}: no validation row predicted positive" in notes
    matplotlib.pyplot.close(fig)
    # segments: a value where nothing is predicted positive
    result["segments"] = {
        "columns": ["contract"],
        "chosen_by": "evaluation.segment_columns",
        "min_rows": 30,
        "rows": [
            {
                "column": "contract",
                "value": "Two year",
                "rows": 400,
                "positive_rate": 0.03,
                "candidate": {"roc_auc": 0.7, "recall": 0.0, "precision": None},
            }
        ],
    }
    seg = explain_views.segments_table(result)
    assert seg.loc["contract = Two year", "candidate precision"] == "n/a"
    assert seg.loc["contract = Two year", "candidate recall"] == 0.0


# -- register -----------------------------------------------------------------------------
def test_registration_markdown_for_each_outcome():
    base = {"model_name": "churn", "version": "4", "registered": True}
    assert (
        views.registration_markdown(
            {**base, "registered": False, "why_not_promoted": "interactive run"}
        ).data
        == "**Not registered.** interactive run"
    )
    assert views.registration_markdown(
        {**base, "promoted": True, "compared_against": "3"}
    ).data == (
        "Registered **churn v4** as `challenger`. Promoted to `champion` (replacing v3, the "
        "version the gate compared against)."
    )
    assert views.registration_markdown(
        {**base, "promoted": False, "why_not_promoted": "gate failed", "champion": "3"}
    ).data == (
        "Registered **churn v4** as `challenger`. **Not promoted**: gate failed.\n\n"
        "Champion now: v3."
    )
    pending = {"command": "mlfolio approve churn 4 --by NAME"}
    assert views.registration_markdown(
        {**base, "promoted": False, "pending_approval": True, "approval": pending, "champion": "3"}
    ).data == (
        "Registered **churn v4** as `challenger`. **Pending approval**: "
        "`mlfolio approve churn 4 --by NAME` makes it champion.\n\nChampion now: v3."
    )


# -- deploy -------------------------------------------------------------------------------
def test_deploy_table_shows_what_happened_and_the_first_plain_facts():
    result = {
        "targets": {
            "kubernetes": {
                "status": "deployed",
                "namespace": "ml",
                "replicas": 2,
                "files": ["kubernetes.yaml"],
                "validated": {"ok": True},
                "image": "mlfolio:1",
                "model_uri": "models:/churn@champion",
                "port": 8080,
            },
            "lambda": {"status": "failed", "error": "no role"},
        }
    }
    table = views.deploy_table(result)
    # an older deploy.json said "deployed" for manifests that were only written
    assert table.loc["kubernetes", "status"] == "manifests written (not applied)"
    assert table.loc["kubernetes", "details"] == (
        "namespace=ml; replicas=2; image=mlfolio:1; model_uri=models:/churn@champion"
    )
    assert table.loc["lambda"].tolist() == ["failed", "error=no role"]


# -- monitor ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monitor_result(cfg, parts, scored):
    """monitor.json as monitor_model returns it, from a real verdict and real scores."""
    current = parts["test"].copy()
    current["monthlycharges"] = current["monthlycharges"] * 1.5 + 20
    verdict = monitor.drift_verdict(parts["train"], current, cfg.schema)
    y, score = scored["test"]
    reference = evaluate.classification_metrics(*scored["valid"], 0.35)
    quality = monitor.quality_comparison(reference, y, score, 0.35)
    decision = monitor.retrain_decision(
        RetrainPolicyConfig(min_rows=100),
        verdict,
        len(y),
        -quality["delta"]["roc_auc"],
        labelled_rows=len(y),
    )
    return {
        "model": {"name": "churn", "version": "3"},
        "reference": {"rows": 2400},
        "current": {"rows": len(y), "uri": "current.csv", "labelled_rows": len(y)},
        "share_drifted": verdict["share_drifted"],
        "drifted_columns": verdict["drifted_columns"],
        "dataset_drift": verdict["dataset_drift"],
        "prediction_drift": False,
        "quality": quality,
        "decision": decision.to_dict(),
        "reports": {"drift": "drift_report.html"},
        "retrain_data": None,
        "verdict": verdict,
    }


def test_monitor_summary_and_drift_views(monitor_result, cfg):
    summary = views.monitor_summary(monitor_result)["value"]
    assert summary["champion"] == "churn v3"
    assert summary["drifted columns"] == "monthlycharges"
    q = monitor_result["quality"]
    assert summary["ROC AUC (reference → current)"] == (
        f"{q['reference']['roc_auc']:.4f} → {q['current']['roc_auc']:.4f}"
    )

    table = views.verdict_table(monitor_result["verdict"])
    assert list(table.columns) == ["kind", "method", "score", "threshold", "drifted"]
    assert list(table.index) == list(cfg.schema.features)
    assert table.loc[table["drifted"]].index.tolist() == ["monthlycharges"]
    fig = views.plot_drift(monitor_result["verdict"])
    bars = fig.axes[0].patches
    assert len(bars) == len(cfg.schema.features)
    red = [b for b in bars if b.get_facecolor() == matplotlib.colors.to_rgba("tab:red")]
    assert len(red) == 1 and red[0].get_width() >= 1.0  # past its threshold
    matplotlib.pyplot.close(fig)


def test_quality_table_and_decision_markdown(monitor_result):
    table = views.quality_table(monitor_result)
    assert list(table.columns) == ["reference", "current", "delta"]
    assert table.loc["roc_auc", "delta"] == round(monitor_result["quality"]["delta"]["roc_auc"], 4)
    assert views.quality_table({**monitor_result, "quality": None}) == (
        "No ground-truth labels for the current rows yet: quality not compared."
    )
    text = views.decision_markdown(monitor_result).data
    assert text.startswith(
        "**Retraining fires**" if monitor_result["decision"]["retrain"] else "**No retraining**"
    )
    assert "[Evidently drift report](drift_report.html)" in text
    fired = {
        **monitor_result,
        "retrain_data": "data/retrain.parquet",
        "decision": {"retrain": True, "reasons": ["FIRE dataset drift detected"]},
    }
    assert views.decision_markdown(fired).data.startswith(
        "**Retraining fires**\n\n- `FIRE dataset drift detected`\n\n"
        "Training data for the retraining run: `data/retrain.parquet`"
    )


# -- what importing the views costs ----------------------------------------------------------
def test_importing_views_imports_no_plotting_or_tracking_library():
    code = (
        "import json, sys; import mlfolio.views; "
        "print(json.dumps(sorted(m for m in ('matplotlib', 'IPython', 'sklearn', 'mlflow', "
        "'optuna', 'evidently') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == []


def test_notebooks_call_views_and_import_only_what_they_use():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        (setup,) = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
        imported = set(
            setup.source.splitlines()[0].removeprefix("from mlfolio import ").split(", ")
        )
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c is not setup)
        called = {
            m
            for m in ("abtest", "evaluate", "features", "monitor", "stages", "tune", "views")
            if f"{m}." in code
        }
        assert imported == called, path.name
        for name in ("plot_", "_markdown(", "_table(", "profile("):
            for line in code.splitlines():
                if name in line:
                    assert "views." in line, (path.name, line)


def _random_study(n_trials: int, objective):
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    return study


def test_plot_study_when_every_trial_scored_the_same():
    """fANOVA has no variance to split when all complete trials tie (a resumed study that
    repeated its first trials did): the figure says so instead of failing the stage."""
    import matplotlib.pyplot as plt

    study = _random_study(views.FANOVA_MIN_TRIALS, lambda t: 0.8 + 0 * t.suggest_float("x", 0, 1))
    fig = views.plot_study(study)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert texts and texts[0].startswith("no importance")
    plt.close(fig)


def test_parameter_importance_only_with_enough_complete_trials():
    """A forest fitted on a handful of trials ranks noise: below FANOVA_MIN_TRIALS complete
    trials the figure says why importance is omitted, and how many there were."""
    import matplotlib.pyplot as plt

    def objective(t):
        return t.suggest_float("x", 0, 1) + 0.01 * t.suggest_float("y", 0, 1)

    assert views.FANOVA_MIN_TRIALS == 20
    few = views.plot_study(_random_study(5, objective))
    assert [t.get_text() for t in few.axes[1].texts] == [
        "Parameter importance (fANOVA) omitted: 5 complete trials, it needs at least 20 "
        "(on fewer, the importances are mostly noise)"
    ]
    assert not few.axes[1].patches
    plt.close(few)
    enough = views.plot_study(_random_study(20, objective))
    ax = enough.axes[1]
    assert ax.get_title() == "Parameter importance (fANOVA, 20 complete trials)"
    assert [label.get_text() for label in ax.get_yticklabels()] == ["y", "x"]  # x on top
    plt.close(enough)


def test_estimate_table_puts_estimated_next_to_realised():
    from mlfolio import views

    est = {
        "roc_auc": 0.8,
        "accuracy": 0.75,
        "intervals": {"roc_auc": [0.77, 0.83], "accuracy": [0.72, 0.78]},
    }
    table = views.estimate_table({"performance_estimate": est})
    assert list(table.columns) == ["estimated", "interval"]
    assert table.loc["roc_auc", "interval"] == "0.7700 – 0.8300"
    side = {
        "estimated": {"roc_auc": 0.81, "accuracy": 0.74},
        "realised": {"roc_auc": 0.7, "accuracy": 0.7},
        "error": {"roc_auc": -0.11, "accuracy": -0.04},
    }
    table = views.estimate_table({"performance_estimate": {**est, "realised": side}})
    assert table.loc["roc_auc", "error (labelled rows)"] == -0.11
    assert "No performance estimate" in views.estimate_table({"performance_estimate": None})
