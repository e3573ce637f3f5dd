"""Scorers: through the fitted pipeline, or compiled to NumPy operations after a check, value
for value, that the compiled features are the pipeline's (:func:`verify`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlfolio.errors import NotCompilable, RequestError
from mlfolio.features import MISSING_CATEGORY, RawColumnCoercer
from mlfolio.serve.columns import Batch, Column, ColumnKind, describe, text_to_float
from mlfolio.serve.trees import XGBoostTrees


class Scorer(Protocol):
    """What the micro-batcher scores a :class:`~mlfolio.serve.columns.Batch` with: the
    positive and negative class probabilities, shape (n, 2). ``name`` is what ``/health``
    reports; ``inline_rows`` (optional) the batch size still scored on the event loop."""

    name: str

    def predict_proba(self, batch: Batch) -> np.ndarray: ...


def _float_column(col: Column, values: tuple[Any, ...]) -> np.ndarray | tuple[Any, ...]:
    """A numeric feature as RawColumnCoercer makes it: floats, missing as NaN (NumPy reads
    None as NaN when it fills a float64 column)."""
    if col.kind is ColumnKind.STRING:
        return text_to_float(list(values))
    return values


def _category(value: Any) -> str:
    """A categorical value as RawColumnCoercer makes it: text, missing as __missing__."""
    if value is None or (type(value) is float and value != value):
        return MISSING_CATEGORY
    return str(value)


class PipelineScorer:
    """Scores through the fitted pipeline: one DataFrame per batch, column dtypes fixed by
    the signature so that a row's answer never depends on the rows batched with it."""

    name = "pipeline"

    def __init__(self, model: Any, columns: list[Column]):
        self.model = model
        self.columns = columns

    def frame(self, batch: Batch) -> pd.DataFrame:
        data: dict[str, np.ndarray] = {}
        for col in self.columns:
            values = batch.columns[col.name]
            if col.kind in (ColumnKind.LONG, ColumnKind.BOOLEAN):
                listed = values.tolist()
                if None not in listed:
                    values = np.array(
                        listed, dtype=np.int64 if col.kind is ColumnKind.LONG else np.bool_
                    )
            data[col.name] = values
        return pd.DataFrame(data)  # copies: the pipeline never sees the batch's arrays

    def predict_proba(self, batch: Batch) -> np.ndarray:
        return np.asarray(self.model.predict_proba(self.frame(batch)))


