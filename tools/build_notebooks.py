"""Write the stage notebooks in notebooks/ from the outlines below (no outputs).

The committed notebooks are the source users open in JupyterLab; this script keeps their
shared cells (parameters, setup, finish) identical. Run: python tools/build_notebooks.py
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PARAMETERS = """\
# Parameters (papermill injects values after this cell; the runner passes all three).
params_file: str = "parameters/churn.yaml"  # YAML parameter file, relative to the project root
run_dir: str = ""  # run folder; empty: runs/interactive-<experiment>
parent_run_id: str = ""  # MLflow pipeline run this stage's run belongs under; empty: none
overrides: dict = {}  # dotted-key overrides of the parameter file, e.g. {"tuning.n_trials": 5}"""

SETUP = """\
from mlfolio import {modules}
from mlfolio.context import open_stage

ctx = open_stage("{stage}", params_file, run_dir, parent_run_id, overrides)
print(f"run folder: {{ctx.run_dir}}\\nMLflow run: {{ctx.mlflow_run_id}}")
print(f"library logs and warnings: {{ctx.log_file}}")"""

# Modules a notebook's cells may call; its setup cell imports the ones it uses.
MODULES = {"abtest", "evaluate", "features", "monitor", "stages", "tune", "views"}

FINISH = "ctx.finish()  # closes this stage's MLflow run"

