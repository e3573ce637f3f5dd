"""The body of each stage notebook, as functions of a :class:`StageContext`.

Each reads its upstream products from the run folder, does its work through the pure
modules (data, features, train, tune, evaluate), logs to MLflow and writes its products.
The notebooks call these and show what they return.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlfolio import data, evaluate, features, registry, tracking, train, tune
from mlfolio.context import StageContext
from mlfolio.errors import RegistryError, StageError

log = logging.getLogger(__name__)

SNAPSHOT = "data/snapshot.parquet"
SPLITS = {name: f"data/{name}.parquet" for name in ("train", "valid", "test")}


# -- ingest ---------------------------------------------------------------------------
def ingest(ctx: StageContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load the source, validate it, write the Parquet snapshot and its content hash."""
    cfg = ctx.cfg
    raw = data.load_source(cfg.data)
    valid = data.validate(raw, cfg.schema, source=cfg.data.uri)
    df = data.sample(valid, cfg.data.sample_rows, cfg.seed)
    digest = data.write_snapshot(df, ctx.path(SNAPSHOT))
    info = {"source": cfg.data.uri, "data_hash": digest, "snapshot": SNAPSHOT,
            "source_rows": int(len(raw)), **data.summary(df, cfg.schema)}
    dataset = mlflow.data.from_pandas(df, source=cfg.data.uri, targets=cfg.schema.target,
                                      name=cfg.experiment, digest=digest[:16])
    mlflow.log_input(dataset, context="raw")
    mlflow.log_params({"data.uri": cfg.data.uri, "data.rows": len(df)})
    mlflow.set_tag("mlfolio.data_hash", digest)
    ctx.write_json("ingest.json", info)
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
    ctx.write_json("preprocess.json", {"splits": table.to_dict(orient="index"),
                                       "files": SPLITS})
    return parts


def load_splits(ctx: StageContext) -> dict[str, pd.DataFrame]:
    return {name: ctx.read_parquet(path) for name, path in SPLITS.items()}


# -- train ----------------------------------------------------------------------------
def _fit_and_log(ctx: StageContext, kind: str, params: dict[str, Any],
                 parts: dict[str, pd.DataFrame], run_name: str) -> dict[str, Any]:
    """Fit on train, score on valid, log params, metrics and model to the active run."""
    schema = ctx.cfg.schema
    model = train.fit(schema, kind, params, parts["train"], ctx.cfg.seed)
    y_valid = data.target_vector(parts["valid"], schema)
    metrics = evaluate.classification_metrics(
        y_valid, train.predict_scores(model, parts["valid"], schema))
    mlflow.log_params({"model": kind, **params})
    mlflow.log_metrics({f"valid_{k}": v for k, v in metrics.items() if k != "threshold"})
    uri = tracking.log_model(model, parts["train"][schema.features])
    return {"name": run_name, "kind": kind, "params": params, "model_uri": uri,
            "run_id": mlflow.active_run().info.run_id, "valid": metrics}


def train_baselines(ctx: StageContext) -> pd.DataFrame:
    """Fit each baseline model in its own child run; return their validation metrics."""
    parts = load_splits(ctx)
    results = {}
    for kind in ctx.cfg.training.models:
        params = dict(getattr(ctx.cfg.training, kind))
        with tracking.child_run(kind, tags={"mlfolio.stage": "train"}):
            results[kind] = _fit_and_log(ctx, kind, params, parts, kind)
    ctx.write_json("train.json", {"models": results})
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
        with tracking.child_run(f"trial-{trial.number}",
                                tags={"mlfolio.stage": "tune",
                                      "optuna.trial": str(trial.number),
                                      "optuna.state": trial.state.name}):
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
        ctx.write_json("tune.json", {"enabled": False})
        return None, {"enabled": False}
    study = tune.run_study(cfg.tuning, parts["train"], cfg.schema, cfg.seed, ctx.run_dir,
                           study_name)
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{ctx.mlflow_run_id}'",
                              output_format="list") if ctx.mlflow_run_id else []
    done = {int(r.data.tags["optuna.trial"]) for r in runs if "optuna.trial" in r.data.tags}
    _log_trials(study, done)
    if not any(t.state == tune.FINISHED[0] for t in study.trials):
        raise StageError("tune", "no trial completed: raise tuning.timeout or n_trials")
    params = {**tune.suggest_params(optuna_fixed(study.best_params), cfg.tuning.model)}
    mlflow.log_metric("best_cv_roc_auc", study.best_value)
    result = _fit_and_log(ctx, cfg.tuning.model, params, parts, f"{cfg.tuning.model}-tuned")
    counts = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    info = {"enabled": True, "study_name": study_name, "best_trial": study.best_trial.number,
            "best_cv_roc_auc": study.best_value, "trial_states": counts,
            "models": {result["name"]: result}}
    ctx.write_json("tune.json", info)
    return study, info


