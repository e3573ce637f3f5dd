"""Splitting and the feature transformer that travels inside the model pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, rowkeys, views

from .conftest import CHURN_PARAMS


@pytest.fixture(scope="module")
def cfg():
    return config.load(CHURN_PARAMS)


@pytest.fixture(scope="module")
def churn(cfg):
    return data.validate(data.load_source(cfg.data), cfg.schema)


def test_seeded_split_is_stratified_disjoint_and_seeded(cfg, churn):
    seeded = cfg.split.model_copy(update={"method": "seeded"})
    parts = features.split(churn, cfg.schema, seeded, seed=1)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"train": 2400, "valid": 800, "test": 800}
    ids = [set(p["customerid"]) for p in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    rates = features.split_summary(parts, cfg.schema)["positive_rate"]
    assert rates.max() - rates.min() < 0.01
    again = features.split(churn, cfg.schema, seeded, seed=1)
    pd.testing.assert_frame_equal(parts["test"], again["test"])
    other = features.split(churn, cfg.schema, seeded, seed=2)
    assert set(other["test"]["customerid"]) != set(parts["test"]["customerid"])


def test_seeded_split_draws_the_rows_train_test_split_draws_of_the_frame(cfg, churn):
    """split (positions drawn, then taken) gives the parts train_test_split gives when
    handed the rows themselves: test, then valid out of the rest, stratified."""
    from sklearn.model_selection import train_test_split

    seeded = cfg.split.model_copy(update={"method": "seeded"})
    frame = churn.sample(frac=1, random_state=5)  # labels out of order: positions != labels
    y = data.target_vector(frame, cfg.schema)
    rest, test = train_test_split(frame, test_size=0.2, stratify=y, random_state=7)
    train, valid = train_test_split(
        rest, test_size=0.25, stratify=y.loc[rest.index], random_state=7
    )
    parts = features.split(frame, cfg.schema, seeded, seed=7)
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        pd.testing.assert_frame_equal(parts[name], part.reset_index(drop=True))


def _split_of(parts: dict[str, pd.DataFrame], column: str = "customerid") -> dict[str, str]:
    return {key: name for name, part in parts.items() for key in part[column]}


def test_hash_split_is_the_default_disjoint_deterministic_and_ignores_the_seed(cfg, churn):
    assert cfg.split.method == "hash"
    parts = features.split(churn, cfg.schema, cfg.split, seed=1)
    assert sum(len(p) for p in parts.values()) == len(churn)
    ids = [set(p["customerid"]) for p in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = features.split(churn, cfg.schema, cfg.split, seed=2)
    for name in parts:
        pd.testing.assert_frame_equal(parts[name], again[name])
    # the rows' order in the source does not matter either
    shuffled = features.split(churn.sample(frac=1, random_state=3), cfg.schema, cfg.split, 1)
    for name in parts:
        pd.testing.assert_frame_equal(parts[name], shuffled[name])


def test_hash_split_gives_each_class_the_configured_shares(cfg, churn):
    for test_size, valid_size in ((0.2, 0.2), (0.1, 0.3)):
        split_cfg = cfg.split.model_copy(update={"test_size": test_size, "valid_size": valid_size})
        parts = features.split(churn, cfg.schema, split_cfg, seed=0)
        y = data.target_vector(churn, cfg.schema)
        for label in (0, 1):
            total = int((y == label).sum())
            for name, size in (("test", test_size), ("valid", valid_size)):
                share = (data.target_vector(parts[name], cfg.schema) == label).sum() / total
                # binomial noise: within 3 standard deviations of the configured share
                assert abs(share - size) < 3 * np.sqrt(size * (1 - size) / total), (
                    label,
                    name,
                    share,
                )


def test_appending_rows_never_moves_a_row_between_splits(cfg, churn):
    """What a retraining on newly labelled rows does to the data: old rows stay put, an
    updated row (same id, new values) keeps its id's split, new rows land anywhere."""
    first, rest = churn.iloc[:3000], churn.iloc[3000:]
    before = _split_of(features.split(first, cfg.schema, cfg.split, seed=42))
    changed = first.iloc[:500].assign(monthlycharges=lambda d: d["monthlycharges"] * 1.4 + 10)
    grown = pd.concat([first.iloc[500:], changed, rest], ignore_index=True)
    after = _split_of(features.split(grown, cfg.schema, cfg.split, seed=42))
    moved = [key for key, name in before.items() if after[key] != name]
    assert moved == []
    assert len(after) == len(churn)


