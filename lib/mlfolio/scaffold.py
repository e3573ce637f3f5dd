"""``mlfolio new``: a commented parameter file inferred from a data file.

Each column gets a role from its values: the target (given), the id column (unique in
every row, and named like an id or plain text), numeric (numbers, or text holding only
numbers and blanks, like Telco's ``totalcharges``), categorical (text, booleans, 0/1
flags), or left out (dates, constants, free text), each with the reason as a comment.
The inference functions are pure; :func:`write` validates the result with the config
loader and the ingest check before it creates the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlfolio.data import _blank_text
from mlfolio.errors import ConfigError, DataFileError

# Integer columns with this many distinct values or fewer are flags (seniorcitizen 0/1),
# not quantities: one-hot encoding them loses nothing.
MAX_FLAG_LEVELS = 2
# Text columns with more distinct values than this (and than half the rows) are free
# text or identifiers: one-hot encoding them would make a column per row.
MAX_CATEGORY_LEVELS = 100
ID_NAME = re.compile(r"(^|[^a-z])(id|uuid|guid|key)$|id$|_no$|number$", re.IGNORECASE)
# Labels that mean "the event happened", in the usual spellings of binary targets.
POSITIVE_WORDS = {"yes", "y", "true", "t", "1", "positive", "pos"}
NEGATIVE_WORDS = {"no", "n", "false", "f", "0", "negative", "neg"}
EXPERIMENT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Column:
    """One column's inferred role and what the comment beside it says."""

    name: str
    role: str  # "id", "numeric", "categorical", "target" or "left out"
    note: str
    missing: int = 0


@dataclass(frozen=True)
class Schema:
    """The inferred schema: what the parameter file's ``schema`` section says."""

    target: str
    positive_label: Any
    negative_label: Any
    id_column: str | None
    columns: list[Column] = field(default_factory=list)
    rows: int = 0

    def of_role(self, role: str) -> list[Column]:
        return [c for c in self.columns if c.role == role]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.of_role("numeric")]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.of_role("categorical")]


def read_data(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """The rows of a CSV or Parquet file, read as the ingest stage reads them (the same
    DataFileError, exit 2, for an empty file or a byte ``encoding`` cannot decode)."""
    import codecs

    from mlfolio.data import read_table

    if not path.is_file():
        raise ConfigError(f"--data: file not found: {path}")
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"--data {path}: expected a .csv or .parquet file")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(
            f"--encoding {encoding!r}: unknown (e.g. utf-8, latin-1, cp1252)"
        ) from None
    where = f"--data {path}"
    df = read_table(path, path.name, where, encoding, fix="give --encoding {}")
    if df.empty:
        raise DataFileError(f"{where}: the file has a header but no rows")
    return df


def _blank(values: pd.Series) -> pd.Series:
    """Missing values, blank text included (CSV readers keep ' ' as text): ingest's test
    of blank text, decided once per distinct value."""
    return values.isna() | _blank_text(values)


def _numbers_in_text(values: pd.Series, blank: pd.Series) -> bool:
    """Whether every non-blank value of a text column parses as a number."""
    present = values[~blank].astype("string").str.strip()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().all()


def _is_row_number(values: pd.Series) -> bool:
    if not pd.api.types.is_integer_dtype(values) or values.isna().any():
        return False
    ordered = values.sort_values().to_numpy()
    return bool(len(ordered) and (ordered == range(ordered[0], ordered[0] + len(ordered))).all())


def _levels(present: pd.Series, n: int = 4, width: int = 60) -> str:
    """The most frequent of the ``present`` (non-blank) values, as many as fit in
    ``width`` characters (at most n)."""
    counts = present.astype(str).value_counts()
    shown: list[str] = []
    for level in counts.index[:n]:
        if shown and len(", ".join([*shown, level])) > width:
            break
        shown.append(level)
    return ", ".join(shown) + (", ..." if len(shown) < len(counts) else "")


def _missing_note(missing: int) -> str:
    return f", {missing} missing" if missing else ""