OUTLINES = {
    "01_ingest": (
        "ingest",
        "Ingest",
        """\
Loads the rows named by `data.uri` — a CSV or Parquet file, an `s3://` object (with
`data.endpoint_url` for MinIO or moto) or a SQL query through SQLAlchemy — and checks them
against `schema`: every listed column present, numeric columns numeric (blanks allowed as
missing; `inf` and numbers too large for a float fail, or count as missing with
`schema.non_finite: missing`), target values only the two labels, ids unique. Rows with
no target are dropped and counted (`schema.missing_target: drop`, or `fail`), and enough
rows of each class must be left for the split. The rows are written as a Parquet
snapshot with a content hash that every later stage, MLflow and the registry refer to.""",
        [
            ("code", "df, info = stages.ingest(ctx)\ninfo"),
            ("code", "views.ingest_markdown(info, ctx.cfg.schema)"),
            ("md", "### Data quality (source rows)"),
            ("code", "views.data_quality(info)"),
            ("md", "The first rows of the snapshot, as the source delivered them:"),
            ("code", "df.head()"),
        ],
    ),
    "02_preprocess": (
        "preprocess",
        "Preprocess",
        """\
Splits the snapshot into train, validation and test rows (seeded and stratified on the
target) and profiles the features. Cleaning (blank numbers to missing, 0/1 flags to
categories), imputation, scaling and one-hot encoding are a scikit-learn transformer
that lives inside every model pipeline, so a served model takes raw rows.""",
        [
            (
                "code",
                "parts = stages.preprocess(ctx)\nfeatures.split_summary(parts, ctx.cfg.schema)",
            ),
            ("md", "### Feature profile (training rows)"),
            ("code", 'views.profile(parts["train"], ctx.cfg.schema)'),
            ("md", "Numeric features by class, and the positive rate per category:"),
            ("code", 'views.plot_features(parts["train"], ctx.cfg.schema);'),
        ],
    ),
    "03_train": (
        "train",
        "Train baselines",
        """\
Fits the baseline models of `training.models` on the training rows, each in its own
MLflow child run with parameters, validation metrics, signature and input example.""",
        [
            ("code", "stages.train_baselines(ctx)"),
        ],
    ),
    "04_tune": (
        "tune",
        "Tune",
        """\
An Optuna study (seeded TPE) searches the hyperparameters of `tuning.model` on the training
rows. For xgboost each fold's boosting is checked every few rounds on the validation fold:
early stopping ends it when the AUC stops improving (the trial's `n_estimators` becomes the
rounds used), and the pruner (`tuning.pruner`) stops a trial behind the others at the same
round. The study starts from the registry champion's parameters (`tuning.warm_start`), or
from the train stage's model when there is no champion of this kind, and, above
`tuning.subsample_rows` training rows, tunes on a stratified sample of them. It is stored
on disk, so a killed tuning resumes with its finished trials; each trial is logged as a
nested MLflow run. The best parameters are refitted on all training rows and scored on
validation.""",
        [
            (
                "code",
                "study, info = stages.tune_model(ctx)\n"
                '{k: v for k, v in info.items() if k != "models"}',
            ),
            ("code", "views.tune_markdown(info)"),
            ("md", "### Best trials (complete trials, ranked by CV ROC AUC)"),
            ("code", "views.trials_table(study, top=10)"),
            ("code", "views.trials_summary(study)"),
            ("md", "### Pruned and failed trials"),
            ("code", "views.pruned_table(study)"),
            ("md", "### Optimization history and parameter importance"),
            ("code", "views.plot_study(study);"),
        ],
    ),
    "05_evaluate": (
        "evaluate",
        "Evaluate",
        """\
Picks the best model on validation ROC AUC, then scores it — and the current `champion`
from the registry, on the same rows, each at its own decision threshold — on the
untouched test split. The gate applies the thresholds of `gate` and asks for a gain over
the champion whose bootstrap confidence interval clears `gate.min_improvement`. Then it
explains both models: what they rely on, why this threshold, where the candidate errs,
and a model card.""",
        [
            ("code", "result = stages.evaluate_candidate(ctx)\nviews.metrics_frame(result)"),
            ("md", "### Gate verdict"),
            ("code", "views.verdict_markdown(result)"),
            (
                "md",
                """\
### Why the model decides: feature importance
Each test row's score is split over the raw columns (in log-odds, summing to the
model's margin): SHAP values for XGBoost, the exact linear attribution for a linear
model, one-hot and scaled columns summed back into their raw column. The bar is the
mean absolute attribution per column; the beeswarm shows every sampled row (right of
zero pushes towards the positive class). Rows: `evaluation.explain_rows`.""",
            ),
            (
                "code",
                "from mlfolio import explain_views\n\nexplain_views.importance_markdown(result)",
            ),
            (
                "code",
                "attributions, test_rows = stages.explaining.attributions(ctx)\n"
                "explain_views.plot_importance(result, attributions, test_rows, ctx.cfg.schema);",
            ),
            (
                "md",
                """\
Permutation importance, the model-agnostic check: how much test ROC AUC drops when one
column is shuffled (mean ± std over `evaluation.permutation_repeats`). Where it ranks a
column lower than the attributions do, correlated columns share its information.""",
            ),
            ("code", "explain_views.permutation_table(result)"),
            (
                "md",
                """\
### Curves and confusion matrices (test rows)
Each model at its own threshold: the candidate's chosen on this run's validation rows,
the champion's as recorded when it was registered. The dots on the ROC and PR curves are
where each threshold puts the model.""",
            ),
            ("code", "explain_views.thresholds_markdown(result)"),
            (
                "code",
                "y, scores = stages.test_scores(ctx)\n"
                "views.plot_curves(y, scores, explain_views.thresholds(result));",
            ),
            (
                "md",
                """\
### Why this threshold
Precision, recall and F1 on the validation rows (where the threshold is chosen, never
on test) at every threshold; `evaluation.threshold: max_f1` takes the F1 peak.""",
            ),
            ("code", "explain_views.plot_threshold_curve(result);"),
            (
                "md",
                """\
### Error analysis by segment
The same test metrics per value of the categorical columns the candidate relies on most
(or `evaluation.segment_columns`), candidate next to champion, each at its own threshold,
with the candidate's ROC AUC minus the champion's and its paired bootstrap interval. Flagged
"candidate worse" only where that interval lies below 0; a segment with fewer than
`evaluation.segment_min_positives` positive or negative rows is shown but not judged.""",
            ),
            ("code", "explain_views.segments_markdown(result)"),
            ("code", "explain_views.segments_table(result)"),
            ("md", "### Model card"),
            ("code", "explain_views.model_card_markdown(result)"),
        ],
    ),
    "06_register": (
        "register",
        "Register",
        """\
Registers the candidate as a new version in the MLflow model registry, tagged with the
run folder and data hash, and points the `challenger` alias at it. `champion` moves only
when the gate passed; every move is recorded (who, why, when), since MLflow keeps no
alias history of its own.""",
        [
            ("code", "result = stages.register_model(ctx)\nviews.registration_markdown(result)"),
            ("md", "### Alias history"),
            ("code", "views.alias_history_table(ctx)"),
        ],
    ),
    "07_deploy": (
        "deploy",
        "Deploy",
        """\
Deploys the model version behind `deploy.alias` (default `champion`) to each target of
`deploy.targets`: **local** starts `mlfolio serve`, checks its answers on test rows
against the pipeline's own, then stops it (`deploy.local.keep_serving` leaves it serving);
**kubernetes** writes a Dockerfile, Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget and a KServe InferenceService, validated against the Kubernetes
schemas, and applies nothing; **lambda** and **sagemaker** build the package or
`model.tar.gz` and create or update the function or endpoint through boto3. What each
target really did (checked, then stopped; serving at URL; manifests written, not applied;
deployed) is written to `deploy.json`.""",
        [
            ("code", "result = stages.deploy_model(ctx)\nviews.deploy_table(result)"),
        ],
    ),
    "08_monitor": (
        "monitor",
        "Monitor",
        """\
Compares current data with the rows the `champion` was trained on (its run folder's
training split): the prediction log of the model server over `monitoring.window_hours`
(`monitoring.prediction_log`), or a CSV/Parquet file (`mlfolio monitor --current FILE`).
Every feature gets the test Evidently 0.7's DataDriftPreset would pick, computed over all
rows; the model's scores are compared the same way (prediction drift). When ground truth
has arrived (`monitoring.labels`, or the target column in the file), the champion's
quality on the labelled rows is compared with its quality on its own test rows. The
retraining policy (`monitoring.retrain`) turns this into a decision; `mlfolio monitor`
acts on it after this notebook. Evidently's HTML reports use a seeded sample of
`monitoring.report_sample_rows` rows.""",
        [
            ("code", "result = stages.monitor_model(ctx)\nviews.monitor_summary(result)"),
            ("md", "### Drift per column (all rows)"),
            ("code", 'views.verdict_table(result["verdict"])'),
            ("code", 'views.plot_drift(result["verdict"]);'),
            ("md", "### Quality on labelled current rows"),
            ("code", "views.quality_table(result)"),
            (
                "md",
                "### Performance estimated without labels\n\n"
                "CBPE: the champion's scores, calibrated by the map shipped with its version, "
                "give the\nexpected metrics and their intervals. It assumes P(y | x) unchanged "
                "(covariate shift\nonly); once labels arrive, realised outside the interval "
                "flags a concept shift.",
            ),
            ("code", "views.estimate_table(result)"),
            ("md", "### Retraining decision"),
            ("code", "views.decision_markdown(result)"),
        ],
    ),
    "09_ab_report": (
        "ab_report",
        "A/B and shadow report",
        """\
Compares the `challenger` with the `champion` on the predictions the model server logged
over the window, joined with the outcomes that have arrived since. In **A/B** mode each
entity was routed to one variant (sticky by entity id hash), so the arms are independent
samples: ROC AUC is compared with DeLong's test for two independent ROC curves, accuracy
with a two-proportion z-test. In **shadow** mode the challenger scored every request
without answering it, so both variants are compared on the same rows: DeLong's paired
test and McNemar's test. A bootstrap interval of the ROC AUC difference is shown beside
DeLong's as a cross-check. The recommendation — **promote** (significantly better),
**roll back** (significantly worse: stop the experiment) or **keep** (inconclusive, or
too few labelled rows) — follows an always-valid sequential test (`mlfolio.sequential`,
a mixture SPRT on the ROC AUC difference by default, `monitoring.ab.metric`): its
p-value may be read after every monitor run without inflating its error, which DeLong's
fixed-horizon test, shown beside it, does not allow. It is written to `ab.json` for the
registry to act on.""",
        [
            ("code", "log, report = stages.ab_report(ctx)\nviews.variant_table(report)"),
            ("md", "### Challenger − champion"),
            ("code", "views.comparison_table(report)"),
            ("md", "### Recommendation"),
            ("code", "views.recommendation_markdown(report)"),
            ("md", "### ROC curves and score distributions per variant"),
            ("code", "views.plot_variants(log);"),
        ],
    ),
}


def used_modules(body: list[tuple[str, str]]) -> list[str]:
    """The mlfolio modules the notebook's code cells call (``stages.x(...)``), sorted: the
    setup cell imports only those."""
    code = "\n".join(source for kind, source in body if kind == "code")
    found = sorted(set(re.findall(r"\b([a-z_]+)\.[a-z_]+\(", code)) & MODULES)
    if not found:
        raise ValueError(f"no mlfolio module called in {code!r}")
    return found


def build(name: str) -> nbformat.NotebookNode:
    stage, title, intro, body = OUTLINES[name]
    cells = [new_markdown_cell(f"# {title}\n\n{intro}")]
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    setup = new_code_cell(SETUP.format(stage=stage, modules=", ".join(used_modules(body))))
    setup.metadata["tags"] = ["setup"]
    cells += [params, setup]
    for kind, source in body:
        cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    cells.append(new_code_cell(FINISH))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stage}-{i:02d}"
    return nb


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "notebooks"
    for name in OUTLINES:
        nbformat.write(build(name), out / f"{name}.ipynb")


if __name__ == "__main__":
    main()