def test_hash_split_without_an_id_column_hashes_the_row_content(cfg, churn):
    schema = cfg.schema.model_copy(update={"id_column": None})
    rows = churn.drop(columns=["customerid"]).assign(row=range(len(churn)))
    parts = features.split(rows, schema, cfg.split, seed=0)
    before = _split_of(parts, "row")
    assert {len(p) for p in parts.values()} != {0} and len(before) == len(rows)
    # the same rows read back with other types (0/1 as floats, numbers as text-free
    # floats) and more rows appended: every row keeps its split
    retyped = rows.assign(
        seniorcitizen=rows["seniorcitizen"].astype(float), tenure=rows["tenure"].astype(float)
    )
    extra = rows.head(300).assign(
        tenure=lambda d: d["tenure"] + 1000, row=lambda d: d["row"] + 10**6
    )
    grown = pd.concat([extra, retyped], ignore_index=True)
    after = _split_of(features.split(grown, schema, cfg.split, seed=0), "row")
    assert all(after[key] == name for key, name in before.items())
    # a row's values decide: a changed row may move, an identical copy goes with it
    keys = rowkeys.row_keys(rows, schema)
    assert len(np.unique(keys)) == len(rows.drop(columns="row").drop_duplicates())


def test_pipeline_takes_raw_rows_with_blanks_and_mixed_types(cfg, churn):
    X, y = features.xy(churn, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=2000))
    model.fit(X, y)
    raw = X.head(3).copy()
    raw["totalcharges"] = [" ", "", "123.4"]  # blanks, as new customers have
    raw["seniorcitizen"] = ["1", "0", "1"]  # text instead of int
    p = model.predict_proba(raw)[:, 1]
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    unseen = X.head(1).copy()
    unseen["contract"] = "Ten year"  # an unseen category is ignored, not an error
    assert model.predict_proba(unseen).shape == (1, 2)


def test_coercer_types(cfg):
    df = pd.DataFrame(
        {
            "tenure": [1, 2],
            "monthlycharges": [1.0, None],
            "totalcharges": [" ", "5.5"],
            **{c: ["a", None] for c in cfg.schema.categorical},
        }
    )
    out = (
        features.RawColumnCoercer(list(cfg.schema.numeric), list(cfg.schema.categorical))
        .fit(df)
        .transform(df)
    )
    assert out["totalcharges"].isna().tolist() == [True, False]
    assert out["gender"].tolist() == ["a", features.MISSING_CATEGORY]


def test_profile_and_plot(cfg, churn):
    prof = views.profile(churn, cfg.schema)
    assert prof.loc["totalcharges", "missing"] > 0  # the blanks are reported
    assert prof.loc["contract", "kind"] == "categorical"
    fig = views.plot_features(churn, cfg.schema)
    assert len([a for a in fig.axes if a.has_data()]) == 3 + 16  # every feature


def test_blank_numbers_are_missing_and_flags_read_alike_in_training_and_serving(cfg, churn):
    X, y = features.xy(churn, cfg.schema)
    train = X.head(1500).astype({"seniorcitizen": float})  # as pandas holds a flag with a gap
    train.loc[0, "seniorcitizen"] = np.nan
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=2000))
    model.fit(train, y.head(1500))
    enc = model.named_steps["features"].named_steps["columns"].named_transformers_["cat"]
    flags = enc.categories_[cfg.schema.categorical.index("seniorcitizen")].tolist()
    assert flags == ["0", "1", features.MISSING_CATEGORY]
    # serving: the same flag as an int, a float, text; a blank number in any whitespace
    row = (
        X.iloc[[5] * 7]
        .reset_index(drop=True)
        .astype({"seniorcitizen": object, "totalcharges": object})
    )
    row["seniorcitizen"] = [1, 1.0, "1", 1, 1, 1, 1]
    row.loc[3:, "totalcharges"] = [" ", "\t", "", np.nan]
    p = model.predict_proba(row)[:, 1]
    assert p[0] == p[1] == p[2]
    assert p[3] == p[4] == p[5] == p[6] != p[0]


def test_pipelines_fitted_before_flags_were_read_as_ints_keep_their_reading(cfg):
    df = pd.DataFrame(
        {
            "tenure": [1.0],
            "monthlycharges": [1.0],
            "totalcharges": [1.0],
            **{c: [0.0] for c in cfg.schema.categorical},
        }
    )
    coercer = features.RawColumnCoercer(list(cfg.schema.numeric), list(cfg.schema.categorical)).fit(
        df
    )
    assert coercer.transform(df)["seniorcitizen"].tolist() == ["0"]
    del coercer.whole_floats_as_ints_  # as unpickled from an older mlfolio
    assert coercer.transform(df)["seniorcitizen"].tolist() == ["0.0"]


def _category_text_per_row(values: pd.Series, whole_as_int: bool) -> pd.Series:
    """The categorical reading, one Python call per row (what the coercer computes)."""
    present = values.notna()
    floats = values.dtype.kind == "f" or values.dtype == object
    values = values.astype(object)
    if whole_as_int and floats:
        values = pd.Series(
            [features._whole_float_as_int(v) for v in values], index=values.index, dtype=object
        )
    return values.where(present, features.MISSING_CATEGORY).astype(str)