def pipeline_steps(obj: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if isinstance(obj, Pipeline):
        return [
            s
            for _, step in obj.steps
            if step not in (None, "passthrough")
            for s in pipeline_steps(step)
        ]
    return [obj]


class CompiledScorer:
    """mlfolio's feature pipeline as NumPy operations, then the estimator's predict_proba.

    Knows RawColumnCoercer → ColumnTransformer(numeric: SimpleImputer/StandardScaler steps,
    categorical: OneHotEncoder) → any estimator with ``predict_proba``; raises NotCompilable
    for anything else. The feature matrix is built with the same float64 operations the
    fitted transformers apply (:func:`verify` checks it), without pandas or sklearn's
    per-call validation; a binary LogisticRegression is applied the same way, any other
    estimator through its own ``predict_proba``: ~0.1 ms instead of ~9 ms for one row.
    """

    name = "compiled"
    # Batches up to this many rows are scored on the event loop (~25 µs a row, ~0.3 ms at
    # 64), bigger ones on the scoring thread: see MicroBatcher.
    inline_rows = 64

    def __init__(self, model: Any, columns: list[Column]):
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        steps = pipeline_steps(model)
        if (
            len(steps) != 3
            or not isinstance(steps[0], RawColumnCoercer)
            or not isinstance(steps[1], ColumnTransformer)
            or not hasattr(steps[2], "predict_proba")
        ):
            raise NotCompilable("not RawColumnCoercer → ColumnTransformer → estimator")
        coercer, ct, self.estimator = steps
        if getattr(ct, "sparse_output_", False):
            raise NotCompilable("the ColumnTransformer's output is sparse")
        by_name = {c.name: c for c in columns}
        numeric, categorical = list(coercer.numeric or []), list(coercer.categorical or [])
        if any(c not in by_name for c in numeric + categorical):
            raise NotCompilable("the coercer reads columns the signature lacks")
        self.columns = columns
        self.width = max(s.stop for s in ct.output_indices_.values())
        # numeric parts: (columns, output slice, ops); one-hot parts: (columns, maps,
        # unknown level's output per column (the shared 'infrequent' one, or None), ignore)
        self.numeric_parts: list[tuple[list[Column], slice, list[tuple[str, Any, Any]]]] = []
        self.onehot_parts: list[
            tuple[list[Column], list[dict[str, int]], list[int | None], bool]
        ] = []
        covered = 0
        for name, trans, cols in ct.transformers_:
            out = ct.output_indices_[name]
            if (isinstance(trans, str) and trans == "drop") or out.start == out.stop:
                continue
            if (
                isinstance(trans, str)
                or not isinstance(cols, list)
                or not all(isinstance(c, str) for c in cols)
            ):
                raise NotCompilable(f"transformer {name!r}: {trans!r} on {cols!r}")
            sub = pipeline_steps(trans)
            if all(c in numeric for c in cols):
                ops: list[tuple[str, Any, Any]] = []
                for step in sub:
                    if isinstance(step, SimpleImputer):
                        mv = step.missing_values
                        if (
                            step.add_indicator
                            or not (isinstance(mv, float) and math.isnan(mv))
                            or not np.all(np.isfinite(step.statistics_))
                        ):
                            raise NotCompilable(f"transformer {name!r}: imputer settings")
                        ops.append(("impute", np.asarray(step.statistics_, np.float64), None))
                    elif isinstance(step, StandardScaler):
                        ops.append(
                            (
                                "scale",
                                step.mean_ if step.with_mean else None,
                                step.scale_ if step.with_std else None,
                            )
                        )
                    else:
                        raise NotCompilable(f"transformer {name!r}: {type(step).__name__}")
                if out.stop - out.start != len(cols):
                    raise NotCompilable(f"transformer {name!r}: output width")
                self.numeric_parts.append(([by_name[c] for c in cols], out, ops))
            elif (
                all(c in categorical for c in cols)
                and len(sub) == 1
                and isinstance(sub[0], OneHotEncoder)
            ):
                enc = sub[0]
                if (
                    enc.drop is not None
                    or np.dtype(enc.dtype) != np.float64
                    or enc.handle_unknown not in ("ignore", "infrequent_if_exist", "error")
                ):
                    raise NotCompilable(f"transformer {name!r}: encoder settings")
                # features.max_categories / min_frequency: a column's infrequent levels
                # (and, with infrequent_if_exist, its unknown ones) share its last output
                lumped = getattr(enc, "infrequent_categories_", None) or [None] * len(cols)
                maps, defaults, pos = [], [], out.start
                for cats, rare in zip(enc.categories_, lumped, strict=True):
                    if not all(type(c) is str for c in cats):
                        raise NotCompilable(f"transformer {name!r}: non-text categories")
                    rare = set(rare) if rare is not None else set()
                    frequent = [c for c in cats if c not in rare]
                    mapping = {c: pos + k for k, c in enumerate(frequent)}
                    pos += len(frequent)
                    default = None
                    if rare:
                        mapping.update(dict.fromkeys(rare, pos))
                        if enc.handle_unknown == "infrequent_if_exist":
                            default = pos
                        pos += 1
                    maps.append(mapping)
                    defaults.append(default)
                if pos != out.stop:
                    raise NotCompilable(f"transformer {name!r}: output width")
                self.onehot_parts.append(
                    ([by_name[c] for c in cols], maps, defaults, enc.handle_unknown != "error")
                )
            else:
                raise NotCompilable(f"transformer {name!r}: {type(trans).__name__} on {cols}")
            covered += out.stop - out.start
        if covered != self.width:
            raise NotCompilable("the transformers' outputs do not tile the feature matrix")
        self._trees: XGBoostTrees | None = None
        try:
            self._proba: Callable[[np.ndarray], np.ndarray] = _BinaryLogistic(
                self.estimator, self.width
            )
        except NotCompilable:
            self._proba = self.estimator.predict_proba
            try:  # a few rows through XGBoost's trees as arrays, more through XGBoost
                self._trees = XGBoostTrees(self.estimator, self.width)
            except NotCompilable:
                pass

    def transform(self, batch: Batch) -> np.ndarray:
        n, cols = batch.n, batch.values  # the checked tuples: no array per column
        Z = np.zeros((n, self.width), dtype=np.float64)
        for part_cols, out, ops in self.numeric_parts:
            X = np.empty((n, len(part_cols)), dtype=np.float64)
            for j, col in enumerate(part_cols):
                X[:, j] = _float_column(col, cols[col.name])
            if np.isinf(X).any():
                j = int(np.nonzero(np.isinf(X).any(axis=0))[0][0])
                raise RequestError(f"column {part_cols[j].name!r}: infinite value")
            for op, a, b in ops:
                if op == "impute":
                    mask = np.isnan(X)
                    if mask.any():
                        X[mask] = a[np.nonzero(mask)[1]]
                else:
                    if a is not None:
                        X -= a
                    if b is not None:
                        X /= b
            Z[:, out] = X
        rows: list[int] = []
        hits: list[int] = []
        every_row = range(n)
        for part_cols, maps, defaults, ignore in self.onehot_parts:
            for col, mapping, default in zip(part_cols, maps, defaults, strict=True):
                values = cols[col.name]
                found = list(map(mapping.get, values))  # text values: a C-speed lookup
                if None not in found:
                    rows.extend(every_row)
                    hits.extend(found)
                    continue
                # missing, non-text or unknown values: as RawColumnCoercer makes them
                for i, (value, k) in enumerate(zip(values, found, strict=True)):
                    if k is None:
                        k = mapping.get(_category(value), default)
                    if k is not None:
                        rows.append(i)
                        hits.append(k)
                    elif not ignore:
                        raise RequestError(
                            f"column {col.name!r}: unknown category {describe(value)} in row {i}"
                        )
        Z[rows, hits] = 1.0
        return Z

    def predict_proba(self, batch: Batch) -> np.ndarray:
        Z, trees = self.transform(batch), self._trees
        return trees(Z) if trees is not None and batch.n <= trees.max_rows else self._proba(Z)


class _BinaryLogistic:
    """``LogisticRegression.predict_proba`` of a binary model on a dense float64 matrix: the
    same three operations (``Z @ coef_.T + intercept_``, ``expit``, stack ``[1-p, p]``)
    without sklearn's per-call input validation (~0.2 ms a call)."""

    def __init__(self, estimator: Any, width: int):
        from scipy.special import expit
        from sklearn.linear_model import LogisticRegression

        coef = getattr(estimator, "coef_", None)
        if (
            type(estimator) is not LogisticRegression
            or len(estimator.classes_) != 2
            or not isinstance(coef, np.ndarray)
            or coef.shape != (1, width)
            or coef.dtype != np.float64
        ):
            raise NotCompilable("not a dense binary LogisticRegression")
        self.coef_t = coef.T
        self.intercept = np.asarray(estimator.intercept_)
        self.expit = expit

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        prob = (Z @ self.coef_t + self.intercept).reshape(-1)
        out = np.empty((len(prob), 2), dtype=np.float64)  # np.stack costs ~5 µs a call
        self.expit(prob, out=out[:, 1])
        np.subtract(1.0, out[:, 1], out=out[:, 0])
        return out


def _typed(col: Column, value: Any) -> Any:
    """A category string (or example value) as a value of the column's signature type."""
    if value is None:
        return None
    try:
        if col.kind is ColumnKind.LONG:
            return int(value)
        if col.kind is ColumnKind.DOUBLE:
            return float(value)
        if col.kind is ColumnKind.BOOLEAN:
            return {"True": True, "False": False}.get(str(value), bool(value))
    except (TypeError, ValueError):
        return None
    return str(value)


def probe_rows(
    columns: list[Column], scorer: CompiledScorer, example: pd.DataFrame | None
) -> dict[str, list[Any]]:
    """Rows that exercise the compiled path: the input example, then the first example row
    with every known category, an unseen category and a missing value put in each
    categorical column in turn, and missing/blank/extreme values in each numeric one."""
    base: dict[str, list[Any]] = {}
    if example is not None and len(example):
        for col in columns:
            values = (
                [
                    None if (isinstance(v, float) and math.isnan(v)) else _typed(col, v)
                    for v in example[col.name].tolist()
                ]
                if col.name in example
                else []
            )
            base[col.name] = values
    if not base or any(len(v) == 0 for v in base.values()):
        first = {c.name: None for c in columns}
        for part_cols, maps, _, _ in scorer.onehot_parts:
            for col, mapping in zip(part_cols, maps, strict=True):
                first[col.name] = _typed(col, next(iter(mapping), None))
        for part_cols, _, _ in scorer.numeric_parts:
            for col in part_cols:
                first[col.name] = "1" if col.kind is ColumnKind.STRING else _typed(col, 1)
        base = {name: [value] for name, value in first.items()}
    rows = {name: list(values) for name, values in base.items()}

    def add(name: str, value: Any) -> None:
        for other in rows:
            rows[other].append(value if other == name else base[other][0])

    for part_cols, maps, _, ignore in scorer.onehot_parts:
        for col, mapping in zip(part_cols, maps, strict=True):
            unseen = ["__unseen__"] if ignore and col.kind is ColumnKind.STRING else []
            for value in [*mapping, *unseen, None]:
                add(col.name, _typed(col, value) if value is not None else None)
    for part_cols, _, _ in scorer.numeric_parts:
        for col in part_cols:
            values = (
                ["", " ", " 7.25 ", "1234.5", "-0", "0.000123", "-3e2", "902.3209082836559", None]
                if col.kind is ColumnKind.STRING
                else [None, 0, -1, 1e6]
            )
            for value in values:
                add(col.name, _typed(col, value) if col.kind is not ColumnKind.STRING else value)
    return rows


def verify(
    compiled: CompiledScorer, reference: PipelineScorer, rows: dict[str, list[Any]]
) -> str | None:
    """None when the compiled scorer reproduces the pipeline exactly on ``rows``, else why."""
    batch = Batch.of(compiled.columns, rows)
    features = np.asarray(reference.model[:-1].transform(reference.frame(batch)), np.float64)
    mine = compiled.transform(batch)
    if features.shape != mine.shape or not np.array_equal(features, mine, equal_nan=True):
        diff = np.nanmax(np.abs(features - mine)) if features.shape == mine.shape else "shape"
        return f"compiled features differ from the pipeline's (max difference {diff})"
    expected = reference.predict_proba(batch)
    got = compiled.predict_proba(batch)
    if not np.array_equal(expected, got):
        return f"compiled probabilities differ (max {np.max(np.abs(expected - got))})"
    if compiled._trees is not None:  # the few-row path too: row by row
        single = np.concatenate([compiled.predict_proba(batch.take([i])) for i in range(batch.n)])
        if single.dtype != expected.dtype or not np.array_equal(expected, single):
            return (
                "the XGBoost trees as arrays differ from XGBoost "
                f"(max {np.max(np.abs(expected - single))})"
            )
    return None
