"""The serve benchmark's load generator: closed-loop HTTP/1.1 load from its own process.

N clients, one keep-alive connection each, send request bodies back to back (standard
library asyncio only, so its cost is small and its own CPU is reported); prints one JSON
line: requests, req/s, latency percentiles, errors, its CPU share.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080/invocations \
        --bodies bodies.txt --clients 10 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request written, its response awaited whole
    (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.need: int | None = None  # bytes of the whole response, once its head is read
        self.status = 0
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            at = head.find(b"\r\ncontent-length:")
            length = 0 if at < 0 else int(head[at + 17 : head.index(b"\r\n", at + 2)])
            self.need = end + 4 + length
        if self.chunked:
            done = self.buffer.endswith(b"\r\n0\r\n\r\n")
        else:
            done = len(self.buffer) >= self.need
        if done and self.waiter is not None and not self.waiter.done():
            self.buffer.clear()
            self.need = None
            self.waiter.set_result(self.status)

    def request(self, raw: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter


async def load(
    url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float
) -> dict:
    """``concurrency`` clients, one connection each, sending ``bodies`` in turn back to back
    (closed loop) for ``warmup + duration`` seconds; only the last ``duration`` counts."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    )
    raws = [head.replace("{n}", str(len(b))).encode() + b for b in bodies]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def connect() -> _Connection:
        _, conn = await loop.create_connection(_Connection, parts.hostname, parts.port)
        return conn

    async def client(k: int) -> None:
        nonlocal errors
        conn = await connect()
        i = k
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                conn.transport.close()
                return
            raw = raws[i % len(raws)]
            i += concurrency
            try:
                status: int | str = await asyncio.wait_for(conn.request(raw), 10)
            except (OSError, TimeoutError) as exc:
                status = type(exc).__name__
                conn.transport.close()
                conn = await connect()
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                latencies.append(done - sent)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status != 200:
                    errors += 1

    cpu = time.process_time()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    cpu = time.process_time() - cpu
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.50) if latencies else float("nan"),
        "p99_ms": pct(0.99) if latencies else float("nan"),
        # the load generator's own CPU share of one core: near 100 % it limits the rate
        "client_cpu": cpu / (time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="a file of request bodies, one per line")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    args = parser.parse_args()
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    result = asyncio.run(load(args.url, bodies, args.clients, args.duration, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
