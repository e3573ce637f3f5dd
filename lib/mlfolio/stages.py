"""The body of each stage notebook, as functions of a :class:`StageContext`.

Each reads its upstream products from the run folder, does its work through the pure
modules (data, features, train, tune, evaluate), logs to MLflow and writes its products.
The notebooks call these and show what they return through :mod:`mlfolio.views`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlfolio import data, evaluate, features, products, registry, tracking, train, tune
from mlfolio.context import StageContext
from mlfolio.errors import DataValidationError, RegistryError, StageError

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
    raw = data.load_source(cfg.data)
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
        "data_hash": digest,
        "snapshot": SNAPSHOT,
        "source_rows": int(len(raw)),
        "dropped_missing_target": checked.dropped_missing_target,
        "non_finite_as_missing": checked.non_finite_as_missing,
        **data.summary(df, cfg.schema),
    }
    dataset = mlflow.data.from_pandas(
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
    """Seeded stratified train/valid/test split of the snapshot, written as Parquet."""
    cfg = ctx.cfg
    snapshot = ctx.read_parquet(SNAPSHOT)
    parts = features.split(snapshot, cfg.schema, cfg.split, cfg.seed)
    for name, part in parts.items():
        ctx.write_parquet(SPLITS[name], part)
    table = features.split_summary(parts, cfg.schema)
    mlflow.log_params({f"split.{k}": v for k, v in cfg.split.model_dump().items()})
    mlflow.log_metrics({f"{name}_rows": int(row["rows"]) for name, row in table.iterrows()})
    ctx.write(products.PREPROCESS, {"splits": table.to_dict(orient="index"), "files": SPLITS})
    return parts


def load_splits(ctx: StageContext) -> dict[str, pd.DataFrame]:
    return {name: ctx.read_parquet(path) for name, path in SPLITS.items()}


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
    model = train.fit(schema, kind, params, parts["train"], ctx.cfg.seed)
    y_valid = data.target_vector(parts["valid"], schema)
    metrics = evaluate.classification_metrics(
        y_valid, train.predict_scores(model, parts["valid"], schema)
    )
    mlflow.log_params({"model": kind, **params})
    mlflow.log_metrics({f"valid_{k}": v for k, v in metrics.items() if k != "threshold"})
    uri = tracking.log_model(model, parts["train"][schema.features], schema=schema)
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
    parts = load_splits(ctx)
    results = {}
    for kind in ctx.cfg.training.models:
        params = dict(getattr(ctx.cfg.training, kind))
        with tracking.child_run(kind, tags={"mlfolio.stage": "train"}):
            results[kind] = _fit_and_log(ctx, kind, params, parts, kind)
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
    parts = load_splits(ctx)
    study_name = cfg.tuning.study_name or f"{cfg.experiment}-{ctx.run_dir.name}"
    if not cfg.tuning.enabled:
        ctx.write(products.TUNE, {"enabled": False})
        return None, {"enabled": False}
    study = tune.run_study(
        cfg.tuning, parts["train"], cfg.schema, cfg.seed, ctx.run_dir, study_name
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
    params = {**tune.suggest_params(optuna_fixed(study.best_params), cfg.tuning.model)}
    mlflow.log_metric("best_cv_roc_auc", study.best_value)
    result = _fit_and_log(ctx, cfg.tuning.model, params, parts, f"{cfg.tuning.model}-tuned")
    counts = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    info = {
        "enabled": True,
        "study_name": study_name,
        "best_trial": study.best_trial.number,
        "best_cv_roc_auc": study.best_value,
        "trial_states": counts,
        "models": {result["name"]: result},
    }
    ctx.write(products.TUNE, info)
    return study, info


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


def evaluate_candidate(ctx: StageContext) -> dict[str, Any]:
    """Pick the best model on validation, score it and the champion on the test rows,
    and apply the gate."""
    cfg = ctx.cfg
    schema = cfg.schema
    parts = load_splits(ctx)
    models = candidates(ctx)
    best_name = max(models, key=lambda n: models[n]["valid"]["roc_auc"])
    best = models[best_name]
    model = tracking.load_model(best["model_uri"])
    if cfg.evaluation.threshold == "max_f1":
        threshold = evaluate.max_f1_threshold(
            data.target_vector(parts["valid"], schema),
            train.predict_scores(model, parts["valid"], schema),
        )
    else:
        threshold = float(cfg.evaluation.threshold)
    y_test = data.target_vector(parts["test"], schema).to_numpy()
    score = train.predict_scores(model, parts["test"], schema)
    test_metrics = evaluate.classification_metrics(y_test, score, threshold)
    scores = {"candidate": score}
    champion = registry.get_alias(cfg.model_name, registry.CHAMPION)
    champion_info, comparison = None, None
    if champion is not None:
        try:
            champ_score = train.predict_scores(
                tracking.load_model(champion.uri), parts["test"], schema
            )
        except Exception as exc:  # a champion of another schema cannot score these rows
            raise StageError(
                "evaluate",
                f"champion {champion.uri} cannot score the test rows "
                f"({type(exc).__name__}: {exc}); retire it or use a new "
                "registry.model_name",
            ) from exc
        scores["champion"] = champ_score
        champion_info = {
            "version": champion.version,
            "run_id": champion.run_id,
            "test": evaluate.classification_metrics(y_test, champ_score, threshold),
        }
        comparison = evaluate.bootstrap_auc_difference(
            y_test, score, champ_score, cfg.gate.bootstrap_samples, cfg.gate.confidence, cfg.seed
        )
    verdict = evaluate.gate(
        cfg.gate, test_metrics, comparison, champion.version if champion else None
    )
    ctx.write_parquet(
        "data/test_scores.parquet", pd.DataFrame({"y": y_test, **{k: v for k, v in scores.items()}})
    )
    mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
    mlflow.set_tags({"mlfolio.candidate": best_name, "mlfolio.gate_passed": verdict.passed})
    result = {
        "candidate": {
            "name": best_name,
            "model_uri": best["model_uri"],
            "run_id": best["run_id"],
            "valid": best["valid"],
            "test": test_metrics,
            "confusion": evaluate.confusion(y_test, score, threshold),
            "calibration": evaluate.calibration(y_test, score, cfg.evaluation.calibration_bins),
        },
        "threshold": threshold,
        "champion": champion_info,
        "comparison": comparison,
        "gate": verdict.to_dict(),
    }
    ctx.write(products.EVALUATE, result)
    return result


def test_scores(ctx: StageContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    df = ctx.read_parquet("data/test_scores.parquet")
    return df["y"].to_numpy(), {c: df[c].to_numpy() for c in df.columns if c != "y"}


# -- register -------------------------------------------------------------------------
def register_model(ctx: StageContext) -> dict[str, Any]:
    """Register the candidate as a new version, alias it challenger, and move champion
    only when the gate passed."""
    cfg = ctx.cfg
    ev = ctx.read(products.EVALUATE)
    ingest_info = ctx.read(products.INGEST)
    candidate = ev.candidate
    passed = ev.gate.passed
    if ctx.interactive and not cfg.registry.interactive_writes:
        # Exploring in JupyterLab must not change what production serves.
        why = (
            "interactive run (no run folder): nothing registered and no alias moved; "
            "run `mlfolio run`, or pass overrides={'registry.interactive_writes': True}"
        )
        mlflow.set_tags({"mlfolio.registered": False, "mlfolio.why_not_registered": why})
        result = {
            "model_name": cfg.model_name,
            "version": None,
            "model_uri": None,
            "source": candidate.model_uri,
            "registered": False,
            "promoted": False,
            "why_not_promoted": why,
            "compared_against": None,
            "alias_events": [],
            "champion": (
                c.version if (c := registry.get_alias(cfg.model_name, registry.CHAMPION)) else None
            ),
        }
        ctx.write(products.REGISTER, result)
        return result
    tags = {
        "mlfolio.run_dir": str(ctx.run_dir),
        "mlfolio.data_hash": ingest_info.data_hash,
        "mlfolio.pipeline_run_id": ctx.parent_run_id,
        "mlfolio.candidate": candidate.name,
        "mlfolio.gate_passed": str(passed),
        "mlfolio.test_roc_auc": f"{candidate.test['roc_auc']:.6f}",
        "mlfolio.threshold": f"{ev.threshold:.6f}",
    }
    try:
        ref = registry.register(cfg.model_name, candidate.model_uri, candidate.run_id, tags)
    except Exception as exc:
        raise RegistryError(
            f"registering {candidate.model_uri} as {cfg.model_name} failed: {exc}"
        ) from exc
    events = [
        registry.set_alias(
            ref, registry.CHALLENGER, "new candidate from pipeline run", str(ctx.run_dir)
        )
    ]
    # The gate judged the candidate against the champion of evaluate's moment: champion
    # moves only if it still is that version (compare-and-set under the registry lock).
    compared_against = ev.champion.version if ev.champion else None
    why_not = None
    if not passed:
        why_not = "gate failed"
    elif not cfg.registry.promote:
        why_not = "registry.promote is false"
    else:
        reason = "gate passed: " + "; ".join(ev.gate.reasons)
        promotion = registry.promote(
            ref,
            compared_against,
            reason,
            str(ctx.run_dir),
            cfg.registry.lock_uri,
            cfg.registry.lock_timeout_s,
        )
        if promotion.event:
            events.append(promotion.event)
        why_not = promotion.why_not
    promoted = why_not is None
    mlflow.set_tags({"mlfolio.model_version": ref.version, "mlfolio.promoted": promoted})
    if why_not:
        mlflow.set_tag("mlfolio.why_not_promoted", why_not[:5000])
    result = {
        "model_name": ref.name,
        "version": ref.version,
        "model_uri": ref.uri,
        "source": candidate.model_uri,
        "registered": True,
        "promoted": promoted,
        "why_not_promoted": why_not,
        "compared_against": compared_against,
        "alias_events": events,
        "champion": (c.version if (c := registry.get_alias(ref.name, registry.CHAMPION)) else None),
    }
    ctx.write(products.REGISTER, result)
    return result


# -- deploy ---------------------------------------------------------------------------
def deploy_model(ctx: StageContext) -> dict[str, Any]:
    """Deploy the version behind ``deploy.alias`` to every target; each target's outcome is
    recorded, and the stage fails (after writing deploy.json) if any target failed."""
    from mlfolio.deploy import TARGETS, DeployError

    cfg = ctx.cfg
    alias = cfg.deploy.alias
    ref = registry.get_alias(cfg.model_name, alias)
    if ref is None:
        raise DeployError(
            f"registry has no {cfg.model_name}@{alias}: nothing to deploy (did the gate ever pass?)"
        )
    alias_uri = f"models:/{ref.name}@{alias}"
    results: dict[str, Any] = {}
    for target in cfg.deploy.targets:
        try:
            if target not in TARGETS:
                raise DeployError(
                    f"deploy.targets: unknown target {target!r}; expected one "
                    f"of {', '.join(TARGETS)}"
                )
            out_dir = ctx.path(f"deploy/{target}")
            out_dir.mkdir(parents=True, exist_ok=True)
            results[target] = {
                **TARGETS[target](ctx, ref, alias_uri, out_dir),
                "status": "deployed",
            }
        except DeployError as exc:
            results[target] = {"status": "failed", "error": str(exc)}
    failed = {t: r["error"] for t, r in results.items() if r["status"] == "failed"}
    mlflow.set_tags({f"mlfolio.deploy.{t}": r["status"] for t, r in results.items()})
    ctx.write(
        products.DEPLOY,
        {
            "model_name": ref.name,
            "version": ref.version,
            "alias": alias,
            "model_uri": alias_uri,
            "targets": results,
        },
    )
    if failed:
        raise DeployError("; ".join(f"{t}: {e}" for t, e in failed.items()))
    return {"model": f"{ref.name} v{ref.version} (@{alias})", "targets": results}


# -- monitor --------------------------------------------------------------------------
# The monitor run (`mlfolio monitor`): current data against the champion's training rows.
DRIFT_REPORT = products.DRIFT_REPORT.path
QUALITY_REPORT = "quality_report.html"
RETRAIN_DATA = "data/retrain.parquet"
CURRENT_DATA = products.CURRENT_DATA.path


def _champion_source(ctx: StageContext) -> tuple[registry.ModelRef, dict[str, str], Path]:
    """The champion version, its tags and the run folder it was trained in."""
    from mlflow import MlflowClient

    name = ctx.cfg.model_name
    champion = registry.get_alias(name, registry.CHAMPION)
    if champion is None:
        raise StageError(
            ctx.stage,
            f"no models:/{name}@{registry.CHAMPION} to monitor: run "
            "the pipeline first (mlfolio run ...)",
        )
    tags = dict(MlflowClient().get_model_version(name, champion.version).tags or {})
    run_dir = tags.get("mlfolio.run_dir")
    if not run_dir:
        raise StageError(
            ctx.stage,
            f"{champion.uri} has no mlfolio.run_dir tag: the reference "
            "data (its training rows) cannot be found",
        )
    folder = Path(run_dir)
    needed = (SNAPSHOT, SPLITS["train"], SPLITS["test"])
    if all((folder / name_).is_file() for name_ in needed):
        return champion, tags, folder
    # Not on this machine: the pipeline run's artifacts carry the same files.
    pipeline_run = tags.get("mlfolio.pipeline_run_id")
    if pipeline_run:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        copy = ctx.path("reference")
        try:
            mlflow.artifacts.download_artifacts(
                run_id=pipeline_run, artifact_path="data", dst_path=str(copy)
            )
        except (MlflowException, OSError) as exc:
            log.warning(
                "reference data of %s not in run %s's artifacts: %s",
                champion.uri,
                pipeline_run,
                exc,
            )
        if all((copy / name_).is_file() for name_ in needed):
            log.info(
                "%s: reference data from runs:/%s/data (%s is not readable here)",
                champion.uri,
                pipeline_run,
                folder,
            )
            return champion, {**tags, "mlfolio.reference_uri": f"runs:/{pipeline_run}/data"}, copy
    missing = next(folder / n for n in needed if not (folder / n).is_file())
    raise StageError(
        ctx.stage,
        f"{champion.uri}: reference data {missing} is missing, and "
        f"the pipeline run {pipeline_run or '(no mlfolio.pipeline_run_id tag)'} "
        "has no data/ artifacts to fall back on",
    )


def _labels_for(ctx: StageContext, frame: pd.DataFrame, ids: pd.Series | None) -> pd.Series:
    """0/1 outcomes per row of ``frame`` (NaN: unknown) from monitoring.labels, by id."""
    from mlfolio import predlog

    schema = ctx.cfg.schema
    labels = predlog.read_labels(
        ctx.cfg.monitoring.labels,
        schema.target,
        schema.positive_label,
        schema.negative_label,
        id_column=schema.id_column,
    )
    joined = predlog.join_labels(
        frame.assign(entity_id=ids) if ids is not None else frame,
        labels,
        id_column=schema.id_column,
    )
    return joined["actual"]


def _current_data(ctx: StageContext, model: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Current rows (features, id, ``score`` from the champion, ``actual`` 0/1/NaN) and where
    they came from: the --current file, else the prediction log's window."""
    from mlfolio import monitor, predlog
    from mlfolio.config import DataConfig

    mon, schema = ctx.cfg.monitoring, ctx.cfg.schema
    if mon.current:
        raw = data.load_source(DataConfig(uri=mon.current))
        source = {"kind": "file", "uri": mon.current}
        ids = raw[schema.id_column] if schema.id_column in raw.columns else None
        if schema.target in raw.columns:
            known = raw[schema.target].notna()
            actual = pd.Series(np.nan, index=raw.index)
            actual[known] = data.target_vector(raw[known], schema).astype(float)
            bad = known & ~raw[schema.target].isin([schema.positive_label, schema.negative_label])
            if bad.any():
                raise DataValidationError(
                    f"{mon.current}: column {schema.target!r} has values other than "
                    f"{schema.positive_label!r}/{schema.negative_label!r}: "
                    f"{sorted(map(str, raw.loc[bad, schema.target].unique()))[:5]}"
                )
        elif mon.labels:
            actual = _labels_for(ctx, raw, ids)
        else:
            actual = pd.Series(np.nan, index=raw.index)
    elif mon.prediction_log:
        since = datetime.now(UTC) - timedelta(hours=mon.window_hours) if mon.window_hours else None
        raw = predlog.read(mon.prediction_log, since=since)
        if raw.empty:
            raise DataValidationError(
                f"prediction log {mon.prediction_log}: no predictions "
                f"{'in the last ' + str(mon.window_hours) + ' h' if since else 'at all'}"
            )
        source = {
            "kind": "prediction_log",
            "uri": mon.prediction_log,
            "since": since.isoformat(timespec="seconds") if since else None,
            "variants": raw["variant"].value_counts().to_dict(),
        }
        ids = raw["entity_id"]
        actual = _labels_for(ctx, raw, None) if mon.labels else pd.Series(np.nan, index=raw.index)
    else:
        from mlfolio.errors import ConfigError

        raise ConfigError(
            "nothing to monitor: give --current FILE (CSV/Parquet) or set "
            "monitoring.prediction_log to the server's --prediction-log folder"
        )
    # Clear errors naming the file (or log) and the column, before anything is scored.
    current = monitor.coerce_frame(raw, schema, f"current data {source['uri']}")
    frame = raw[list(schema.features)].copy()
    frame["score"] = model.predict_proba(raw[list(schema.features)])[:, 1]
    frame["actual"] = actual.to_numpy(dtype=float)
    if schema.id_column:
        frame[schema.id_column] = (
            ids.astype("string").to_numpy()
            if ids is not None
            else pd.array([pd.NA] * len(frame), dtype="string")
        )
    source["rows"] = int(len(current))
    source["labelled_rows"] = int(frame["actual"].notna().sum())
    return frame, source


