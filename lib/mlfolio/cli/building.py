"""``mlfolio compile`` (Kubeflow, SageMaker) and ``mlfolio tune-worker``: the pipeline for
other engines, and a worker joining a shared Optuna study."""

from __future__ import annotations

import argparse

from mlfolio import config
from mlfolio.cli.common import echo
from mlfolio.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _tune_worker_parser(sub)
    _compile_parser(sub)


def _compile_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser(
        "compile",
        help="write the pipeline as a Kubeflow Pipelines v2 spec or a SageMaker pipeline",
        description="Validate the parameters, then write the stage chain as a KFP v2 "
        "pipeline spec or a SageMaker pipeline definition (one task per stage notebook, "
        "tuning workers in parallel, register and deploy behind the gate). Tasks run on "
        "other machines: the tracking URI "
        "must be a server and tuning.storage (n_workers > 1) a shared database. "
        "Exit 0: written; 2: bad parameters.",
    )
    comp.add_argument(
        "target",
        choices=["kfp", "sagemaker"],
        help="the orchestrator: kfp (a KFP v2 spec, YAML) or sagemaker (a SageMaker "
        "pipeline definition, JSON; needs the mlfolio[aws] extra)",
    )
    comp.add_argument("params_file", help="YAML parameter file, e.g. parameters/team.yaml")
    config.add_override_option(comp)
    comp.add_argument(
        "-o", "--output", help="the file to write (default pipeline.yaml / pipeline.json)"
    )
    comp.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _compile(args: argparse.Namespace) -> None:
    from mlfolio import config
    from mlfolio.pipeline import engines

    overrides = config.parse_overrides(args.param)
    if args.target == "sagemaker":
        engines.needs_sagemaker()
        from mlfolio.pipeline.sagemaker import definition

        output = args.output or "pipeline.json"
        cfg, plan, out = definition.compile_pipeline(args.params_file, overrides, output)
        echo(
            f"wrote {out}: SageMaker pipeline {plan.name}, {len(plan.steps)} processing "
            f"steps and the gate's condition step, image {plan.image_uri}"
        )
        return
    engines.needs_kfp()
    from mlfolio.pipeline.kfp import spec

    cfg, out = spec.compile_pipeline(args.params_file, overrides, args.output or "pipeline.yaml")
    echo(f"wrote {out}: pipeline {spec.pipeline_name(cfg)}, image {cfg.kfp.image}")


def _tune_worker_parser(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "tune-worker",
        help="run trials of a tuning study shared through tuning.storage (another machine)",
        description="Join the Optuna study NAME in tuning.storage (a PostgreSQL or MySQL "
        "URL) and run its trials until it has tuning.n_trials finished ones, or "
        "tuning.timeout passes. Exit 0: done; 1: a failure on the way; 2: bad "
        "parameters, or tuning.storage is not a shared database.",
    )
    worker.add_argument("params_file", help="YAML parameter file, e.g. parameters/team.yaml")
    worker.add_argument(
        "--study",
        metavar="NAME",
        help="the study (default: tuning.study_name; with --run-dir, the tune stage's "
        "'<experiment>-<run folder name>')",
    )
    rows = worker.add_mutually_exclusive_group(required=True)
    rows.add_argument(
        "--train", metavar="PATH", help="the preprocess stage's data/train.parquet of the run"
    )
    rows.add_argument("--run-dir", metavar="RUN", help="the run folder to take it from")
    worker.add_argument(
        "--worker",
        type=int,
        default=0,
        metavar="K",
        help="this worker's number: sampler seed = seed + 1 + K; give each worker its "
        "own (the tune stage's own workers use 0 .. tuning.n_workers - 1)",
    )
    config.add_override_option(worker)
    worker.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _tune_worker(args: argparse.Namespace) -> None:
    from pathlib import Path

    import optuna
    import pandas as pd

    from mlfolio import config, tune

    if not args.verbose:  # one line per trial only with -v
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = config.load(args.params_file, config.parse_overrides(args.param))
    tune.require_shared(cfg.tuning)  # before reading any data
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    train = Path(args.train).resolve() if args.train else tune.train_path(run_dir)
    if not train.is_file():
        flag = "--train" if args.train else "--run-dir"
        raise ConfigError(f"{flag}: no such file: {train} (the preprocess stage writes it)")
    name = args.study or (tune.study_name(cfg, run_dir) if run_dir else cfg.tuning.study_name)
    if not name:
        raise ConfigError("--study: give the study's name (or set tuning.study_name)")
    ran = tune.join_study(cfg, pd.read_parquet(train), name, args.worker)
    echo(f"tune-worker {args.worker}: ran {ran} trial(s) of study {name}")


COMMANDS = {"compile": _compile, "tune-worker": _tune_worker}
