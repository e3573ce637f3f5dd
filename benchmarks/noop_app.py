"""The no-op model server of benchmarks/serve_bench.py: a FastAPI app whose /invocations
reads the body and answers a constant, run by :func:`mlfolio.serve.server.run_uvicorn` (the
process settings and uvicorn options of ``mlfolio serve``). What FastAPI + uvicorn cost per
request: the ceiling of any model server built on them.

    .venv/bin/python benchmarks/noop_app.py --port 8081
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


def main() -> None:
    from mlfolio.serve.server import bind, run_uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_uvicorn(noop_app(), bind(args.host, args.port))


if __name__ == "__main__":
    main()
