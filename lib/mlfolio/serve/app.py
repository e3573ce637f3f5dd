"""The FastAPI app: the state the routes share (:class:`AppState`), one endpoint class per
protocol (handlers are methods, as KServe's v1/v2 endpoints), the error handlers and the
middleware. :func:`create_app` only wires them together."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlfolio.errors import RequestError, ServeError
from mlfolio.predlog import PredictionLog
from mlfolio.serve.batching import MicroBatcher
from mlfolio.serve.columns import Batch, Column, ColumnKind
from mlfolio.serve.contract import (
    INVOCATIONS_PATH,
    LIVENESS_PATH,
    METRICS_PATH,
    READINESS_PATH,
    check_id,
    error_body,
)
from mlfolio.serve.gate import Gate, read_body, route_namer
from mlfolio.serve.metrics import AbCollector, DriftCollector, PredlogCollector, ServerMetrics
from mlfolio.serve.model import ServedModel
from mlfolio.serve.options import ServeOptions
from mlfolio.serve.protocols import dump_json
from mlfolio.serve.protocols.mlflow import parse_mlflow_json, predictions_doc
from mlfolio.serve.protocols.sagemaker import csv_answer, parse_csv
from mlfolio.serve.protocols.v2 import V2Request, parse_v2, v2_response
from mlfolio.serve.routing import Plan, Router, Routing, Scored

_PARSE_IN_THREAD_BYTES = 256 * 1024  # bigger bodies are parsed off the event loop
_V2_DATATYPES = {
    ColumnKind.LONG: "INT64",
    ColumnKind.DOUBLE: "FP64",
    ColumnKind.STRING: "BYTES",
    ColumnKind.BOOLEAN: "BOOL",
}


_SCORING_HEADERS = {b"content-type": 0, b"accept": 1, b"x-request-id": 2, b"x-entity-id": 3}


def _id_header(request: Request, name: str) -> str | None:
    return check_id(request.headers.get(name), name)


def _scoring_headers(request: Request) -> list[str | None]:
    """Content-Type, Accept, X-Request-ID and X-Entity-ID in one pass over the raw headers
    (the first of each, as Starlette's ``Headers.get`` reads them)."""
    found: list[str | None] = [None, None, None, None]
    for key, value in request.scope["headers"]:
        i = _SCORING_HEADERS.get(key)
        if i is not None and found[i] is None:
            found[i] = value.decode("latin-1")
    return found


def _request_id(request: Request) -> str:
    """The client's X-Request-ID, else a new one (see :func:`_keep_request_id`)."""
    return _keep_request_id(request, request.headers.get("X-Request-ID"))


def _keep_request_id(request: Request, given: str | None) -> str:
    """``given`` (the client's X-Request-ID), else a new id: 128 random bits as 32 hex
    digits, like a UUID4's hex (``random``, not ``uuid4``'s system call per request: an id
    needs to be unique, not secret). Kept in the scope for the error handler's header."""
    request_id = check_id(given, "X-Request-ID") or f"{random.getrandbits(128):032x}"
    request.scope["mlfolio.request_id"] = request_id
    return request_id


async def _parse(body: bytes, parser: Callable[..., Any], *args: Any) -> Any:
    if len(body) > _PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parser, body, *args)
    return parser(body, *args)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(dump_json(doc), status_code=status, media_type="application/json")


def _union_columns(model: ServedModel, challenger: ServedModel | None) -> list[Column]:
    """The columns a request must carry: the champion's, then any the challenger adds."""
    columns = list(model.columns)
    if challenger is None:
        return columns
    by_name = {c.name: c for c in columns}
    for col in challenger.columns:
        mine = by_name.get(col.name)
        if mine is None:
            columns.append(col)
        elif (mine.kind, mine.numeric_text) != (col.kind, col.numeric_text):
            raise ServeError(
                f"--challenger {challenger.requested_uri}: column {col.name!r} is "
                f"{col.kind} there and {mine.kind} in the champion"
            )
    return columns


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlfolio")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True, eq=False, kw_only=True)
class AppState:
    """What every route reads: the request columns, the router (and through it the
    batchers, the models and the prediction log), the metrics and the body limit."""

    model_columns: list[Column]  # the models' inputs
    columns: list[Column]  # what a request may carry: the inputs and the entity id
    router: Router
    metrics: ServerMetrics
    max_body_bytes: int

    @property
    def batchers(self) -> list[MicroBatcher]:
        router = self.router
        return (
            [router.champion] if router.challenger is None else [router.champion, router.challenger]
        )

    @property
    def batcher(self) -> MicroBatcher:
        return self.router.champion

    @property
    def model(self) -> ServedModel:
        return self.router.champion.model

    @property
    def challenger(self) -> ServedModel | None:
        return None if self.router.challenger is None else self.router.challenger.model

    @property
    def predlog(self) -> PredictionLog | None:
        return self.router.champion.predlog

    def plan(
        self, parser: Callable[..., Batch], request_id: str, header_entity: str | None
    ) -> Callable[..., Plan]:
        """``parser`` followed by the router's plan: one call, run off the event loop for
        big bodies."""

        def parse_and_route(body: bytes, *args: Any) -> Plan:
            return self.router.prepare(parser(body, *args), request_id, header_entity)

        return parse_and_route

    def answer_headers(self, request_id: str, scored: Scored) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if self.challenger is not None:
            headers["x-mlfolio-variant"] = scored.variant
        return headers


