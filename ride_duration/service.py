"""The prediction web service: a Flask app around a loaded model, with all input checks.

`create_app(model)` is shared by every service folder (web-service/ loads a model file,
web-service-mlflow/ loads one from MLflow): each only changes how the model is loaded.
The model needs `.predict(rides) -> sequence of minutes` and `.version`.

    POST /predict  one ride {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}
                   -> {"duration": <minutes>, "model_version": "<id>"}
                   or a list of rides -> a list of answers in the same order (one model call)
    GET  /health   -> {"status": "ok", "model_version": "<id>"}

Bad input gets a 4xx and {"error": "<what is wrong, naming the field>"}, never a 500. The body
is read as JSON whatever its Content-Type. Limits, from environment variables [defaults]:

MAX_RIDES_PER_REQUEST [1000]     longest list of rides answered in one request (else 400)
MAX_REQUEST_BYTES [1048576]      largest body read (else 413); 1000 rides take about 70 kB
"""

from __future__ import annotations

import json

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ride_duration import config
from ride_duration.rides import InvalidRide, validate_ride

DEFAULT_MAX_RIDES = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
DISCARD_LIMIT = 16 << 20  # a refused body up to this size is read (and dropped) before the 413
BODY_KEY = "ride_duration.body"  # where the body read once waits in the WSGI environ


def max_rides_per_request() -> int:
    return config.env_int("MAX_RIDES_PER_REQUEST", DEFAULT_MAX_RIDES)


def max_request_bytes() -> int:
    return config.env_int("MAX_REQUEST_BYTES", DEFAULT_MAX_BODY_BYTES)


def create_app(
    model, *, version: str | None = None, max_rides: int | None = None, max_body_bytes: int | None = None
) -> Flask:
    """A Flask app answering /predict with `model` and /health with its version.

    Args:
        model: a loaded model, e.g. ride_duration.compact.CompactModel.
        version: the id reported in every answer [model.version].
        max_rides: longest list of rides accepted [MAX_RIDES_PER_REQUEST].
        max_body_bytes: largest request body accepted [MAX_REQUEST_BYTES].
    """
    version = str(version or model.version)
    max_rides = max_rides or max_rides_per_request()
    max_body_bytes = max_body_bytes or max_request_bytes()
    app = Flask("ride_duration.service")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes  # for any werkzeug reader; ours is below

    @app.before_request
    def read_body():
        # Read every body before answering, even for an unknown path: gunicorn drains an
        # unread body after the answer, and that drain can swallow the client's next request
        # on a keep-alive connection, which then waits for the keep-alive time-out.
        body = read_request_body(request.environ, max_body_bytes)
        if body is None:
            return error(413, f"the request body is larger than {max_body_bytes} bytes")
        request.environ[BODY_KEY] = body
        return None

    @app.post("/predict")
    def predict():
        try:
            rides, single = parse_rides(request.environ[BODY_KEY], max_rides)
        except InvalidRide as exc:
            return error(400, str(exc))
        durations = model.predict(rides)
        if single:
            return answer({"duration": float(durations[0]), "model_version": version})
        return answer([{"duration": float(d), "model_version": version} for d in durations])

    @app.get("/health")
    def health():
        # The model is loaded before the app exists, so answering means ready.
        return answer({"status": "ok", "model_version": version})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return error(413, f"the request body is larger than {max_body_bytes} bytes")
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

    return app


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
    raise InvalidRide(
        f"the request body must be a JSON object (one ride) or a list of rides, got {_json_kind(payload)}"
    )


def read_request_body(environ: dict, max_bytes: int) -> bytes | None:
    """The whole request body, or None when it is longer than max_bytes.

    Reads the WSGI input directly (werkzeug's stream wrappers cost more than the model): up
    to Content-Length, or for a chunked body, which the server terminates, up to one byte
    past the limit. A refused body announced by Content-Length is read and dropped when
    under DISCARD_LIMIT, so that gunicorn has nothing to drain (see create_app); a longer
    one is left to gunicorn, which drains a bounded part and closes the connection.
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            length = int(length)
        except ValueError:
            return b""  # gunicorn refuses such a header before the app sees it
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


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str) else "a number"


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
