"""The FastAPI app: the routes of each protocol, the app state they share, the error
handlers and the middleware."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlfolio.errors import RequestError, ServeError
from mlfolio.predlog import PredictionLog
from mlfolio.serve.batching import MAX_BATCH_ROWS, MicroBatcher
from mlfolio.serve.columns import Block, Column
from mlfolio.serve.contract import MAX_BODY_BYTES, check_id, error_body
from mlfolio.serve.gate import MAX_INFLIGHT_BYTES, Gate, read_body
from mlfolio.serve.metrics import DriftCollector, PredlogCollector, ServerMetrics
from mlfolio.serve.model import ServedModel
from mlfolio.serve.protocols.mlflow import parse_mlflow_json
from mlfolio.serve.protocols.sagemaker import parse_csv
from mlfolio.serve.protocols.v2 import V2Request, parse_v2, v2_response
from mlfolio.serve.routing import Plan, Router, Scored, routing_mode

_PARSE_IN_THREAD_BYTES = 256 * 1024  # bigger bodies are parsed off the event loop


def _id_header(request: Request, name: str) -> str | None:
    return check_id(request.headers.get(name), name)


def _request_id(request: Request) -> str:
    """The client's X-Request-ID, else a new one; kept for the error handler's header."""
    request_id = _id_header(request, "X-Request-ID") or uuid.uuid4().hex
    request.state.request_id = request_id
    return request_id


async def _parse(body: bytes, parser: Callable[..., Any], *args: Any) -> Any:
    if len(body) > _PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parser, body, *args)
    return parser(body, *args)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc).encode(), status_code=status, media_type="application/json")


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
            raise ServeError(f"--challenger {challenger.requested_uri}: column {col.name!r} is "
                             f"{col.kind} there and {mine.kind} in the champion")
    return columns


def create_app(model: ServedModel, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_batch_rows: int = MAX_BATCH_ROWS,
               on_ready: Callable[[], None] | None = None,
               challenger: ServedModel | None = None, challenger_weight: float | None = None,
               shadow: bool = False, ab_salt: str | None = None,
               entity_column: str | None = None, prediction_log: str | Path | None = None,
               log_flush_seconds: float = 0.5, log_flush_rows: int = 1000,
               max_inflight_bytes: int = MAX_INFLIGHT_BYTES) -> FastAPI:
    """The FastAPI app serving ``model`` (see the module docstring for its routes).

    With ``challenger``: A/B routing (``challenger_weight``) or shadow scoring (``shadow``);
    ``prediction_log``: a folder for :class:`mlfolio.predlog.PredictionLog`;
    ``entity_column``: an input column holding entity ids, logged and used for routing, never
    scored; by default the id column of the schema the model was trained on.
    """
    mode = routing_mode(challenger.requested_uri if challenger else None, challenger_weight,
                        shadow)
    model_columns = _union_columns(model, challenger)
    if entity_column is None:
        entity_column = model.id_column or (challenger.id_column if challenger else None)
    if entity_column is not None and any(c.name == entity_column for c in model_columns):
        raise ServeError(f"--entity-column {entity_column!r} is an input of the model; the "
                         "entity column is taken out of the rows before scoring")
    columns = model_columns + ([Column(entity_column, "entity", optional=True)]
                               if entity_column else [])
    metrics = ServerMetrics(model)
    predlog = None
    if prediction_log is not None:
        predlog = PredictionLog(prediction_log, model_columns, flush_seconds=log_flush_seconds,
                                flush_rows=log_flush_rows)
        try:
            predlog.start()
        except (OSError, sqlite3.Error) as exc:
            raise ServeError(f"--prediction-log {prediction_log}: {exc}") from exc
        metrics.registry.register(PredlogCollector(predlog, {"model": model.name,
                                                              "version": model.version}))
        metrics.registry.register(DriftCollector(Path(prediction_log) / "drift.json"))
    batcher = MicroBatcher(model, metrics, max_batch_rows=max_batch_rows, predlog=predlog)
    batchers = [batcher]
    if challenger is not None:
        batchers.append(MicroBatcher(challenger, metrics, max_batch_rows=max_batch_rows,
                                     variant="challenger", shadow=mode == "shadow",
                                     predlog=predlog))
    router = Router(batcher, batchers[1] if challenger else None, mode, challenger_weight,
                    model.name if ab_salt is None else ab_salt, entity_column,
                    predlog is not None, metrics)
    variant_header = challenger is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        for b in batchers:
            await b.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            for b in batchers:
                await b.stop()
            if predlog is not None:  # after the batchers: what they scored is logged
                await asyncio.to_thread(predlog.close)

    app = FastAPI(title="mlfolio model server", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.model = model
    app.state.challenger = challenger
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.router = router
    app.state.predlog = predlog

    def id_headers(request: Request) -> dict[str, str] | None:
        request_id = getattr(request.state, "request_id", None)
        return None if request_id is None else {"x-request-id": request_id}

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        return Response(error_body(request.url.path, exc.status, str(exc)),
                        status_code=exc.status, media_type="application/json",
                        headers={**(id_headers(request) or {}), **exc.headers})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return Response(error_body(request.url.path, exc.status_code, message),
                        status_code=exc.status_code, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    def check_model(name: str, version: str | None) -> None:
        if name != model.name:
            raise RequestError(f"unknown model {name!r}; this server serves {model.name!r}",
                               404)
        if version is not None and version != model.version:
            raise RequestError(f"model {name!r} version {version!r} is not loaded; this "
                               f"server serves version {model.version}", 404)

    def prepared(parser: Callable[..., Block], request_id: str, header_entity: str | None
                 ) -> Callable[..., Plan]:
        def parse_and_route(body: bytes, *args: Any) -> Plan:
            return router.prepare(parser(body, *args), request_id, header_entity)
        return parse_and_route

    def answer_headers(request_id: str, scored: Scored) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if variant_header:
            headers["x-mlfolio-variant"] = scored.variant
        return headers

    # -- MLflow scoring protocol and SageMaker ---------------------------------------
    @app.get("/ping")
    async def ping() -> Response:
        return Response(b"\n", media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        doc = model.health()
        doc["variant"] = "champion"
        if challenger is not None:
            doc["challenger"] = {**challenger.health(), "variant": "challenger"}
        doc["routing"] = router.describe()
        if predlog is not None:
            doc["prediction_log"] = {"folder": str(predlog.folder), **predlog.stats()}
        return _json(doc)

    @app.get("/version")
    async def version() -> Response:
        import mlflow.version

        return Response(mlflow.version.VERSION, media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        request_id = _request_id(request)
        content_type = request.headers.get("content-type", "")
        mime, _, params = content_type.partition(";")
        mime = mime.strip().lower()
        charset = params.strip().lower().removeprefix("charset=").strip('"') or "utf-8"
        if mime not in ("application/json", "text/csv"):
            raise RequestError(f"Content-Type {content_type or '(none)'!r} is not supported: "
                               "send application/json or text/csv", 415)
        if params.strip() and (not params.strip().lower().startswith("charset=")
                               or charset not in ("utf-8", "utf8")):
            raise RequestError(f"Content-Type {content_type!r}: only charset=utf-8 is "
                               "supported", 415)
        body = await read_body(request, max_body_bytes)
        parser = parse_csv if mime == "text/csv" else parse_mlflow_json
        plan = await _parse(body, prepared(parser, request_id, _id_header(request,
                                                                          "X-Entity-ID")),
                            columns)
        scored = await router.score(plan)
        proba, labels = scored.proba, scored.labels
        headers = answer_headers(request_id, scored)
        if "text/csv" in request.headers.get("accept", ""):
            lines = [f"{p!r},{k}" for p, k in zip(proba[:, 1].tolist(), labels.tolist(),
                                                    strict=True)]
            return Response(("\n".join(lines) + "\n").encode(), media_type="text/csv",
                            headers=headers)
        doc: dict[str, Any] = {"predictions": proba.tolist(), "labels": labels.tolist(),
                               "threshold": scored.threshold, "request_id": request_id}
        if scored.variants is not None:
            doc["variants"] = scored.variants
        return Response(json.dumps(doc).encode(), media_type="application/json",
                        headers=headers)

    # -- Open Inference Protocol -----------------------------------------------------
    @app.get("/v2")
    async def v2_server() -> Response:
        return _json({"name": "mlfolio", "version": _package_version(), "extensions": []})

    @app.get("/v2/health/live")
    async def v2_live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def v2_ready() -> Response:
        return _json({"ready": True})

    def metadata() -> dict[str, Any]:
        datatypes = {"long": "INT64", "double": "FP64", "string": "BYTES", "boolean": "BOOL"}
        return {
            "name": model.name, "versions": [model.version], "platform": "mlflow_sklearn",
            "inputs": [{"name": c.name, "datatype": datatypes[c.kind], "shape": [-1]}
                       for c in model_columns],
            "outputs": [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                        {"name": "label", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"threshold": model.threshold, "alias": model.alias},
        }

    @app.get("/v2/models/{name}")
    async def v2_metadata(name: str) -> Response:
        check_model(name, None)
        return _json(metadata())

    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_metadata_version(name: str, version: str) -> Response:
        check_model(name, version)
        return _json(metadata())

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        check_model(name, None)
        return _json({"name": model.name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_version_ready(name: str, version: str) -> Response:
        check_model(name, version)
        return _json({"name": model.name, "ready": True})

    async def infer(request: Request) -> Response:
        request_id = _request_id(request)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise RequestError(f"Content-Encoding {encoding!r} is not supported; send the "
                               "request uncompressed", 415)
        body = await read_body(request, max_body_bytes)
        header_entity = _id_header(request, "X-Entity-ID")

        def parse_and_route(raw: bytes, length: str | None) -> tuple[V2Request, Plan]:
            parsed = parse_v2(raw, length, columns)
            return parsed, router.prepare(parsed.block, request_id, header_entity)

        parsed, plan = await _parse(body, parse_and_route,
                                    request.headers.get("inference-header-content-length"))
        scored = await router.score(plan)
        parameters = None
        if scored.variants is not None:
            parameters = {"variant": scored.variant, "variants": scored.variants}
        content, headers = v2_response(scored.model, parsed, scored.proba,
                                       labels=scored.labels, parameters=parameters)
        headers.update(answer_headers(request_id, scored))
        return Response(content, headers=headers)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        check_model(name, None)
        return await infer(request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        check_model(name, version)
        return await infer(request)

    # -- Prometheus ------------------------------------------------------------------
    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes = [(r.path_regex, r.path) for r in app.router.routes if hasattr(r, "path_regex")]
    cache: dict[str, str] = {}

    def route_of(path: str) -> str:
        route = cache.get(path)
        if route is None:
            route = next((template for regex, template in routes if regex.match(path)),
                         "unmatched")
            if route != "unmatched" and len(cache) < 10_000:
                cache[path] = route
        return route

    app.add_middleware(Gate, route_of=route_of, token=token, max_body_bytes=max_body_bytes,
                       metrics=metrics, max_inflight_bytes=max_inflight_bytes)
    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlfolio")
    except PackageNotFoundError:
        return "0"

