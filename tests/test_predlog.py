"""The prediction log: SQLite round trip, batched transactions, readers during writes,
windows, ground-truth joins, bad label files, and a server killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from mlfolio import predlog
from mlfolio.errors import DataValidationError
from mlfolio.serve import Column

from .conftest import CHURN_CSV
from .servers import register_models, split_body, start_server, stop_server, wait_for_rows

COLUMNS = [
    Column("tenure", "long"),
    Column("monthlycharges", "double"),
    Column("gender", "string"),
    Column("totalcharges", "string", numeric_text=True),
    Column("paperless", "boolean"),
    Column('odd "name"', "string"),
]


def batch(n: int, start: int = 0) -> dict[str, list]:
    return {
        "tenure": [start + i for i in range(n)],
        "monthlycharges": [None if i % 5 == 0 else 20.5 + i for i in range(n)],
        "gender": ["Female" if i % 2 else "Male" for i in range(n)],
        "totalcharges": [" " if i % 4 == 0 else f"{i * 10.25}" for i in range(n)],
        "paperless": [None if i % 3 == 0 else bool(i % 2) for i in range(n)],
        'odd "name"': [None] * n,
    }


def append(log: predlog.PredictionLog, n: int, request_id: str = "r", **kw) -> np.ndarray:
    scores = np.linspace(0.0, 1.0, n)
    log.append(
        batch(n),
        scores,
        request_id=request_id,
        model_name="m",
        model_version="3",
        variant=kw.pop("variant", "champion"),
        threshold=0.4,
        **kw,
    )
    return scores


# -- writing and reading -----------------------------------------------------------------
def test_round_trip_keeps_values_and_types(tmp_path):
    with predlog.PredictionLog(tmp_path, COLUMNS) as log:
        scores = append(log, 6, "req-1", entity_id=[f"c{i}" for i in range(5)] + [None])
        append(log, 2, "req-2", variant="challenger", shadow=True, rows=[4, 7], entity_id=7)
        assert log.flush(10)
    df = predlog.read(tmp_path)
    assert list(df.columns) == [*predlog.BASE_COLUMNS, *(c.name for c in COLUMNS)]
    assert len(df) == 6 and df["request_id"].eq("req-1").all()
    assert str(df["ts"].dt.tz) == "UTC"
    assert abs((datetime.now(UTC) - df["ts"].iloc[0]).total_seconds()) < 60
    assert df["row"].tolist() == list(range(6))
    assert df["entity_id"].tolist() == ["c0", "c1", "c2", "c3", "c4", None]
    np.testing.assert_array_equal(df["score"], scores)
    assert df["label"].tolist() == (scores >= 0.4).astype(int).tolist()
    assert (df["threshold"] == 0.4).all() and not df["shadow"].any()
    assert (df["model_name"] == "m").all() and (df["model_version"] == "3").all()
    assert df["tenure"].dtype == "Int64" and df["tenure"].tolist() == list(range(6))
    assert df["monthlycharges"].isna().tolist() == [True, False, False, False, False, True]
    assert df["gender"].dtype == object and df["gender"].iloc[1] == "Female"
    assert df["totalcharges"].tolist()[:2] == [" ", "10.25"]  # raw text, as sent
    assert df["paperless"].isna().tolist()[:4] == [True, False, False, True]
    assert df["paperless"].iloc[1] == 1.0 and df['odd "name"'].isna().all()
    shadow = predlog.read(tmp_path, include_shadow=True, variant="challenger")
    assert shadow["row"].tolist() == [4, 7] and shadow["shadow"].all()
    assert shadow["entity_id"].tolist() == ["7", "7"]


def test_batches_are_written_in_few_transactions(tmp_path):
    log = predlog.PredictionLog(tmp_path, COLUMNS, flush_rows=10_000, flush_seconds=0.3).start()
    for k in range(200):
        append(log, 5, f"r{k}")
    assert log.flush(10)
    assert log.stats()["rows_written"] == 1000
    assert log.stats()["transactions"] <= 3  # all 200 appends arrived within one interval
    log.flush_rows = 100
    for k in range(100):
        append(log, 5, f"s{k}")
    log.close()
    assert log.stats()["rows_written"] == 1500
    assert log.stats()["transactions"] <= 3 + 6
    con = sqlite3.connect(tmp_path / predlog.DB_NAME)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[1] for r in con.execute("PRAGMA index_list(predictions)")}
    assert indexes == {"predictions_ts"}  # windows are read by time; ids join in pandas
    con.close()


def test_full_queue_drops_and_counts_instead_of_growing(tmp_path, caplog):
    log = predlog.PredictionLog(tmp_path, COLUMNS, max_queued_rows=10)
    assert log.append(
        batch(8),
        np.zeros(8),
        request_id="a",
        model_name="m",
        model_version="1",
        variant="champion",
        threshold=0.5,
    )
    assert not log.append(
        batch(5),
        np.zeros(5),
        request_id="b",
        model_name="m",
        model_version="1",
        variant="champion",
        threshold=0.5,
    )
    assert log.stats()["rows_dropped"] == 5 and "dropping" in caplog.text
    log.start()
    log.close()
    assert log.stats()["rows_written"] == 8 and len(predlog.read(tmp_path)) == 8


def test_reading_while_the_writer_commits(tmp_path):
    log = predlog.PredictionLog(tmp_path, COLUMNS, flush_rows=50, flush_seconds=0.01).start()
    stop = threading.Event()

    def write() -> None:
        k = 0
        while not stop.is_set():
            append(log, 10, f"w{k}")
            k += 1
            time.sleep(0.001)

    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            df = predlog.read(tmp_path)
            assert len(df) % 10 == 0  # whole appends only: a commit is all or nothing
            assert df.groupby("request_id").size().eq(10).all()
            seen.append(len(df))
    finally:
        stop.set()
        writer.join()
        log.close()
    assert len(set(seen)) > 3 and seen == sorted(seen)


def test_window_variant_and_shadow_filters(tmp_path):
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with predlog.PredictionLog(tmp_path, COLUMNS) as log:
        for day in range(5):
            append(
                log,
                2,
                f"d{day}",
                ts=(t0 + timedelta(days=day)).timestamp(),
                variant="challenger" if day == 4 else "champion",
                shadow=day == 3,
            )
    ids = lambda df: sorted(set(df["request_id"]))  # noqa: E731
    assert ids(predlog.read(tmp_path)) == ["d0", "d1", "d2", "d4"]
    assert ids(predlog.read(tmp_path, include_shadow=True)) == ["d0", "d1", "d2", "d3", "d4"]
    window = predlog.read(
        tmp_path, since=t0 + timedelta(days=1), until=t0 + timedelta(days=3), include_shadow=True
    )
    assert ids(window) == ["d1", "d2"]
    naive = predlog.read(tmp_path, since=datetime(2026, 11, 2), until=datetime(2026, 11, 3))
    assert ids(naive) == ["d1"]  # naive datetimes are UTC
    assert ids(predlog.read(tmp_path, variant="challenger")) == ["d4"]
    assert predlog.read(tmp_path, since=t0 + timedelta(days=30)).empty
    # count() agrees with read() without reading the rows
    for kwargs in (
        {},
        {"include_shadow": True},
        {"variant": "challenger"},
        {"since": t0 + timedelta(days=1), "until": t0 + timedelta(days=3), "include_shadow": True},
        {"since": t0 + timedelta(days=30)},
    ):
        assert predlog.count(tmp_path, **kwargs) == len(predlog.read(tmp_path, **kwargs))
    assert predlog.count(tmp_path / "nowhere") == 0


def test_missing_log_names_the_path(tmp_path):
    with pytest.raises(DataValidationError, match=str(tmp_path / "nowhere")):
        predlog.read(tmp_path / "nowhere")


def test_a_new_input_column_is_added_to_an_existing_log(tmp_path):
    with predlog.PredictionLog(tmp_path, COLUMNS[:2]) as log:
        append(log, 3, "old")
    with predlog.PredictionLog(tmp_path, COLUMNS) as log:
        append(log, 3, "new")
    df = predlog.read(tmp_path)
    assert df.loc[df["request_id"] == "old", "gender"].isna().all()
    assert df.loc[df["request_id"] == "new", "gender"].notna().all()


def test_an_input_named_like_a_log_column_is_refused(tmp_path):
    with pytest.raises(DataValidationError, match="score"):
        predlog.PredictionLog(tmp_path, [Column("score", "double")])


# -- ground truth -------------------------------------------------------------------------
@pytest.fixture
def logged(tmp_path) -> pd.DataFrame:
    with predlog.PredictionLog(tmp_path / "log", COLUMNS) as log:
        append(log, 3, "r1", entity_id=["a", "b", "c"])
        append(log, 2, "r2", entity_id=["a", "d"])
    return predlog.read(tmp_path / "log")


def test_labels_join_by_request_id_and_row(tmp_path, logged):
    path = tmp_path / "labels.csv"
    pd.DataFrame(
        {"request_id": ["r1", "r1", "r2"], "row": [0, 2, 1], "churn": ["Yes", "No", "1"]}
    ).to_csv(path, index=False)
    labels = predlog.read_labels(path, "churn", "Yes", "No")
    joined = predlog.join_labels(logged, labels)
    assert joined["actual"].fillna(-1).tolist() == [1.0, -1, 0.0, -1, 1.0]
    assert list(joined.columns[:-1]) == list(logged.columns)
    # one label per request covers all its rows
    pd.DataFrame({"request_id": ["r2"], "churn": [0]}).to_parquet(tmp_path / "l.parquet")
    whole = predlog.join_labels(
        logged, predlog.read_labels(tmp_path / "l.parquet", "churn", "Yes", "No")
    )
    assert whole["actual"].fillna(-1).tolist() == [-1, -1, -1, 0.0, 0.0]


def test_labels_join_by_entity_latest_label_wins(tmp_path, logged):
    path = tmp_path / "outcomes.csv"
    pd.DataFrame(
        {
            "customerid": ["a", "b", "a", "zz"],
            "labelled_at": ["2026-11-03", "2026-11-01", "2026-11-02", "2026-11-01"],
            "churn": ["Yes", "No", "No", "Yes"],
        }
    ).to_csv(path, index=False)
    labels = predlog.read_labels(path, "churn", "Yes", "No", id_column="customerid")
    assert "entity_id" in labels.columns
    joined = predlog.join_labels(logged, labels)
    # a: the 2026-11-03 label (1) although it comes first in the file; c, d: unlabelled
    assert joined["actual"].fillna(-1).tolist() == [1.0, 0.0, -1, 1.0, -1]
    # without a time column the last label in the file wins
    pd.DataFrame({"entity_id": ["a", "a"], "churn": [1, 0]}).to_csv(path, index=False)
    joined = predlog.join_labels(
        logged, predlog.read_labels(path, "churn", "Yes", "No"), on="entity_id"
    )
    assert joined["actual"].fillna(-1).tolist() == [0.0, -1, -1, 0.0, -1]


def test_an_id_labelled_twice_with_different_outcomes_warns_with_the_count(tmp_path, caplog):
    real = pd.read_csv(CHURN_CSV).head(50)[["customerid", "churn"]]
    flipped = real.head(3).assign(churn=real.head(3)["churn"].map({"Yes": "No", "No": "Yes"}))
    again = real.iloc[10:14]  # listed twice with the same outcome: nothing to warn about
    path = tmp_path / "outcomes.csv"
    pd.concat([real, flipped, again]).to_csv(path, index=False)
    with caplog.at_level("WARNING", logger="mlfolio.predlog"):
        labels = predlog.read_labels(path, "churn", "Yes", "No", id_column="customerid")
    assert len(labels) == 57
    (record,) = [r for r in caplog.records if r.name == "mlfolio.predlog"]
    msg = record.getMessage()
    assert str(path) in msg
    assert "3 id(s) listed more than once with different outcomes" in msg
    assert "customerid" in msg and real.loc[0, "customerid"] in msg
    assert "the last in the file is used" in msg
    caplog.clear()
    # with a time column, the entity's latest label is the one join_labels uses
    pd.concat([real.assign(ts="2026-11-02"), flipped.assign(ts="2026-11-01")]).to_csv(
        path, index=False
    )
    with caplog.at_level("WARNING", logger="mlfolio.predlog"):
        predlog.read_labels(path, "churn", "Yes", "No", id_column="customerid")
    (record,) = [r for r in caplog.records if r.name == "mlfolio.predlog"]
    assert "3 id(s) listed more than once" in record.getMessage()
    assert "the latest by 'ts' is used" in record.getMessage()
    caplog.clear()
    # by request id and row: r1 row 0 twice, differently; r1 row 1 is another id
    pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r1", "r2"],
            "row": [0, 0, 1, 0],
            "churn": ["Yes", "No", "No", "No"],
        }
    ).to_csv(path, index=False)
    with caplog.at_level("WARNING", logger="mlfolio.predlog"):
        predlog.read_labels(path, "churn", "Yes", "No")
    (record,) = [r for r in caplog.records if r.name == "mlfolio.predlog"]
    assert "1 id(s) listed more than once with different outcomes" in record.getMessage()
    assert "request_id ['r1']" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="mlfolio.predlog"):  # same outcome twice: silent
        pd.concat([real, again]).to_csv(path, index=False)
        predlog.read_labels(path, "churn", "Yes", "No", id_column="customerid")
    assert not [r for r in caplog.records if r.name == "mlfolio.predlog"]


@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"customer": ["a"], "churn": ["Yes"]}), "no id column.*request_id"),
        (pd.DataFrame({"request_id": ["r1"], "outcome": ["Yes"]}), "no column 'churn'"),
        (
            pd.DataFrame({"request_id": ["r1", "r2"], "churn": ["Yes", "maybe"]}),
            r"column 'churn' has value\(s\) \['maybe'\]; expected 'Yes'/'No' or 1/0",
        ),
        (pd.DataFrame({"request_id": [], "churn": []}), "no rows"),
    ],
)
def test_bad_label_files_name_the_file_and_column(tmp_path, frame, match):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=match) as err:
        predlog.read_labels(path, "churn", "Yes", "No")
    assert str(path) in str(err.value)


def test_unreadable_label_files(tmp_path):
    with pytest.raises(DataValidationError, match="no such file"):
        predlog.read_labels(tmp_path / "none.csv", "churn", "Yes", "No")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="empty.csv"):
        predlog.read_labels(tmp_path / "empty.csv", "churn", "Yes", "No")
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataValidationError, match=r"\.csv or \.parquet"):
        predlog.read_labels(tmp_path / "labels.json", "churn", "Yes", "No")


# -- a real server: SIGTERM flushes, SIGKILL keeps what was committed ----------------------
@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    return register_models(tmp_path_factory.mktemp("predlog"), name="churn-predlog-test")


def _score(client: httpx.Client, df: pd.DataFrame, request_id: str, entity: str) -> float:
    resp = client.post(
        "/invocations", json=split_body(df, [entity]), headers={"X-Request-ID": request_id}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["predictions"][0][1]


def test_sigterm_flushes_the_log(registered, tmp_path):
    folder = tmp_path / "log"
    server = start_server(
        registered,
        "--prediction-log",
        str(folder),
        "--entity-column",
        "customerid",
        name="churn-predlog-test",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(40):
                _score(c, registered.X.iloc[i : i + 1], f"t{i}", registered.ids[i])
    finally:
        stop_server(server.proc)  # SIGTERM right after the last answer
    assert len(predlog.read(folder)) == 40


def test_log_survives_kill_9_with_earlier_rows_intact(registered, tmp_path):
    folder = tmp_path / "log"
    server = start_server(
        registered,
        "--prediction-log",
        str(folder),
        "--entity-column",
        "customerid",
        name="churn-predlog-test",
    )
    X, ids = registered.X, registered.ids
    answered: dict[str, float] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for rnd in range(3):
                for i in range(100):
                    k = rnd * 100 + i
                    answered[f"k{k:04d}"] = _score(c, X.iloc[k : k + 1], f"k{k:04d}", ids[k])
                time.sleep(0.7)  # longer than flush_seconds
                wait_for_rows(folder, len(answered))
            flushed = predlog.read(folder)
            burst = []
            for k in range(300, 400):
                burst.append(f"k{k:04d}")
                answered[burst[-1]] = _score(c, X.iloc[k : k + 1], burst[-1], ids[k])
                if k == 349:  # half the burst committed, the other half still queued
                    wait_for_rows(folder, 350)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        stop_server(server.proc)

    con = sqlite3.connect(folder / predlog.DB_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    after = predlog.read(folder)
    assert not after.duplicated(["request_id", "row"]).any()
    assert len(flushed) == 300
    before = after[after["request_id"].isin(set(flushed["request_id"]))]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), flushed)
    for request_id, score in zip(after["request_id"], after["score"], strict=True):
        assert score == answered[request_id]
    assert (after["entity_id"] == ids[after["request_id"].str[1:].astype(int)].values).all()
    kept = [r for r in burst if r in set(after["request_id"])]
    assert kept == burst[: len(kept)]  # only a tail (the unflushed batch) is missing
    assert len(kept) >= 50
    print(f"kill -9: {len(burst) - len(kept)} of {len(burst)} burst rows were not yet flushed")
