"""``mlfolio`` command line: ``mlfolio run parameters/churn.yaml [-p key=value ...]``,
``mlfolio serve --model models:/churn-classifier@champion [--port 8080]``."""

from __future__ import annotations

import argparse
import logging
import sys

from mlfolio.errors import ConfigError, MlfolioError, StageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlfolio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline's stage notebooks into a run folder")
    run.add_argument("params_file", help="YAML parameter file, e.g. parameters/churn.yaml")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter, e.g. -p tuning.n_trials=5 (repeatable)")
    run.add_argument("--stages", help="comma-separated stages to run (into --run-dir)")
    run.add_argument("--from", dest="from_stage", metavar="STAGE",
                     help="run from STAGE to the end (into --run-dir)")
    run.add_argument("--run-dir", help="an existing run folder to re-run stages into")
    run.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    serve = sub.add_parser(
        "serve", help="serve a registered model over HTTP (MLflow, SageMaker, KServe V2)",
        description="Serve a registered model: MLflow scoring protocol and SageMaker on "
                    "/invocations and /ping, Open Inference Protocol under /v2, Prometheus "
                    "on /metrics, model facts on /health.")
    serve.add_argument("--model", required=True, metavar="URI",
                       help="models:/<name>@<alias> or models:/<name>/<version>")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    serve.add_argument("--port", type=int, default=8080,
                       help="port (default 8080, SageMaker's; 0 picks a free one)")
    serve.add_argument("--token", default=None,
                       help="require 'Authorization: Bearer TOKEN' on every route but /ping "
                            "and /v2/health/* (default: $MLFOLIO_SERVE_TOKEN; none = open)")
    serve.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
                            "else sqlite:///<project>/mlflow.db)")
    serve.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024,
                       help="larger request bodies get 413 (default 10 MiB)")
    serve.add_argument("--max-batch-rows", type=int, default=4096,
                       help="rows scored together at most (1 turns micro-batching off)")
    serve.add_argument("--scorer", choices=["auto", "pipeline"], default="auto",
                       help="auto: compiled feature path when verified equal to the pipeline; "
                            "pipeline: always the sklearn pipeline")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="log at INFO level, with an access log")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import os

    from mlfolio import serve

    try:
        serve.serve(
            args.model, host=args.host, port=args.port,
            token=args.token or os.environ.get(serve.TOKEN_ENV) or None,
            tracking_uri=args.tracking_uri, max_body_bytes=args.max_body_bytes,
            max_batch_rows=args.max_batch_rows, scorer=args.scorer, access_log=args.verbose,
            echo=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except MlfolioError as exc:
        print(f"mlfolio: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args)
    from mlfolio import config, pipeline  # after argparse: `--help` stays instant

    try:
        if (args.stages or args.from_stage) and not args.run_dir:
            raise ConfigError("--stages/--from re-run part of a run: give its --run-dir too")
        pipeline.run(
            args.params_file,
            overrides=config.parse_overrides(args.param),
            stages=args.stages.split(",") if args.stages else None,
            from_stage=args.from_stage,
            run_dir=args.run_dir,
            echo=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except StageError as exc:
        print(f"mlfolio: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"mlfolio: {exc}", file=sys.stderr)
        return 2
    except MlfolioError as exc:
        print(f"mlfolio: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
