"""``mlfolio new``: the schema inferred from real data (the Telco file, sklearn's breast
cancer and wine sets), the written parameter file, and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_wine

from mlfolio import config, scaffold
from mlfolio.errors import ConfigError

from .conftest import CHURN_CSV, CHURN_PARAMS, ROOT

SCHEMA_KEYS = ("target", "positive_label", "negative_label", "id_column", "numeric", "categorical")


@pytest.fixture(scope="module")
def telco() -> pd.DataFrame:
    return pd.read_csv(CHURN_CSV)


@pytest.fixture(scope="module")
def cancer_parquet(tmp_path_factory) -> Path:
    """Breast cancer diagnoses as a clinic would export them: a patient id, 30 measured
    features with spaces in their names, the diagnosis as text."""
    bunch = load_breast_cancer(as_frame=True)
    df = bunch.frame.drop(columns="target")
    df.insert(0, "patient_id", range(842302, 842302 + len(df)))
    df["diagnosis"] = bunch.target.map(dict(enumerate(bunch.target_names)))
    path = tmp_path_factory.mktemp("cancer") / "cancer.parquet"
    df.to_parquet(path, index=False)
    return path


def test_telco_schema_matches_the_hand_written_churn_parameters(telco):
    schema = scaffold.infer(telco, "churn")
    expected = config.load(CHURN_PARAMS).schema
    for key in SCHEMA_KEYS:
        assert getattr(schema, key) == getattr(expected, key), key
    notes = {c.name: c.note for c in schema.columns}
    # numbers stored as text with blanks: numeric, the blanks counted as missing
    assert notes["totalcharges"].startswith("numbers stored as text")
    assert "6 blank" in notes["totalcharges"]
    assert notes["seniorcitizen"] == "a flag: 0, 1"
    assert schema.rows == 4000


def test_written_telco_file_loads_with_the_churn_schema(tmp_path):
    target = tmp_path / "parameters" / "telco2.yaml"
    schema, cfg = scaffold.write(target, CHURN_CSV, "churn", project=ROOT)
    text = target.read_text()
    loaded = config.load(target)
    expected = config.load(CHURN_PARAMS)
    for key in SCHEMA_KEYS:
        assert getattr(loaded.schema, key) == getattr(expected.schema, key), key
    assert loaded.experiment == "telco2" and loaded.model_name == "telco2-classifier"
    # inside the project the data path is relative (the loader resolves it there)
    assert yaml.safe_load(text)["data"]["uri"] == "data/telco_churn.csv"
    assert loaded.data.uri == str(CHURN_CSV)
    # rows and missing counts are comments beside the keys
    assert "4000 rows" in text
    assert "# missing values per column: totalcharges 6" in text
    assert "1060 Yes (26.5%), 2940 No" in text


def test_an_existing_file_is_never_overwritten(tmp_path):
    target = tmp_path / "mine.yaml"
    target.write_text("experiment: mine\n")
    with pytest.raises(ConfigError, match=f"{target}: the file exists"):
        scaffold.write(target, CHURN_CSV, "churn")
    assert target.read_text() == "experiment: mine\n"


def test_cancer_parquet_needs_positive_then_writes_a_valid_file(cancer_parquet, tmp_path):
    df = pd.read_parquet(cancer_parquet)
    with pytest.raises(ConfigError) as err:
        scaffold.infer(df, "diagnosis")
    # the message lists both values and says what to give
    assert "['benign', 'malignant']" in str(err.value) and "--positive" in str(err.value)
    with pytest.raises(ConfigError, match="--positive 'cancer': not a value"):
        scaffold.infer(df, "diagnosis", "cancer")

    target = tmp_path / "cancer.yaml"
    schema, cfg = scaffold.write(target, cancer_parquet, "diagnosis", "malignant")
    assert (cfg.schema.positive_label, cfg.schema.negative_label) == ("malignant", "benign")
    assert cfg.schema.id_column == "patient_id"  # integers, unique, named like an id
    assert cfg.schema.numeric == [c for c in df.columns if c not in ("patient_id", "diagnosis")]
    assert len(cfg.schema.numeric) == 30 and cfg.schema.categorical == []
    assert cfg.data.uri == str(cancer_parquet)  # outside the project: absolute
    assert '"mean radius"' in target.read_text()  # names with spaces are quoted
    assert config.load(target).schema == cfg.schema


def test_a_target_with_three_classes_is_refused_listing_them(tmp_path):
    bunch = load_wine(as_frame=True)
    with pytest.raises(ConfigError, match=r"expected two values .* found 3: \[0, 1, 2\]"):
        scaffold.infer(bunch.frame, "target")
    with pytest.raises(ConfigError, match="--target 'label': no such column"):
        scaffold.infer(bunch.frame, "label")


def test_columns_that_are_no_features_are_left_out_with_the_reason(telco):
    # A CSV written with its index, a date, a constant, free text and an extra unique id:
    # what real exports carry.
    df = telco.reset_index().rename(columns={"index": "Unnamed: 0"})
    df["signup"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["tenure"], unit="D")
    df["country"] = "US"
    df["note"] = df["customerid"] + " called about " + df["contract"]
    df["email"] = df["customerid"].str.lower() + "@example.com"
    df["paperless"] = df["paperlessbilling"].eq("Yes")  # a real boolean column
    schema = scaffold.infer(df, "churn")
    roles = {c.name: (c.role, c.note) for c in schema.columns}
    assert roles["Unnamed: 0"] == ("left out", "a row number (consecutive, unique)")
    assert roles["signup"][0] == "left out" and "dates" in roles["signup"][1]
    assert roles["country"] == ("left out", "one value only (US)")
    assert roles["note"][0] == "left out"  # unique text, not named like an id
    assert roles["email"][0] == "left out"
    assert roles["paperless"] == ("categorical", "true/false")
    assert schema.id_column == "customerid"
    text = scaffold.render(schema, "x", "data/x.csv", "x.csv")
    assert "#   Unnamed: 0: a row number" in text
    assert '- "Unnamed: 0"' not in text


def test_labels_are_read_from_the_usual_spellings(telco):
    as_int = telco.assign(churn=telco["churn"].eq("Yes").astype(int))
    assert scaffold.target_labels(as_int["churn"], "churn", None) == (1, 0)
    as_bool = telco.assign(churn=telco["churn"].eq("Yes"))
    assert scaffold.target_labels(as_bool["churn"], "churn", None) == (True, False)
    # 0/1 with the positive one given as typed on the command line
    assert scaffold.target_labels(as_int["churn"], "churn", "0") == (0, 1)
    # blank targets do not count as a third value (ingest drops those rows)
    blanks = telco["churn"].where(telco.index % 50 != 0, " ")
    assert scaffold.target_labels(blanks, "churn", None) == ("Yes", "No")


def test_cli_new_writes_then_refuses_to_overwrite(tmp_path):
    target = tmp_path / "churn_copy.yaml"
    cmd = [sys.executable, "-m", "mlfolio.cli", "new", str(target)]
    args = ["--data", str(CHURN_CSV), "--target", "churn"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}: experiment churn_copy, 4000 rows; target churn" in done.stderr
    assert "id customerid, 3 numeric, 16 categorical" in done.stderr
    assert config.load(target).schema == config.load(CHURN_PARAMS).schema
    again = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"mlfolio: {target}: the file exists; give another name or remove it"
    )
    other = [*cmd[:-1], str(tmp_path / "c.yaml"), "--data", str(CHURN_CSV)]
    bad = subprocess.run(
        [*other, "--target", "contract"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "found 3" in bad.stderr
    assert not (tmp_path / "c.yaml").exists()
