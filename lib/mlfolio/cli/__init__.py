"""``mlfolio`` command line: ``mlfolio run parameters/churn.yaml [-p key=value ...]``,
``mlfolio serve --model models:/churn-classifier@champion [--port 8080]``,
``mlfolio new parameters/<name>.yaml --data FILE --target COLUMN``.

One module per family of commands, each with ``add_parsers(sub)`` and its ``COMMANDS``;
:func:`main` is the one place an mlfolio error becomes an exit code."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from mlfolio.cli import building, jobs, running, serving
from mlfolio.cli.common import TERMINAL, echo
from mlfolio.errors import MlfolioError

# the names tests and tools reach for
_Terminal = type(TERMINAL)
_TERMINAL = TERMINAL
_echo = echo
_run = running.COMMANDS["run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlfolio", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    running.add_parsers(sub)
    serving.add_parsers(sub)
    building.add_parsers(sub)
    jobs.add_parser(sub)
    from mlfolio.pipeline import approvals, costing  # their arguments are their own

    approvals.add_parsers(sub)
    costing.add_arguments(sub.add_parser("cost", help=costing.HELP, description=costing.ABOUT))
    return parser


def _cost(args: argparse.Namespace) -> None:
    from mlfolio.pipeline import costing

    print("\n".join(costing.command(args)))


def _approvals(args: argparse.Namespace) -> None:
    from mlfolio.pipeline import approvals

    (approvals.show if args.command == "approvals" else approvals.decide)(args, echo)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    **running.COMMANDS,
    **serving.COMMANDS,
    **building.COMMANDS,
    "tune-job": lambda args: jobs.command(args, echo),
    "cost": _cost,
    **dict.fromkeys(("approve", "reject", "approvals"), _approvals),
}


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
