"""The prediction log: every row the model server scores, durably, in one SQLite file.

``mlfolio serve --prediction-log DIR`` hands each scored batch to :class:`PredictionLog`
(``writer``: a writer thread commits what has queued up as one transaction into
``DIR/predictions.sqlite``, SQLite in WAL mode, so ``kill -9`` loses at most the batch not
yet committed). ``reader``: :func:`read` and :func:`count` return a window of it,
:func:`request_times` when each request came; ``labels``: :func:`read_labels` and
:func:`join_labels` attach ground truth that arrives later, by request id or entity id.
"""

from mlfolio.predlog.labels import join_labels, read_labels
from mlfolio.predlog.reader import count, read, request_times
from mlfolio.predlog.writer import (
    BASE_COLUMNS,
    DB_NAME,
    MAX_QUEUED_ROWS,
    ColumnLike,
    PredictionLog,
    db_path,
)

__all__ = [
    "BASE_COLUMNS",
    "ColumnLike",
    "DB_NAME",
    "MAX_QUEUED_ROWS",
    "PredictionLog",
    "count",
    "db_path",
    "join_labels",
    "read",
    "read_labels",
    "request_times",
]
