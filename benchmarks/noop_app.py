"""The no-op model server of benchmarks/serve_bench.py: a FastAPI app whose /invocations
reads the body and answers a constant, run by :func:`mlfolio.serve.server.run_uvicorn` (the
process settings and uvicorn options of ``mlfolio serve``). What FastAPI + uvicorn cost per
request: the ceiling of any model server built on them. ``--asgi``: the same answer from a
bare ASGI callable (no FastAPI, no Starlette), what uvicorn alone costs: the ceiling of a
server whose hot route skips the framework, as ``mlfolio serve``'s ``/invocations`` does.

    .venv/bin/python benchmarks/noop_app.py --port 8081 [--asgi]
"""

import argparse

from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = b'{"predictions": [[0.5, 0.5]]}'


def noop_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping")
    async def ping() -> Response:
        return Response(b"\n", media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return app


async def asgi_noop_app(scope, receive, send) -> None:
    """POST /invocations and GET /ping as a bare ASGI app: reads the body, answers a
    constant with Starlette's headers (content-length, content-type)."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = scope["method"] == "POST"
    while more:
        more = (await receive()).get("more_body", False)
    body = ANSWER if scope["path"] == "/invocations" else b"\n"
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    from mlfolio.serve.server import bind, run_uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--asgi", action="store_true", help="a bare ASGI app, no framework")
    args = parser.parse_args()
    run_uvicorn(asgi_noop_app if args.asgi else noop_app(), bind(args.host, args.port))


if __name__ == "__main__":
    main()
