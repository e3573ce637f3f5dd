"""``mlfolio`` command line: ``mlfolio run parameters/churn.yaml [-p key=value ...]``."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
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
