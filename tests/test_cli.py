"""The command line: one place turns every mlfolio error into its exit code."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys

import pytest

from mlfolio import cli, errors
from mlfolio.errors import (
    ConfigError,
    DataValidationError,
    LockTimeoutError,
    MlfolioError,
    RegistryError,
    RequestError,
    RunInterrupted,
    ServeError,
    StageError,
)

from .conftest import CHURN_PARAMS

CASES = [
    (ConfigError("params.yaml: tuning.n_trails: unknown key"), 2),
    (StageError("train", "ValueError: boom", 3), 1),
    (DataValidationError("data.csv: column 'churn'"), 1),
    (RegistryError("no models:/m@champion"), 1),
    (LockTimeoutError("lock held by host:1"), 1),
    (ServeError("cannot listen on 127.0.0.1:1"), 1),
    (RunInterrupted(signal.SIGINT, "interrupted by SIGINT in stage tune"), 130),
    (RunInterrupted(signal.SIGTERM, "interrupted by SIGTERM in stage tune"), 143),
]


@pytest.mark.parametrize("command", ["run", "monitor", "serve"])
@pytest.mark.parametrize(
    ("error", "code"), CASES, ids=[type(e).__name__ + str(c) for e, c in CASES]
)
def test_every_command_maps_errors_to_their_exit_code(command, error, code, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, command, fail)
    argv = {
        "run": ["run", str(CHURN_PARAMS)],
        "monitor": ["monitor", str(CHURN_PARAMS)],
        "serve": ["serve", "--model", "models:/m@champion"],
    }[command]
    assert cli.main(argv) == code
    assert capsys.readouterr().err == f"mlfolio: {error}\n"


def test_ctrl_c_before_a_run_starts_is_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", str(CHURN_PARAMS)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_bad_override_is_exit_2_naming_the_key(capsys):
    assert cli.main(["run", str(CHURN_PARAMS), "-p", "tuning.n_trails=3"]) == 2
    assert "tuning.n_trails" in capsys.readouterr().err


def test_partial_rerun_without_its_run_folder_is_exit_2(capsys):
    assert cli.main(["run", str(CHURN_PARAMS), "--from", "evaluate"]) == 2
    assert "--run-dir" in capsys.readouterr().err


def test_every_exception_derives_from_the_one_base_with_codes():
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, BaseException) and c.__module__ == errors.__name__
    ]
    assert len(classes) >= 12
    for cls in classes:
        assert issubclass(cls, MlfolioError), cls
        assert isinstance(cls.exit_code, int) and isinstance(cls.http_status, int), cls
    assert RequestError("too large", status=413).http_status == 413
    assert ConfigError("x").http_status == 400


def test_help_is_instant_it_imports_no_heavy_library():
    code = (
        "import sys\nfrom mlfolio import cli\ntry:\n    cli.main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pandas', 'mlflow', 'sklearn', 'papermill') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("[]")


@pytest.mark.parametrize(
    "override, key, wrong, closest",
    [
        ("schema.target=churnn", "schema.target", "churnn", "churn"),
        ("schema.id_column=customer_id", "schema.id_column", "customer_id", "customerid"),
        (
            "schema.numeric=[tenur,monthlycharges,totalcharges]",
            "schema.numeric",
            "tenur",
            "tenure",
        ),
        (
            "schema.categorical=[gender,Contract]",
            "schema.categorical",
            "Contract",
            "contract",
        ),
    ],
)
def test_a_schema_column_missing_from_the_data_header_is_exit_2_before_any_run(
    write_params, tmp_path, capsys, override, key, wrong, closest
):
    """Caught when the parameters are checked against the source's header: no run folder,
    no MLflow run (not even a tracking store) and the message names the key, the column
    and the closest one the data has."""
    runs = tmp_path / "runs"
    params = write_params()
    store = tmp_path / "tracking" / "mlflow.db"
    code = cli.main(["run", str(params), "--runs-root", str(runs), "-p", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{key}: column {wrong!r} is not in the data" in err, err
    assert f"did you mean {closest!r}?" in err, err
    assert "telco_churn.csv" in err
    assert not runs.exists() or not any(runs.iterdir())
    assert not store.exists()  # nothing opened the tracking store: no MLflow run
