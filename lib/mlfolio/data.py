"""Loading raw data from its source, validating it against the schema, snapshotting it."""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.config import DataConfig, SchemaConfig, SplitConfig
from mlfolio.errors import DataFileError, DataValidationError
from mlfolio.rowkeys import row_hashes

log = logging.getLogger(__name__)


# Encodings a file that is not UTF-8 most often is, in the order they are suggested:
# cp1252 (Excel on Windows) rejects 5 bytes; latin-1 decodes any byte.
LIKELY_ENCODINGS = ("cp1252", "latin-1")
_BOMS = ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _chunks(src: Path | bytes, size: int = 1 << 20) -> Iterator[bytes]:
    if isinstance(src, bytes):
        for start in range(0, len(src), size):
            yield src[start : start + size]
        return
    with src.open("rb") as fh:
        yield from iter(lambda: fh.read(size), b"")


def first_undecodable(src: Path | bytes, encoding: str) -> tuple[int, int, bytes] | None:
    """(byte offset, line, bytes) of the first bytes of ``src`` that ``encoding`` cannot
    decode, streaming (memory stays flat); None: it all decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, newlines = 0, 0
    for chunk in [*_chunks(src), b""]:
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            data = exc.object  # the bytes the decoder held back, then this chunk
            held = len(data) - len(chunk)
            at = offset - held + exc.start
            line = newlines - data[:held].count(b"\n") + data[: exc.start].count(b"\n") + 1
            return at, line, bytes(data[exc.start : max(exc.end, exc.start + 1)])
        offset += len(chunk)
        newlines += chunk.count(b"\n")
    return None


def _decode_problem(src: Path | bytes, encoding: str, where: str, fix: str) -> DataFileError:
    """The error for a file ``encoding`` cannot read: where the first bad byte is, and
    the encoding its bytes do read as (``fix`` formats the parameter that sets it)."""
    found = first_undecodable(src, encoding)
    if found is None:  # pandas failed where a plain decode does not: say what it said
        return DataFileError(f"{where}: cannot be read as {encoding} text")
    at, line, bad = found
    head = next(_chunks(src, 4), b"")
    guess = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    if guess is None:
        guess = next(enc for enc in LIKELY_ENCODINGS if first_undecodable(src, enc) is None)
    return DataFileError(
        f"{where}: not valid {encoding} at byte {at} (line {line}): "
        f"{' '.join(f'0x{b:02x}' for b in bad)}; the file reads as {guess}: {fix.format(guess)}"
    )


def read_table(
    src: Path | bytes,
    name: str,
    where: str,
    encoding: str = "utf-8",
    fix: str = "set data.encoding: {}",
    columns: list[str] | None = None,
    nrows: int | None = None,
) -> pd.DataFrame:
    """A CSV (in ``encoding``) or Parquet file, from a path or its bytes. Raises
    DataFileError naming ``where`` for an empty file, and the byte offset and line of
    the first byte ``encoding`` cannot decode (with the encoding it reads as, set as
    ``fix`` says) instead of pandas' EmptyDataError / UnicodeDecodeError."""
    size = len(src) if isinstance(src, bytes) else src.stat().st_size
    if size == 0:
        raise DataFileError(f"{where}: the file is empty (0 bytes)")
    body = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        if name.lower().endswith(".csv"):
            return pd.read_csv(body, encoding=encoding, usecols=columns, nrows=nrows)
        return pd.read_parquet(body, columns=columns)
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{where}: the file is empty (no header, no rows)") from None
    except UnicodeDecodeError:
        raise _decode_problem(src, encoding, where, fix) from None


def _read_bytes(raw: bytes, name: str, where: str, encoding: str = "utf-8") -> pd.DataFrame:
    return read_table(raw, name, where, encoding)


def _load_s3(uri: str, endpoint_url: str | None, encoding: str = "utf-8") -> pd.DataFrame:
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
    return _read_bytes(raw, key, f"data.uri {uri}", encoding)


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


def schema_columns(schema: SchemaConfig) -> list[str]:
    """The columns a run reads: the id column, the features and the target."""
    return [c for c in [schema.id_column, *schema.features, schema.target] if c]


# Each schema key that names columns, and the columns it names.
SCHEMA_KEYS = ("target", "id_column", "numeric", "categorical")


