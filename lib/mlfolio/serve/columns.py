"""The model's input columns (from its MLflow signature) and the checks every protocol's
values go through: a wrong value is a 400 naming the column, the row and what was expected."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from itertools import chain
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.errors import RequestError, ServeError

_INT64 = (-(2**63), 2**63 - 1)
_BIG_INT = 2**1023  # an int beyond it may not convert to a double: check_values decides


# -- the model's columns --------------------------------------------------------------
class ColumnKind(StrEnum):
    """What a request column holds. A str enum: ``/health``, the prediction log and the
    V2 metadata write the kind as its text, and ``kind == "long"`` still reads."""

    LONG = "long"
    DOUBLE = "double"
    STRING = "string"
    BOOLEAN = "boolean"
    ENTITY = "entity"  # the entity id: text or integers, split off, never scored


_SIGNATURE_KINDS = {
    "integer": ColumnKind.LONG,
    "long": ColumnKind.LONG,
    "float": ColumnKind.DOUBLE,
    "double": ColumnKind.DOUBLE,
    "string": ColumnKind.STRING,
    "boolean": ColumnKind.BOOLEAN,
}


@dataclass(frozen=True)
class Column:
    """One input column of the model signature.

    ``kind`` (a :class:`ColumnKind`, or its text) is long, double, string or boolean. A
    double column takes numbers, numeric text and blank text (a missing value), read as
    the pipeline's coercer reads them; a string column takes text, and integers and
    booleans as their text (a 0/1 flag). The entity column (the schema's id column, or
    ``--entity-column``) is an ``optional`` column of kind ``entity`` (text or integer
    ids), split off the rows when a request is parsed (:attr:`Batch.entity`).
    ``numeric_text`` marks a string column the model reads as a number (blank =
    missing): ``totalcharges`` in models logged before signatures followed the schema.
    """

    name: str
    kind: ColumnKind
    numeric_text: bool = False
    optional: bool = False

    def __post_init__(self) -> None:
        if type(self.kind) is not ColumnKind:
            try:
                object.__setattr__(self, "kind", ColumnKind(self.kind))
            except ValueError:
                raise ServeError(
                    f"column {self.name!r}: kind {self.kind!r} is not one of "
                    f"{[k.value for k in ColumnKind]}"
                ) from None


def columns_from_signature(
    signature: Any, numeric: Iterable[str] = (), categorical: Iterable[str] = ()
) -> list[Column]:
    """The model's input columns from its MLflow signature (a column-based schema). A
    column typed ``any`` (what :func:`mlfolio.tracking.model_signature` logs, so that
    MLflow's own clients take raw rows) gets its declared type: double when it is in
    ``numeric``, string when in ``categorical`` (the pipeline's coercer's lists)."""
    if signature is None or signature.inputs is None:
        raise ServeError(
            "the model has no input signature; log it with mlfolio.tracking."
            "log_model, which records one"
        )
    if not signature.inputs.has_input_names() or signature.inputs.is_tensor_spec():
        raise ServeError("the model's input signature is not a list of named columns")
    numeric, categorical = set(numeric), set(categorical)
    out = []
    for spec in signature.inputs.inputs:
        type_name = getattr(spec.type, "name", str(spec.type))
        if str(type_name).lower() == "any":
            if spec.name not in numeric | categorical:
                raise ServeError(
                    f"column {spec.name!r}: signature type 'any' and the model's coercer "
                    "declares it neither numeric nor categorical"
                )
            type_name = "double" if spec.name in numeric else "string"
        kind = _SIGNATURE_KINDS.get(type_name)
        if kind is None:
            raise ServeError(
                f"column {spec.name!r}: signature type {type_name!r} is not "
                f"supported (expected one of {sorted(_SIGNATURE_KINDS)})"
            )
        out.append(Column(spec.name, kind, kind is ColumnKind.STRING and spec.name in numeric))
    return out


def model_id_column(meta: Any) -> str | None:
    """The schema's id column recorded at log time (MLmodel metadata), if any."""
    recorded = (getattr(meta, "metadata", None) or {}).get("mlfolio") or {}
    name = recorded.get("id_column") if isinstance(recorded, dict) else None
    return name if isinstance(name, str) and name else None


# -- request values -------------------------------------------------------------------
def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number_text(text: str) -> bool:
    """Text the model's coercion reads as a number, or blank (a missing value)."""
    stripped = text.strip()
    if not stripped:
        return True
    if "_" in stripped or not stripped.isascii():
        return False
    try:
        return math.isfinite(float(stripped)) or stripped.lower() in ("nan", "-nan", "+nan")
    except ValueError:
        return False


def _number_from_text(text: str) -> float | None:
    """Numeric text as the coercer reads it (strip, pandas.to_numeric); blank → None."""
    stripped = text.strip()
    if not stripped:
        return None
    if (
        len(stripped) <= 17
        and _PLAIN_DECIMAL.fullmatch(stripped)
        and sum(c.isdigit() for c in stripped) <= 15
    ):  # text_to_float's fast path
        return float(stripped)
    return float(text_to_float([stripped])[0])


def _category_text(v: Any) -> Any:
    """An int, bool or finite float in a string column as the coercer's text (``0.0`` →
    ``"0"``); anything else is returned as is, for the caller to refuse."""
    t = type(v)
    if t is int or t is bool:
        return str(v)
    if t is float and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    return v


def check_values(col: Column, values: Sequence[Any], where: str = "") -> Sequence[Any]:
    """Values of one column checked against its signature type; null means missing.

    Returns the values with lossless normalisations (``1.0`` in a long column becomes
    ``1``, numeric text in a double column its number, blank text None, a 0/1 flag in a
    string column its text); raises RequestError naming the column, the row and what was
    expected.
    """
    at = f" ({where})" if where else ""
    kind = col.kind
    out = values
    if kind is ColumnKind.STRING:
        for i, v in enumerate(values):
            if v is None or type(v) is str:
                continue
            t = type(v)
            if t is float and v != v:
                text = None  # NaN: missing
            elif col.numeric_text:
                text = (
                    (str(v) if t is int else repr(v))
                    if t in (int, float) and math.isfinite(v)
                    else v
                )
            else:
                text = _category_text(v)
            if text is not None and type(text) is not str:
                expected = (
                    "a number or numeric text"
                    if col.numeric_text
                    else "a string (or an integer or boolean, read as its text)"
                )
                raise RequestError(
                    f"column {col.name!r}: expected {expected} (signature "
                    f"type string), got {describe(v)} in row {i}{at}"
                )
            if out is values:
                out = list(values)
            out[i] = text
        if col.numeric_text:
            for i, v in enumerate(out):
                if v is not None and not _is_number_text(v):
                    raise RequestError(
                        f"column {col.name!r}: expected a number written as "
                        f"text, or blank for missing, got {describe(v)} in "
                        f"row {i}{at}"
                    )
    elif kind is ColumnKind.LONG:
        for i, v in enumerate(values):
            t = type(v)
            if t is int:
                if not _INT64[0] <= v <= _INT64[1]:
                    raise RequestError(
                        f"column {col.name!r}: {v} in row {i}{at} does not fit a 64-bit integer"
                    )
            elif v is None:
                continue
            elif t is float and v.is_integer():
                if out is values:
                    out = list(values)
                out[i] = int(v)
            else:
                raise RequestError(
                    f"column {col.name!r}: expected an integer (signature "
                    f"type long), got {describe(v)} in row {i}{at}"
                )
    elif kind is ColumnKind.DOUBLE:
        for i, v in enumerate(values):
            t = type(v)
            if t is float:
                if math.isinf(v):
                    raise RequestError(
                        f"column {col.name!r}: expected a finite number, got {v} in row {i}{at}"
                    )
            elif t is str and _is_number_text(v):  # blank is missing, as in training
                if out is values:
                    out = list(values)
                out[i] = _number_from_text(v)
            elif t is int and not -_BIG_INT < v < _BIG_INT:
                try:
                    float(v)
                except OverflowError:  # refused as the model would, at parse time
                    raise RequestError(
                        f"column {col.name!r}: a number too large for a double in row {i}{at}"
                    ) from None
            elif t is not int and v is not None:
                raise RequestError(
                    f"column {col.name!r}: expected a number (signature type "
                    f"double; numeric text is read as a number, blank text "
                    f"as missing), got {describe(v)} in row {i}{at}"
                )
    elif kind is ColumnKind.BOOLEAN:
        for i, v in enumerate(values):
            if v is not None and type(v) is not bool:
                raise RequestError(
                    f"column {col.name!r}: expected true or false (signature "
                    f"type boolean), got {describe(v)} in row {i}{at}"
                )
    elif kind is ColumnKind.ENTITY:
        for i, v in enumerate(values):
            if v is not None and type(v) is not str and type(v) is not int:
                raise RequestError(
                    f"column {col.name!r} (the entity id): expected a string "
                    f"or an integer, got {describe(v)} in row {i}{at}"
                )
    return out


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _batch(checked: dict[str, Sequence[Any]], doubles: frozenset[str], entity: str | None) -> Batch:
    """Checked columns (all of length ``n`` > 0) as a Batch, the entity column split off."""
    values = {name: tuple(v) for name, v in checked.items()}
    ids = None if entity is None else values.pop(entity, None)
    n = len(next(iter(checked.values())))
    return Batch(n, MappingProxyType(values), ids, doubles)


_NO_DOUBLES: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class Batch:
    """Rows checked against the signature, column by column, immutable.

    ``values`` maps each model input to its checked values, one tuple per column, as the
    request gave them once checked (numbers int, float or None; text str or None).
    ``columns`` is the same as read-only NumPy arrays, float64 for a double column (missing
    as NaN), object otherwise, built on first use: the compiled scorer and the prediction
    log read the tuples, so a 1-row request never pays for ~20 arrays (~12 µs, a quarter
    of its parse and score). ``entity`` holds the entity ids (one per row), split off when
    the request was parsed: never among the scored columns. A request, a part of one
    routed to a variant (:meth:`take`) and a micro-batch (:meth:`concat`) are each a
    Batch."""

    n: int
    values: Mapping[str, tuple[Any, ...]]
    entity: tuple[Any, ...] | None = None
    doubles: frozenset[str] = _NO_DOUBLES  # names of the double columns

    @classmethod
    def of(
        cls, columns: Sequence[Column], data: Mapping[str, Sequence[Any]], *, checked: bool = False
    ) -> Batch:
        """A batch of ``data`` (column name → values) for ``columns``; unless ``checked``,
        each column's values go through :func:`check_values` first. The entity column's
        values (kind entity) become :attr:`entity`; names not in ``columns`` are left out."""
        checked_data: dict[str, Sequence[Any]] = {}
        for col in columns:
            values = data.get(col.name)
            if values is not None:
                values = list(values)
                checked_data[col.name] = values if checked else check_values(col, values)
        if not checked_data:
            return cls(0, MappingProxyType({}))
        doubles = frozenset(c.name for c in columns if c.kind is ColumnKind.DOUBLE)
        entity = next((c.name for c in columns if c.kind is ColumnKind.ENTITY), None)
        return _batch(checked_data, doubles, entity)

    @cached_property
    def columns(self) -> Mapping[str, np.ndarray]:
        """The columns as read-only NumPy arrays (float64 for doubles, else object)."""
        arrays: dict[str, np.ndarray] = {}
        for name, values in self.values.items():
            if name in self.doubles:  # check_values refused ints beyond a double
                arrays[name] = _frozen(np.array(values, dtype=np.float64))
            else:
                array = np.empty(self.n, dtype=object)  # never 2-D, whatever the values
                array[:] = values
                arrays[name] = _frozen(array)
        return MappingProxyType(arrays)

    def take(self, index: Sequence[int]) -> Batch:
        """The rows at ``index`` (positions in this batch), as a batch of their own."""
        index = [int(i) for i in index]
        values = {name: tuple([v[i] for i in index]) for name, v in self.values.items()}
        entity = None if self.entity is None else tuple([self.entity[i] for i in index])
        return Batch(len(index), MappingProxyType(values), entity, self.doubles)

    @staticmethod
    def concat(batches: Sequence[Batch], names: Iterable[str]) -> Batch:
        """One batch of ``batches``' rows in order, with the columns ``names``."""
        if len(batches) == 1:
            return batches[0]
        values = {
            name: tuple(chain.from_iterable(b.values[name] for b in batches)) for name in names
        }
        entities = [b.entity for b in batches]
        entity = None if any(e is None for e in entities) else tuple(chain.from_iterable(entities))  # type: ignore[arg-type]
        n = sum(b.n for b in batches)
        return Batch(n, MappingProxyType(values), entity, batches[0].doubles)


def expected_columns(columns: list[Column]) -> str:
    """The columns a request may carry, for error messages."""
    required = [c.name for c in columns if not c.optional]
    optional = [c.name for c in columns if c.optional]
    return f"{required}" + (f" and optionally the entity id {optional[0]!r}" if optional else "")


@dataclass(frozen=True)
class _Spec:
    """What validate_columns needs of a column list, computed once per list."""

    expected: frozenset[str]
    required: tuple[str, ...]
    strings: frozenset[str]  # plain string columns: text or null passes unchanged
    numbers: frozenset[str]  # double columns: int, finite float or null passes unchanged
    entity: str | None  # the entity column, split off into Batch.entity


_SPECS: dict[int, tuple[list[Column], _Spec]] = {}


def _spec(columns: list[Column]) -> _Spec:
    hit = _SPECS.get(id(columns))
    if hit is not None and hit[0] is columns:  # the entry holds the list: its id stays its
        return hit[1]
    spec = _Spec(
        frozenset(c.name for c in columns),
        tuple(c.name for c in columns if not c.optional),
        frozenset(c.name for c in columns if c.kind is ColumnKind.STRING and not c.numeric_text),
        frozenset(c.name for c in columns if c.kind is ColumnKind.DOUBLE),
        next((c.name for c in columns if c.kind is ColumnKind.ENTITY), None),
    )
    if len(_SPECS) >= 64:
        _SPECS.clear()
    _SPECS[id(columns)] = (columns, spec)
    return spec


def validate_columns(
    data: Mapping[str, Sequence[Any]],
    columns: list[Column],
    where: str,
    *,
    check_text: bool = False,
) -> Batch:
    """Exactly the signature's columns, of equal length, each value of the column's type,
    as a :class:`Batch` (the entity column split off into ``entity``).

    ``check_text``: the values may hold text that cannot be encoded as UTF-8 (a lone
    surrogate from a ``\\ud800`` JSON escape), refused here, before it reaches a batch:
    the prediction log could not store it. Parsers that decode strictly pass False."""
    spec = _spec(columns)
    expected = spec.expected
    unknown = [name for name in data if name not in expected]
    if unknown:
        raise RequestError(
            f"unknown column(s) {unknown} in {where}; the model expects {expected_columns(columns)}"
        )
    missing = [name for name in spec.required if name not in data]
    if missing:
        raise RequestError(f"missing column(s) {missing} in {where}")
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        sizes = {name: len(v) for name, v in data.items()}
        raise RequestError(f"columns of different lengths in {where}: {sizes}")
    n = lengths.pop()
    if n == 0:
        raise RequestError(f"no rows in {where}")
    # Columns whose values pass as they are skip check_values (a loop here, not a call per
    # column); the others, checked in column order, raise what check_values raises.
    strings, numbers = spec.strings, spec.numbers
    checked: dict[str, Sequence[Any]] = {}
    for col in columns:
        name = col.name
        values = data.get(name)
        if values is None:
            continue
        if name in strings:
            for v in values:
                if type(v) is not str and v is not None:
                    values = check_values(col, values, where)
                    break
        elif name in numbers:
            for v in values:
                t = type(v)
                if t is float:
                    if v - v != 0.0 and v == v:  # infinite (NaN is a missing value)
                        values = check_values(col, values, where)
                        break
                elif t is int:
                    if not -_BIG_INT < v < _BIG_INT:
                        values = check_values(col, values, where)
                        break
                elif v is not None:
                    values = check_values(col, values, where)
                    break
        else:
            values = check_values(col, values, where)
        checked[name] = values
    if check_text:
        for name, values in checked.items():
            _check_text(name, values, where)
    return _batch(checked, numbers, spec.entity)


def _check_text(name: str, values: Sequence[Any], where: str) -> None:
    """A RequestError naming the column and row of the first text UTF-8 cannot encode."""
    for i, v in enumerate(values):
        if type(v) is str and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RequestError(
                    f"column {name!r}: text that cannot be encoded as UTF-8 (a lone "
                    f"surrogate {v[exc.start]!r} at character {exc.start}) in row {i} "
                    f"({where}); send valid Unicode text"
                ) from None


# Plain decimals of at most 15 digits: float() and pandas.to_numeric agree on these (an
# exact integer mantissa below 2**53 scaled by an exact power of ten, rounded once), while
# to_numeric is not correctly rounded for longer ones. Anything else goes through pandas.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def text_to_float(values: list[Any]) -> np.ndarray:
    """RawColumnCoercer's numbers from text (strip, to_numeric, errors → NaN), exactly."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if value is None:
            out[i] = math.nan
            continue
        text = value.strip()
        if not text:
            out[i] = math.nan
        elif (
            len(text) <= 17
            and _PLAIN_DECIMAL.fullmatch(text)
            and sum(c.isdigit() for c in text) <= 15
        ):
            out[i] = float(text)
        else:
            series = pd.Series(values, dtype=object).astype("string").str.strip()
            return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
    return out
