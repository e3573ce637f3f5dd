"""Ingest on the real Telco file: every source kind, the config layer, schema validation,
content hashes and snapshots.

S3 goes through boto3 to a real moto server on 127.0.0.1; PostgreSQL uses the local
server at 127.0.0.1:5432 (see conftest.require_service when it does not answer).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlfolio import config as config_mod
from mlfolio import data as data_mod
from mlfolio.config import DataConfig, SchemaConfig, SplitConfig
from mlfolio.data import content_hash, load_source, sample, validate, write_snapshot
from mlfolio.errors import ConfigError, DataValidationError

from .conftest import CHURN_CSV, CHURN_PARAMS, require_service

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ORDER_COL = "row_n"  # SQL has no row order: tables keep the CSV position to sort by


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def churn_params() -> dict[str, Any]:
    return yaml.safe_load(CHURN_PARAMS.read_text())


@pytest.fixture(scope="module")
def schema(churn_params) -> SchemaConfig:
    return config_mod.from_mapping(churn_params, source=str(CHURN_PARAMS)).schema


@pytest.fixture(scope="module")
def csv_frame() -> pd.DataFrame:
    return pd.read_csv(CHURN_CSV)


@pytest.fixture
def raw(csv_frame) -> pd.DataFrame:
    """A fresh copy of the real file's rows, for tests that break them."""
    return csv_frame.copy()


@pytest.fixture(scope="module")
def expected(csv_frame, schema) -> pd.DataFrame:
    """What every source must deliver: the CSV rows after validation."""
    return validate(csv_frame.copy(), schema)


def assert_same_rows(loaded: pd.DataFrame, expected: pd.DataFrame, schema: SchemaConfig) -> None:
    valid = validate(loaded, schema)
    pd.testing.assert_frame_equal(valid, expected)
    assert content_hash(valid) == content_hash(expected)


def select_in_order(table: str, columns: list[str]) -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    return f'SELECT {cols} FROM "{table}" ORDER BY "{ORDER_COL}"'


