"""The options of ``mlfolio serve``: one frozen :class:`ServeOptions`, checked once, carried
from the CLI through :func:`~mlfolio.serve.server.serve` to
:func:`~mlfolio.serve.app.create_app`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mlfolio.errors import ServeError
from mlfolio.serve.contract import DEFAULT_HOST, DEFAULT_PORT, MAX_BODY_BYTES

MAX_BATCH_ROWS = 4096
# Request bodies being received or processed at once, in bytes: a parsed JSON body takes
# ~15x its size in Python objects (16 parallel 10 MB bodies reached 1.6 GB), so this is
# the server's memory bound for request data.
MAX_INFLIGHT_BYTES = 16 * 1024 * 1024
# Seconds a request body may go without a byte arriving (nginx's client_body_timeout
# measures the same gap): a client that announces a body and stalls gets 408.
BODY_TIMEOUT = 5.0


def routing_mode(
    challenger: str | None, challenger_weight: float | None, shadow: bool
) -> str | None:
    """``"ab"``, ``"shadow"`` or None (one model); a ServeError names the offending flag."""
    if challenger is None:
        if challenger_weight is not None:
            raise ServeError("--challenger-weight needs --challenger URI")
        if shadow:
            raise ServeError("--shadow needs --challenger URI")
        return None
    if challenger_weight is not None and shadow:
        raise ServeError(
            "--challenger-weight and --shadow exclude each other: A/B routing "
            "or shadow scoring, not both"
        )
    if shadow:
        return "shadow"
    if challenger_weight is None:
        raise ServeError(
            "--challenger needs --challenger-weight W (0 < W < 1, A/B routing) "
            "or --shadow (scored and logged, not answered)"
        )
    if not 0.0 < challenger_weight < 1.0 or math.isnan(challenger_weight):
        raise ServeError(
            f"--challenger-weight {challenger_weight:g}: expected a share strictly between 0 and 1"
        )
    return "ab"


@dataclass(frozen=True)
class ServeOptions:
    """What ``mlfolio serve`` was told (the CLI's flags); bad combinations of the A/B flags
    fail here, before any model is loaded. ``mode`` is ``"ab"``, ``"shadow"`` or None."""

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    tracking_uri: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch_rows: int = MAX_BATCH_ROWS
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    max_client_inflight_bytes: int | None = None  # default: half of max_inflight_bytes
    body_timeout: float = BODY_TIMEOUT
    scorer: str = "auto"
    access_log: bool = False
    challenger: str | None = None
    challenger_weight: float | None = None
    shadow: bool = False
    ab_salt: str | None = None
    entity_column: str | None = None  # default: the id column recorded with the model
    prediction_log: str | Path | None = None
    log_flush_seconds: float = 0.5
    log_flush_rows: int = 1000
    mode: str | None = field(init=False)

    def __post_init__(self) -> None:
        if not (0 < self.body_timeout < math.inf):
            raise ServeError(
                f"--body-timeout {self.body_timeout:g}: expected a positive number of seconds"
            )
        if self.max_client_inflight_bytes is not None and self.max_client_inflight_bytes < 1:
            raise ServeError(
                f"max_client_inflight_bytes {self.max_client_inflight_bytes}: expected a "
                "positive number of bytes"
            )
        object.__setattr__(
            self, "mode", routing_mode(self.challenger, self.challenger_weight, self.shadow)
        )
