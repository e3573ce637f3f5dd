"""Stages ingest, preprocess, train, tune and evaluate."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlfolio import (
    data,
    estimate,
    evaluate,
    features,
    lineage,
    products,
    progress,
    registry,
    rowkeys,
    tracking,
    train,
    tune,
)
from mlfolio.config import Config
from mlfolio.context import StageContext
from mlfolio.errors import StageError

log = logging.getLogger(__name__)


# Paths of the data products (declared in mlfolio.products), for readers of other runs.
SNAPSHOT = products.SNAPSHOT.path
SPLITS = {name: product.path for name, product in products.SPLITS.items()}


# -- ingest ---------------------------------------------------------------------------
def ingest(ctx: StageContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load the source, validate it, write the Parquet snapshot and its content hash.

    Rows without a target are dropped and counted (``schema.missing_target``); the rows
    kept (after ``data.sample_rows``) must be enough for the stratified split.
    """
    cfg = ctx.cfg
    raw = data.load_source(cfg.data, columns=data.schema_columns(cfg.schema))
    checked = data.check(raw, cfg.schema, source=cfg.data.uri)
    df = data.sample(checked.frame, cfg.data.sample_rows, cfg.seed)
    data.check_split_size(
        df,
        cfg.schema,
        cfg.split,
        cfg.tuning.cv_folds if cfg.tuning.enabled else None,
        source=cfg.data.uri,
        sample_rows=cfg.data.sample_rows if len(df) < len(checked.frame) else None,
    )
    digest = data.write_snapshot(df, ctx.path(SNAPSHOT))
    info = {
        "source": cfg.data.uri,
        # what was read (the runner compares it with the hash it reused stages by)
        "source_hash": data.source_hash(cfg.data, raw),
        "data_hash": digest,
        "snapshot": SNAPSHOT,
        "source_rows": int(len(raw)),
        "dropped_missing_target": checked.dropped_missing_target,
        "non_finite_as_missing": checked.non_finite_as_missing,
        "all_missing_ignored": checked.all_missing,
        **data.summary(df, cfg.schema),
        "quality": data.quality(raw, cfg.schema, checked, len(df)),
    }
    dataset = tracking.pandas_dataset(
        df, source=cfg.data.uri, targets=cfg.schema.target, name=cfg.experiment, digest=digest[:16]
    )
    mlflow.log_input(dataset, context="raw")
    mlflow.log_params(
        {
            "data.uri": cfg.data.uri,
            "data.rows": len(df),
            "data.dropped_missing_target": checked.dropped_missing_target,
        }
    )
    mlflow.set_tag("mlfolio.data_hash", digest)
    ctx.write(products.INGEST, info)
    return df, info


# -- preprocess -----------------------------------------------------------------------
def preprocess(ctx: StageContext) -> dict[str, pd.DataFrame]:
    """The train/valid/test split of the snapshot (``split.method``), written as Parquet,
    and the keys of the rows its models will see (train + valid)."""
    cfg = ctx.cfg
    snapshot = ctx.read_parquet(SNAPSHOT)
    # each row's key once: the hash split's, and the seen rows' (hashing 8M ids: ~30 s)
    keys = rowkeys.row_keys(snapshot, cfg.schema)
    positions = features.split_positions(snapshot, cfg.schema, cfg.split, cfg.seed, keys)
    parts = features.parts_at(snapshot, positions)
    del snapshot  # the parts hold every row again: one copy in memory, not two
    encoding = _encoding(cfg, parts["train"])
    for name, part in parts.items():
        ctx.write_parquet(SPLITS[name], part)
    seen = np.unique(keys[np.concatenate([positions["train"], positions["valid"]])])
    lineage.write_keys(ctx.path(products.SEEN_ROWS.path), seen)
    table = features.split_summary(parts, cfg.schema)
    mlflow.log_params({f"split.{k}": v for k, v in cfg.split.model_dump().items()})
    mlflow.log_metrics({f"{name}_rows": int(row["rows"]) for name, row in table.iterrows()})
    ctx.write(
        products.PREPROCESS,
        {"splits": table.to_dict(orient="index"), "files": SPLITS, "encoding": encoding},
    )
    return parts


