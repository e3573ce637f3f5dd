"""What a step of the SageMaker pipeline runs in the project image:
``python -m mlfolio.pipeline.sagemaker.entry start|stage NAME|tune-worker K|finish ...``.

A step reads its upstream stages' products from ``/opt/ml/processing/input/<stage>`` and
hands its own over in ``/opt/ml/processing/output/products`` (uploaded to S3 when it
ends), as a Kubeflow task does with its artifact folders: the stage itself runs through
:func:`mlfolio.pipeline.kfp.steps.run_stage`, the same code path.

The steps of one execution find their MLflow parent run by the execution's S3 folder (the
parent of the step's own output folder, read from the job's configuration file), not by
an argument: an argument naming the execution would change every time and defeat step
caching. Secrets named in ``MLFOLIO_SECRET_<VAR>`` variables (``sagemaker.secrets``) are
read from AWS Secrets Manager into ``<VAR>`` before anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import ConfigError, MlfolioError, StageError
from mlfolio.files import read_json, write_json
from mlfolio.pipeline.sagemaker import plan as plan_mod

log = logging.getLogger(__name__)

SECRET_PREFIX = "MLFOLIO_SECRET_"
RUN_TAG = "mlfolio.sagemaker_run"  # the parent run's tag: the execution's S3 folder


def ml_root() -> Path:
    """``/opt/ml`` (``$MLFOLIO_SAGEMAKER_ROOT`` elsewhere, e.g. in tests)."""
    return Path(os.environ.get("MLFOLIO_SAGEMAKER_ROOT", "/opt/ml"))


def _local(path: str) -> Path:
    return ml_root() / Path(path).relative_to("/opt/ml")


def input_dirs() -> list[str]:
    root = _local("/opt/ml/processing/input")
    return [str(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []


def output_dir() -> Path:
    out = _local("/opt/ml/processing/output/products")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_folder() -> str:
    """The execution's S3 folder: the parent of this step's output destination, as the
    processing job's configuration file gives it."""
    path = ml_root() / "config" / "processingjobconfig.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no processing job configuration (not in a SageMaker job?)")
    outputs = read_json(path).get("ProcessingOutputConfig", {}).get("Outputs", [])
    for out in outputs:
        if out.get("OutputName") == plan_mod.OUTPUT:
            return out["S3Output"]["S3Uri"].rstrip("/").rsplit("/", 1)[0]
    raise ConfigError(f"{path}: no output named {plan_mod.OUTPUT!r}")


def load_secrets(environ: dict[str, str] | None = None, client: Any = None) -> list[str]:
    """Set ``VAR`` from the Secrets Manager secret ``MLFOLIO_SECRET_VAR`` names; return the
    variables set (never their values)."""
    env = os.environ if environ is None else environ
    wanted = {k[len(SECRET_PREFIX) :]: v for k, v in env.items() if k.startswith(SECRET_PREFIX)}
    if not wanted:
        return []
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    for var, secret in sorted(wanted.items()):
        env[var] = client.get_secret_value(SecretId=secret)["SecretString"]
    return sorted(wanted)


# -- arguments ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlfolio.pipeline.sagemaker.entry")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stage", "tune-worker", "finish"):
        cmd = sub.add_parser(name)
        if name == "stage":
            cmd.add_argument("stage")
        if name == "tune-worker":
            cmd.add_argument("worker", type=int)
        cmd.add_argument("--params", action="append", required=True)
        cmd.add_argument("--tracking-uri", default="")
        cmd.add_argument("--tuning-storage", default="")
        cmd.add_argument("--notebook-sha")
        cmd.add_argument("--mlfolio-sha")
        cmd.add_argument("--source-sha")
        cmd.add_argument("--study-of")
        cmd.add_argument("--fanned-out", action="store_true")
    return parser


