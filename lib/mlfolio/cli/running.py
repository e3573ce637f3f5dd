"""``mlfolio run``, ``new``, ``reproduce``, ``diff`` and ``gate-status``: a run folder made,
re-made, compared and read."""

from __future__ import annotations

import argparse

from mlfolio import config
from mlfolio.cli.common import TERMINAL, echo
from mlfolio.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    config.add_override_option(run, "override a parameter, e.g. -p tuning.n_trials=5 (repeatable)")
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

    _new_parser(sub)
    _reproduce_parsers(sub)
    _gate_status_parser(sub)


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
    echo(
        f"wrote {target}: experiment {cfg.experiment}, {schema.rows} rows; target "
        f"{schema.target} (positive {schema.positive_label!r}), id {schema.id_column or '-'}, "
        f"{len(schema.numeric)} numeric, {len(schema.categorical)} categorical"
        + (f", left out {', '.join(left_out)}" if left_out else "")
    )
    echo(f"check the roles in it, then: mlfolio run {target}")


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
        echo=echo,
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
    echo(f"diff page: {target.resolve()}")


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
        (echo if args.json else print)(f"{verdict.run_dir}: {verdict.reason}")
    gate_status.raise_for(verdict)


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
        echo=echo,
        progress=TERMINAL.progress,
    )
    engines.run(args.engine, request)


COMMANDS = {
    "run": _run,
    "new": _new,
    "reproduce": _reproduce,
    "diff": _diff,
    "gate-status": _gate_status,
}