def _named(schema: SchemaConfig, key: str) -> list[str]:
    value = getattr(schema, key)
    return list(value) if isinstance(value, list) else [value] if value else []


def closest_column(name: str, found: list[str]) -> str | None:
    """The data's column most like ``name``: the same but for case, else difflib's
    closest (None: none is close)."""
    import difflib

    same = [c for c in found if str(c).lower() == name.lower()]
    if same:
        return str(same[0])
    near = difflib.get_close_matches(name, [str(c) for c in found], n=1, cutoff=0.6)
    return near[0] if near else None


def missing_columns(schema: SchemaConfig, found: list[str], where: str) -> list[str]:
    """One message per schema column ``found`` lacks, naming the key, the column and the
    closest column the data has: ``schema.target: column 'churnn' is not in the data
    (data.uri x.csv); did you mean 'churn'?``"""
    problems = []
    for key in SCHEMA_KEYS:
        for col in _named(schema, key):
            if col in found:
                continue
            near = closest_column(col, found)
            hint = f"did you mean {near!r}?" if near else f"its columns: {', '.join(found)}"
            problems.append(f"schema.{key}: column {col!r} is not in the data ({where}); {hint}")
    return problems


def header(source: DataConfig) -> list[str] | None:
    """The column names of a CSV/Parquet file, parsing only its header and first row
    (None: an S3 object or SQL query, whose columns are known only when ingest reads
    them, or a file that cannot be read here: ingest reports why). Raises DataFileError
    when the file is empty, has no rows, or holds bytes ``data.encoding`` cannot decode
    (a CSV's bytes stream through the decoder: 220 MB took 1.9 s on a busy 2-core box)."""
    if source.kind != "file":
        return None
    path = Path(source.uri)
    where = f"data.uri {path}"
    if not path.is_file():
        return None
    if path.name.lower().endswith(".csv"):
        # the whole file, streamed: a bad byte on line 2,000,000 fails here, not in ingest
        if first_undecodable(path, source.encoding) is not None:
            raise _decode_problem(path, source.encoding, where, "set data.encoding: {}")
        first = read_table(path, path.name, where, source.encoding, nrows=1)
        if first.empty:
            raise DataFileError(f"{where}: the file has a header but no rows")
        return [str(c) for c in first.columns]
    try:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
    except Exception:  # noqa: BLE001 (empty, unreadable: ingest names the cause)
        if path.stat().st_size == 0:
            raise DataFileError(f"{where}: the file is empty (0 bytes)") from None
        return None
    if meta.num_rows == 0:
        raise DataFileError(f"{where}: the file has a header but no rows")
    return list(meta.schema.to_arrow_schema().names)


def check_header(source: DataConfig, schema: SchemaConfig) -> None:
    """Raise ConfigError (exit 2) when a column the schema names is not in the source's
    header, DataFileError (exit 2) when the file is empty or not in ``data.encoding``:
    before any run folder or MLflow run exists. Sources without a cheap header
    (S3, SQL) are checked by ingest, with the same message."""
    from mlfolio.errors import ConfigError

    found = header(source)
    if found is None:
        return
    problems = missing_columns(schema, found, f"data.uri {source.uri}")
    if problems:
        raise ConfigError("; ".join(problems))


def _file_columns(path: Path, wanted: list[str], encoding: str) -> list[str] | None:
    """``wanted`` when the file has every one of them (read only those), else None (read
    all: validation then names what is missing and what was found)."""
    try:
        if path.name.lower().endswith(".csv"):
            found = pd.read_csv(path, nrows=0, encoding=encoding).columns
        else:
            import pyarrow.parquet as pq

            found = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 (unreadable here: the full read reports it)
        return None
    return wanted if set(wanted) <= set(found) else None