def _last_retraining(experiment_id: str) -> datetime | None:
    """Start of the latest pipeline run that a monitor run fired (the cool-down clock)."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        "tags.`mlfolio.trigger` = 'monitor'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return datetime.fromtimestamp(runs[0].info.start_time / 1000, tz=UTC) if runs else None


def monitor_model(ctx: StageContext) -> dict[str, Any]:
    """Drift (features and prediction) and quality of the champion on current data, the
    Evidently reports, the retraining decision; ``drift.json`` and ``monitor.json``. When
    the current rows come from a prediction log, ``drift.json`` is also published to that
    folder for the model server's ``/metrics`` (:func:`mlfolio.monitor.publish_for_server`)."""
    from mlfolio import monitor

    cfg, mon, schema = ctx.cfg, ctx.cfg.monitoring, ctx.cfg.schema
    champion, tags, source_run = _champion_source(ctx)
    threshold = float(tags.get("mlfolio.threshold", 0.5))
    model = tracking.load_model(champion.uri)
    reference = pd.read_parquet(source_run / SPLITS["train"])
    held_out = pd.read_parquet(source_run / SPLITS["test"])
    current, source = _current_data(ctx, model)
    ctx.write_parquet(CURRENT_DATA, current)

    verdict = monitor.drift_verdict(reference, current, schema, drift_share=mon.drift_share)
    ref_scores = model.predict_proba(reference[list(schema.features)])[:, 1]
    pred_drift = monitor.prediction_drift(ref_scores, current["score"].to_numpy())
    test_y = data.target_vector(held_out, schema).to_numpy()
    test_scores = model.predict_proba(held_out[list(schema.features)])[:, 1]
    reference_quality = evaluate.classification_metrics(test_y, test_scores, threshold)
    labelled = current[current["actual"].notna()]
    quality = monitor.quality_comparison(
        reference_quality, labelled["actual"].to_numpy(), labelled["score"].to_numpy(), threshold
    )
    roc_auc_drop = -quality["delta"]["roc_auc"] if quality else None
    decision = monitor.retrain_decision(
        mon.retrain,
        verdict,
        len(current),
        roc_auc_drop,
        _last_retraining(mlflow.active_run().info.experiment_id) if mlflow.active_run() else None,
        labelled_rows=len(labelled),
    )

    monitor.evidently_report(
        reference,
        current,
        schema,
        ctx.path(DRIFT_REPORT),
        sample_rows=mon.report_sample_rows,
        seed=cfg.seed,
        drift_share=mon.drift_share,
        prediction=(ref_scores, current["score"].to_numpy()),
    )
    reports = {"drift": DRIFT_REPORT}
    if quality:
        monitor.evidently_quality_report(
            pd.DataFrame({"target": test_y, "prediction": test_scores}),
            pd.DataFrame(
                {"target": labelled["actual"].astype(int), "prediction": labelled["score"]}
            ),
            ctx.path(QUALITY_REPORT),
            threshold,
        )
        reports["quality"] = QUALITY_REPORT
    retrain_data = None
    if decision.retrain:
        new_rows = labelled.drop(columns=["score", "actual"]).assign(
            **{
                schema.target: np.where(
                    labelled["actual"] == 1, schema.positive_label, schema.negative_label
                )
            }
        )
        snapshot = pd.read_parquet(source_run / SNAPSHOT)
        ctx.write_parquet(RETRAIN_DATA, monitor.retraining_rows(snapshot, new_rows, schema))
        retrain_data = str(ctx.path(RETRAIN_DATA))

    doc = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": champion.name,
            "version": champion.version,
            "alias": registry.CHAMPION,
            "run_dir": str(source_run),
            "threshold": threshold,
        },
        "reference": {
            "kind": "champion training rows",
            "uri": (
                f"{tags['mlfolio.reference_uri']}/train.parquet"
                if "mlfolio.reference_uri" in tags
                else str(source_run / SPLITS["train"])
            ),
            "rows": int(len(reference)),
        },
        "current": source,
        **verdict,
        "prediction_drift": pred_drift,
        "quality": quality,
        "decision": decision.to_dict(),
        "monitor_run_dir": str(ctx.run_dir),
    }
    ctx.write(products.DRIFT, doc)
    monitor.write_prometheus_textfile(doc, ctx.path("drift.prom"))
    if source["kind"] == "prediction_log":  # the server logging it shows the verdict
        monitor.publish_for_server(doc, mon.prediction_log)
    mlflow.log_metrics(
        {
            "share_drifted": verdict["share_drifted"],
            "n_drifted": verdict["n_drifted"],
            "dataset_drift": int(verdict["dataset_drift"]),
            "prediction_drift_score": pred_drift["score"],
            "current_rows": len(current),
            "labelled_rows": len(labelled),
            **({f"current_{k}": v for k, v in quality["current"].items()} if quality else {}),
        }
    )
    mlflow.set_tags(
        {"mlfolio.champion_version": champion.version, "mlfolio.retrain": str(decision.retrain)}
    )
    result = {
        "model": doc["model"],
        "current": source,
        "reference": doc["reference"],
        "share_drifted": verdict["share_drifted"],
        "drifted_columns": verdict["drifted_columns"],
        "dataset_drift": verdict["dataset_drift"],
        "prediction_drift": pred_drift["drifted"],
        "quality": quality,
        "decision": decision.to_dict(),
        "reports": reports,
        "retrain_data": retrain_data,
    }
    ctx.write(products.MONITOR, result)
    return {**result, "verdict": verdict}


