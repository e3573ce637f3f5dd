"""Issue 21, bad data: files that are empty or not in their encoding, a categorical column
with tens of thousands of levels, a feature missing in every row. Each test injects the
fault into the real Telco file and checks what the user sees (exit code, one line naming
the file/column/parameter) and that the record stays true."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from .conftest import CHURN_CSV, CHURN_PARAMS, ROOT, tracking_section

MLFOLIO = [sys.executable, "-m", "mlfolio.cli"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFOLIO_PROJECT_DIR"] = str(ROOT)
    return subprocess.run(
        [*MLFOLIO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _params(tmp_path: Path, data_uri: Path, **sections) -> Path:
    raw = yaml.safe_load(CHURN_PARAMS.read_text())
    raw["data"]["uri"] = str(data_uri)
    raw["tracking"] = tracking_section(tmp_path)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = tmp_path / f"params-{data_uri.stem}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- row 13: an empty file, a file not in UTF-8: `mlfolio new` and `mlfolio run` alike ------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-files")
    files = {
        "empty": b"",
        "blank_lines": b"\n\n\n",
        "header_only": CHURN_CSV.read_bytes().split(b"\n", 1)[0] + b"\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.csv"
        paths[name].write_bytes(content)
    # the Telco file as Excel on Windows writes it: one accented level, in cp1252
    df = pd.read_csv(CHURN_CSV)
    df["paymentmethod"] = df["paymentmethod"].replace("Mailed check", "Chèque postal")
    paths["cp1252"] = folder / "cp1252.csv"
    df.to_csv(paths["cp1252"], index=False, encoding="cp1252")
    return paths


EXPECTED = {
    "empty": "the file is empty (0 bytes)",
    "blank_lines": "the file is empty (no header, no rows)",
    "header_only": "the file has a header but no rows",
}


@pytest.mark.parametrize("name", ["empty", "cp1252"])
def test_bad_files_fail_new_and_run_alike_naming_the_file(name, bad_files, tmp_path):
    path = bad_files[name]
    new = _cli("new", str(tmp_path / "p.yaml"), "--data", str(path), "--target", "churn", cwd=ROOT)
    runs = tmp_path / "runs"
    run = _cli("run", str(_params(tmp_path, path)), "--runs-root", str(runs), cwd=ROOT)
    for done, where in ((new, f"--data {path}: "), (run, f"data.uri {path}: ")):
        assert done.returncode == 2, done.stderr  # DataFileError: fix the file, then run
        assert "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mlfolio: {where}"), done.stderr
    body = {cmd: d.stderr.strip().split(": ", 2)[2] for cmd, d in (("new", new), ("run", run))}
    if name in EXPECTED:
        assert body["new"] == body["run"] == EXPECTED[name]
    else:
        raw = path.read_bytes()
        at = raw.index("è".encode("cp1252"))
        line = raw[:at].count(b"\n") + 1
        found = f"not valid utf-8 at byte {at} (line {line}): 0xe8; the file reads as cp1252: "
        assert body["new"] == found + "give --encoding cp1252"
        assert body["run"] == found + "set data.encoding: cp1252"
    assert not runs.exists() or not any(runs.iterdir())  # refused before any run folder
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("name", ["blank_lines", "header_only"])
def test_files_without_rows_fail_the_checks_of_new_and_run_alike(name, bad_files, cfg):
    from mlfolio import data, scaffold
    from mlfolio.errors import DataFileError

    path = bad_files[name]
    source = cfg.data.model_copy(update={"uri": str(path)})
    with pytest.raises(DataFileError) as run:
        data.check_header(source, cfg.schema)  # `mlfolio run`, before any run folder
    with pytest.raises(DataFileError) as new:
        scaffold.read_data(path)  # `mlfolio new`
    assert str(run.value) == f"data.uri {path}: {EXPECTED[name]}"
    assert str(new.value) == f"--data {path}: {EXPECTED[name]}"
    assert run.value.exit_code == 2


def test_data_encoding_reads_the_file_new_and_ingest_alike(bad_files, tmp_path):
    from mlfolio import config, data
    from mlfolio.errors import ConfigError

    path = bad_files["cp1252"]
    target = tmp_path / "p.yaml"
    new = _cli(
        "new", str(target), "--data", str(path), "--target", "churn", "--encoding", "cp1252",
        cwd=ROOT,
    )  # fmt: skip
    assert new.returncode == 0, new.stderr
    cfg = config.load(target)
    assert cfg.data.encoding == "cp1252"
    data.check_header(cfg.data, cfg.schema)  # the pre-run check passes
    rows = data.load_source(cfg.data, data.schema_columns(cfg.schema))
    assert "Chèque postal" in set(rows["paymentmethod"])
    with pytest.raises(ConfigError, match=r"data\.encoding: unknown encoding"):
        config.load(target, {"data.encoding": "latin-9000"})


# -- row 14: a categorical column with 50,000 levels -------------------------------------------
LEVELS = 50_000


@pytest.fixture(scope="module")
def many_levels(cfg):
    """The Telco rows upsampled to 50,000 customers (new ids), each with its own device id
    (a categorical column with as many levels as rows), and their split."""
    from mlfolio import data, features

    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    copies = -(-LEVELS // len(churn))
    df = pd.concat(
        [churn.assign(customerid=churn["customerid"] + f"-{k}") for k in range(copies)],
        ignore_index=True,
    ).head(LEVELS)
    df["deviceid"] = [f"dev{i:06d}" for i in range(len(df))]
    schema = cfg.schema.model_copy(update={"categorical": [*cfg.schema.categorical, "deviceid"]})
    return schema, features.split(df, schema, cfg.split, cfg.seed)


def test_a_50k_level_column_is_capped_named_and_served(many_levels, cfg, caplog):
    from mlfolio import explain, serve, train, views
    from mlfolio.stages import training

    schema, parts = many_levels
    wide = cfg.model_copy(update={"schema_": schema})
    with caplog.at_level(logging.WARNING, logger="mlfolio.stages.training"):
        plan = training._encoding(wide, parts["train"])  # what the preprocess stage records
    assert plan["capped"] == ["deviceid"] and plan["levels"]["deviceid"] == len(parts["train"])
    assert plan["columns"]["deviceid"] == cfg.features.max_categories
    assert plan["memory"]["estimate_mb"] < plan["memory"]["budget_mb"]
    warned = [r.getMessage() for r in caplog.records if "deviceid" in r.getMessage()]
    assert len(warned) == 1 and "features.max_categories 100" in warned[0], warned

    started = time.perf_counter()  # the preprocess page's plots: a bar per level took minutes
    figure = views.plot_features(parts["train"], schema)
    panel = next(ax for ax in figure.axes if ax.get_title() == "deviceid")
    assert len(panel.patches) == views.MAX_BARS and time.perf_counter() - started < 20

    started = time.perf_counter()
    model = train.fit(schema, "logreg", {"max_iter": 500}, parts["train"], 0, wide.features)
    fit_s = time.perf_counter() - started
    X = parts["valid"].head(5)[schema.features]
    width = model[:-1].transform(X).shape[1]
    assert width == plan["width"] and fit_s < 30, (width, fit_s)
    owners = explain.raw_columns_of(model.named_steps["features"], width)
    assert owners.count("deviceid") == cfg.features.max_categories

    # what `mlfolio serve` does at start: compile the pipeline, verify it on probe rows
    # (every level the encoder knows, an unseen one, a missing one); a device it never saw
    # lands in the shared 'infrequent' column as in the pipeline
    columns = [serve.Column(c, "string" if c in schema.categorical else "double") for c in X]
    compiled = serve.CompiledScorer(model, columns)
    reference = serve.PipelineScorer(model, columns)
    assert serve.verify(compiled, reference, serve.probe_rows(columns, compiled, None)) is None
    rows = parts["test"].head(200)[schema.features].copy()
    rows.loc[rows.index[:3], "deviceid"] = ["never-seen", "dev000001", None]
    batch = serve.Batch.of(columns, {c.name: rows[c.name].tolist() for c in columns})
    assert np.array_equal(compiled.transform(batch), model[:-1].transform(rows))
    assert np.allclose(compiled.predict_proba(batch), model.predict_proba(rows))


def test_uncapped_50k_levels_fail_preprocess_naming_column_estimate_and_parameter(many_levels, cfg):
    from mlfolio.errors import DataValidationError
    from mlfolio.stages import training

    schema, parts = many_levels
    uncapped = cfg.features.model_copy(update={"max_categories": None, "memory_budget_mb": 2048})
    wide = cfg.model_copy(update={"schema_": schema, "features": uncapped})
    started = time.perf_counter()
    with pytest.raises(DataValidationError) as caught:
        training._encoding(wide, parts["train"])
    assert time.perf_counter() - started < 10  # an estimate, not an attempt
    message = str(caught.value)
    rows = len(parts["train"])
    levels = sum(parts["train"][c].astype(str).nunique() for c in cfg.schema.categorical)
    width = len(cfg.schema.numeric) + levels + rows
    estimate = -(-rows * width * 8 * 5 // (1 << 20))  # 3 folds + 2 copies: ~GBs, not 2 GB
    assert f"~{estimate} MB ({rows} training rows x {width} one-hot/numeric columns" in message
    assert "more than the 2048 MB features.memory_budget_mb" in message
    assert f"'deviceid' ({rows} levels -> {rows} columns)" in message
    assert "features.max_categories (now None)" in message


# -- row 15: a numeric column missing in every row ---------------------------------------------
@pytest.fixture(scope="module")
def no_totalcharges(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("all-missing") / "churn_no_totalcharges.csv"
    pd.read_csv(CHURN_CSV).assign(totalcharges=np.nan).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_a_feature_missing_in_every_row_fails_ingest_naming_it(no_totalcharges, tmp_path):
    runs = tmp_path / "runs"
    done = _cli("run", str(_params(tmp_path, no_totalcharges)), "--runs-root", str(runs), cwd=ROOT)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mlfolio: stage 'ingest' failed"), done.stderr
    assert "column 'totalcharges': no value in any of the 4000 row(s)" in last
    assert "schema.all_missing: ignore" in last
    (folder,) = runs.iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert [s for s, v in manifest["stages"].items() if v["status"] == "succeeded"] == []
    client = mlflow.MlflowClient(tracking_section(tmp_path)["tracking_uri"])
    experiment = client.get_experiment_by_name("churn").experiment_id
    assert {r.info.status for r in client.search_runs([experiment])} == {"FAILED"}
    assert not client.search_registered_models()  # nothing registered, nothing promoted


def test_all_missing_ignore_warns_and_the_model_keeps_every_column(no_totalcharges, cfg, caplog):
    from mlfolio import data, explain, features, serve
    from mlfolio.errors import DataValidationError

    raw = pd.read_csv(no_totalcharges)
    with pytest.raises(DataValidationError, match=r"column 'totalcharges': no value in any"):
        data.check(raw, cfg.schema)
    lenient = cfg.schema.model_copy(update={"all_missing": "ignore"})
    with caplog.at_level(logging.WARNING, logger="mlfolio.data"):
        checked = data.check(raw, lenient)
    assert checked.all_missing == ["totalcharges"]
    assert any("'totalcharges'" in r.getMessage() for r in caplog.records)
    X, y = features.xy(checked.frame, lenient)
    model = features.build_model_pipeline(lenient, LogisticRegression(max_iter=2000)).fit(X, y)
    Z = model[:-1].transform(X)
    owners = explain.raw_columns_of(model.named_steps["features"], Z.shape[1])
    assert owners[:3] == ["tenure", "monthlycharges", "totalcharges"]
    assert np.all(Z[:, 2] == 0)  # a constant: the model cannot use it
    columns = [serve.Column(c, "string" if c in lenient.categorical else "double") for c in X]
    serve.CompiledScorer(model, columns)  # still compiles
