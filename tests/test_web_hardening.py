"""web-service/ against slow and malformed clients: real gunicorn on a free loopback port.

The service reads each request whole before the app sees it (ride_duration/http_worker.py),
so slow clients hold no worker and are cut off after REQUEST_READ_TIMEOUT (2 s here), and
bad framing gets a 4xx. Every socket here has a time-out; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ride_duration.healthcheck import probe
from ride_duration.local.background import serve_in_background
from ride_duration.local.loadgen import run_load

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from web_service import SlowClients  # noqa: E402

WEB_SERVICE = REPO / "web-service"
READ_TIMEOUT = 2  # seconds, REQUEST_READ_TIMEOUT of the service under test
MAX_BODY = 4096  # MAX_REQUEST_BYTES of the service under test
RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}


@pytest.fixture(scope="module")
def service(model_files):
    env = {
        "MODEL_PATH": str(model_files[1]),
        "REQUEST_READ_TIMEOUT": str(READ_TIMEOUT),
        "MAX_REQUEST_BYTES": str(MAX_BODY),
    }
    with serve_in_background(WEB_SERVICE, env) as running:
        yield running


def connect(service, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=timeout)


def request(body: bytes, *, path: str = "/predict", headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict, bytes]]:
    """Up to `count` final answers (status, headers, body) read from the socket, fewer if it closes."""
    stream, answers = sock.makefile("rb"), []
    while len(answers) < count:
        status_line = stream.readline()
        if not status_line:
            break
        status = int(status_line.split()[1])
        headers = {}
        while (line := stream.readline().rstrip(b"\r\n")) != b"":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:  # a 100 Continue has neither body nor place among the answers
            answers.append((status, headers, stream.read(int(headers.get("content-length", 0)))))
    return answers


def answer_to(service, data: bytes) -> tuple[int, dict, bytes]:
    with connect(service) as sock:
        sock.sendall(data)
        answers = read_answers(sock, 1)
    assert answers, f"no answer to {data[:80]!r}"
    return answers[0]


def seconds_until_closed(trickles: dict[str, tuple[socket.socket, bytes]], limit: float) -> dict[str, float]:
    """Send each socket its bytes one a second, all at once, until the server closes each (or
    `limit` seconds pass); the seconds each took, from the first byte."""
    start, sent, took = time.monotonic(), 0, {}
    while len(took) < len(trickles) and time.monotonic() - start < limit:
        for name, (sock, data) in trickles.items():
            if name not in took and sent < len(data):
                with contextlib.suppress(OSError):  # reset: select sees the socket closed below
                    sock.send(data[sent : sent + 1])
        sent += 1
        tick = time.monotonic() + 1.0
        while (wait := tick - time.monotonic()) > 0:
            open_ = [sock for name, (sock, _) in trickles.items() if name not in took]
            readable, _, _ = select.select(open_, [], [], wait)
            for name, (sock, _) in trickles.items():
                if sock in readable and name not in took:
                    with contextlib.suppress(OSError):
                        assert sock.recv(4096) == b"", f"{name}: answered instead of closed"
                    took[name] = time.monotonic() - start
    return took


# ---- slow clients --------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_50_slow_connections_do_not_slow_down_other_clients(service):
    """Half stall in their headers, half in their bodies, for longer than the time limit."""
    with SlowClients(("127.0.0.1", service.port), count=50, interval=0.2) as slow:
        time.sleep(0.5)  # all 50 open and trickling
        result = run_load(service.predict_url, [json.dumps(RIDE).encode()], duration=4, connections=4, timeout=2)
        time.sleep(max(0.0, READ_TIMEOUT + 1.0 - result.elapsed))
    assert (result.errors, set(result.statuses)) == (0, {200}), result.error_samples
    assert result.answered > 500
    assert result.percentile(99) <= 0.050
    # The service cut the slow connections off at its time limit, and they came back.
    assert len(slow.cut_off) >= 50
    assert max(slow.cut_off) < READ_TIMEOUT + 1.0


def test_a_byte_a_second_is_cut_off_at_the_time_limit(service):
    """The limit is for the whole request: a client that keeps sending is cut off all the same."""
    body_head = request(b"x" * 60)[:-60]
    trickles = {
        "headers": b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 60\r\n",
        "body": b'{"PULocationID": 10, "DOLocationID": 50',
        "nothing": b"",
    }
    sockets = {name: connect(service) for name in trickles}
    try:
        sockets["body"].sendall(body_head)  # its headers at once, then its body slowly
        took = seconds_until_closed({name: (sockets[name], data) for name, data in trickles.items()}, READ_TIMEOUT + 5)
    finally:
        for sock in sockets.values():
            sock.close()
    assert set(took) == set(trickles)
    for name, seconds in took.items():
        assert READ_TIMEOUT - 0.5 <= seconds <= READ_TIMEOUT + 1.0, (name, seconds)
    assert probe(service.health_url)["status"] == "ok"


# ---- malformed framing ---------------------------------------------------------------
@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a size that is not hexadecimal
        b"2\r\n{}xx0\r\n\r\n",  # no CRLF after the data
        b"5\r\n{}\r\n0\r\n\r\n",  # a size longer than the data
        b"1" * 100 + b"\r\n",  # a size line too long
    ],
    ids=["not hex", "no CRLF", "short chunk", "long size line"],
)
def test_a_bad_chunked_body_gets_a_json_400(service, chunks):
    head = b"POST /predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, body = answer_to(service, head + chunks)
    assert status == 400
    assert headers["content-type"] == "application/json" and "chunk" in json.loads(body)["error"]


BROKEN_FRAMING = {
    "request line": b"POST /predict\r\nHost: test\r\n\r\n",
    "header without a colon": b"POST /predict HTTP/1.1\r\nHost test\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length not a number": b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: two\r\n\r\n{}",
    "Content-Length and chunked": (
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"
    ),
}


@pytest.mark.parametrize("data", BROKEN_FRAMING.values(), ids=BROKEN_FRAMING.keys())
def test_framing_tornado_cannot_parse_gets_a_json_400_naming_the_parts(service, data):
    status, headers, body = answer_to(service, data)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "cannot be parsed" in json.loads(body)["error"]
    assert answer_to(service, request(json.dumps(RIDE).encode()))[0] == 200


def test_two_pipelined_requests_in_one_write_get_two_answers_in_order(service):
    with connect(service) as sock:
        sock.sendall(request(json.dumps(RIDE).encode()) + request(b'{"PULocationID": 10}'))
        answers = read_answers(sock, 2)
    assert [status for status, _, _ in answers] == [200, 400]
    assert json.loads(answers[0][2])["duration"] > 0
    assert "missing" in json.loads(answers[1][2])["error"]


@pytest.mark.parametrize("size", [20_000, 200_000])
def test_oversize_headers_get_a_431_in_json(service, size):
    data = f"GET /health HTTP/1.1\r\nHost: test\r\nX-Padding: {'a' * size}\r\n\r\n".encode()
    status, headers, body = answer_to(service, data)
    assert status == 431
    assert headers["content-type"] == "application/json" and "longer than" in json.loads(body)["error"]


MALFORMED = [
    # (case, request bytes, status, words of the JSON error)
    ("not JSON", request(b"PULocationID=10"), 400, ["not valid JSON"]),
    ("not UTF-8", request(b'{"PULocationID": "\xff"}'), 400, ["not valid JSON"]),
    ("a bare number", request(b"42"), 400, ["got a number"]),
    ("empty", request(b""), 400, ["empty"]),
    (
        "chunked, bad JSON inside",
        b'POST /predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"PU\r\n0\r\n\r\n',
        400,
        ["not valid JSON"],
    ),
    ("over the size limit", request(b" " * (MAX_BODY + 1)), 413, ["larger than 4096 bytes"]),
    (
        "chunked, over the size limit",
        b"POST /predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"800\r\n"
        + b" " * 0x800
        + b"\r\n" * 1
        + b"800\r\n"
        + b" " * 0x800
        + b"\r\n"
        + b"1\r\n \r\n0\r\n\r\n",
        413,
        ["larger than 4096 bytes"],
    ),
    ("HTTP/1.0", request(b"[]").replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400, ["empty"]),
    ("expects 100-continue", request(b"{}", headers="Expect: 100-continue\r\n"), 400, ["missing"]),
    ("wrong path", request(b"{}", path="/predict/../admin"), 404, ["no such endpoint"]),
    ("percent-encoded path", request(b"{}", path="/%70redict%00"), 404, ["no such endpoint"]),
]


@pytest.mark.parametrize("case, data, status, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_bodies_get_a_json_4xx(service, case, data, status, words):
    got, headers, body = answer_to(service, data)
    assert got == status
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]
    assert all(word in message for word in words), message


def test_a_body_longer_than_the_discard_limit_is_refused_and_the_service_goes_on(service):
    from ride_duration.service import DISCARD_LIMIT

    head = f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: {DISCARD_LIMIT + 1}\r\n\r\n".encode()
    status, headers, body = answer_to(service, head)
    assert status == 413
    assert headers["content-type"] == "application/json" and "longer than" in json.loads(body)["error"]
    assert answer_to(service, request(json.dumps(RIDE).encode()))[0] == 200


# ---- IPv6 ----------------------------------------------------------------------------
def ipv6_loopback_port() -> int | None:
    """A free port on ::1, or None when this machine has no IPv6 loopback."""
    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
            return sock.getsockname()[1]
    except OSError:
        return None


@pytest.mark.timeout(60)
def test_host_may_be_the_ipv6_loopback(model_files):
    port = ipv6_loopback_port()
    if port is None:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    command = [sys.executable, "-m", "gunicorn", "--config", "python:ride_duration.gunicorn_conf", "predict:app"]
    env = {**os.environ, "HOST": "::1", "PORT": str(port), "MODEL_PATH": str(model_files[1]), "WEB_CONCURRENCY": "1"}
    server = subprocess.Popen(
        command, cwd=WEB_SERVICE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline, health = time.monotonic() + 30, None
        while health is None and server.poll() is None and time.monotonic() < deadline:
            health = probe(f"http://[::1]:{port}/health", timeout=1.0)
            time.sleep(0.1)
        assert health is not None, server.stdout.read1().decode(errors="replace") if server.poll() is not None else ""
        assert health["status"] == "ok"
        # The image's HEALTHCHECK (no URL given) finds the service on the same address.
        check = subprocess.run([sys.executable, "-m", "ride_duration.healthcheck"], env=env, capture_output=True)
        assert check.returncode == 0, check.stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            out, _ = server.communicate()
    assert f"Listening at: [::1]:{port}" in out.decode(errors="replace")
