"""``mlfolio serve`` and ``mlfolio monitor``: the model server, and the monitoring loop."""

from __future__ import annotations

import argparse

from mlfolio import config
from mlfolio.cli.common import TERMINAL, echo


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    config.add_override_option(mon)
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
    serve.serve(options, echo=echo)


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
        echo=echo,
        progress=TERMINAL.progress,
    )


COMMANDS = {"serve": _serve, "monitor": _monitor}