CATEGORY_COLUMNS = {
    "text": pd.Series(["Yes", "No", None, "No", np.nan], dtype=object),
    "text, none missing": pd.Series(["a", "b", "a", "c", "b"], dtype=object),
    "float flags": pd.Series([0.0, 1.0, np.nan, 1.0, -0.0]),
    "float32 with fractions": pd.Series(np.array([0.1, 2.0, np.nan, 2.5, 0.1], np.float32)),
    "big floats": pd.Series([1e20, 3.0, 1e300, np.nan, 2.5]),
    "ints": pd.Series([0, 1, 1, 0, 2]),
    "bools": pd.Series([True, False, True, True, False]),
    "mixed objects": pd.Series([1.0, "1", True, 1, None], dtype=object),
    "pandas strings": pd.Series(["a", None, "b", "a", "c"], dtype="string"),
    "categories": pd.Series(pd.Categorical(["b", None, "a", "b", "c"], categories=["c", "b", "a"])),
    "number categories": pd.Series(pd.Categorical([1.0, None, 2.0, 1.0, 0.0])),
    "all missing": pd.Series([None] * 5, dtype=object),
}


@pytest.mark.parametrize("whole_as_int", [True, False])
@pytest.mark.parametrize("name", list(CATEGORY_COLUMNS))
def test_category_reading_equals_the_per_row_reading(name, whole_as_int):
    values = CATEGORY_COLUMNS[name]
    got = features._category_text(values, whole_as_int)
    want = _category_text_per_row(values, whole_as_int)
    assert got.tolist() == want.tolist()
    assert all(type(v) is str for v in got)
    assert got.index.equals(values.index)


def test_category_reading_converts_once_per_distinct_value_not_per_row(monkeypatch):
    """A million-row text or float column costs no Python call per row."""
    calls = []
    original = features._whole_float_as_int
    monkeypatch.setattr(features, "_whole_float_as_int", lambda v: calls.append(v) or original(v))
    rows = 100_000
    flags = pd.Series(np.resize([0.0, 1.0, np.nan], rows))
    text = pd.Series(np.resize(np.array(["Yes", "No", None], dtype=object), rows))
    assert features._category_text(flags, True).value_counts().to_dict() == {
        "0": 33_334,
        "1": 33_333,
        features.MISSING_CATEGORY: 33_333,
    }
    assert features._category_text(text, True).eq("Yes").sum() == 33_334
    assert len(calls) == 2  # the two distinct floats


def _text_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    levels = np.array([f"level {i}" for i in range(40)] + ["Zed", "alpha", "é", ""], dtype=object)
    p = rng.dirichlet(np.ones(len(levels)))
    return pd.DataFrame(
        {
            "wide": rng.choice(levels, size=rows, p=p),
            "flag": rng.choice(np.array(["Yes", "No"], dtype=object), size=rows),
        }
    )


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_categories": 100}, {"max_categories": 5}, {"min_frequency": 0.03}],
)
def test_text_one_hot_encoder_equals_scikit_learns(settings):
    """Levels, counts (which levels are infrequent), outputs and unknown levels in serving
    as scikit-learn's OneHotEncoder has them, on inputs large enough to be hashed."""
    from sklearn.preprocessing import OneHotEncoder

    train, later = _text_frame(5000), _text_frame(3000, seed=1)
    later.loc[:9, "wide"] = "never seen"
    later.loc[10:19, "flag"] = None
    for handle_unknown in ("infrequent_if_exist", "ignore"):
        kw = {"handle_unknown": handle_unknown, "sparse_output": False, **settings}
        ours = features.TextOneHotEncoder(**kw).fit(train)
        theirs = OneHotEncoder(**kw).fit(train)
        for a, b in zip(ours.categories_, theirs.categories_, strict=True):
            assert a.dtype == b.dtype and a.tolist() == b.tolist()
        assert ours.get_feature_names_out().tolist() == theirs.get_feature_names_out().tolist()
        for rows in (train, later, later.head(5)):
            with warnings.catch_warnings(record=True) as ours_said:
                warnings.simplefilter("always")
                got = ours.transform(rows)
            with warnings.catch_warnings(record=True) as theirs_said:
                warnings.simplefilter("always")
                want = theirs.transform(rows)
            np.testing.assert_array_equal(got, want)
            assert [str(w.message) for w in ours_said] == [str(w.message) for w in theirs_said]


def test_text_one_hot_encoder_falls_back_for_missing_or_mixed_levels():
    from sklearn.preprocessing import OneHotEncoder

    for column in (
        pd.Series(["a", None, "b"] * 500, dtype=object),
        pd.Series([1, 2, 2] * 500),
        pd.Series(["a", 1, "b"] * 500, dtype=object),
    ):
        frame = pd.DataFrame({"c": column})
        try:
            want = OneHotEncoder(sparse_output=False).fit_transform(frame)
        except TypeError as exc:
            with pytest.raises(TypeError, match=str(exc)[:40]):
                features.TextOneHotEncoder(sparse_output=False).fit(frame)
            continue
        got = features.TextOneHotEncoder(sparse_output=False).fit_transform(frame)
        np.testing.assert_array_equal(got, want)


def test_text_one_hot_encoder_unknown_level_fails_as_scikit_learns():
    train = _text_frame(2000)
    later = train.copy()
    later.loc[3, "flag"] = "Maybe"
    enc = features.TextOneHotEncoder(handle_unknown="error").fit(train)
    with pytest.raises(ValueError, match=r"Found unknown categories \['Maybe'\] in column 1"):
        enc.transform(later)