def _encoding(cfg: Config, train_rows: pd.DataFrame) -> dict[str, Any]:
    """The one-hot plan of the training rows (``features``): a warning per capped column,
    and the feature matrices' memory estimate, which fails here, naming the columns,
    rather than a train or tune kernel killed for memory."""
    plan = features.encoding_plan(train_rows, cfg.schema, cfg.features)
    for col in plan["capped"]:
        log.warning(
            "column %r: %d levels in the training rows; one-hot encoded as %d columns: the "
            "%d most frequent and one shared by the rest (features.max_categories %s, "
            "min_frequency %s)",
            col,
            plan["levels"][col],
            plan["columns"][col],
            plan["columns"][col] - 1,
            cfg.features.max_categories,
            cfg.features.min_frequency,
        )
    tuning = cfg.tuning
    copies = max(features.FIT_COPIES, tuning.cv_folds + 2 if tuning.enabled else 0)
    memory = features.check_memory(plan, len(train_rows), cfg.features, copies)
    return {**plan, "memory": memory}


def load_splits(
    ctx: StageContext, names: tuple[str, ...] = tuple(SPLITS), categories: bool = False
) -> dict[str, pd.DataFrame]:
    """The split parts ``names`` (default: all three) as written by preprocess.

    ``categories``: the schema's categorical text columns and a text target read as
    pandas categories, one byte a row instead of a pointer to a Python string (16 columns
    of 8M rows: ~0.9 GB less), for stages that only fit and score models on the rows (the
    pipeline's coercer reads them as the same text)."""
    cols = [*ctx.cfg.schema.categorical, ctx.cfg.schema.target] if categories else None
    return {name: ctx.read_parquet(SPLITS[name], cols) for name in names}


