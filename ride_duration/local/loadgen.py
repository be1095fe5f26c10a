"""A small HTTP/1.1 load generator: N keep-alive connections posting JSON bodies, bounded.

Standard library only (asyncio streams), so tests can hammer a loopback service without
installing anything. It stops at `requests` requests or after `duration` seconds, whichever
comes first, and never waits more than `timeout` seconds for one answer.

    result = run_load("http://127.0.0.1:9696/predict", [body], requests=5000, connections=32)
    result.errors, result.statuses, result.percentile(99)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    sent: int = 0
    errors: int = 0  # connection failures, time-outs, malformed answers (not HTTP statuses)
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    elapsed: float = 0.0
    answers: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (status, body)
    error_samples: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_second(self) -> float:
        return self.answered / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in seconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    requests: int | None = None,
    duration: float | None = None,
    connections: int = 16,
    timeout: float = 5.0,
    keep_answers: bool = False,
    method: str = "POST",
) -> LoadResult:
    """Send bodies[i % len(bodies)] for i = 0, 1, ... over `connections` keep-alive connections.

    At least one of `requests` (a count) or `duration` (seconds) bounds the run.
    """
    if requests is None and duration is None:
        raise ValueError("bound the run: give requests=, duration= or both")
    run = _run(url, bodies, requests, duration, connections, timeout, keep_answers, method)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run)
    # Called from a running event loop (a Jupyter kernel): run ours in a thread of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run).result()


async def _run(url, bodies, requests, duration, connections, timeout, keep_answers, method) -> LoadResult:
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    heads = [_request_head(method, host, port, path, len(body)) + body for body in bodies]
    result = LoadResult()
    counter = iter(range(requests if requests is not None else 1 << 62))
    started = time.perf_counter()
    deadline = started + duration if duration is not None else None
    await asyncio.gather(
        *(_connection(host, port, heads, counter, deadline, timeout, result, keep_answers) for _ in range(connections))
    )
    result.elapsed = time.perf_counter() - started
    return result


def _request_head(method: str, host: str, port: int, path: str, length: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()


async def _connection(host, port, requests, counter, deadline, timeout, result, keep_answers):
    reader = writer = None
    for index in counter:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        result.sent += 1
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(requests[index % len(requests)])
            status, body, close = await asyncio.wait_for(_read_response(reader), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"{type(exc).__name__}: {exc}")
            writer = _close(writer)
            continue
        result.latencies.append(time.perf_counter() - started)
        result.statuses[status] += 1
        if keep_answers:
            result.answers[index] = (status, body)
        if close:  # the server will not take another request on this connection
            writer = _close(writer)
    _close(writer)


async def _read_response(reader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # no length: the body ends with the connection
        body = await reader.read()
        headers["connection"] = "close"
    close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
    return int(status), body, close


def _close(writer):
    if writer is not None:
        writer.close()
    return None