class ScoringEndpoints:
    """The MLflow scoring protocol and the SageMaker container contract: ``GET /ping`` and
    ``POST /invocations`` (JSON in MLflow's four formats, or CSV)."""

    def __init__(self, state: AppState):
        self.state = state

    def register(self, app: FastAPI) -> None:
        app.get(LIVENESS_PATH)(self.ping)
        app.post(INVOCATIONS_PATH)(self.invocations)

    async def ping(self) -> Response:
        return Response(b"\n", media_type="application/json")

    async def invocations(self, request: Request) -> Response:
        state = self.state
        content_type, accept, given_id, entity = _scoring_headers(request)
        request_id = _keep_request_id(request, given_id)
        content_type = content_type or ""
        mime, _, params = content_type.partition(";")
        mime = mime.strip().lower()
        charset = params.strip().lower().removeprefix("charset=").strip('"') or "utf-8"
        if mime not in ("application/json", "text/csv"):
            raise RequestError(
                f"Content-Type {content_type or '(none)'!r} is not supported: "
                "send application/json or text/csv",
                415,
            )
        if params.strip() and (
            not params.strip().lower().startswith("charset=") or charset not in ("utf-8", "utf8")
        ):
            raise RequestError(
                f"Content-Type {content_type!r}: only charset=utf-8 is supported", 415
            )
        body = await read_body(request, state.max_body_bytes)
        parser = parse_csv if mime == "text/csv" else parse_mlflow_json
        plan = await _parse(
            body, state.plan(parser, request_id, check_id(entity, "X-Entity-ID")), state.columns
        )
        scored = await state.router.score(plan)
        headers = state.answer_headers(request_id, scored)
        if "text/csv" in (accept or ""):
            return Response(
                csv_answer(scored.proba, scored.labels).encode(),
                media_type="text/csv",
                headers=headers,
            )
        doc = predictions_doc(
            scored.proba, scored.labels, scored.threshold, request_id, scored.variants
        )
        return Response(dump_json(doc), media_type="application/json", headers=headers)

    async def asgi_invocations(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """:meth:`invocations` as an ASGI app, for :class:`ServingApp`'s direct path: a
        RequestError becomes the same response as through FastAPI's exception handler."""
        request = Request(scope, receive)
        try:
            response = await self.invocations(request)
        except RequestError as exc:
            response = await _request_error(request, exc)
        await response(scope, receive, send)


class ServingApp(FastAPI):
    """FastAPI, with ``POST /invocations`` (the hot path) taken from the server straight to
    the :class:`Gate` and the scoring handler: it skips FastAPI's middleware, routing and
    dependency layers (about a third of a no-op FastAPI request's CPU), and is checked,
    limited, measured and answered as through them: the same gate instance (one admission
    budget), the same handler, the same error responses. The route stays registered, so
    other methods get their 405 and the metrics their route name."""

    gate: Gate | None = None
    invocations: Callable[..., Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            self.invocations is not None
            and scope["type"] == "http"
            and scope["path"] == INVOCATIONS_PATH
            and scope["method"] == "POST"
        ):
            assert self.gate is not None
            await self.gate.handle(scope, receive, send, self.invocations)
            return
        await super().__call__(scope, receive, send)


class V2Endpoints:
    """The Open Inference Protocol (KServe V2): server and model metadata, health, infer."""

    def __init__(self, state: AppState):
        self.state = state

    def register(self, app: FastAPI) -> None:
        app.get("/v2")(self.server)
        app.get("/v2/health/live")(self.live)
        app.get(READINESS_PATH)(self.ready)
        app.get("/v2/models/{name}")(self.metadata)
        app.get("/v2/models/{name}/versions/{version}")(self.version_metadata)
        app.get("/v2/models/{name}/ready")(self.model_ready)
        app.get("/v2/models/{name}/versions/{version}/ready")(self.version_ready)
        app.post("/v2/models/{name}/infer")(self.infer)
        app.post("/v2/models/{name}/versions/{version}/infer")(self.version_infer)

    def _check_model(self, name: str, version: str | None) -> None:
        model = self.state.model
        if name != model.name:
            raise RequestError(f"unknown model {name!r}; this server serves {model.name!r}", 404)
        if version is not None and version != model.version:
            raise RequestError(
                f"model {name!r} version {version!r} is not loaded; this "
                f"server serves version {model.version}",
                404,
            )

    async def server(self) -> Response:
        return _json({"name": "mlfolio", "version": _package_version(), "extensions": []})

    async def live(self) -> Response:
        return _json({"live": True})

    async def ready(self) -> Response:
        return _json({"ready": True})

    # A route's handler takes exactly its path's parameters: an optional ``version`` would
    # become a query parameter of the routes without one.
    async def metadata(self, name: str) -> Response:
        self._check_model(name, None)
        return self._metadata()

    async def version_metadata(self, name: str, version: str) -> Response:
        self._check_model(name, version)
        return self._metadata()

    def _metadata(self) -> Response:
        model = self.state.model
        return _json(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": "mlflow_sklearn",
                "inputs": [
                    {"name": c.name, "datatype": _V2_DATATYPES[c.kind], "shape": [-1]}
                    for c in self.state.model_columns
                ],
                "outputs": [
                    {"name": "probability", "datatype": "FP64", "shape": [-1]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                ],
                "parameters": {"threshold": model.threshold, "alias": model.alias},
            }
        )

    async def model_ready(self, name: str) -> Response:
        self._check_model(name, None)
        return _json({"name": self.state.model.name, "ready": True})

    async def version_ready(self, name: str, version: str) -> Response:
        self._check_model(name, version)
        return _json({"name": self.state.model.name, "ready": True})

    async def infer(self, name: str, request: Request) -> Response:
        self._check_model(name, None)
        return await self._infer(request)

    async def version_infer(self, name: str, version: str, request: Request) -> Response:
        self._check_model(name, version)
        return await self._infer(request)

    async def _infer(self, request: Request) -> Response:
        state = self.state
        request_id = _request_id(request)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise RequestError(
                f"Content-Encoding {encoding!r} is not supported; send the request uncompressed",
                415,
            )
        body = await read_body(request, state.max_body_bytes)
        header_entity = _id_header(request, "X-Entity-ID")

        def parse_and_route(raw: bytes, length: str | None) -> tuple[V2Request, Plan]:
            parsed = parse_v2(raw, length, state.columns)
            return parsed, state.router.prepare(parsed.block, request_id, header_entity)

        parsed, plan = await _parse(
            body, parse_and_route, request.headers.get("inference-header-content-length")
        )
        scored = await state.router.score(plan)
        parameters = None
        if scored.variants is not None:
            parameters = {"variant": scored.variant, "variants": scored.variants}
        content, headers = v2_response(
            scored.model, parsed, scored.proba, labels=scored.labels, parameters=parameters
        )
        headers.update(state.answer_headers(request_id, scored))
        return Response(content, headers=headers)


class OpsEndpoints:
    """What operators read: ``/health`` (models, routing, log), ``/version``, ``/metrics``."""

    def __init__(self, state: AppState):
        self.state = state

    def register(self, app: FastAPI) -> None:
        app.get("/health")(self.health)
        app.get("/version")(self.version)
        app.get(METRICS_PATH)(self.prometheus)

    async def health(self) -> Response:
        state = self.state
        doc = state.model.health()
        doc["variant"] = "champion"
        if state.challenger is not None:
            doc["challenger"] = {**state.challenger.health(), "variant": "challenger"}
        doc["routing"] = state.router.describe()
        if state.predlog is not None:
            doc["prediction_log"] = {"folder": str(state.predlog.folder), **state.predlog.stats()}
        return _json(doc)

    async def version(self) -> Response:
        import mlflow.version

        return Response(mlflow.version.VERSION, media_type="application/json")

    async def prometheus(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _request_error(request: Request, exc: RequestError) -> Response:
    request_id = request.scope.get("mlfolio.request_id")
    headers = {} if request_id is None else {"x-request-id": request_id}
    return Response(
        error_body(request.url.path, exc.status, str(exc)),
        status_code=exc.status,
        media_type="application/json",
        headers={**headers, **exc.headers},
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return Response(
        error_body(request.url.path, exc.status_code, message),
        status_code=exc.status_code,
        media_type="application/json",
        headers=getattr(exc, "headers", None),
    )


def _state(model: ServedModel, options: ServeOptions, challenger: ServedModel | None) -> AppState:
    """The batchers, router, metrics and prediction log for ``options``."""
    if (challenger is None) != (options.challenger is None):
        raise ServeError(
            "create_app: a challenger model goes with options.challenger (its "
            "URI), and only with it"
        )
    model_columns = _union_columns(model, challenger)
    entity_column = options.entity_column
    if entity_column is None:
        entity_column = model.id_column or (challenger.id_column if challenger else None)
    if entity_column is not None and any(c.name == entity_column for c in model_columns):
        raise ServeError(
            f"--entity-column {entity_column!r} is an input of the model; the "
            "entity column is taken out of the rows before scoring"
        )
    columns = model_columns + (
        [Column(entity_column, ColumnKind.ENTITY, optional=True)] if entity_column else []
    )
    metrics = ServerMetrics(model)
    predlog = None
    if options.prediction_log is not None:
        predlog = PredictionLog(
            options.prediction_log,
            model_columns,
            flush_seconds=options.log_flush_seconds,
            flush_rows=options.log_flush_rows,
        )
        try:
            predlog.start()
        except (OSError, sqlite3.Error) as exc:
            raise ServeError(f"--prediction-log {options.prediction_log}: {exc}") from exc
        metrics.registry.register(
            PredlogCollector(predlog, {"model": model.name, "version": model.version})
        )
        metrics.registry.register(DriftCollector(Path(options.prediction_log) / "drift.json"))
        metrics.registry.register(AbCollector(Path(options.prediction_log) / "ab.json"))
    batchers = [
        MicroBatcher(model, metrics, max_batch_rows=options.max_batch_rows, predlog=predlog)
    ]
    if challenger is not None:
        batchers.append(
            MicroBatcher(
                challenger,
                metrics,
                max_batch_rows=options.max_batch_rows,
                variant="challenger",
                shadow=options.mode == "shadow",
                predlog=predlog,
            )
        )
    routing = Routing(
        mode=options.mode,
        weight=options.challenger_weight,
        salt=model.name if options.ab_salt is None else options.ab_salt,
        entity_column=entity_column,
        log_rows=predlog is not None,
    )
    router = Router(batchers[0], batchers[1] if challenger else None, routing, metrics)
    return AppState(
        model_columns=model_columns,
        columns=columns,
        router=router,
        metrics=metrics,
        max_body_bytes=options.max_body_bytes,
    )


def create_app(
    model: ServedModel,
    options: ServeOptions,
    *,
    challenger: ServedModel | None = None,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` (see :mod:`mlfolio.serve` for its routes), and
    ``challenger`` (loaded from ``options.challenger``) for A/B routing or shadow scoring.

    ``app.state.serving`` is the :class:`AppState`; ``on_ready`` runs once the batchers run.
    """
    state = _state(model, options, challenger)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        for b in state.batchers:
            await b.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            for b in state.batchers:
                await b.stop()
            if state.predlog is not None:  # after the batchers: what they scored is logged
                await asyncio.to_thread(state.predlog.close)

    app = ServingApp(
        title="mlfolio model server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.serving = state
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    scoring = ScoringEndpoints(state)
    for endpoints in (scoring, OpsEndpoints(state), V2Endpoints(state)):
        endpoints.register(app)
    app.gate = Gate(
        None,
        route_of=route_namer(app),
        token=options.token,
        max_body_bytes=options.max_body_bytes,
        metrics=state.metrics,
        max_inflight_bytes=options.max_inflight_bytes,
        max_client_inflight_bytes=options.max_client_inflight_bytes,
        body_timeout=options.body_timeout,
    )
    app.add_middleware(app.gate.around)
    app.invocations = scoring.asgi_invocations
    return app