def load_source(source: DataConfig, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the rows named by ``source``: a CSV/Parquet file, S3 object or SQL query.

    ``columns``: from a file, read only these when it has them all (other columns cost
    neither time nor memory)."""
    if source.kind == "sql":
        assert source.query is not None  # guaranteed by DataConfig
        return _load_sql(source.uri, source.query)
    if source.kind == "s3":
        return _load_s3(source.uri, source.endpoint_url, source.encoding)
    path = Path(source.uri)
    if not path.is_file():
        raise DataValidationError(f"data.uri: file not found: {path}")
    use = _file_columns(path, columns, source.encoding) if columns else None
    return read_table(path, path.name, f"data.uri {path}", source.encoding, columns=use)


def _label_matches_per_row(values: pd.Series, label: Any) -> pd.Series:
    # CSV readers give 0/1 targets as ints and Yes/No as strings; compare as text too so
    # a parameter file may write the label either way.
    return (values == label) | (values.astype(str) == str(label))


def _all_text(values: pd.Series) -> bool:
    """An object column whose values (missing ones aside) are all Python strings."""
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    )


def _label_matches(values: pd.Series, label: Any) -> pd.Series:
    """Rows whose value is ``label``, as the value or as text: decided once per distinct
    value of a text or number column (a target of 10M rows has two), row by row only for
    the missing ones and for object columns mixing kinds (where 1, 1.0 and True are one
    distinct value but three texts)."""
    numbers = values.dtype.kind in "biuf"
    text_levels = isinstance(values.dtype, pd.CategoricalDtype) and all(
        type(level) is str for level in values.cat.categories
    )
    if not (numbers or text_levels or _all_text(values)):
        return _label_matches_per_row(values, label)
    codes, distinct = pd.factorize(values)  # missing: code -1
    match = _label_matches_per_row(pd.Series(distinct, dtype=values.dtype), label)
    out = np.append(match.to_numpy(dtype=bool), False)[codes]
    missing = codes < 0
    if missing.any():
        out[missing] = _label_matches_per_row(values[missing], label).to_numpy(dtype=bool)
    return pd.Series(out, index=values.index)


@dataclass(frozen=True)
class Validated:
    """Validated rows, and what validation dropped or blanked on the way."""

    frame: pd.DataFrame
    dropped_missing_target: int = 0
    non_finite_as_missing: dict[str, int] = field(default_factory=dict)
    all_missing: list[str] = field(default_factory=list)  # features with no value (ignored)


def _which(df: pd.DataFrame, mask: Any, schema: SchemaConfig, n: int = 3) -> str:
    """A few of the rows under ``mask``, by id when the schema has one."""
    rows = df[np.asarray(mask, dtype=bool)]
    if schema.id_column and schema.id_column in rows.columns:
        return f"e.g. {schema.id_column} {list(map(str, rows[schema.id_column].head(n)))}"
    return f"e.g. row(s) {list(map(int, rows.index[:n]))} (0-based)"


def _overflows(text: Any) -> bool:
    # pandas reads "1e400" as text; Python's float() says what it is: a number too large.
    try:
        return math.isinf(float(text))
    except (TypeError, ValueError):
        return False


def _numeric_problems(values: pd.Series) -> tuple[str | None, np.ndarray]:
    """(what is wrong with a numeric column other than non-finite values, non-finite mask)."""
    if pd.api.types.is_bool_dtype(values) or not (
        pd.api.types.is_numeric_dtype(values)
        or values.dtype == object
        or pd.api.types.is_string_dtype(values)
    ):
        return f"expected numbers, got dtype {values.dtype}", np.zeros(len(values), bool)
    if pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)
        return None, np.isinf(numbers)
    text = values.astype("string").str.strip()
    coerced = pd.to_numeric(text, errors="coerce")
    unparsed = (coerced.isna() & text.notna() & (text != "")).to_numpy(dtype=bool)
    too_large = unparsed.copy()  # of the unparsed values only (not every row): too large?
    too_large[unparsed] = [_overflows(v) for v in text[unparsed]]
    non_finite = np.isinf(coerced.to_numpy(dtype="float64", na_value=np.nan)) | too_large
    bad = text[unparsed & ~too_large]
    if len(bad):
        examples = sorted(set(bad.head(3)))
        return (
            f"expected numbers (blank allowed as missing), found text such as {examples} "
            f"in {len(bad)} row(s)"
        ), non_finite
    return None, non_finite


def _missing_target(target: pd.Series) -> np.ndarray:
    return (target.isna() | _blank_text(target)).to_numpy(dtype=bool)


def check(df: pd.DataFrame, schema: SchemaConfig, source: str = "data") -> Validated:
    """Check ``df`` against ``schema``; the rows restricted to the schema's columns.

    Numeric columns may hold blanks (missing values, e.g. ``totalcharges`` of new
    customers) but no other text; non-finite numbers fail unless ``schema.non_finite`` is
    ``missing``. Rows with no target are dropped (``schema.missing_target: drop``) and
    counted. A feature with no value in any row fails (``schema.all_missing: fail``) or
    is kept and named in a warning (``ignore``). Raises DataValidationError naming the
    column.
    """
    if df.empty:
        raise DataValidationError(f"{source}: no rows")
    missing = missing_columns(schema, [str(c) for c in df.columns], source)
    if missing:
        raise DataValidationError("; ".join(missing))
    problems: list[str] = []
    no_target = _missing_target(df[schema.target])
    dropped = 0
    if no_target.all():
        raise DataValidationError(
            f"{source}: no rows left: all {len(df)} row(s) have no value "
            f"in column {schema.target!r} (target)"
        )
    if no_target.any():
        if schema.missing_target == "fail":
            problems.append(
                f"column {schema.target!r} (target): {int(no_target.sum())} row(s) have no "
                f"value, {_which(df, no_target, schema)} (schema.missing_target is 'fail'; "
                f"'drop' drops and counts them)"
            )
        else:
            dropped = int(no_target.sum())
            log.warning(
                "%s: dropped %d row(s) with no value in column %r (target)",
                source,
                dropped,
                schema.target,
            )
        # Either way the unlabelled rows take no further part: nothing else to report on them.
        df = df[~no_target]
    non_finite_as_missing: dict[str, int] = {}
    for col in schema.numeric:
        problem, non_finite = _numeric_problems(df[col])
        if problem:
            problems.append(f"column {col!r}: {problem}")
        if not non_finite.any():
            continue
        if schema.non_finite == "missing":
            non_finite_as_missing[col] = int(non_finite.sum())
            df = df.assign(**{col: df[col].mask(non_finite)})
        else:
            problems.append(
                f"column {col!r}: {int(non_finite.sum())} non-finite value(s) (inf, -inf or "
                f"too large for a float), {_which(df, non_finite, schema)}; expected finite "
                f"numbers (schema.non_finite: missing treats them as missing values)"
            )
    empty = [c for c in schema.features if _no_value(df[c])]
    for col in empty if schema.all_missing == "fail" else []:
        key = "numeric" if col in schema.numeric else "categorical"
        problems.append(
            f"column {col!r}: no value in any of the {len(df)} row(s): a feature missing "
            f"in every row cannot be learnt; remove it from schema.{key} (or schema."
            f"all_missing: ignore gives it to the model as a constant, with a warning)"
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
        dupes = ids[duplicated(ids)]
        if len(dupes):
            problems.append(
                f"column {schema.id_column!r} (id): expected unique ids, "
                f"{len(dupes)} duplicated, e.g. {list(map(str, dupes.head(3)))}"
            )
    if problems:
        raise DataValidationError(f"{source}: " + "; ".join(problems))
    if non_finite_as_missing:
        log.warning("%s: non-finite values treated as missing: %s", source, non_finite_as_missing)
    if empty:
        log.warning(
            "%s: feature column(s) %s have no value in any row; the model gets them as "
            "constants it cannot use (schema.all_missing: ignore)",
            source,
            empty,
        )
    return Validated(_schema_frame(df, schema), dropped, non_finite_as_missing, empty)


def _schema_frame(df: pd.DataFrame, schema: SchemaConfig) -> pd.DataFrame:
    """``df``'s schema columns with a 0..n-1 index: ``df`` itself when it is that already
    (a source read as the schema's columns: a copy of 10M rows is 1.7 GB of pointers)."""
    columns = schema_columns(schema)
    index = df.index
    if (
        list(df.columns) == columns
        and isinstance(index, pd.RangeIndex)
        and (index.start, index.step) == (0, 1)
    ):
        return df
    return df[columns].reset_index(drop=True)


def validate(df: pd.DataFrame, schema: SchemaConfig, source: str = "data") -> pd.DataFrame:
    """The rows of :func:`check` (without its counts)."""
    return check(df, schema, source).frame


MIN_PER_CLASS = 2  # rows of each class in each of train, validation and test


def min_rows_per_class(split: SplitConfig, cv_folds: int | None = None) -> int:
    """Rows of each class needed so every part of the split gets ``MIN_PER_CLASS`` of it
    (and each of ``cv_folds`` cross-validation folds of the training rows one)."""
    train = 1 - split.test_size - split.valid_size
    # round() first: 2 / 0.1 is 20.000000000000004 in floating point. The training rows
    # are what two rounded splits leave: one row of slack (checked against sklearn's split
    # over a grid of sizes, folds and class balances).
    return max(
        math.ceil(round(MIN_PER_CLASS / split.test_size, 6)),
        math.ceil(round(MIN_PER_CLASS / split.valid_size, 6)),
        math.ceil(round(max(MIN_PER_CLASS, cv_folds or 0) / train, 6)) + 1,
    )


def check_split_size(
    df: pd.DataFrame,
    schema: SchemaConfig,
    split: SplitConfig,
    cv_folds: int | None = None,
    source: str = "data",
    sample_rows: int | None = None,
) -> None:
    """Fail when ``df`` has too few rows of a class for the stratified split (and the
    tuning folds); the message says the minimum these parameters need."""
    need = min_rows_per_class(split, cv_folds)
    positive = _label_matches(df[schema.target], schema.positive_label).to_numpy()
    positives = int(positive.sum())
    counts = {schema.positive_label: positives, schema.negative_label: len(df) - positives}
    if min(counts.values()) >= need:
        if split.method == "hash":
            _check_hash_split(df, positive, schema, split, cv_folds, source)
        return
    have = " and ".join(f"{n} {label!r}" for label, n in counts.items())
    rows = (
        f"data.sample_rows {sample_rows} leaves {len(df)} row(s)"
        if sample_rows
        else f"{len(df)} row(s)"
    )
    params = f"split.test_size {split.test_size}, split.valid_size {split.valid_size}"
    if cv_folds:
        params += f" and tuning.cv_folds {cv_folds}"
    train_need = max(MIN_PER_CLASS, cv_folds or 0)
    raise DataValidationError(
        f"{source}: too few rows for the split: {rows}, {have}; {params} need at least "
        f"{need} rows of each class ({2 * need} rows): {MIN_PER_CLASS} of each class in the "
        f"test and validation rows, {train_need} in the training rows"
    )


def _check_hash_split(
    df: pd.DataFrame,
    positive: np.ndarray,
    schema: SchemaConfig,
    split: SplitConfig,
    cv_folds: int | None,
    source: str,
) -> None:
    """The hash split's shares of a class are only close to the configured ones: fail
    when a part gets fewer rows of a class than training and evaluating need."""
    from mlfolio import rowkeys

    where = rowkeys.hash_assignment(rowkeys.row_keys(df, schema), split)
    for part in rowkeys.SPLIT_NAMES:
        least = max(MIN_PER_CLASS, cv_folds or 0) if part == "train" else MIN_PER_CLASS
        for label, is_class in (
            (schema.positive_label, positive),
            (schema.negative_label, ~positive),
        ):
            have = int((is_class & (where == part)).sum())
            if have < least:
                raise DataValidationError(
                    f"{source}: too few rows for the split: split.method hash puts {have} "
                    f"{label!r} row(s) of {int(is_class.sum())} in the {part} rows (needs "
                    f"{least}); add rows, or use split.method: seeded (exact class shares)"
                )


def sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``n`` rows (all rows when n is None or larger)."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def content_hash(df: pd.DataFrame) -> str:
    """A stable SHA-256 of the rows and columns (independent of file encoding).

    The rows' hashes are pandas' ``hash_pandas_object(df, index=False)``, got column by
    column the cheaper of pandas' two equivalent ways (:func:`mlfolio.rowkeys.row_hashes`:
    a column of unique ids without a hash table of them), so the digest never changes."""
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, df.columns)).encode())
    h.update(row_hashes(df).tobytes())
    return h.hexdigest()