def optuna_fixed(params: dict[str, Any]):
    """A trial that answers every suggest_* with the given values (rebuilds full params)."""
    import optuna

    return optuna.trial.FixedTrial(params)


# -- evaluate -------------------------------------------------------------------------
def candidates(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Every model of the train and tune stages, by name."""
    found = dict(ctx.read_json("train.json")["models"])
    tuned = ctx.read_json("tune.json")
    found.update(tuned.get("models", {}))
    return found


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
            train.predict_scores(model, parts["valid"], schema))
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
            champ_score = train.predict_scores(tracking.load_model(champion.uri), parts["test"],
                                               schema)
        except Exception as exc:  # a champion of another schema cannot score these rows
            raise StageError("evaluate", f"champion {champion.uri} cannot score the test rows "
                             f"({type(exc).__name__}: {exc}); retire it or use a new "
                             "registry.model_name") from exc
        scores["champion"] = champ_score
        champion_info = {"version": champion.version, "run_id": champion.run_id,
                         "test": evaluate.classification_metrics(y_test, champ_score, threshold)}
        comparison = evaluate.bootstrap_auc_difference(
            y_test, score, champ_score, cfg.gate.bootstrap_samples, cfg.gate.confidence,
            cfg.seed)
    verdict = evaluate.gate(cfg.gate, test_metrics, comparison,
                            champion.version if champion else None)
    ctx.write_parquet("data/test_scores.parquet",
                      pd.DataFrame({"y": y_test, **{k: v for k, v in scores.items()}}))
    mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
    mlflow.set_tags({"mlfolio.candidate": best_name, "mlfolio.gate_passed": verdict.passed})
    result = {
        "candidate": {"name": best_name, "model_uri": best["model_uri"],
                      "run_id": best["run_id"], "valid": best["valid"], "test": test_metrics,
                      "confusion": evaluate.confusion(y_test, score, threshold),
                      "calibration": evaluate.calibration(y_test, score,
                                                          cfg.evaluation.calibration_bins)},
        "threshold": threshold,
        "champion": champion_info,
        "comparison": comparison,
        "gate": verdict.to_dict(),
    }
    ctx.write_json("evaluate.json", result)
    return result


def test_scores(ctx: StageContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    df = ctx.read_parquet("data/test_scores.parquet")
    return df["y"].to_numpy(), {c: df[c].to_numpy() for c in df.columns if c != "y"}


# -- register -------------------------------------------------------------------------
def register_model(ctx: StageContext) -> dict[str, Any]:
    """Register the candidate as a new version, alias it challenger, and move champion
    only when the gate passed."""
    cfg = ctx.cfg
    ev = ctx.read_json("evaluate.json")
    ingest_info = ctx.read_json("ingest.json")
    candidate = ev["candidate"]
    passed = bool(ev["gate"]["passed"])
    tags = {
        "mlfolio.run_dir": str(ctx.run_dir),
        "mlfolio.data_hash": ingest_info["data_hash"],
        "mlfolio.pipeline_run_id": ctx.parent_run_id,
        "mlfolio.candidate": candidate["name"],
        "mlfolio.gate_passed": str(passed),
        "mlfolio.test_roc_auc": f"{candidate['test']['roc_auc']:.6f}",
        "mlfolio.threshold": f"{ev['threshold']:.6f}",
    }
    try:
        ref = registry.register(cfg.model_name, candidate["model_uri"], candidate["run_id"], tags)
    except Exception as exc:
        raise RegistryError(f"registering {candidate['model_uri']} as {cfg.model_name} failed: "
                            f"{exc}") from exc
    events = [registry.set_alias(ref, registry.CHALLENGER, "new candidate from pipeline run",
                                 str(ctx.run_dir))]
    promoted = passed and cfg.registry.promote
    if promoted:
        reason = "gate passed: " + "; ".join(ev["gate"]["reasons"])
        events.append(registry.set_alias(ref, registry.CHAMPION, reason, str(ctx.run_dir)))
    mlflow.set_tags({"mlfolio.model_version": ref.version, "mlfolio.promoted": promoted})
    result = {
        "model_name": ref.name, "version": ref.version, "model_uri": ref.uri,
        "source": candidate["model_uri"], "promoted": promoted,
        "why_not_promoted": None if promoted else (
            "registry.promote is false" if passed else "gate failed"),
        "alias_events": events,
        "champion": (c.version if (c := registry.get_alias(ref.name, registry.CHAMPION))
                     else None),
    }
    ctx.write_json("register.json", result)
    return result


def alias_history_table(ctx: StageContext) -> pd.DataFrame:
    return pd.DataFrame(registry.alias_history(ctx.cfg.model_name))


# -- deploy ---------------------------------------------------------------------------
def _deploy_target(ctx: StageContext, target: str, ref: registry.ModelRef,
                   alias_uri: str) -> dict[str, Any]:
    """Build and ship one target; returns what it deployed (raises DeployError)."""
    cfg, dc = ctx.cfg, ctx.cfg.deploy
    out = ctx.path(f"deploy/{target}")
    out.mkdir(parents=True, exist_ok=True)
    if target == "local":
        from mlfolio.deploy.local import deploy_local

        test = ctx.read_parquet(SPLITS["test"]).head(dc.local.sample_rows)
        rows = test[cfg.schema.features]
        expected = train.predict_scores(tracking.load_model(ref.uri), test, cfg.schema)
        return deploy_local(alias_uri, cfg.tracking_uri(), rows, expected,
                            host=dc.local.host, port=dc.local.port,
                            log_path=ctx.path("logs/serve-local.log"))
    if target == "kubernetes":
        from mlfolio.deploy import kubernetes

        k = dc.kubernetes
        summary = kubernetes.render(
            out, model_name=ref.name, model_version=ref.version, model_uri=alias_uri,
            image=k.image, namespace=k.namespace, replicas=k.replicas,
            min_replicas=k.min_replicas, max_replicas=k.max_replicas,
            tracking_uri=k.tracking_uri or cfg.tracking_uri())
        summary["validated"] = kubernetes.validate_manifests(out / "kubernetes.yaml")
        return summary
    aws = dc.aws
    if target == "lambda":
        from mlfolio.deploy import aws_lambda

        package = aws_lambda.build_package(ref.uri, out)
        return aws_lambda.deploy_lambda(
            package, function_name=dc.lambda_.function_name or ref.name,
            role_arn=aws.role_arn, model_version=ref.version, region=aws.region,
            endpoint_url=aws.endpoint_url, memory_mb=dc.lambda_.memory_mb,
            timeout_s=dc.lambda_.timeout_s)
    from mlfolio.deploy import sagemaker

    archive = sagemaker.build_model_archive(ref.uri, out / "model.tar.gz")
    sm = dc.sagemaker
    return sagemaker.deploy_sagemaker(
        archive, endpoint_name=sm.endpoint_name or ref.name, image_uri=sm.image_uri,
        role_arn=aws.role_arn, bucket=aws.bucket, model_version=ref.version,
        region=aws.region, endpoint_url=aws.endpoint_url, instance_type=sm.instance_type,
        instance_count=sm.instance_count)


def deploy_model(ctx: StageContext) -> dict[str, Any]:
    """Deploy the version behind ``deploy.alias`` to every target; each target's outcome is
    recorded, and the stage fails (after writing deploy.json) if any target failed."""
    from mlfolio.deploy import DeployError

    cfg = ctx.cfg
    alias = cfg.deploy.alias
    ref = registry.get_alias(cfg.model_name, alias)
    if ref is None:
        raise DeployError(f"registry has no {cfg.model_name}@{alias}: nothing to deploy "
                          "(did the gate ever pass?)")
    alias_uri = f"models:/{ref.name}@{alias}"
    results: dict[str, Any] = {}
    for target in cfg.deploy.targets:
        try:
            results[target] = {**_deploy_target(ctx, target, ref, alias_uri),
                               "status": "deployed"}
        except DeployError as exc:
            results[target] = {"status": "failed", "error": str(exc)}
    failed = {t: r["error"] for t, r in results.items() if r["status"] == "failed"}
    mlflow.set_tags({f"mlfolio.deploy.{t}": r["status"] for t, r in results.items()})
    ctx.write_json("deploy.json", {"model_name": ref.name, "version": ref.version,
                                   "alias": alias, "model_uri": alias_uri, "targets": results})
    if failed:
        raise DeployError("; ".join(f"{t}: {e}" for t, e in failed.items()))
    return {"model": f"{ref.name} v{ref.version} (@{alias})", "targets": results}


def deploy_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per target: status and the main facts it recorded."""
    rows = {}
    for target, r in result["targets"].items():
        facts = {k: v for k, v in r.items() if isinstance(v, str | int | float) and k != "status"}
        rows[target] = {"status": r["status"], "details": "; ".join(
            f"{k}={v}" for k, v in list(facts.items())[:4])}
    return pd.DataFrame(rows).T