def _as_read(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with columns read as categories back to the text they hold (what a model's
    input example shows, as the source delivers it)."""
    cats = [c for c in rows.columns if isinstance(rows[c].dtype, pd.CategoricalDtype)]
    return rows.astype(dict.fromkeys(cats, object)) if cats else rows


# -- train ----------------------------------------------------------------------------
def _fit_and_log(
    ctx: StageContext,
    kind: str,
    params: dict[str, Any],
    parts: dict[str, pd.DataFrame],
    run_name: str,
) -> dict[str, Any]:
    """Fit on train, score on valid, log params, metrics and model to the active run."""
    schema = ctx.cfg.schema
    model = train.fit(schema, kind, params, parts["train"], ctx.cfg.seed, ctx.cfg.features)
    return _score_and_log(ctx, kind, params, model, parts, run_name)


def _score_and_log(
    ctx: StageContext,
    kind: str,
    params: dict[str, Any],
    model: Any,
    parts: dict[str, pd.DataFrame],
    run_name: str,
) -> dict[str, Any]:
    """Score the fitted ``model`` on valid, log params, metrics and model to the active
    run."""
    schema = ctx.cfg.schema
    y_valid = data.target_vector(parts["valid"], schema)
    metrics = evaluate.classification_metrics(
        y_valid, train.predict_scores(model, parts["valid"], schema)
    )
    mlflow.log_params({"model": kind, **params})
    # an undefined metric (None) is not logged: MLflow has no "n/a"
    mlflow.log_metrics(
        {f"valid_{k}": v for k, v in metrics.items() if k != "threshold" and v is not None}
    )
    # A few rows for the input example: not a copy of every training row's features.
    uri = tracking.log_model(model, _as_read(parts["train"].head(5)), schema=schema)
    # the rows it saw travel with it: a later gate leaves them out (mlfolio.lineage)
    mlflow.log_artifact(str(ctx.existing(products.SEEN_ROWS)), lineage.ARTIFACT_DIR)
    return {
        "name": run_name,
        "kind": kind,
        "params": params,
        "model_uri": uri,
        "run_id": mlflow.active_run().info.run_id,
        "valid": metrics,
    }


def train_baselines(ctx: StageContext) -> pd.DataFrame:
    """Fit each baseline model in its own child run; return their validation metrics."""
    cfg = ctx.cfg
    parts = load_splits(ctx, ("train", "valid"), categories=True)  # test: for evaluate
    specs = [(kind, dict(getattr(cfg.training, kind))) for kind in cfg.training.models]
    # one feature transform of the training rows for every model (each its own copy)
    fitted = train.fit_models(cfg.schema, specs, parts["train"], cfg.seed, cfg.features)
    results = {}
    for (kind, params), model in zip(specs, fitted, strict=True):
        with tracking.child_run(kind, tags={"mlfolio.stage": "train"}):
            results[kind] = _score_and_log(ctx, kind, params, model, parts, kind)
    ctx.write(products.TRAIN, {"models": results})
    return metrics_table(results)


def metrics_table(results: dict[str, dict[str, Any]], split: str = "valid") -> pd.DataFrame:
    rows = {name: r[split] for name, r in results.items() if split in r}
    return pd.DataFrame(rows).T.drop(columns=["threshold"], errors="ignore").round(4)


# -- tune -----------------------------------------------------------------------------
def _log_trials(study, already_logged: set[int]) -> int:
    """One nested MLflow run per finished trial not logged yet (safe to call on resume)."""
    logged = 0
    for trial in study.get_trials(deepcopy=False, states=tune.FINISHED):
        if trial.number in already_logged:
            continue
        with tracking.child_run(
            f"trial-{trial.number}",
            tags={
                "mlfolio.stage": "tune",
                "optuna.trial": str(trial.number),
                "optuna.state": trial.state.name,
            },
        ):
            mlflow.log_params(trial.params)
            if trial.value is not None:
                mlflow.log_metric("cv_roc_auc", trial.value)
            for step, value in trial.intermediate_values.items():
                mlflow.log_metric("cv_roc_auc_running", value, step=step)
        logged += 1
    return logged


def tune_model(ctx: StageContext) -> tuple[Any, dict[str, Any]]:
    """Run (or resume) the Optuna study, log its trials, refit and log the best model."""
    cfg = ctx.cfg
    parts = load_splits(ctx, ("train", "valid"), categories=True)
    study_name = tune.study_name(cfg, ctx.run_dir)  # the one tune-worker joins
    if not cfg.tuning.enabled:
        ctx.write(products.TUNE, {"enabled": False})
        return None, {"enabled": False}
    warm = warm_start(cfg)
    study = tune.run_study(
        cfg.tuning,
        parts["train"],
        cfg.schema,
        cfg.seed,
        ctx.run_dir,
        study_name,
        progress_path=ctx.run_dir / progress.TUNE,
        first_trial=warm.get("params"),
        first_trial_note=(
            f"champion {cfg.model_name} v{warm['version']}"
            if "version" in warm
            else f"baseline {warm.get('baseline')}"
        ),
        encoding=cfg.features,
    )
    runs = (
        mlflow.search_runs(
            filter_string=f"tags.mlflow.parentRunId = '{ctx.mlflow_run_id}'", output_format="list"
        )
        if ctx.mlflow_run_id
        else []
    )
    done = {int(r.data.tags["optuna.trial"]) for r in runs if "optuna.trial" in r.data.tags}
    _log_trials(study, done)
    if not any(t.state == tune.FINISHED[0] for t in study.trials):
        raise StageError("tune", "no trial completed: raise tuning.timeout or n_trials")
    train_rows = parts["train"]
    params = {**tune.suggest_params(optuna_fixed(study.best_params), cfg.tuning.model)}
    # Early stopping: the best trial's n_estimators is the rounds its folds used.
    rounds = study.best_trial.user_attrs.get("n_estimators")
    if rounds is not None:
        params["n_estimators"] = int(rounds)
    mlflow.log_metric("best_cv_roc_auc", study.best_value)
    result = _fit_and_log(ctx, cfg.tuning.model, params, parts, f"{cfg.tuning.model}-tuned")
    counts = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    info = {
        "enabled": True,
        "study_name": study_name,
        "best_trial": study.best_trial.number,
        "best_cv_roc_auc": study.best_value,
        "trial_states": counts,
        # tuning.subsample_rows: the study may have seen a sample (counted, not drawn
        # again); the refit saw every row
        "rows_tuned_on": tune.tuning_row_count(len(train_rows), cfg.tuning.subsample_rows),
        "rows_refitted_on": len(train_rows),
        "early_stopped_n_estimators": rounds,
        "warm_start": warm,
        "models": {result["name"]: result},
    }
    ctx.write(products.TUNE, info)
    return study, info


# What the train stage's model leaves to the library: XGBoost's and scikit-learn's
# defaults for the space's parameters the parameter file does not set.
LIBRARY_DEFAULTS = {
    "xgboost": {
        "min_child_weight": 1.0,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "reg_lambda": 1.0,
    },
    "logreg": {"C": 1.0},
}


def baseline_start(cfg: Config, because: str | None = None) -> dict[str, Any]:
    """The train stage's model of the tuned kind as the study's first trial: the parameter
    file's ``training.<kind>`` over the libraries' defaults (``because``: why not the
    champion)."""
    kind = cfg.tuning.model
    given = {**LIBRARY_DEFAULTS[kind], **getattr(cfg.training, kind)}
    out: dict[str, Any] = {"baseline": f"training.{kind}", "params": tune.space_values(given, kind)}
    if because:
        out["because"] = because
    return out


def warm_start(cfg: Config) -> dict[str, Any]:
    """What the study starts from (``tuning.warm_start``): the registry champion's
    parameters (or a pinned version's) when it is a model of the kind being tuned, else
    the train stage's model (:func:`baseline_start`), as the first trial; off: ``skipped``."""
    pinned = cfg.tuning.warm_start
    if pinned is False:
        return {"skipped": "tuning.warm_start is off"}
    if pinned == "baseline":
        return baseline_start(cfg)
    if pinned is True:
        ref = registry.get_alias(cfg.model_name, registry.CHAMPION)
        if ref is None:
            return baseline_start(
                cfg, f"no champion: {cfg.model_name}@{registry.CHAMPION} does not exist"
            )
    else:  # a version (a reproduction starts from the original's first trial)
        ref = registry.get_version(cfg.model_name, pinned)
        if ref is None:
            raise StageError(
                "tune",
                f"tuning.warm_start: {cfg.model_name} has no version {pinned} in the registry",
            )
    logged = mlflow.MlflowClient().get_run(ref.run_id).data.params if ref.run_id else {}
    kind = logged.get("model")
    if kind != cfg.tuning.model:
        return baseline_start(
            cfg,
            f"champion {cfg.model_name} v{ref.version} is a {kind or 'unknown'} "
            f"model, not {cfg.tuning.model}",
        )
    params = tune.space_values(logged, cfg.tuning.model)
    if not params:
        return baseline_start(cfg, f"champion v{ref.version} logged none of the space's parameters")
    log.info("tune: first trial = champion %s v%s's parameters", cfg.model_name, ref.version)
    return {"version": ref.version, "params": params}


def optuna_fixed(params: dict[str, Any]):
    """A trial that answers every suggest_* with the given values (rebuilds full params)."""
    import optuna

    return optuna.trial.FixedTrial(params)


# -- evaluate -------------------------------------------------------------------------
def candidates(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Every model of the train and tune stages, by name."""
    found = dict(ctx.read(products.TRAIN).models)
    found.update(ctx.read(products.TUNE).models)
    return {name: model.model_dump(mode="json") for name, model in found.items()}


def compared_champion(cfg: Config) -> registry.ModelRef | None:
    """What the candidate is compared with: the champion alias's version, or the one
    ``evaluation.champion_version`` pins (a reproduction judges against the original's)."""
    pinned = cfg.evaluation.champion_version
    if pinned is None:
        return registry.get_alias(cfg.model_name, registry.CHAMPION)
    if pinned == "none":
        return None
    ref = registry.get_version(cfg.model_name, pinned)
    if ref is None:
        raise StageError(
            "evaluate",
            f"evaluation.champion_version: {cfg.model_name} has no version {pinned} "
            "in the registry",
        )
    return ref


def evaluate_candidate(ctx: StageContext) -> dict[str, Any]:
    """Pick the best model on validation, score it and the champion (each at its own
    threshold) on the test rows, apply the gate, and explain both models: attributions,
    permutation importance, the threshold curve, segments and the model card."""
    from mlfolio.stages import explaining, unseen

    cfg = ctx.cfg
    schema = cfg.schema
    parts = load_splits(ctx, ("valid", "test"))  # train: a sample of it, in explain_models
    models = candidates(ctx)
    best_name = max(models, key=lambda n: models[n]["valid"]["roc_auc"])
    best = models[best_name]
    model = tracking.load_model(best["model_uri"])
    y_valid = data.target_vector(parts["valid"], schema)
    valid_score = train.predict_scores(model, parts["valid"], schema)
    if cfg.evaluation.threshold == "max_f1":
        threshold = evaluate.max_f1_threshold(y_valid, valid_score)
    else:
        threshold = float(cfg.evaluation.threshold)
    y_test = data.target_vector(parts["test"], schema).to_numpy()
    score = train.predict_scores(model, parts["test"], schema)
    test_metrics = evaluate.classification_metrics(y_test, score, threshold)
    scores = {"candidate": score}
    scored = {"candidate": (score, threshold)}
    explained = {"candidate": model}
    champion = compared_champion(cfg)
    champion_info, comparison, compared, fair = None, None, None, {}
    segment_rows = np.ones(len(y_test), dtype=bool)
    if champion is not None:
        try:
            champ_model = tracking.load_model(champion.uri)
            champ_score = train.predict_scores(champ_model, parts["test"], schema)
        except Exception as exc:  # a champion of another schema cannot score these rows
            raise StageError(
                "evaluate",
                f"champion {champion.uri} cannot score the test rows "
                f"({type(exc).__name__}: {exc}); retire it or use a new "
                "registry.model_name",
            ) from exc
        # the champion decides at the threshold chosen for it, not at the candidate's
        champ_threshold, source, known = explaining.champion_threshold(champion, threshold)
        if not known:
            log.warning("champion v%s: threshold %s", champion.version, source)
        scores["champion"] = champ_score
        scored["champion"] = (champ_score, champ_threshold)
        explained["champion"] = champ_model
        # compared only on test rows the champion never saw (its lineage says which)
        unseen_rows, fair = unseen.compare(cfg, champion, parts["test"], y_test, score, champ_score)
        comparison, compared = fair.pop("comparison"), fair.pop("compared")
        both = len(np.unique(y_test[unseen_rows])) == 2
        kept = unseen_rows if both else np.ones(len(y_test), dtype=bool)
        segment_rows = kept
        yk, ck = y_test[kept], champ_score[kept]
        champion_info = {
            "version": champion.version,
            "run_id": champion.run_id,
            "test": evaluate.classification_metrics(yk, ck, champ_threshold),
            "test_rows": int(kept.sum()),
            "test_rows_are": "unseen by it" if both else "all (too few unseen rows)",
            "threshold": champ_threshold,
            "threshold_source": source,
            "confusion": evaluate.confusion(yk, ck, champ_threshold),
            "calibration": evaluate.calibration(yk, ck, cfg.evaluation.calibration_bins),
        }
    # an unchanged re-run's candidate may be the champion's own model: no gain to measure
    same_model = champion is not None and registry.same_model(champion, best["model_uri"])
    verdict = evaluate.gate(
        cfg.gate,
        test_metrics,
        comparison,
        champion.version if champion else None,
        same_model=same_model,
        compared=compared,
    )
    ctx.write_parquet(
        products.TEST_SCORES.path, pd.DataFrame({"y": y_test, **{k: v for k, v in scores.items()}})
    )
    explanations = explaining.explain_models(ctx, parts, explained)
    shipped = _ship_calibration(ctx, best["run_id"], y_valid.to_numpy(), valid_score, y_test, score)
    mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items() if v is not None})
    mlflow.set_tags({"mlfolio.candidate": best_name, "mlfolio.gate_passed": verdict.passed})
    result = {
        "candidate": {
            "name": best_name,
            "kind": best["kind"],
            "params": best["params"],
            "model_uri": best["model_uri"],
            "run_id": best["run_id"],
            "valid": best["valid"],
            "test": test_metrics,
            "confusion": evaluate.confusion(y_test, score, threshold),
            "calibration": evaluate.calibration(y_test, score, cfg.evaluation.calibration_bins),
        },
        "threshold": threshold,
        # which rows the test metrics are of (mlfolio diff says when two runs' differ)
        "test_rows": {"rows": len(y_test), "digest": data.content_hash(parts["test"])},
        "threshold_curve": evaluate.threshold_curve(y_valid, valid_score),
        "performance_calibration": shipped,
        "champion": champion_info,
        "comparison": comparison,
        # with a champion: rows_unseen_by_champion, champion_overlap, row_sets, decided_by
        **fair,
        "gate": verdict.to_dict(),
        "intervals": {
            "metrics": evaluate.bootstrap_intervals(
                y_test,
                score,
                threshold,
                cfg.gate.bootstrap_samples,
                cfg.gate.confidence,
                cfg.seed,
                cfg.gate.bootstrap_rows,
            ),
            "confidence": cfg.gate.confidence,
            "samples": cfg.gate.bootstrap_samples,
            # rows resampled (a stratified sample above gate.bootstrap_rows) of the test rows
            "rows": min(len(y_test), cfg.gate.bootstrap_rows or len(y_test)),
            "test_rows": len(y_test),
        },
        "explain": explanations,
        # both models on the rows they are compared on
        "segments": explaining.segments(
            cfg,
            parts["test"][segment_rows],
            {name: (values[segment_rows], cut) for name, (values, cut) in scored.items()},
            explanations["candidate"],
        ),
    }
    ctx.write(products.EVALUATE, result)
    explaining.write_model_card(ctx, result)
    return result


def _ship_calibration(
    ctx: StageContext,
    run_id: str,
    y_valid: np.ndarray,
    valid_score: np.ndarray,
    y_test: np.ndarray,
    test_score: np.ndarray,
) -> dict[str, Any]:
    """Fit the score -> probability map on the validation rows (the reference of the
    monitor's label-free estimate, :mod:`mlfolio.estimate`), ship it with the model's run
    (every version registered from it carries it) and report its quality: on the rows it
    was fitted on and, honestly, on the test rows."""
    cal = estimate.fit_calibration(
        y_valid, valid_score, ctx.cfg.evaluation.calibration_method, seed=ctx.cfg.seed
    )
    uri = tracking.log_calibration(run_id, cal)
    p_test = cal.apply(test_score)
    test_quality = {
        "ece": estimate.expected_calibration_error(y_test, p_test),
        "brier": float(np.mean((p_test - y_test) ** 2)),
        "rows": int(len(y_test)),
    }
    mlflow.log_metrics(
        {
            "calibration_valid_ece": cal.quality["ece"],
            "calibration_test_ece": test_quality["ece"],
            "calibration_test_brier": test_quality["brier"],
        }
    )
    return {
        "method": cal.method,
        "reason": cal.reason,
        "uri": uri,
        "reference": cal.quality,
        "test": test_quality,
    }


def test_scores(ctx: StageContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    df = ctx.read_parquet(products.TEST_SCORES.path)
    return df["y"].to_numpy(), {c: df[c].to_numpy() for c in df.columns if c != "y"}
