"""``mlfolio`` command line: ``mlfolio run parameters/churn.yaml [-p key=value ...]``,
``mlfolio serve --model models:/churn-classifier@champion [--port 8080]``,
``mlfolio new parameters/<name>.yaml --data FILE --target COLUMN``."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import threading
from typing import Any

from mlfolio import jobs
from mlfolio.errors import ConfigError, MlfolioError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlfolio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the pipeline's stage notebooks into a run folder",
        description="Run the stage notebooks into a new run folder, or re-run some into "
        "--run-dir. Exit 0: done; 1: a stage failed, or the tracking store or the "
        "disk did (recorded in the run folder, one line names the cause); 2: bad parameters, or a "
        "re-run refused; 130/143: stopped by SIGINT/SIGTERM (recorded as "
        "interrupted in the run folder; a second signal stops at once).",
    )
    run.add_argument("params_file", help="YAML parameter file, e.g. parameters/churn.yaml")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. -p tuning.n_trials=5 (repeatable)",
    )
    run.add_argument("--stages", help="comma-separated stages to run (into --run-dir)")
    run.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="run from STAGE to the end (into --run-dir)",
    )
    run.add_argument("--run-dir", help="an existing run folder to re-run stages into")
    run.add_argument(
        "--runs-root", metavar="DIR", help="where a new run folder goes (default: <project>/runs)"
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="re-run stages of --run-dir with parameters that differ from the "
        "ones its other stages ran with; those are then marked stale",
    )
    run.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="execute every stage, even one an earlier run of the experiment has with the "
        "same inputs (by default such a stage is reused from that run)",
    )
    from mlfolio.pipeline import engines  # the registry only: nothing heavy

    run.add_argument(
        "--engine",
        choices=list(engines.ENGINES),
        default=engines.DEFAULT,
        help="; ".join(
            f"{e.name}{' (default)' if e.name == engines.DEFAULT else ''}: {e.summary}"
            for e in engines.ENGINES.values()
        ),
    )
    run.add_argument("--kfp-host", metavar="URL", help="the KFP API endpoint (--engine kfp)")
    run.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    mon = sub.add_parser(
        "monitor",
        help="drift and quality of the champion on current data; retrain if needed",
        description="Run the monitor notebooks (08_monitor, 09_ab_report) into a new run "
        "folder: drift per column and of the predictions against the champion's "
        "training rows, quality on labelled rows, the A/B report; then, when the "
        "retraining policy (monitoring.retrain) fires, run the training pipeline "
        "on the champion's data plus the newly labelled rows (promoted only "
        "through the gate). Exit 0: done (whatever the verdict); 1: a stage or "
        "the retraining failed; 2: bad parameters.",
    )
    mon.add_argument("params_file", help="YAML parameter file, e.g. parameters/churn.yaml")
    mon.add_argument(
        "--current",
        metavar="FILE",
        help="current rows (CSV/Parquet; with the target column = labelled); "
        "default: monitoring.prediction_log over monitoring.window_hours",
    )
    mon.add_argument(
        "--labels",
        metavar="FILE",
        help="ground truth arrived later: an id column (request_id or the "
        "schema's id) and the target column",
    )
    mon.add_argument(
        "--prediction-log", metavar="DIR", help="the model server's --prediction-log folder"
    )
    mon.add_argument(
        "--window-hours",
        type=float,
        metavar="H",
        help="prediction log rows of the last H hours (default from parameters)",
    )
    mon.add_argument(
        "--runs-root", metavar="DIR", help="where the run folders go (default: <project>/runs)"
    )
    mon.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and report, but do not retrain or move registry aliases",
    )
    mon.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )
    mon.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    serve = sub.add_parser(
        "serve",
        help="serve a registered model over HTTP (MLflow, SageMaker, KServe V2)",
        description="Serve a registered model: MLflow scoring protocol and SageMaker on "
        "/invocations and /ping, Open Inference Protocol under /v2, Prometheus "
        "on /metrics, model facts on /health.",
    )
    serve.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="models:/<name>@<alias>, models:/<name>/<version>, or an MLflow "
        "model directory such as /opt/ml/model (no registry needed: name, "
        "version and threshold from $MLFOLIO_MODEL_NAME, "
        "$MLFOLIO_MODEL_VERSION, $MLFOLIO_THRESHOLD)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port (default 8080, SageMaker's; 0 picks a free one)",
    )
    serve.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every route but /ping "
        "and /v2/health/* (default: $MLFOLIO_SERVE_TOKEN; none = open)",
    )
    serve.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
        "else sqlite:///<project>/mlflow.db)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="larger request bodies get 413 (default 10 MiB)",
    )
    serve.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="request bodies received or being scored at once, in bytes; a "
        "body past it gets 503 with Retry-After, unread (default 16 MiB)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a request body that sends nothing for this long gets 408 and its "
        "connection is closed, releasing its share of the in-flight bytes (default 5)",
    )
    serve.add_argument(
        "--max-batch-rows",
        type=int,
        default=4096,
        help="rows scored together at most (1 turns micro-batching off)",
    )
    serve.add_argument(
        "--scorer",
        choices=["auto", "pipeline"],
        default="auto",
        help="auto: compiled feature path when verified equal to the pipeline; "
        "pipeline: always the sklearn pipeline",
    )
    serve.add_argument(
        "--prediction-log",
        default=None,
        metavar="DIR",
        help="log every scored row to DIR/predictions.sqlite (batched, off the "
        "request path); DIR/drift.json, if any, feeds /metrics",
    )
    serve.add_argument(
        "--entity-column",
        default=None,
        metavar="NAME",
        help="input column with entity ids: logged, used for sticky A/B "
        "routing, never passed to the model (default: the schema's id "
        "column recorded with the model, e.g. customerid)",
    )
    serve.add_argument(
        "--challenger",
        default=None,
        metavar="URI",
        help="a second model, e.g. models:/<name>@challenger; needs "
        "--challenger-weight or --shadow",
    )
    serve.add_argument(
        "--challenger-weight",
        type=float,
        default=None,
        metavar="W",
        help="A/B: share of entities (0 < W < 1) routed to the challenger",
    )
    serve.add_argument(
        "--shadow",
        action="store_true",
        help="score every row on the challenger too, log it (shadow=1), answer with the champion",
    )
    serve.add_argument(
        "--ab-salt",
        default=None,
        help="salt of the A/B hash (default: the model name); change it to reshuffle entities",
    )
    serve.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level, with an access log"
    )
    # SageMaker starts a serving container as `docker run IMAGE serve`: the image's
    # ENTRYPOINT (`mlfolio serve --model ... "$@"`) then ends with that word.
    serve.add_argument("sagemaker_command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    _tune_worker_parser(sub)
    jobs.add_parser(sub)
    _compile_parser(sub)
    _reproduce_parsers(sub)
    _new_parser(sub)
    _gate_status_parser(sub)
    from mlfolio.pipeline import approvals, costing  # their arguments are their own

    approvals.add_parsers(sub)
    costing.add_arguments(sub.add_parser("cost", help=costing.HELP, description=costing.ABOUT))
    return parser


def _new_parser(sub: argparse._SubParsersAction) -> None:
    new = sub.add_parser(
        "new",
        help="write a commented parameter file for a new data set",
        description="Infer the schema of --data (numeric and categorical columns, the id "
        "column, the target's two values, missing counts) and write it, commented, as a "
        "new parameter file, validated by the config loader and the ingest check. Never "
        "overwrites a file. Exit 0: written; 2: the file exists, or the data or target "
        "need a decision (the message says which).",
    )
    new.add_argument("params_file", help="the file to write, e.g. parameters/cancer.yaml")
    new.add_argument("--data", required=True, metavar="FILE", help="a CSV or Parquet file")
    new.add_argument("--target", required=True, metavar="COLUMN", help="the label column")
    new.add_argument(
        "--positive",
        metavar="VALUE",
        help="the target's value to predict (needed when it is not Yes/No, 1/0 or True/False)",
    )
    new.add_argument(
        "--encoding",
        default="utf-8",
        metavar="CODEC",
        help="the CSV file's text encoding, e.g. latin-1 or cp1252 (default utf-8; written "
        "as data.encoding)",
    )
    new.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _new(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mlfolio import scaffold

    target = Path(args.params_file)
    schema, cfg = scaffold.write(
        target, Path(args.data), args.target, args.positive, encoding=args.encoding
    )
    left_out = [c.name for c in schema.of_role("left out")]
    _echo(
        f"wrote {target}: experiment {cfg.experiment}, {schema.rows} rows; target "
        f"{schema.target} (positive {schema.positive_label!r}), id {schema.id_column or '-'}, "
        f"{len(schema.numeric)} numeric, {len(schema.categorical)} categorical"
        + (f", left out {', '.join(left_out)}" if left_out else "")
    )
    _echo(f"check the roles in it, then: mlfolio run {target}")


def _reproduce_parsers(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser(
        "reproduce",
        help="re-execute a finished run from its record and compare the results",
        description="Re-execute RUN_DIR's stages up to evaluate from its parameters.yaml "
        "into a new run folder (no stage reused, no model version registered, no alias "
        "moved; the candidate compared with the champion version the run compared with), "
        "then compare data hash, every metric, the candidate's test scores and the gate "
        "verdict. Warns when the code commit or package versions differ from the record. "
        "Exit 0: reproduced; 1: something differs (listed); 2: not reproducible as "
        "recorded (the data source's content hash changed, or bad input).",
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to reproduce")
    rep.add_argument(
        "--runs-root", metavar="DIR", help="where the new run folder goes (default: beside RUN_DIR)"
    )
    rep.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        metavar="T",
        help="absolute tolerance for tune and evaluate numbers when tuning is not "
        "bit-stable (parallel workers, a shared study, a timeout that ended it); "
        "otherwise everything must be equal (default 0.01)",
    )
    rep.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    diff = sub.add_parser(
        "diff",
        help="what changed between two run folders",
        description="Compare two run folders: parameters that differ, data hash and row "
        "counts, code commit, package versions, per-stage input hashes, metrics side by "
        "side with deltas, the gate verdict. Prints text and writes a self-contained HTML "
        "page. Exit 0: written (whatever differs); 2: not run folders.",
    )
    diff.add_argument("run_a", metavar="RUN_A", help="the earlier (reference) run folder")
    diff.add_argument("run_b", metavar="RUN_B", help="the run folder compared with it")
    diff.add_argument(
        "-o",
        "--output",
        metavar="HTML",
        help="the page to write (default: RUN_B/diff-<RUN_A>.html)",
    )
    diff.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _reproduce(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mlfolio.errors import NotReproduced
    from mlfolio.pipeline import reproduce

    if args.tolerance < 0:
        raise ConfigError(f"--tolerance: expected a number >= 0, got {args.tolerance}")
    rep = reproduce.reproduce(
        args.run_dir,
        runs_root=Path(args.runs_root).resolve() if args.runs_root else None,
        tolerance=args.tolerance,
        echo=_echo,
    )
    text = reproduce.summary(rep)
    if not rep.reproduced:
        raise NotReproduced(text)
    print(text)


def _diff(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mlfolio.pipeline import diff

    d = diff.diff_runs(args.run_a, args.run_b)
    target = Path(args.output) if args.output else diff.default_output(args.run_a, args.run_b)
    diff.write_html(d, target)
    print(diff.render_text(d))
    _echo(f"diff page: {target.resolve()}")


def _gate_status_parser(sub: argparse._SubParsersAction) -> None:
    gate = sub.add_parser(
        "gate-status",
        help="may CI deploy this run? (its manifest's gate and promotion, as an exit code)",
        description="Read RUN_DIR/manifest.json and say in one line whether the run's "
        "model may be deployed. Exit 0: the run succeeded, the gate passed and the "
        "version was promoted (or only passed, with --require passed), or the candidate "
        "is the champion's own model (same model); 1: the run "
        "finished but the gate did not pass or the version was not promoted (or its "
        "approval was rejected); 2: not a run folder, or no readable manifest; 3: the run "
        "failed or was interrupted; 4: the gate passed and the version is pending "
        "approval (registry.require_approval; 0 once `mlfolio approve` approved it).",
    )
    gate.add_argument("run_dir", metavar="RUN_DIR", help="a training run's folder")
    gate.add_argument(
        "--require",
        choices=["promoted", "passed"],
        default="promoted",
        help="what exit 0 needs (default: promoted)",
    )
    gate.add_argument(
        "--json",
        action="store_true",
        help="print status, gate_passed, version, promoted, champion, model_uri, run_dir "
        "as JSON on stdout (the reason line goes to stderr)",
    )
    gate.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _gate_status(args: argparse.Namespace) -> None:
    from mlfolio.pipeline import gate_status

    verdict = gate_status.check(args.run_dir, args.require)
    # A refusal's line reaches stderr through main's wrapper; with --json, stdout is JSON.
    if args.json:
        print(verdict.to_json())
    if verdict.exit_code == 0:
        (_echo if args.json else print)(f"{verdict.run_dir}: {verdict.reason}")
    gate_status.raise_for(verdict)


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
    comp.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )
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
        _echo(
            f"wrote {out}: SageMaker pipeline {plan.name}, {len(plan.steps)} processing "
            f"steps and the gate's condition step, image {plan.image_uri}"
        )
        return
    engines.needs_kfp()
    from mlfolio.pipeline.kfp import spec

    cfg, out = spec.compile_pipeline(args.params_file, overrides, args.output or "pipeline.yaml")
    _echo(f"wrote {out}: pipeline {spec.pipeline_name(cfg)}, image {cfg.kfp.image}")


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
    worker.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )
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
    _echo(f"tune-worker {args.worker}: ran {ran} trial(s) of study {name}")


class _Terminal:
    """stderr: lasting lines, and one transient progress line rewritten in place below
    them when stderr is a terminal (left out in a file or pipe, where the stage's final
    line carries the totals). Progress comes from the runner's watcher thread."""

    def __init__(self, stream: Any = None):
        self._stream = stream
        self.pending = False
        self.lock = threading.Lock()

    @property
    def stream(self) -> Any:
        return self._stream or sys.stderr  # looked up late: tests replace sys.stderr

    @property
    def tty(self) -> bool:
        return self.stream.isatty()

    def echo(self, line: str) -> None:
        with self.lock:
            if self.pending:
                self.stream.write("\r\x1b[K")  # clear the progress line
                self.pending = False
            print(line, file=self.stream, flush=True)

    def progress(self, line: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
        with self.lock:
            self.stream.write("\r\x1b[K" + line[:width])
            self.stream.flush()
            self.pending = True


def _echo(line: str) -> None:
    _TERMINAL.echo(line)


def _serve(args: argparse.Namespace) -> None:
    import os

    from mlfolio import serve

    options = serve.ServeOptions(
        args.model,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get(serve.TOKEN_ENV) or None,
        tracking_uri=args.tracking_uri,
        max_body_bytes=args.max_body_bytes,
        max_batch_rows=args.max_batch_rows,
        scorer=args.scorer,
        access_log=args.verbose,
        challenger=args.challenger,
        challenger_weight=args.challenger_weight,
        shadow=args.shadow,
        ab_salt=args.ab_salt,
        entity_column=args.entity_column,
        prediction_log=args.prediction_log,
        max_inflight_bytes=args.max_inflight_bytes,
        body_timeout=args.body_timeout,
    )
    serve.serve(options, echo=_echo)


def _monitor(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mlfolio import config, pipeline

    overrides = config.parse_overrides(args.param)
    # Paths given on the command line are relative to where the user typed them.
    for flag, key in (
        ("current", "current"),
        ("labels", "labels"),
        ("prediction_log", "prediction_log"),
    ):
        if getattr(args, flag):
            overrides[f"monitoring.{key}"] = str(Path(getattr(args, flag)).resolve())
    if args.window_hours is not None:
        overrides["monitoring.window_hours"] = args.window_hours
    pipeline.monitor(
        args.params_file,
        overrides,
        dry_run=args.dry_run,
        runs_root=Path(args.runs_root).resolve() if args.runs_root else None,
        echo=_echo,
        progress=_TERMINAL.progress,
    )


def _cost(args: argparse.Namespace) -> None:
    from mlfolio.pipeline import costing

    print("\n".join(costing.command(args)))


def _run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mlfolio import config  # after argparse: `--help` stays instant
    from mlfolio.pipeline import engines

    request = engines.RunRequest(
        args.params_file,
        overrides=config.parse_overrides(args.param),
        stages=args.stages.split(",") if args.stages else None,
        from_stage=args.from_stage,
        run_dir=args.run_dir,
        runs_root=Path(args.runs_root).resolve() if args.runs_root else None,
        force=args.force,
        reuse=args.reuse,
        kfp_host=args.kfp_host,
        echo=_echo,
        progress=_TERMINAL.progress,
    )
    engines.run(args.engine, request)


_TERMINAL = _Terminal()

COMMANDS = {
    "run": _run,
    "monitor": _monitor,
    "serve": _serve,
    "tune-worker": _tune_worker,
    "tune-job": lambda args: jobs.command(args, _echo),
    "compile": _compile,
    "reproduce": _reproduce,
    "diff": _diff,
    "new": _new,
    "gate-status": _gate_status,
    "cost": _cost,
    **dict.fromkeys(("approve", "reject", "approvals"), lambda args: _approvals(args)),
}


def _approvals(args: argparse.Namespace) -> None:
    from mlfolio.pipeline import approvals

    (approvals.show if args.command == "approvals" else approvals.decide)(args, _echo)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every mlfolio error becomes its class's exit code here, and only
    here (2: bad parameters or input, 1: a failure on the way, 130/143: interrupted)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except MlfolioError as exc:  # a RunInterrupted run is recorded in its folder already
        print(f"mlfolio: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a run started (or a third one)
        print("mlfolio: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
