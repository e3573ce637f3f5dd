"""The process: one :class:`ServeOptions`, the model (and challenger) loaded, uvicorn on a
socket bound before it starts."""

from __future__ import annotations

import gc
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlfolio.errors import ServeError
from mlfolio.serve.app import create_app
from mlfolio.serve.model import load
from mlfolio.serve.options import ServeOptions


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets
    # whose proto says TCP. Without it every keep-alive response stalls ~40 ms (Nagle's
    # algorithm waiting for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    # Listening before uvicorn starts serving: connections made once the "listening on"
    # line is printed wait in the backlog instead of being refused.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_uvicorn(app: Any, sock: socket.socket, *, access_log: bool = False) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT/SIGTERM, with the process settings
    and uvicorn options of ``mlfolio serve`` (benchmarks/serve_bench.py runs its no-op app
    through this too, so the two differ only in the app)."""
    import uvicorn

    # mlflow, pandas and sklearn leave ~330k objects behind; a full garbage collection walks
    # them all (~0.2 s here), stalling every request in flight. Freeze what exists now so the
    # collector only looks at objects made while serving.
    gc.collect()
    gc.freeze()
    # The scoring thread holds the GIL through NumPy/sklearn bookkeeping; a shorter switch
    # interval than the default 5 ms lets the event loop answer in between.
    sys.setswitchinterval(0.001)
    config = uvicorn.Config(
        app,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve(options: ServeOptions, echo: Callable[[str], None] | None = None) -> None:
    """Load the model (and the challenger), then serve with uvicorn until SIGINT/SIGTERM.

    ``port=0`` picks a free port; the ``listening on`` line (through ``echo``) names it.
    The prediction log is flushed and closed on shutdown (SIGTERM included). Bad flags
    failed when ``options`` was made, before anything is loaded.
    """
    started = time.perf_counter()
    o = options
    model = load(o.model, o.tracking_uri, o.scorer)
    second = load(o.challenger, o.tracking_uri, o.scorer) if o.challenger else None
    app = create_app(model, o, challenger=second, on_ready=lambda: ready())
    state = app.state.serving
    sock = bind(o.host, o.port)
    bound_host, bound_port = sock.getsockname()[:2]
    where = f"[{bound_host}]" if ":" in bound_host else bound_host

    def ready() -> None:
        if echo is None:
            return
        if second is not None:
            how = (
                f"weight {o.challenger_weight:g}, salt {state.router.salt!r}"
                if o.mode == "ab"
                else "shadow"
            )
            echo(
                f"challenger {second.uri} ({o.challenger}, scorer {second.scorer.name}, "
                f"threshold {second.threshold:g}): {how}"
            )
        if o.prediction_log is not None:
            echo(f"prediction log: {Path(o.prediction_log) / 'predictions.sqlite'}")
        echo(
            f"serving {model.uri} ({o.model}, scorer {model.scorer.name}, threshold "
            f"{model.threshold:g}) — listening on http://{where}:{bound_port} "
            f"(loaded in {time.perf_counter() - started:.1f}s)"
        )

    try:
        run_uvicorn(app, sock, access_log=o.access_log)
    finally:
        if state.predlog is not None:  # idempotent; covers a lifespan that never ended
            state.predlog.close()