# Options whose value follows them as the next argument in the definition.
_VALUED = (
    "--params",
    "--tracking-uri",
    "--tuning-storage",
    "--notebook-sha",
    "--mlfolio-sha",
    "--source-sha",
    "--study-of",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The step's arguments, each option's value glued to it (``--params=PIECE``) before
    argparse reads them: a piece of the parameters' JSON may start with ``-``, which
    argparse takes for an option (the definition holds them as separate arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    glued: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _VALUED and i + 1 < len(argv):
            glued.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            glued.append(argv[i])
            i += 1
    return _parser().parse_args(glued)


def services(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline parameters' services as parameter overrides (empty: keep the file's)."""
    out: dict[str, Any] = {}
    if args.tracking_uri:
        out["tracking.tracking_uri"] = args.tracking_uri
    if args.tuning_storage:
        out["tuning.storage"] = args.tuning_storage
    return out


def params_text(args: argparse.Namespace) -> str:
    """The parameters, joined from the argument pieces, with the services applied."""
    from mlfolio import config as config_mod

    raw = json.loads("".join(args.params))
    raw = config_mod.apply_overrides(raw, services(args), "pipeline parameters")
    return json.dumps(raw)


def load(args: argparse.Namespace) -> Config:
    from mlfolio.pipeline.kfp import steps

    return steps.load_params(params_text(args))


def check_sources(args: argparse.Namespace, cfg: Config) -> None:
    """Refuse to run other code than the definition was compiled from: the image must hold
    the committed notebook, the same mlfolio source (and the same data file)."""
    from mlfolio.pipeline.provenance import notebook_source_hash, package_source_hash

    checks = []
    if args.mlfolio_sha:
        checks.append(("the mlfolio source", args.mlfolio_sha, package_source_hash))
    if args.notebook_sha:
        nb = plan_mod.stage_notebook(args.stage)
        checks.append((str(nb), args.notebook_sha, lambda: notebook_source_hash(nb)))
    if args.source_sha:
        source = f"data.uri {cfg.data.uri}"
        checks.append((source, args.source_sha, lambda: plan_mod.source_sha(cfg)))
    for what, expected, actual in checks:
        if (got := actual()) != expected:
            raise ConfigError(
                f"{what} in this image hashes to {got[:12]}, the pipeline definition was "
                f"compiled from {expected[:12]}: build and push the image from the commit "
                "you compile from (docs/aws.md)"
            )


def study_name(cfg: Config, study_of: str) -> str:
    """The Optuna study of the products ``study_of`` (an S3 folder): the workers and the
    tune step derive the same one."""
    digest = hashlib.sha256(study_of.encode()).hexdigest()[:12]
    return cfg.tuning.study_name or f"{cfg.experiment}-sm-{digest}"


def parent_run(cfg: Config, folder: str) -> str:
    from mlfolio.pipeline.kfp import steps

    parent = steps.find_parent_run(cfg, RUN_TAG, folder)
    if parent is None:
        raise StageError("start", f"no MLflow run tagged {RUN_TAG}={folder} (did start run?)")
    return parent


# -- the commands -------------------------------------------------------------------------------
def start(args: argparse.Namespace) -> dict[str, str]:
    from mlfolio import tracking
    from mlfolio.pipeline.provenance import git_info

    cfg = load(args)
    folder = run_folder()
    name = f"{cfg.experiment}-sm-{folder.rsplit('/', 1)[-1]}"
    tags = {
        "mlfolio.pipeline": "training",
        "mlfolio.engine": "sagemaker",
        "mlfolio.git_commit": str(git_info()["commit"]),
        RUN_TAG: folder,
    }
    parent = tracking.start_parent_run(cfg, Path(name), tags)
    out = {"parent_run_id": parent, "run_name": name, "run_folder": folder}
    write_json(output_dir() / "run.json", out)
    return out


def stage(args: argparse.Namespace) -> dict[str, Any]:
    from mlfolio.pipeline.kfp import steps

    cfg = load(args)
    check_sources(args, cfg)
    overrides: dict[str, Any] = {}
    if args.study_of:
        overrides["tuning.study_name"] = study_name(cfg, args.study_of)
        if args.fanned_out:
            overrides["tuning.n_workers"] = 1  # the worker steps ran the trials
    parent = parent_run(cfg, run_folder())
    html = Path(tempfile.mkdtemp(prefix="mlfolio-html-")) / "notebook.html"
    try:
        return steps.run_stage(
            args.stage,
            params_text(args),
            parent,
            input_dirs(),
            str(output_dir()),
            str(html),
            None,
            overrides,
        )
    except StageError:
        end_failed(cfg)
        raise


def end_failed(cfg: Config) -> None:
    """End the parent run, and every run still open under it, FAILED: SageMaker retries a
    step only on its own faults, never when the stage's code failed, so the execution
    stops here and no finish step will run (SageMaker Pipelines has no exit handler).
    Guarded: the tracking store may be what failed; the step's own error is the one told."""
    from mlflow.tracking import MlflowClient

    from mlfolio.pipeline.runlock import end_open_runs

    try:
        end_open_runs(MlflowClient(), parent_run(cfg, run_folder()), "FAILED")
    except Exception as exc:  # noqa: BLE001 - reported, the step's error goes on
        log.warning("could not end the MLflow parent run FAILED: %s", exc)


def tune_worker(args: argparse.Namespace) -> int:
    import pandas as pd

    from mlfolio import products, tune

    cfg = load(args)
    check_sources(args, cfg)
    (folder,) = input_dirs()
    train = pd.read_parquet(Path(folder) / products.SPLITS["train"].path)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    name = study_name(cfg, args.study_of)
    try:
        ran = tune.join_study(cfg, train, name, args.worker)
    except Exception:
        end_failed(cfg)
        raise
    write_json(output_dir() / "worker.json", {"worker": args.worker, "study": name, "ran": ran})
    return ran


def finish(args: argparse.Namespace) -> str:
    from mlfolio import tracking

    cfg = load(args)
    parent = parent_run(cfg, run_folder())
    tracking.end_run(parent, "FINISHED")
    write_json(output_dir() / "finished.json", {"parent_run_id": parent})
    return parent


COMMANDS = {"start": start, "stage": stage, "tune-worker": tune_worker, "finish": finish}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        names = load_secrets()
        if names:
            log.info("secrets read from AWS Secrets Manager: %s", ", ".join(names))
        COMMANDS[args.command](args)
    except MlfolioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