def source_hash(source: DataConfig, frame: pd.DataFrame | None = None) -> str:
    """What identifies the source's content: the SHA-256 of a local file's bytes; for an
    S3 object or a SQL query, :func:`content_hash` of ``frame``, the rows read from it."""
    if source.kind == "file":
        h = hashlib.sha256()
        with Path(source.uri).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if frame is None:
        raise ValueError(f"data.uri {source.uri}: hashing an {source.kind} source needs its rows")
    return content_hash(frame)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` as Parquet through a new file: a run folder's products may be hard
    links shared with an earlier run (reused stages), which writing in place would alter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def write_snapshot(df: pd.DataFrame, path: Path) -> str:
    """Write ``df`` as Parquet and return its content hash."""
    write_parquet(df, path)
    return content_hash(df)


def _no_value(values: pd.Series, head: int = 1000) -> bool:
    """True when every value is missing or blank text; a column with a value among its
    first ``head`` rows is not looked at further (one found is enough to say no)."""
    first = values.iloc[:head]
    if not (first.isna() | _blank_text(first)).all():
        return False
    return bool((values.isna() | _blank_text(values)).all())


def duplicated(values: pd.Series) -> pd.Series:
    """``values.duplicated()`` (each repeat of an earlier value), the same answer got by
    hashing each text value (:func:`mlfolio.rowkeys.row_hashes`: no hash table of
    millions of distinct ids) and comparing values only among the rows whose hashes
    repeat, and the missing ones: 3.2 s instead of 5.2 s for 4M unique ids on this
    machine. Columns other than text (where 1 == 1.0 but their texts differ) are left to
    pandas."""
    if not _all_text(values):
        return values.duplicated()
    hashes = pd.Series(row_hashes(values))
    maybe = (hashes.duplicated(keep=False).to_numpy() | values.isna().to_numpy()).astype(bool)
    out = np.zeros(len(values), dtype=bool)
    if maybe.any():
        out[maybe] = values[maybe].duplicated().to_numpy(dtype=bool)
    return pd.Series(out, index=values.index)


def _blank_text(values: pd.Series) -> pd.Series:
    """Text that is empty once stripped (a CSV's ' ' in a numeric column), decided once
    per distinct value (a column of 2M rows has a handful), not once per row."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.Series(False, index=values.index)
    try:
        codes, distinct = pd.factorize(values)  # missing values: code -1
    except TypeError:  # unhashable values (a Parquet list column): row by row
        return values.notna() & values.astype("string").str.strip().eq("").fillna(False)
    blank = pd.Series(distinct).astype("string").str.strip().eq("").fillna(False)
    return pd.Series(np.append(blank.to_numpy(dtype=bool), False)[codes], index=values.index)


def quality(
    raw: pd.DataFrame, schema: SchemaConfig, checked: Validated, rows: int
) -> dict[str, Any]:
    """Data-quality counts of the source rows ``raw`` (the schema's columns): missing
    values per column (blank text included), blanks read as missing in numeric columns,
    duplicate rows, duplicate ids, rows equal but for their id, and the rows dropped on
    the way to the ``rows`` of the snapshot (no target; left out of a sample)."""
    columns = [c for c in [schema.id_column, *schema.features, schema.target] if c]
    blank = {c: _blank_text(raw[c]) for c in columns}
    missing = {c: int((raw[c].isna() | blank[c]).sum()) for c in columns}
    without_id = [c for c in columns if c != schema.id_column]
    ids = raw[schema.id_column].dropna() if schema.id_column else None
    duplicate_ids = int(duplicated(ids).sum()) if ids is not None else None
    # Rows with distinct ids cannot be equal: with every id present and unique, no row
    # duplicates another (no need to hash every column of every row).
    unique_ids = duplicate_ids == 0 and len(ids) == len(raw)
    labelled = len(raw) - checked.dropped_missing_target
    return {
        "source_rows": int(len(raw)),
        "columns": len(columns),
        "missing": {c: n for c, n in missing.items() if n},
        "missing_cells": int(sum(missing.values())),
        "blank_as_missing": {c: int(blank[c].sum()) for c in schema.numeric if int(blank[c].sum())},
        "non_finite_as_missing": dict(checked.non_finite_as_missing),
        "duplicate_rows": 0 if unique_ids else int(raw.duplicated(subset=columns).sum()),
        "duplicate_ids": duplicate_ids,
        # Copies under new ids (or customers identical in every column) weigh twice in
        # training and can sit on both sides of the split.
        "duplicate_rows_but_id": (
            int(raw.duplicated(subset=without_id).sum()) if schema.id_column else None
        ),
        "dropped": {
            "missing_target": checked.dropped_missing_target,
            "sampled_out": int(labelled - rows),
        },
    }


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