def classify(name: str, values: pd.Series, rows: int) -> Column:
    """The role of one feature column (not the target) and why."""
    blank = _blank(values)  # once: stripping a text column is the costly part
    missing = int(blank.sum())
    present = values[~blank]
    distinct = int(present.astype(str).nunique())
    if missing == rows:
        return Column(name, "left out", "empty in every row", missing)
    if distinct == 1:
        return Column(name, "left out", f"one value only ({_levels(present)})", missing)
    if pd.api.types.is_datetime64_any_dtype(values):
        return Column(name, "left out", "dates: derive numbers from them first", missing)
    unique = missing == 0 and distinct == rows
    if pd.api.types.is_bool_dtype(values):
        return Column(name, "categorical", f"true/false{_missing_note(missing)}", missing)
    if pd.api.types.is_numeric_dtype(values):
        if unique and ID_NAME.search(name):
            return Column(name, "id", "unique in every row", 0)
        if _is_row_number(values):
            return Column(name, "left out", "a row number (consecutive, unique)", 0)
        whole = pd.api.types.is_integer_dtype(values) or bool((values.dropna() % 1 == 0).all())
        if whole and distinct <= MAX_FLAG_LEVELS:
            note = f"a flag: {_levels(present)}{_missing_note(missing)}"
            return Column(name, "categorical", note, missing)
        kind = "whole numbers" if whole else "numbers"
        return Column(
            name, "numeric", f"{kind}, {distinct} distinct{_missing_note(missing)}", missing
        )
    if _numbers_in_text(values, blank):
        blanks = int((values.notna() & blank).sum())
        note = f"numbers stored as text, {distinct} distinct"
        if blanks == missing:
            note += f", {blanks} blank (missing values)"
        elif blanks:
            note += f", {missing} missing ({blanks} of them blank)"
        else:
            note += _missing_note(missing)
        return Column(name, "numeric", note, missing)
    if unique:
        return Column(name, "id", "unique text in every row", 0)
    if distinct > MAX_CATEGORY_LEVELS and distinct > rows / 2:
        note = f"{distinct} distinct texts in {rows} rows: free text or an identifier"
        return Column(name, "left out", note, missing)
    note = f"{distinct} values: {_levels(present)}{_missing_note(missing)}"
    return Column(name, "categorical", note, missing)


def _native(value: Any) -> Any:
    """A label as plain Python (numpy ints/bools become int/bool; text stays text)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def target_labels(values: pd.Series, name: str, positive: str | None) -> tuple[Any, Any]:
    """(positive, negative) label of a binary target column.

    ``positive`` (as typed on the command line) picks one of the two values; without it
    the positive one is read from the usual spellings (Yes/No, 1/0, True/False). Raises
    ConfigError listing the values when the column is not binary or cannot be told.
    """
    present = values[~_blank(values)]
    labels = sorted({_native(v) for v in present.unique()}, key=str)
    if len(labels) != 2:
        shown = labels[:10]
        more = f" (and {len(labels) - 10} more)" if len(labels) > 10 else ""
        raise ConfigError(
            f"--target {name}: expected two values (a binary target), found {len(labels)}: "
            f"{shown}{more}"
        )
    if positive is not None:
        matches = [i for i, v in enumerate(labels) if str(v) == positive]
        if not matches:
            raise ConfigError(
                f"--positive {positive!r}: not a value of column {name!r}; its values are {labels}"
            )
        return labels[matches[0]], labels[1 - matches[0]]
    words = [str(v).strip().lower() for v in labels]
    for i in (0, 1):
        if words[i] in POSITIVE_WORDS and words[1 - i] in NEGATIVE_WORDS:
            return labels[i], labels[1 - i]
    raise ConfigError(
        f"--target {name}: cannot tell which value is the positive class (the event to "
        f"predict) among {labels}: give --positive, e.g. --positive {labels[0]}"
    )


def infer(df: pd.DataFrame, target: str, positive: str | None = None) -> Schema:
    """The schema of ``df`` with ``target`` as the label column."""
    if target not in df.columns:
        raise ConfigError(f"--target {target!r}: no such column; the columns are {list(df)}")
    if df.empty:
        raise ConfigError("--data: the file has no rows")
    pos, neg = target_labels(df[target], target, positive)
    rows = len(df)
    columns = [classify(str(c), df[c], rows) for c in df.columns if c != target]
    ids = [c for c in columns if c.role == "id"]
    # One id column: the one named like an id, else the first; other unique columns
    # are kept out of the features (one-hot encoding them would make a column per row).
    chosen = next((c for c in ids if ID_NAME.search(c.name)), ids[0] if ids else None)
    columns = [
        c
        if c.role != "id" or c is chosen
        else Column(c.name, "left out", f"{c.note}: another identifier", c.missing)
        for c in columns
    ]
    blank = _blank(df[target])
    counts = df[target][~blank].map(_native).astype(str).value_counts()
    dropped = int(blank.sum())
    n_pos = int(counts.get(str(pos), 0))
    note = f"{n_pos} {pos!s} ({n_pos / (rows - dropped):.1%}), {counts.get(str(neg), 0)} {neg!s}"
    if dropped:
        note += f", {dropped} without a value (dropped at ingest)"
    columns.insert(0, Column(target, "target", note, dropped))
    return Schema(target, pos, neg, chosen.name if chosen else None, columns, rows)


# -- rendering ---------------------------------------------------------------------------
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"yes", "no", "y", "n", "true", "false", "on", "off", "null", "~"}


def _yaml(value: Any) -> str:
    """A scalar as YAML: plain when unambiguous, else JSON-quoted (valid YAML)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _listing(key: str, columns: list[Column]) -> list[str]:
    if not columns:
        return [f"  {key}: []"]
    width = max(len(_yaml(c.name)) for c in columns) + 6
    return [f"  {key}:"] + [f"    - {_yaml(c.name):<{width - 6}}  # {c.note}" for c in columns]