def to_sql_table(df: pd.DataFrame, url: str, table: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        df.to_sql(table, engine, index=True, index_label=ORDER_COL)
    finally:
        engine.dispose()


# -- file sources ---------------------------------------------------------------------------
def test_csv_source(schema, expected):
    df = load_source(DataConfig(uri=str(CHURN_CSV)))
    assert df.shape == (4000, 21)
    # new customers have no total charges yet: blank strings, kept by validation
    assert (df["totalcharges"].astype(str).str.strip() == "").sum() > 0
    assert_same_rows(df, expected, schema)


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_source(tmp_path, csv_frame, schema, expected, suffix):
    path = tmp_path / f"churn{suffix}"
    csv_frame.to_parquet(path, index=False)
    assert_same_rows(load_source(DataConfig(uri=str(path))), expected, schema)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_source_reads_only_the_schemas_columns(tmp_path, csv_frame, schema, suffix):
    """Columns the schema does not name are never read (a wide export costs no memory);
    when a named column is missing, every column is read, so the error lists them."""
    wide = csv_frame.assign(notes="free text", score_2019=1.5)
    path = tmp_path / f"wide{suffix}"
    wide.to_csv(path, index=False) if suffix == ".csv" else wide.to_parquet(path, index=False)
    needed = data_mod.schema_columns(schema)
    df = load_source(DataConfig(uri=str(path)), columns=needed)
    assert sorted(df.columns) == sorted(needed)
    pd.testing.assert_frame_equal(df[needed], load_source(DataConfig(uri=str(path)))[needed])
    short = load_source(DataConfig(uri=str(path)), columns=[*needed, "absent"])
    assert list(short.columns) == list(wide.columns)


def test_missing_file_at_load_time(tmp_path):
    gone = tmp_path / "gone.csv"
    with pytest.raises(DataValidationError, match=r"data\.uri: file not found: .*gone\.csv"):
        load_source(DataConfig(uri=str(gone)))


# -- SQL sources ----------------------------------------------------------------------------
@pytest.fixture
def sqlite_db(tmp_path, csv_frame) -> Path:
    db = tmp_path / "churn.db"
    to_sql_table(csv_frame, f"sqlite:///{db}", "customers")
    return db


def test_sqlite_source(sqlite_db, csv_frame, schema, expected):
    query = select_in_order("customers", list(csv_frame.columns))
    df = load_source(DataConfig(uri=f"sqlite:///{sqlite_db}", query=query))
    assert list(df.columns) == list(csv_frame.columns)
    assert_same_rows(df, expected, schema)


def test_sqlite_query_can_filter(sqlite_db, schema):
    query = "SELECT * FROM customers WHERE contract = 'Two year'"
    df = load_source(DataConfig(uri=f"sqlite:///{sqlite_db}", query=query))
    assert 0 < len(df) < 4000
    assert set(df["contract"]) == {"Two year"}
    assert len(validate(df, schema)) == len(df)


def test_sql_bad_query_names_query_and_database(sqlite_db):
    source = DataConfig(uri=f"sqlite:///{sqlite_db}", query="SELECT * FROM no_such_table")
    with pytest.raises(DataValidationError) as info:
        load_source(source)
    msg = str(info.value)
    assert "data.query" in msg
    assert str(sqlite_db) in msg
    assert "no such table: no_such_table" in msg


@pytest.fixture
def pg_table(csv_frame) -> Iterator[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        require_service(f"PostgreSQL at {PG_URL}", False, str(exc.orig).strip())
    table = f"mlfolio_churn_{uuid.uuid4().hex[:10]}"
    try:
        csv_frame.to_sql(table, engine, index=True, index_label=ORDER_COL)
        yield table
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


def test_postgres_source(pg_table, csv_frame, schema, expected):
    query = select_in_order(pg_table, list(csv_frame.columns))
    df = load_source(DataConfig(uri=PG_URL, query=query))
    assert_same_rows(df, expected, schema)


def test_postgres_bad_query(pg_table):
    source = DataConfig(uri=PG_URL, query=f'SELECT no_such_column FROM "{pg_table}"')
    with pytest.raises(DataValidationError, match=r"data\.query on .*127\.0\.0\.1.*no_such_column"):
        load_source(source)


# -- S3 through a real moto server ------------------------------------------------------------
@pytest.fixture
def s3_bucket(moto_url, monkeypatch, csv_frame, tmp_path) -> str:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    bucket = f"churn-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/telco_churn.csv", Body=CHURN_CSV.read_bytes())
    pq = tmp_path / "churn.parquet"
    csv_frame.to_parquet(pq, index=False)
    s3.put_object(Bucket=bucket, Key="raw/telco_churn.parquet", Body=pq.read_bytes())
    return bucket


@pytest.mark.parametrize("key", ["raw/telco_churn.csv", "raw/telco_churn.parquet"])
def test_s3_source(s3_bucket, moto_url, schema, expected, key):
    source = DataConfig(uri=f"s3://{s3_bucket}/{key}", endpoint_url=moto_url)
    assert source.kind == "s3"
    assert_same_rows(load_source(source), expected, schema)


def test_s3_missing_object_names_uri(s3_bucket, moto_url):
    uri = f"s3://{s3_bucket}/raw/missing.csv"
    with pytest.raises(DataValidationError) as info:
        load_source(DataConfig(uri=uri, endpoint_url=moto_url))
    msg = str(info.value)
    assert uri in msg
    assert "could not read from S3" in msg
    assert "NoSuchKey" in msg or "does not exist" in msg


def test_s3_missing_bucket_names_uri(s3_bucket, moto_url):
    uri = f"s3://{s3_bucket}-nope/telco_churn.csv"
    with pytest.raises(DataValidationError, match=re.escape(uri)):
        load_source(DataConfig(uri=uri, endpoint_url=moto_url))


# -- the config layer -----------------------------------------------------------------------
def with_data(params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {**params, "data": data}


def test_config_accepts_every_source_kind(churn_params, tmp_path, sqlite_db, csv_frame):
    pq = tmp_path / "churn.parquet"
    csv_frame.to_parquet(pq, index=False)
    cases = {
        "file": {"uri": "data/telco_churn.csv"},
        "parquet": {"uri": str(pq), "sample_rows": 500},
        "sqlite": {"uri": f"sqlite:///{sqlite_db}", "query": "SELECT * FROM customers"},
        "postgres": {"uri": PG_URL, "query": "SELECT * FROM customers"},
        "s3": {
            "uri": "s3://bucket/raw/telco_churn.parquet",
            "endpoint_url": "http://127.0.0.1:5000",
        },
    }
    kinds = {}
    for name, data in cases.items():
        cfg = config_mod.from_mapping(with_data(churn_params, data), source=f"{name}.yaml")
        kinds[name] = cfg.data.kind
        assert cfg.data.query == data.get("query")
        assert cfg.data.endpoint_url == data.get("endpoint_url")
    assert kinds == {
        "file": "file",
        "parquet": "file",
        "sqlite": "sql",
        "postgres": "sql",
        "s3": "s3",
    }


def test_config_resolves_relative_paths(churn_params, tmp_path, sqlite_db, schema, expected):
    cfg = config_mod.from_mapping(with_data(churn_params, {"uri": "data/telco_churn.csv"}))
    assert cfg.data.uri == str(CHURN_CSV)
    query = select_in_order("customers", list(pd.read_csv(CHURN_CSV, nrows=1).columns))
    cfg = config_mod.from_mapping(
        with_data(churn_params, {"uri": "sqlite:///churn.db", "query": query}), base=tmp_path
    )
    assert cfg.data.uri == f"sqlite:///{sqlite_db}"
    assert_same_rows(load_source(cfg.data), expected, schema)


@pytest.mark.parametrize(
    "data, key, text",
    [
        ({"uri": "sqlite:///data/whatever.db"}, "query", "a database uri needs 'query'"),
        ({"uri": PG_URL}, "query", "a database uri needs 'query'"),
        (
            {"uri": "data/telco_churn.csv", "query": "SELECT 1"},
            "query",
            "'query' is only used with a database uri",
        ),
        (
            {"uri": "s3://bucket/raw/churn.csv", "query": "SELECT 1"},
            "query",
            "'query' is only used with a database uri",
        ),
        ({"uri": "data/README.md"}, "uri", "must end in .csv or .parquet"),
        ({"uri": "s3://bucket/raw/churn.json"}, "uri", "must end in .csv or .parquet"),
        ({"uri": "data/no_such_file.csv"}, "uri", "file not found"),
        ({"uri": "sqlite:///no_such.db", "query": "SELECT 1"}, "uri", "SQLite database not found"),
    ],
    ids=[
        "sqlite-no-query",
        "postgres-no-query",
        "file-with-query",
        "s3-with-query",
        "not-csv-or-parquet",
        "s3-not-csv-or-parquet",
        "missing-file",
        "missing-sqlite",
    ],
)
def test_config_rejects_bad_data_section(churn_params, data, key, text):
    with pytest.raises(ConfigError) as info:
        config_mod.from_mapping(with_data(churn_params, data), source="bad.yaml")
    msg = str(info.value)
    assert msg.startswith("bad.yaml:")
    assert text in msg
    # the failing line names the data section and the key: "data.uri: ..." or
    # "data: ... 'query' ..." (pydantic reports cross-field checks on the section)
    line = next(ln for ln in msg.splitlines() if text in ln)
    assert re.search(rf"\bdata(\.{key})?: ", line), line
    assert key in line


def test_config_rejects_unknown_data_key(churn_params):
    data = {"uri": "data/telco_churn.csv", "querry": "SELECT 1"}
    with pytest.raises(ConfigError, match=r"data\.querry: unknown key"):
        config_mod.from_mapping(with_data(churn_params, data), source="bad.yaml")


# -- validate() ----------------------------------------------------------------------------
def test_validate_real_data(raw, schema):
    out = validate(raw.assign(extra_column=1), schema)
    assert list(out.columns) == [schema.id_column, *schema.features, schema.target]
    assert len(out) == 4000
    blanks = out["totalcharges"].astype(str).str.strip() == ""
    assert 0 < blanks.sum() < 50  # blanks for new customers are accepted as missing
    assert set(out["churn"]) == {"Yes", "No"}


def test_validate_missing_column(raw, schema):
    with pytest.raises(
        DataValidationError,
        match=r"^schema\.numeric: column 'tenure' is not in the data \(telco\.csv\); its col",
    ):
        validate(raw.drop(columns="tenure"), schema, source="telco.csv")


def test_ingest_names_the_schema_key_and_the_closest_column(raw, schema):
    """An S3 object or SQL query has no header to check up front: ingest says what the
    header check says for a file (key, column, closest match)."""
    renamed = raw.rename(columns={"churn": "Churn", "contract": "contract_type"})
    with pytest.raises(DataValidationError) as info:
        validate(renamed, schema, source="data.uri s3://bucket/churn.csv")
    assert str(info.value) == (
        "schema.target: column 'churn' is not in the data (data.uri s3://bucket/churn.csv); "
        "did you mean 'Churn'?; schema.categorical: column 'contract' is not in the data "
        "(data.uri s3://bucket/churn.csv); did you mean 'contract_type'?"
    )


def test_validate_numeric_column_with_text(raw, schema):
    raw["monthlycharges"] = raw["monthlycharges"].astype(object)
    raw.loc[7, "monthlycharges"] = "abc"
    with pytest.raises(DataValidationError) as info:
        validate(raw, schema, source="telco.csv")
    msg = str(info.value)
    assert msg.startswith("telco.csv: ")
    assert "column 'monthlycharges': expected numbers" in msg
    assert "'abc'" in msg and "1 row(s)" in msg
    assert "totalcharges" not in msg  # its blanks are fine


def test_validate_non_numeric_dtype(raw, schema):
    raw["tenure"] = pd.to_datetime("2024-01-01")
    with pytest.raises(DataValidationError, match=r"column 'tenure': expected numbers, got dtype"):
        validate(raw, schema)


def test_validate_target_third_value(raw, schema):
    raw.loc[3, "churn"] = "Maybe"
    with pytest.raises(DataValidationError) as info:
        validate(raw, schema)
    msg = str(info.value)
    assert "column 'churn' (target)" in msg
    assert "expected only 'Yes' or 'No'" in msg and "['Maybe']" in msg


def test_validate_duplicated_id(raw, schema):
    dup = raw.loc[0, "customerid"]
    raw.loc[10, "customerid"] = dup
    with pytest.raises(DataValidationError) as info:
        validate(raw, schema)
    msg = str(info.value)
    assert "column 'customerid' (id): expected unique ids" in msg
    assert "1 duplicated" in msg and dup in msg


def test_validate_empty_id(raw, schema):
    raw.loc[5, "customerid"] = None
    with pytest.raises(DataValidationError, match=r"column 'customerid' \(id\): 1 empty ids"):
        validate(raw, schema)


def test_validate_empty_frame(raw, schema):
    with pytest.raises(DataValidationError, match=r"^telco\.csv: no rows$"):
        validate(raw.iloc[0:0], schema, source="telco.csv")


def test_validate_single_class_target(raw, schema):
    raw["churn"] = "No"
    with pytest.raises(
        DataValidationError, match=r"column 'churn' \(target\): needs both classes present"
    ):
        validate(raw, schema)


def test_validate_reports_every_problem(raw, schema):
    raw["monthlycharges"] = raw["monthlycharges"].astype(object)
    raw.loc[1, "monthlycharges"] = "n/a"
    raw.loc[2, "churn"] = "?"
    raw.loc[4, "customerid"] = raw.loc[3, "customerid"]
    with pytest.raises(DataValidationError) as info:
        validate(raw, schema)
    msg = str(info.value)
    for col in ("'monthlycharges'", "'churn'", "'customerid'"):
        assert col in msg


def test_validate_integer_labels(raw, churn_params):
    params = {
        **churn_params,
        "schema": {**churn_params["schema"], "positive_label": 1, "negative_label": 0},
    }
    schema01 = config_mod.from_mapping(params).schema
    raw["churn"] = (raw["churn"] == "Yes").astype(int)
    assert validate(raw, schema01)["churn"].sum() == 1060
    raw.loc[0, "churn"] = 2
    with pytest.raises(DataValidationError, match=r"expected only 1 or 0, found \['2'\]"):
        validate(raw, schema01)


# -- hashes, snapshots, samples --------------------------------------------------------------
def test_content_hash_stable_and_sensitive(expected, schema):
    digest = content_hash(expected)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert content_hash(expected) == digest
    assert content_hash(expected.copy(deep=True)) == digest
    assert content_hash(validate(pd.read_csv(CHURN_CSV), schema)) == digest  # re-read
    changed = expected.copy()
    changed.loc[123, "monthlycharges"] += 0.01
    assert content_hash(changed) != digest
    renamed = expected.rename(columns={"tenure": "months"})
    assert content_hash(renamed) != digest
    assert content_hash(expected.iloc[::-1]) != digest  # row order counts


# Digests content_hash gave before it stopped factorizing text columns without missing
# values (pandas' hash_pandas_object with its defaults): they must never change, or every
# recorded data hash would stop matching its data.
HASHES_BEFORE = {
    "text": "6b4d48ddde0e7a44280979318590f3326d22faae68a8e19e5cf269dc00f5fda3",
    "nulls": "3307586b455f80b7a33b99658333241184849553ad049af913bb82b4d4d4a0c3",
    "strings": "e16f27c7ba541a2ed913d417c607c087809c8dd0c6509e1b3fb489afc12b13ad",
    "churn": "73d3df2341900e8df7fe54055eef4c1b6ac2e61b5b7ba5840d3bec0542e7cd1c",
}


def _hash_frames(expected: pd.DataFrame) -> dict[str, pd.DataFrame]:
    ids = pd.array(["a1", None, "c3"], dtype="string")
    return {
        "text": pd.DataFrame(
            {"id": ["a1", "b2", "c3"], "x": [1.5, np.nan, 3.0], "k": ["Yes", "No", "Yes"]}
        ).assign(n=[1, 2, 3]),
        "nulls": pd.DataFrame(
            {"id": ["a1", None, "c3"], "x": [1.5, np.nan, 3.0], "k": ["Yes", np.nan, "None"]}
        ).assign(n=[1, 2, 3]),
        "strings": pd.DataFrame({"id": ids, "k": pd.Categorical(["x", None, "x"])}),
        "churn": expected,
    }


def test_content_hash_is_the_digest_it_always_was(expected):
    for name, frame in _hash_frames(expected).items():
        assert content_hash(frame) == HASHES_BEFORE[name], name
        # and it is the SHA-256 of pandas' default row hashes, whichever way they are got
        h = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        assert content_hash(frame) == h.hexdigest(), name


def test_write_snapshot(tmp_path, expected):
    path = tmp_path / "nested" / "snapshot.parquet"
    digest = write_snapshot(expected, path)
    assert path.read_bytes()[:4] == b"PAR1"
    written = pd.read_parquet(path)
    pd.testing.assert_frame_equal(written, expected)
    assert digest == content_hash(written) == content_hash(expected)


def test_sample_is_seeded(expected):
    a, b = sample(expected, 500, seed=7), sample(expected, 500, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 500 and a["customerid"].is_unique
    assert content_hash(sample(expected, 500, seed=8)) != content_hash(a)
    assert sample(expected, None, seed=7) is expected
    assert sample(expected, 10_000, seed=7) is expected


# -- messy real data: missing targets, non-finite numbers, empty and tiny files ------------------
UNLABELLED = list(range(0, 4000, 365))  # 11 rows


def with_schema(churn_params: dict[str, Any], **keys: Any) -> SchemaConfig:
    params = {**churn_params, "schema": {**churn_params["schema"], **keys}}
    return config_mod.from_mapping(params).schema


def blank_targets(raw: pd.DataFrame) -> pd.DataFrame:
    """The real rows with 11 churn values gone: 10 empty cells and one blank string."""
    raw["churn"] = raw["churn"].astype(object)
    raw.loc[UNLABELLED, "churn"] = None
    raw.loc[UNLABELLED[-1], "churn"] = "  "
    return raw


def test_rows_without_a_target_are_dropped_and_counted(tmp_path, raw, schema):
    path = tmp_path / "unlabelled.csv"
    blank_targets(raw).to_csv(path, index=False)
    loaded = load_source(DataConfig(uri=str(path)))
    checked = data_mod.check(loaded, schema, source=str(path))
    assert checked.dropped_missing_target == 11
    assert len(checked.frame) == 3989
    gone = set(raw.loc[UNLABELLED, "customerid"])
    assert not gone & set(checked.frame["customerid"])
    assert set(checked.frame["churn"]) == {"Yes", "No"}
    assert list(checked.frame.index) == list(range(3989))
    pd.testing.assert_frame_equal(validate(loaded, schema), checked.frame)
    # the clean file drops nothing
    assert data_mod.check(pd.read_csv(CHURN_CSV), schema).dropped_missing_target == 0


def test_missing_target_fail_names_column_count_and_key(raw, churn_params):
    strict = with_schema(churn_params, missing_target="fail")
    with pytest.raises(DataValidationError) as info:
        validate(blank_targets(raw), strict, source="telco.csv")
    msg = str(info.value)
    assert msg.startswith("telco.csv: ")
    assert "column 'churn' (target): 11 row(s) have no value" in msg
    assert "schema.missing_target is 'fail'" in msg
    assert raw.loc[UNLABELLED[0], "customerid"] in msg  # names the rows by id


def test_every_target_missing_says_so(raw, schema):
    raw["churn"] = None
    with pytest.raises(
        DataValidationError,
        match=r"telco\.csv: no rows left: all 4000 row\(s\) have no value in "
        r"column 'churn' \(target\)",
    ):
        validate(raw, schema, source="telco.csv")


def write_non_finite(raw: pd.DataFrame, path: Path) -> None:
    """``inf``/``-inf`` in monthlycharges and an overflowing ``1e400`` in totalcharges."""
    raw["monthlycharges"] = raw["monthlycharges"].astype(object)
    raw.loc[[5, 6], "monthlycharges"] = "inf"
    raw.loc[7, "monthlycharges"] = "-inf"
    raw.loc[9, "totalcharges"] = "1e400"
    raw.to_csv(path, index=False)


def test_non_finite_numbers_fail_naming_column_and_rows(tmp_path, raw, schema):
    path = tmp_path / "inf.csv"
    write_non_finite(raw, path)
    loaded = load_source(DataConfig(uri=str(path)))
    assert loaded["monthlycharges"].dtype == "float64"  # pandas reads inf as a float
    with pytest.raises(DataValidationError) as info:
        validate(loaded, schema, source=str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "column 'monthlycharges': 3 non-finite value(s)" in msg
    assert "column 'totalcharges': 1 non-finite value(s)" in msg
    assert "expected finite numbers" in msg and "schema.non_finite" in msg
    assert raw.loc[5, "customerid"] in msg and raw.loc[9, "customerid"] in msg
    assert "found text" not in msg  # 1e400 is a number too large, not text


def test_non_finite_numbers_as_missing_when_the_schema_says_so(tmp_path, raw, churn_params):
    from mlfolio.features import build_preprocessor, xy

    lenient = with_schema(churn_params, non_finite="missing")
    path = tmp_path / "inf.csv"
    write_non_finite(raw, path)
    checked = data_mod.check(load_source(DataConfig(uri=str(path))), lenient)
    assert checked.non_finite_as_missing == {"monthlycharges": 3, "totalcharges": 1}
    assert len(checked.frame) == 4000
    assert checked.frame.loc[[5, 6, 7], "monthlycharges"].isna().all()
    assert pd.isna(checked.frame.loc[9, "totalcharges"])
    # downstream, the blanked cells are ordinary missing values: imputed, all finite
    X, _ = xy(checked.frame, lenient)
    assert np.isfinite(build_preprocessor(lenient).fit_transform(X)).all()


def test_non_finite_in_a_parquet_source(tmp_path, raw, schema):
    raw["tenure"] = raw["tenure"].astype("float64")
    raw.loc[11, "tenure"] = np.inf
    raw.to_parquet(tmp_path / "inf.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"column 'tenure': 1 non-finite value"):
        validate(load_source(DataConfig(uri=str(tmp_path / "inf.parquet"))), schema)


@pytest.mark.parametrize(
    "name, content", [("empty.csv", b""), ("blank.csv", b"\n\n"), ("empty.parquet", b"")]
)
def test_an_empty_file_fails_saying_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(
        DataValidationError,
        match=rf"data\.uri {re.escape(str(path))}: "
        r"the file is empty",
    ):
        load_source(DataConfig(uri=str(path)))


def test_a_header_only_file_has_no_rows(tmp_path, raw, schema):
    path = tmp_path / "header.csv"
    raw.iloc[0:0].to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=rf"^{re.escape(str(path))}: no rows$"):
        validate(load_source(DataConfig(uri=str(path))), schema, source=str(path))


def test_split_minimum_follows_the_parameters():
    assert data_mod.min_rows_per_class(SplitConfig()) == 10  # 20% test/valid: 2 of each class
    assert data_mod.min_rows_per_class(SplitConfig(test_size=0.1, valid_size=0.1)) == 20
    # training rows are split again into tuning.cv_folds folds; they are what two rounded
    # splits leave, so one row of slack: 5 / 0.2 + 1
    split = SplitConfig(test_size=0.4, valid_size=0.4)
    assert data_mod.min_rows_per_class(split, cv_folds=5) == 26
    assert data_mod.min_rows_per_class(split) == 11


@pytest.mark.parametrize(
    "test_size, valid_size, cv_folds",
    [(0.2, 0.2, 3), (0.1, 0.1, 3), (0.3, 0.3, 5), (0.4, 0.4, 5), (0.05, 0.45, 2), (0.45, 0.1, 10)],
)
def test_split_minimum_is_enough_for_the_real_split(raw, schema, test_size, valid_size, cv_folds):
    from mlfolio.features import split, target_vector

    cfg = SplitConfig(method="seeded", test_size=test_size, valid_size=valid_size)
    need = data_mod.min_rows_per_class(cfg, cv_folds)
    yes, no = raw[raw["churn"] == "Yes"], raw[raw["churn"] == "No"]
    for majority in (need, need + 1, need + 7, 3 * need + 1, 2000):
        df = pd.concat([yes.head(need), no.head(majority)], ignore_index=True)
        for seed in (0, 42):
            parts = split(df, schema, cfg, seed)
            least = {
                name: target_vector(part, schema).value_counts().reindex([0, 1]).min()
                for name, part in parts.items()
            }
            assert least["test"] >= 2 and least["valid"] >= 2, (majority, seed, least)
            assert least["train"] >= cv_folds, (majority, seed, least)


def test_hash_split_check_agrees_with_the_real_split(raw, schema):
    """The hash split's class shares are only close to the configured ones: the check
    passes exactly when every part gets enough rows of each class, and otherwise names
    the part, the class and split.method."""
    from mlfolio.features import split, target_vector

    cfg = SplitConfig()
    need = data_mod.min_rows_per_class(cfg, 3)
    yes, no = raw[raw["churn"] == "Yes"], raw[raw["churn"] == "No"]
    outcomes = set()
    for start in range(0, 400, 13):
        df = pd.concat([yes.iloc[start : start + need], no.head(200)], ignore_index=True)
        parts = split(df, schema, cfg, 0)
        least = {
            name: target_vector(part, schema).value_counts().reindex([0, 1]).fillna(0).min()
            for name, part in parts.items()
        }
        enough = least["test"] >= 2 and least["valid"] >= 2 and least["train"] >= 3
        try:
            data_mod.check_split_size(df, schema, cfg, 3, source="few.csv")
            outcomes.add(True)
            assert enough, least
        except DataValidationError as exc:
            outcomes.add(False)
            assert not enough, least
            assert re.match(
                r"few\.csv: too few rows for the split: split\.method hash puts \d 'Yes' "
                r"row\(s\) of 10 in the (test|valid|train) rows \(needs [23]\); add rows, or "
                r"use split\.method: seeded",
                str(exc),
            ), str(exc)
    assert outcomes == {True, False}  # both cases met among these samples


# -- the ingest stage on those files -----------------------------------------------------------
@pytest.fixture(scope="module")
def tracking_dir(tmp_path_factory) -> Path:
    """One MLflow store for this module's ingest runs (a new store costs seconds)."""
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture
def run_ingest(tmp_path, write_params):
    from mlfolio import stages
    from mlfolio.context import open_stage

    def run(frame: pd.DataFrame, name: str = "rows.csv", **sections: Any):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        sections["data"] = {**sections.get("data", {}), "uri": str(path)}
        params = write_params(f"{path.stem}.yaml", **sections)
        ctx = open_stage("ingest", str(params), str(tmp_path / "run" / path.stem))
        try:
            df, info = stages.ingest(ctx)
        finally:
            ctx.finish()
        written = json.loads((ctx.run_dir / "ingest.json").read_text())
        assert written["rows"] == info["rows"]
        return df, written

    return run


def test_ingest_counts_the_rows_it_dropped(run_ingest, raw, schema):
    from mlfolio.views import ingest_markdown

    df, info = run_ingest(blank_targets(raw))
    assert info["source_rows"] == 4000 and info["rows"] == 3989 == len(df)
    assert info["dropped_missing_target"] == 11
    assert ingest_markdown(info, schema).data.startswith(
        "**4,000 rows read**, **11 dropped** with no value in the target `churn` "
        "(`schema.missing_target: drop`), 3,989 kept."
    )
    df, info = run_ingest(pd.read_csv(CHURN_CSV), name="clean.csv")
    assert info["dropped_missing_target"] == 0 and info["rows"] == 4000
    assert ingest_markdown(info, schema).data == (
        "**4,000 rows read**, all with a value in the target `churn`."
    )
    assert info["quality"]["missing"] == {"totalcharges": 6}
    assert info["quality"]["duplicate_rows_but_id"] == 12


def test_ingest_reports_non_finite_values_treated_as_missing(
    run_ingest, raw, churn_params, tmp_path, schema
):
    write_non_finite(raw, tmp_path / "inf.csv")
    df, info = run_ingest(
        pd.read_csv(tmp_path / "inf.csv"),
        name="inf_rows.csv",
        schema={**churn_params["schema"], "non_finite": "missing"},
    )
    assert info["non_finite_as_missing"] == {"monthlycharges": 3, "totalcharges": 1}
    from mlfolio.views import ingest_markdown

    assert (
        "Column `monthlycharges`: 3 non-finite value(s) treated as missing"
        in ingest_markdown(info, schema).data
    )


def test_quality_counts_on_the_real_file(csv_frame, schema):
    checked = data_mod.check(csv_frame, schema)
    q = data_mod.quality(csv_frame, schema, checked, len(checked.frame))
    # totalcharges: 6 new customers with a blank, read as missing; 12 rows repeat another
    # in every column but customerid (the file's own duplicates)
    assert q == {
        "source_rows": 4000,
        "columns": 21,
        "missing": {"totalcharges": 6},
        "missing_cells": 6,
        "blank_as_missing": {"totalcharges": 6},
        "non_finite_as_missing": {},
        "duplicate_rows": 0,
        "duplicate_ids": 0,
        "duplicate_rows_but_id": 12,
        "dropped": {"missing_target": 0, "sampled_out": 0},
    }


def test_quality_counts_dropped_blanked_and_duplicated_rows(raw, schema):
    broken = blank_targets(raw)
    broken.loc[[5, 6], "tenure"] = np.nan  # missing numbers
    broken["monthlycharges"] = broken["monthlycharges"].astype(object)
    broken.loc[[7, 8, 9], "monthlycharges"] = " "  # blank text in a numeric column
    broken.loc[10, "paymentmethod"] = None
    # the same customers delivered again under new ids (a repeated id fails the check)
    copies = broken.iloc[[100, 101]].assign(customerid=["0000-NEWID", "0000-OTHER"])
    with_copies = pd.concat([broken, copies], ignore_index=True)
    checked = data_mod.check(with_copies, schema)
    q = data_mod.quality(with_copies, schema, checked, 3000)
    assert q["source_rows"] == 4002
    assert q["missing"] == {
        "tenure": 2,
        "monthlycharges": 3,
        "totalcharges": 6,
        "paymentmethod": 1,
        "churn": 11,
    }
    assert q["missing_cells"] == 23
    assert q["blank_as_missing"] == {"monthlycharges": 3, "totalcharges": 6}
    assert q["duplicate_rows"] == 0 and q["duplicate_ids"] == 0
    assert q["duplicate_rows_but_id"] == 12 + 2
    assert q["dropped"] == {"missing_target": 11, "sampled_out": 4002 - 11 - 3000}
    # without an id column, whole rows repeat
    no_id = schema.model_copy(update={"id_column": None})
    rows = with_copies.drop(columns="customerid")
    q = data_mod.quality(rows, no_id, data_mod.check(rows, no_id), 3991)
    assert q["duplicate_rows"] == 14 and q["duplicate_ids"] is None
    assert q["duplicate_rows_but_id"] is None and q["columns"] == 20


def few_rows(raw: pd.DataFrame, yes: int, no: int) -> pd.DataFrame:
    return pd.concat([raw[raw["churn"] == "Yes"].head(yes), raw[raw["churn"] == "No"].head(no)])


def test_ingest_refuses_too_few_rows_for_the_split(run_ingest, raw):
    with pytest.raises(DataValidationError) as info:
        run_ingest(few_rows(raw, 3, 2), name="five.csv")
    msg = str(info.value)
    assert "five.csv: too few rows for the split: 5 row(s), 3 'Yes' and 2 'No'" in msg
    assert "split.test_size 0.2, split.valid_size 0.2" in msg
    assert "need at least 10 rows of each class (20 rows)" in msg


def test_split_minimum_is_enough_and_one_less_is_refused(run_ingest, raw, schema):
    from mlfolio.features import split, target_vector

    df, _ = run_ingest(few_rows(raw, 10, 300), name="ten.csv")  # exactly the minimum
    for part in split(df, schema, SplitConfig(), seed=42).values():
        assert target_vector(part, schema).value_counts().min() >= 2
    with pytest.raises(DataValidationError, match=r"9 'Yes' and 300 'No'.* at least 10 rows"):
        run_ingest(few_rows(raw, 9, 300), name="nine.csv")


def test_a_small_sample_is_checked_against_the_split(run_ingest, raw):
    with pytest.raises(
        DataValidationError, match=r"data\.sample_rows 12 leaves 12 row\(s\).* at least 10 rows"
    ):
        run_ingest(raw, name="sampled.csv", data={"sample_rows": 12})


@pytest.mark.slow
def test_ingest_notebook_and_index_say_how_many_rows_were_dropped(
    tmp_path, raw, write_params, runs_root
):
    from mlfolio import pipeline

    path = tmp_path / "unlabelled.csv"
    blank_targets(raw).to_csv(path, index=False)
    params = write_params("unlabelled.yaml", data={"uri": str(path)})
    manifest = pipeline.run(
        params, stages=["ingest"], runs_root=runs_root, echo=lambda line: None
    ).data
    run_dir = Path(manifest["run_dir"])
    info = json.loads((run_dir / "ingest.json").read_text())
    assert info["dropped_missing_target"] == 11 and info["rows"] == 3989
    assert manifest["data"]["dropped_missing_target"] == 11
    html = (run_dir / "01_ingest.html").read_text()
    assert "4,000 rows read" in html and "11 dropped" in html and "3,989 kept" in html
    index = (run_dir / "index.html").read_text()
    assert re.search(r'id="dropped-missing-target">11 row\(s\) without a target', index)
    # data quality: in the ingest report (a table of the columns with missing values) and
    # summarised on the index
    assert manifest["data"]["quality"]["missing"] == {"totalcharges": 6, "churn": 11}
    assert "Data quality (source rows)" in html
    assert "0 duplicate row(s)" in html and "17 missing value(s)" in html
    assert re.search(r"<th>blank text</th>", html)
    assert re.search(
        r'id="missing-values">17 missing value\(s\) \(totalcharges 6, 6 blank text; churn 11\)',
        index,
    )
    assert 'id="duplicate-rows-but-id">12 row(s) equal to another but for the id' in index


BLANK_COLUMNS = {
    "text": pd.Series([" ", "", "a", None, "  b ", "\t", np.nan], dtype=object),
    "mixed": pd.Series([1, " ", True, 1.0, "", None, "x"], dtype=object),
    "strings": pd.Series([" ", None, "c", ""], dtype="string"),
    "floats": pd.Series([1.0, np.nan]),
    "categorical": pd.Series([" ", "a", None], dtype="category"),
    "unicode spaces": pd.Series(["\u00a0", "\u2003 ", "\x1c", "é"], dtype=object),
    # a Parquet list column: values pd.factorize cannot hash
    "lists": pd.Series([[1], " ", None, ["a", " "], ""], dtype=object),
}


@pytest.mark.parametrize("name", list(BLANK_COLUMNS))
def test_blank_text_is_decided_per_value_as_before(name):
    values = BLANK_COLUMNS[name]
    if pd.api.types.is_numeric_dtype(values):
        per_row = pd.Series(False, index=values.index)
    else:
        per_row = values.notna() & values.astype("string").str.strip().eq("").fillna(False)
    assert data_mod._blank_text(values).tolist() == per_row.tolist()


def test_numeric_text_too_large_for_a_float_is_found_among_unparsed_values_only(monkeypatch):
    """Only text that does not parse as a number is asked whether it overflows a float."""
    asked = []
    original = data_mod._overflows
    monkeypatch.setattr(data_mod, "_overflows", lambda v: asked.append(v) or original(v))
    values = pd.Series(["1.5", " ", "1e400", "2", "abc", None, "-1e999"] * 1000, dtype=object)
    problem, non_finite = data_mod._numeric_problems(values)
    assert non_finite.sum() == 2000 and "['abc']" in problem and "1000 row(s)" in problem
    assert sorted(set(asked)) == ["-1e999", "1e400", "abc"] and len(asked) == 3000


def test_duplicate_rows_are_counted_whenever_ids_cannot_rule_them_out(csv_frame, schema):
    """Unique, present ids mean no duplicate rows (nothing to hash); a repeated or a
    missing id leaves room for whole-row copies, which are then counted."""
    checked = data_mod.check(csv_frame, schema)
    twice = pd.concat([csv_frame, csv_frame.iloc[[3, 4]]], ignore_index=True)
    q = data_mod.quality(twice, schema, checked, len(checked.frame))
    assert (q["duplicate_ids"], q["duplicate_rows"]) == (2, 2)
    no_ids = csv_frame.iloc[[3, 3, 5]].assign(customerid=None)
    no_ids = pd.concat([csv_frame, no_ids], ignore_index=True)
    q = data_mod.quality(no_ids, schema, checked, len(checked.frame))
    assert (q["duplicate_ids"], q["duplicate_rows"]) == (0, 1)


LABEL_COLUMNS = {
    "text": pd.Series(["Yes", "No", None, "Yes", " ", "nan"], dtype=object),
    "ints": pd.Series([1, 0, 0, 1]),
    "floats": pd.Series([1.0, 0.0, np.nan, 1.0]),
    "bools": pd.Series([True, False, True]),
    "mixed": pd.Series([1, 1.0, True, "1", None, "Yes"], dtype=object),
    "category": pd.Series(pd.Categorical(["Yes", "No", None, "Yes"])),
    "pandas strings": pd.Series(["Yes", None, "No"], dtype="string"),
}


@pytest.mark.parametrize("label", ["Yes", "1", 1, "1.0", 1.0, True, "True", "nan", "None"])
@pytest.mark.parametrize("name", list(LABEL_COLUMNS))
def test_label_matches_equal_the_per_row_comparison(name, label):
    values = LABEL_COLUMNS[name]
    got = data_mod._label_matches(values, label)
    want = data_mod._label_matches_per_row(values, label)
    assert got.tolist() == want.tolist()
    assert got.index.equals(values.index)


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([f"id-{i % 700}" for i in range(1000)], dtype=object),
        pd.Series(["a", None, "b", np.nan, "a", None, "c"], dtype=object),
        pd.Series([1, 1.0, True, "1", None, "1"], dtype=object),
        pd.Series([3, 1, 3, 2]),
        pd.Series([], dtype=object),
    ],
)
def test_duplicated_equals_pandas(values):
    got = data_mod.duplicated(values)
    assert got.tolist() == values.duplicated().tolist()
    assert got.index.equals(values.index)


def test_no_value_looks_past_the_first_rows():
    blank = pd.Series([" ", None, ""] * 1000, dtype=object)
    assert data_mod._no_value(blank)
    assert not data_mod._no_value(pd.concat([blank, pd.Series(["x"])], ignore_index=True))
    assert not data_mod._no_value(pd.Series(["x", None]))