def ab_report(ctx: StageContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Champion against challenger on the prediction log's outcomes (A/B or shadow):
    per-variant metrics, the comparison and a recommendation, written to ``ab.json``."""
    from mlfolio import abtest, predlog

    mon = ctx.cfg.monitoring
    if not mon.prediction_log:
        log_df = pd.DataFrame(
            columns=[
                "request_id",
                "row",
                "entity_id",
                "ts",
                "model_name",
                "model_version",
                "variant",
                "shadow",
                "score",
                "label",
                "threshold",
                "actual",
            ]
        )
    else:
        since = datetime.now(UTC) - timedelta(hours=mon.window_hours) if mon.window_hours else None
        log_df = predlog.read(mon.prediction_log, since=since, include_shadow=True)
        log_df = log_df.assign(
            actual=_labels_for(ctx, log_df, None).to_numpy() if mon.labels else np.nan
        )
    ab = mon.ab
    result = abtest.ab_report(
        log_df,
        confidence=ab.confidence,
        min_labelled=ab.min_labelled,
        min_improvement=ab.min_improvement,
        bootstrap_samples=ab.bootstrap_samples,
        seed=ctx.cfg.seed,
        model_name=ctx.cfg.model_name,
    )
    result["source"] = mon.prediction_log
    ctx.write(products.AB, result)
    mlflow.set_tags(
        {
            "mlfolio.ab_design": result["design"],
            "mlfolio.ab_action": result["recommendation"]["action"],
        }
    )
    return log_df, result