def experiment_name(path: Path) -> str:
    """The experiment key from the parameter file's name (``parameters/cancer.yaml``)."""
    name = EXPERIMENT_NAME.sub("-", path.stem).strip("-.") or "experiment"
    return name[:64] if name[0].isalnum() else f"x{name}"[:64]


def render(
    schema: Schema, experiment: str, data_uri: str, source: str, encoding: str = "utf-8"
) -> str:
    """The parameter file's text."""
    missing = {c.name: c.missing for c in schema.columns if c.missing}
    left_out = schema.of_role("left out")
    target = schema.of_role("target")[0]
    lines = [
        f"# Written by `mlfolio new` from {source}: {schema.rows} rows, "
        f"{len(schema.columns)} columns.",
        "# Check the schema: each column's role was inferred from its values (the reason",
        "# is beside it). Every key is validated (lib/mlfolio/config.py); parameters/",
        "# churn.yaml shows every section and key.",
        f"experiment: {_yaml(experiment)}",
        f"description: {json.dumps(f'Predict {schema.target} = {schema.positive_label}.')}",
        "seed: 42",
        "",
        "data:",
        f"  uri: {_yaml(data_uri)}",
        *([f"  encoding: {_yaml(encoding)}"] if encoding.lower() not in ("utf-8", "utf8") else []),
        "  # sample_rows: 1000                # quick runs on a seeded sample",
        "",
        "schema:",
        f"  target: {_yaml(schema.target):<22}  # {target.note}",
        f"  positive_label: {_yaml(schema.positive_label)}",
        f"  negative_label: {_yaml(schema.negative_label)}",
    ]
    if schema.id_column:
        note = schema.of_role("id")[0].note
        lines.append(f"  id_column: {_yaml(schema.id_column):<19}  # {note}; never a feature")
    lines += _listing("numeric", schema.of_role("numeric"))
    lines += _listing("categorical", schema.of_role("categorical"))
    if left_out:
        lines.append("  # left out (add one under numeric/categorical to use it):")
        lines += [f"  #   {c.name}: {c.note}" for c in left_out]
    if missing:
        shown = ", ".join(f"{k} {v}" for k, v in missing.items())
        lines.append(f"  # missing values per column: {shown}")
    else:
        lines.append("  # no missing values")
    lines += [
        "  missing_target: drop   # rows with no target: dropped and counted (or fail)",
        "  non_finite: fail       # inf in a numeric column: fail naming it (or missing)",
        "  all_missing: fail      # a feature with no value in any row: fail (or ignore)",
        "",
        "split:                 # hash: a row keeps its split for life (a hash of its id, else",
        "  method: hash         # of its values); seeded: a seeded stratified split",
        "  test_size: 0.2",
        "  valid_size: 0.2",
        "",
        "training:",
        "  models: [logreg, xgboost]",
        "",
        "tuning:",
        "  model: xgboost",
        "  n_trials: 30",
        "  timeout: 120          # seconds; the study stops at whichever comes first",
        "",
        "evaluation:",
        "  threshold: max_f1     # or a number in (0, 1)",
        "",
        "gate:",
        "  min_roc_auc: 0.75     # the candidate's test ROC AUC must reach it",
        "  min_improvement: 0.0  # over the champion: the gain's CI lower bound above this",
        "",
        "registry:",
        f"  model_name: {_yaml(f'{experiment}-classifier')}",
        "",
        "deploy:",
        "  targets: [local]      # also: kubernetes, lambda, sagemaker (see churn.yaml)",
        "",
    ]
    return "\n".join(lines)


def data_uri(path: Path, project: Path) -> str:
    """``path`` as the parameter file should name it: relative to the project when
    inside it (the config loader resolves relative paths against the project)."""
    path = path.resolve()
    try:
        return str(path.relative_to(project.resolve()))
    except ValueError:
        return str(path)


def write(
    target_file: Path,
    data_file: Path,
    target: str,
    positive: str | None = None,
    project: Path | None = None,
    encoding: str = "utf-8",
) -> tuple[Schema, Any]:
    """Infer, render, validate and create ``target_file`` (never overwriting one);
    returns the schema and the validated Config."""
    import yaml

    from mlfolio import config, data

    exists = ConfigError(f"{target_file}: the file exists; give another name or remove it")
    if target_file.exists():
        raise exists
    if target_file.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{target_file}: expected a .yaml parameter file name")
    project = project or config.project_dir()
    df = read_data(data_file, encoding)
    schema = infer(df, target, positive)
    text = render(
        schema,
        experiment_name(target_file),
        data_uri(data_file, project),
        data_file.name,
        encoding,
    )
    cfg = config.from_mapping(yaml.safe_load(text), source=str(target_file), base=project)
    # What ingest will do with these rows: fails here, naming the column, rather than later.
    checked = data.check(df, cfg.schema, source=str(data_file))
    data.check_split_size(checked.frame, cfg.schema, cfg.split, cfg.tuning.cv_folds)
    target_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target_file.open("x") as fh:  # "x": never replace a file created meanwhile
            fh.write(text)
    except FileExistsError:
        raise exists from None
    return schema, cfg
