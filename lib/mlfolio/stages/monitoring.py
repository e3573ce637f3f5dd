"""Stages monitor (drift, quality, the retraining decision) and ab_report."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlfolio import data, estimate, evaluate, lineage, products, registry, rowkeys, tracking
from mlfolio.context import StageContext
from mlfolio.errors import DataValidationError, StageError
from mlfolio.stages.training import SNAPSHOT, SPLITS

log = logging.getLogger(__name__)


# -- monitor --------------------------------------------------------------------------
# The monitor run (`mlfolio monitor`): current data against the champion's training rows.
DRIFT_REPORT = products.DRIFT_REPORT.path
QUALITY_REPORT = products.QUALITY_REPORT.path
RETRAIN_DATA = products.RETRAIN_DATA.path
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


def _calibration(
    ctx: StageContext, champion: registry.ModelRef, model: Any, source_run: Path
) -> tuple[estimate.Calibration | None, str]:
    """The calibration shipped with the champion's version, else one fitted now on its
    validation rows (a version evaluated before calibrations were shipped); None when
    neither exists. Also says where it came from."""
    shipped = tracking.load_calibration(champion.run_id)
    if shipped is not None:
        return shipped, f"runs:/{champion.run_id}/{estimate.CALIBRATION_FILE}"
    valid_path = source_run / SPLITS["valid"]
    if not valid_path.is_file():
        log.warning(
            "%s: no calibration shipped and no %s: no performance estimate",
            champion.uri,
            valid_path,
        )
        return None, ""
    valid = pd.read_parquet(valid_path)
    y = data.target_vector(valid, ctx.cfg.schema).to_numpy()
    score = model.predict_proba(valid[list(ctx.cfg.schema.features)])[:, 1]
    cal = estimate.fit_calibration(
        y, score, ctx.cfg.evaluation.calibration_method, seed=ctx.cfg.seed
    )
    return cal, f"fitted by this monitor run on {valid_path} (none shipped with {champion.uri})"


def _performance_estimate(
    ctx: StageContext,
    cal: estimate.Calibration,
    source: str,
    current: pd.DataFrame,
    threshold: float,
    reference_quality: dict[str, Any],
    quality: dict[str, Any] | None,
) -> dict[str, Any]:
    """The label-free estimate on all current rows and, when labels arrived, estimated vs
    realised on the labelled ones (the realised outside the interval: concept shift?)."""
    opts = ctx.cfg.monitoring.estimate

    def run(scores: np.ndarray) -> dict[str, Any]:
        return estimate.estimate_performance(
            scores, cal, threshold, draws=opts.draws, confidence=opts.confidence, seed=ctx.cfg.seed
        )

    est = run(current["score"].to_numpy())
    reference_auc = reference_quality.get("roc_auc")
    est["calibration"] = {
        "method": cal.method,
        "source": source,
        "reason": cal.reason,
        **{k: cal.quality.get(k) for k in ("ece", "brier", "rows")},
    }
    est["reference_roc_auc"] = reference_auc
    est["roc_auc_delta"] = (
        None if est["roc_auc"] is None or reference_auc is None else est["roc_auc"] - reference_auc
    )
    if quality is not None:
        known = current["actual"].notna().to_numpy()
        same_rows = est if known.all() else run(current["score"].to_numpy()[known])
        est["realised"] = estimate.compare_with_realised(
            same_rows, quality["current"], int(known.sum())
        )
    return est


def _estimate_metrics(est: dict[str, Any] | None) -> dict[str, float]:
    """The estimate's MLflow metrics; with labels, estimated vs realised and the error
    (realised - estimated) on the labelled rows: the estimate's error over time."""
    if est is None:
        return {}
    out = {f"estimated_{k}": est[k] for k in estimate.METRICS if est.get(k) is not None}
    if est.get("roc_auc_ci"):
        out["estimated_roc_auc_ci_low"], out["estimated_roc_auc_ci_high"] = est["roc_auc_ci"]
    if est.get("roc_auc_delta") is not None:
        out["estimated_roc_auc_delta"] = est["roc_auc_delta"]
    side = est.get("realised")
    if side:
        for k in estimate.METRICS:
            if side["estimated"].get(k) is not None:
                out[f"labelled_estimated_{k}"] = side["estimated"][k]
            if side["realised"].get(k) is not None:
                out[f"labelled_realised_{k}"] = side["realised"][k]
            if side["error"].get(k) is not None:
                out[f"estimate_error_{k}"] = side["error"][k]
        out["concept_shift_suspected"] = int(side["concept_shift_suspected"])
    return out


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
    performance = None
    if mon.estimate.enabled:
        cal, cal_source = _calibration(ctx, champion, model, source_run)
        if cal is not None:
            performance = _performance_estimate(
                ctx, cal, cal_source, current, threshold, reference_quality, quality
            )
    decision = monitor.retrain_decision(
        mon.retrain,
        verdict,
        len(current),
        roc_auc_drop,
        _last_retraining(mlflow.active_run().info.experiment_id) if mlflow.active_run() else None,
        labelled_rows=len(labelled),
        estimated_roc_auc_drop=(
            -performance["roc_auc_delta"]
            if performance and performance["roc_auc_delta"] is not None
            else None
        ),
    )

    shown = monitor.evidently_report(
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
    retrain_data, retrain_new_rows = None, None
    if decision.retrain:
        new_rows = labelled.drop(columns=["score", "actual"]).assign(
            **{
                schema.target: np.where(
                    labelled["actual"] == 1, schema.positive_label, schema.negative_label
                )
            }
        )
        snapshot = pd.read_parquet(source_run / SNAPSHOT)
        rows, n_new = monitor.retraining_data(snapshot, new_rows, schema)
        retrain_data = str(ctx.write(products.RETRAIN_DATA, rows))
        # which rows are new: the retraining run's out-of-time rows (evaluation.recent_rows)
        new_keys = rowkeys.row_keys(rows.iloc[len(rows) - n_new :], schema)
        retrain_new_rows = str(
            lineage.write_keys(ctx.path(products.RETRAIN_NEW_ROWS.path), new_keys)
        )

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
        **({"performance_estimate": performance} if performance else {}),
        "decision": decision.to_dict(),
        "monitor_run_dir": str(ctx.run_dir),
    }
    doc = monitor.DriftDoc.of(doc).to_json()  # the model the server reads it with
    ctx.write(products.DRIFT, doc)
    monitor.write_prometheus_textfile(doc, ctx.path(products.DRIFT_PROM.path))
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
            **(
                {f"current_{k}": v for k, v in quality["current"].items() if v is not None}
                if quality
                else {}
            ),
            **_estimate_metrics(performance),
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
        "performance_estimate": performance,
        "decision": decision.to_dict(),
        "reports": reports,
        # What Evidently's drift page counts: the features of its (sampled) rows.
        "report_drift": {
            "n_drifted": shown["n_drifted"],
            "n_columns": shown["n_columns"],
            "share_drifted": shown["share_drifted"],
            "reference_rows": shown["reference_rows"],
            "current_rows": shown["current_rows"],
            "sampled": (shown["reference_rows"], shown["current_rows"])
            != (len(reference), len(current)),
        },
        "n_drifted": verdict["n_drifted"],
        "n_columns": verdict["n_columns"],
        "retrain_data": retrain_data,
        "retrain_new_rows": retrain_new_rows,
    }
    ctx.write(products.MONITOR, result)
    return {**result, "verdict": verdict}


def ab_report(ctx: StageContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Champion against challenger on the prediction log's outcomes (A/B or shadow):
    per-variant metrics, the comparison and a recommendation, written to ``ab.json`` and
    published to the prediction log folder for the server's ``/metrics``."""
    from mlfolio import abtest, monitor, predlog

    mon = ctx.cfg.monitoring
    if not mon.prediction_log:
        log_df = pd.DataFrame(columns=[*predlog.BASE_COLUMNS, "actual"])
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
        method=ab.method,
        alpha=ab.alpha,
        metric=ab.metric,
        mixture_rows=ab.mixture_rows,
    )
    result["source"] = mon.prediction_log
    ctx.write(products.AB, result)
    if mon.prediction_log:  # the server logging it shows the result (a worse challenger alerts)
        monitor.publish_ab_for_server(result, mon.prediction_log)
    mlflow.set_tags(
        {
            "mlfolio.ab_design": result["design"],
            "mlfolio.ab_action": result["recommendation"]["action"],
        }
    )
    return log_df, result
