"""Loading raw data from its source, validating it against the schema, snapshotting it."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mlfolio.config import DataConfig, SchemaConfig
from mlfolio.errors import DataValidationError

log = logging.getLogger(__name__)


def _read_bytes(raw: bytes, name: str) -> pd.DataFrame:
    if name.lower().endswith(".csv"):
        return pd.read_csv(io.BytesIO(raw))
    return pd.read_parquet(io.BytesIO(raw))


def _load_s3(uri: str, endpoint_url: str | None) -> pd.DataFrame:
    import boto3  # heavy: only when the source is S3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise DataValidationError(f"data.uri {uri!r}: expected s3://bucket/key")
    try:
        body = boto3.client("s3", endpoint_url=endpoint_url).get_object(Bucket=bucket, Key=key)
        raw = body["Body"].read()
    except (BotoCoreError, ClientError) as exc:
        raise DataValidationError(f"data.uri {uri!r}: could not read from S3: {exc}") from exc
    return _read_bytes(raw, key)


def _load_sql(uri: str, query: str) -> pd.DataFrame:
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(sa.text(query), conn)
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        raise DataValidationError(f"data.query on {engine.url!r} failed: {reason}") from exc
    finally:
        engine.dispose()


def load_source(source: DataConfig) -> pd.DataFrame:
    """Read the rows named by ``source``: a CSV/Parquet file, S3 object or SQL query."""
    if source.kind == "sql":
        assert source.query is not None  # guaranteed by DataConfig
        return _load_sql(source.uri, source.query)
    if source.kind == "s3":
        return _load_s3(source.uri, source.endpoint_url)
    path = Path(source.uri)
    if not path.is_file():
        raise DataValidationError(f"data.uri: file not found: {path}")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def _label_matches(values: pd.Series, label: Any) -> pd.Series:
    # CSV readers give 0/1 targets as ints and Yes/No as strings; compare as text too so
    # a parameter file may write the label either way.
    return (values == label) | (values.astype(str) == str(label))


def validate(df: pd.DataFrame, schema: SchemaConfig, source: str = "data") -> pd.DataFrame:
    """Check ``df`` against ``schema``; return it restricted to the schema's columns.

    Numeric columns may hold blanks (missing values, e.g. ``totalcharges`` of new
    customers) but no other text. Raises DataValidationError naming the column.
    """
    if df.empty:
        raise DataValidationError(f"{source}: no rows")
    expected = [c for c in [schema.id_column, *schema.features, schema.target] if c]
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {missing}; found {list(df.columns)}"
        )
    problems: list[str] = []
    for col in schema.numeric:
        values = df[col]
        if pd.api.types.is_bool_dtype(values) or not (
            pd.api.types.is_numeric_dtype(values) or values.dtype == object
            or pd.api.types.is_string_dtype(values)
        ):
            problems.append(f"column {col!r}: expected numbers, got dtype {values.dtype}")
            continue
        if not pd.api.types.is_numeric_dtype(values):
            text = values.astype("string").str.strip()
            coerced = pd.to_numeric(text, errors="coerce")
            bad = text[coerced.isna() & text.notna() & (text != "")]
            if len(bad):
                examples = sorted(set(bad.head(3)))
                problems.append(
                    f"column {col!r}: expected numbers (blank allowed as missing), "
                    f"found text such as {examples} in {len(bad)} row(s)"
                )
    target = df[schema.target]
    known = _label_matches(target, schema.positive_label) | _label_matches(
        target, schema.negative_label
    )
    if (~known).any():
        unexpected = sorted(map(str, set(target[~known].head(5))))
        problems.append(
            f"column {schema.target!r} (target): expected only {schema.positive_label!r} or "
            f"{schema.negative_label!r}, found {unexpected}"
        )
    elif _label_matches(target, schema.positive_label).sum() in (0, len(df)):
        problems.append(f"column {schema.target!r} (target): needs both classes present")
    if schema.id_column:
        ids = df[schema.id_column]
        if ids.isna().any():
            problems.append(f"column {schema.id_column!r} (id): {int(ids.isna().sum())} empty ids")
        dupes = ids[ids.duplicated()]
        if len(dupes):
            problems.append(
                f"column {schema.id_column!r} (id): expected unique ids, "
                f"{len(dupes)} duplicated, e.g. {list(map(str, dupes.head(3)))}"
            )
    if problems:
        raise DataValidationError(f"{source}: " + "; ".join(problems))
    return df[expected].reset_index(drop=True)


def sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``n`` rows (all rows when n is None or larger)."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def content_hash(df: pd.DataFrame) -> str:
    """A stable SHA-256 of the rows and columns (independent of file encoding)."""
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def write_snapshot(df: pd.DataFrame, path: Path) -> str:
    """Write ``df`` as Parquet and return its content hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return content_hash(df)


def summary(df: pd.DataFrame, schema: SchemaConfig) -> dict[str, Any]:
    """Rows, columns and class balance, for the manifest and index page."""
    positives = int(_label_matches(df[schema.target], schema.positive_label).sum())
    return {
        "rows": int(len(df)),
        "columns": int(df.shape[1]),
        "positives": positives,
        "positive_rate": round(positives / len(df), 4),
    }


def target_vector(df: pd.DataFrame, schema: SchemaConfig) -> pd.Series:
    """The target as 0/1 (1 = positive label)."""
    return _label_matches(df[schema.target], schema.positive_label).astype(int)
