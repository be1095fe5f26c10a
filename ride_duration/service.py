"""What every prediction web service shares: input checks, JSON answers and errors, limits.

Each service folder's predict.py (web-service/ loads a model file, web-service-mlflow/ one
from MLflow) defines its Flask app and routes itself, and calls guard(app, limits) for the rest:
    app = Flask(__name__)
    service.guard(app, service.Limits.from_env())   # bodies read whole; every error as JSON
    @app.post("/predict") ... service.parse_rides(service.body(), ...) ... service.answer(...)
The model needs `.predict(rides) -> sequence of minutes` and `.version`. The routes:

    POST /predict  one ride {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}
                   -> {"duration": <minutes>, "model_version": "<id>"}
                   or a list of rides -> a list of answers in the same order (one model call)
    GET  /health   -> {"status": "ok", "model_version": "<id>"}

Bad input gets a 4xx and {"error": "<what is wrong, naming the field>"}, never a 500. The body
is read as JSON whatever its Content-Type. Limits, from environment variables [defaults]:

MAX_RIDES_PER_REQUEST [1000]     longest list of rides answered in one request (else 400)
MAX_REQUEST_BYTES [1048576]      largest body read (else 413); 1000 rides take about 70 kB
REQUEST_READ_TIMEOUT [10]        seconds a client has to send one whole request, headers and
                                 body, counted from when its connection is ready for it; then
                                 the server closes the connection (ride_duration/http_worker.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ride_duration import config
from ride_duration.rides import InvalidRide, json_type, validate_ride

DEFAULT_MAX_RIDES = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_READ_TIMEOUT = 10  # seconds; 1000 rides are 70 kB, which a slow mobile link sends in about 1 s
DISCARD_LIMIT = 16 << 20  # a refused body up to this size is read (and dropped) before the 413
BODY_KEY = "ride_duration.body"  # where the body read once waits in the WSGI environ


def max_rides_per_request() -> int:
    return config.env_int("MAX_RIDES_PER_REQUEST", DEFAULT_MAX_RIDES)


def max_request_bytes() -> int:
    return config.env_int("MAX_REQUEST_BYTES", DEFAULT_MAX_BODY_BYTES)


def request_read_timeout() -> int:
    return config.env_int("REQUEST_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_rides: int = DEFAULT_MAX_RIDES  # longest list of rides answered (else 400)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # largest body read (else 413)

    @classmethod
    def from_env(cls) -> Limits:
        """MAX_RIDES_PER_REQUEST and MAX_REQUEST_BYTES; SettingError when one is not usable."""
        return cls(max_rides_per_request(), max_request_bytes())


def guard(app: Flask, limits: Limits) -> None:
    """Make `app` read every request body within `limits` and answer every error as JSON.

    Each route then finds its body in body(); an InvalidRide raised in a route answers 400 with
    its message, and 404, 405, 413 and any other exception (500) answer {"error": ...} too.
    """
    too_large = f"the request body is larger than {limits.max_body_bytes} bytes"
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes  # for any werkzeug reader; ours is below

    @app.before_request
    def read_body():
        # Read every body before answering, even for an unknown path: gunicorn's own workers
        # drain an unread body after the answer, and that drain can swallow the client's next
        # request on a keep-alive connection, which then waits for the keep-alive time-out.
        whole_body = read_request_body(request.environ, limits.max_body_bytes)
        if whole_body is None:
            return error(413, too_large)
        request.environ[BODY_KEY] = whole_body
        return None

    @app.errorhandler(InvalidRide)
    def invalid_ride(exc: InvalidRide):
        return error(400, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return error(413, too_large)
        if exc.code == 405:
            allowed = [m for m in sorted(exc.valid_methods or []) if m not in ("HEAD", "OPTIONS")]
            return error(405, f"{request.method} is not allowed on {request.path}: use {', '.join(allowed)}")
        if exc.code == 404:
            return error(404, f"no such endpoint {request.path}: use POST /predict or GET /health")
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error: the service could not answer this request")


def body() -> bytes:
    """The current request's body, read whole by guard() before the route runs."""
    return request.environ[BODY_KEY]


def parse_rides(body: bytes, max_rides: int) -> tuple[list[dict], bool]:
    """The validated rides of a request body and whether it held one ride (not a list).

    Raises InvalidRide with a message naming what is wrong.
    """
    if not body.strip():
        raise InvalidRide("the request body is empty: send a JSON ride or a list of rides")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidRide(f"the request body is not valid JSON ({_short(exc)})") from None
    if isinstance(payload, dict):
        return [validate_ride(payload)], True
    if isinstance(payload, list):
        if not payload:
            raise InvalidRide("the list of rides is empty")
        if len(payload) > max_rides:
            raise InvalidRide(f"too many rides: at most {max_rides} per request, got {len(payload)}")
        return [validate_ride(ride, where=f"rides[{i}]") for i, ride in enumerate(payload)], False
    raise InvalidRide(f"the request body must be a JSON object (one ride) or a list of rides, got {json_type(payload)}")


def read_request_body(environ: dict, max_bytes: int) -> bytes | None:
    """The whole request body, or None when it is longer than max_bytes.

    Reads the WSGI input directly (werkzeug's stream wrappers cost more than the model): up
    to Content-Length, or for a chunked body, which the server terminates, up to one byte
    past the limit. A refused body announced by Content-Length is read and dropped when
    under DISCARD_LIMIT, so that gunicorn's own workers have nothing to drain (see guard); a
    longer one is left to them, and they drain a bounded part and close the connection. (The
    services' worker, ride_duration/http_worker.py, hands the app whole bodies, cut one byte
    past MAX_REQUEST_BYTES, with CONTENT_LENGTH their full size.)
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            length = int(length)
        except ValueError:
            return b""  # servers refuse such a header before the app sees it
        if length < 0:
            return b""
        if length <= max_bytes:
            return stream.read(length)
        if length <= DISCARD_LIMIT:
            while length > 0 and (chunk := stream.read(min(length, 1 << 16))):
                length -= len(chunk)
        return None
    if environ.get("wsgi.input_terminated"):  # chunked: the server marks the end
        body = stream.read(max_bytes + 1)
        return None if len(body) > max_bytes else body
    return b""


def answer(payload) -> Response:
    return Response(json.dumps(payload), status=200, mimetype="application/json")


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
