"""What every prediction web service shares: input checks, JSON answers and errors, limits.

Each service folder's predict.py (web-service/ loads a model file, web-service-mlflow/ one
from MLflow) defines its Flask app and routes itself, and calls guard(app, limits) for the rest:
    app = Flask(__name__)
    service.guard(app, service.Limits.from_env())   # bodies read whole; every error as JSON
    @app.post("/predict") ... service.parse_rides(service.body(), ...) ... service.answer(...)
The model needs `.predict(rides) -> sequence of minutes` and `.version`. The routes:

    POST /predict  one ride {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
                   -> {"duration": <minutes>, "model_version": "<id>"}
                   or a list of rides -> a list of answers in the same order (one model call)
    GET  /health   -> {"status": "ok", "model_version": "<id>"}

and MLflow's scoring protocol (what `mlflow models serve` answers, and SageMaker calls), for
the same fields: parse_invocation() takes its four JSON formats, as MLflow reads them,

    POST /invocations  {"dataframe_split": {"columns": ["PULocationID", ...], "data": [[130, 205, 3.66]]}}
                       {"dataframe_records": [{"PULocationID": 130, ...}]}
                       {"instances": <rides>} or {"inputs": <rides>}: a list of rides, or a dict
                       of columns {"PULocationID": [130, ...], ...}
                       -> {"predictions": [<minutes>, ...]} in the order of the rides
    GET  /ping         -> the same answer as GET /health

Bad input gets a 4xx and {"error": "<what is wrong, naming the field>"}, never a 500.
/predict reads the body as JSON whatever its Content-Type; /invocations, like MLflow, wants
application/json (else 415). Limits, from environment variables [defaults]:

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
from werkzeug.exceptions import HTTPException, UnsupportedMediaType
from werkzeug.http import parse_options_header

from ride_duration import config, features
from ride_duration.rides import InvalidRide, json_type, validate_ride

DEFAULT_MAX_RIDES = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_READ_TIMEOUT = 10  # seconds; 1000 rides are 70 kB, which a slow mobile link sends in about 1 s
DISCARD_LIMIT = 16 << 20  # a refused body up to this size is read (and dropped) before the 413
BODY_KEY = "ride_duration.body"  # where the body read once waits in the WSGI environ
# MLflow's input formats (mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS); a request holds exactly one.
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


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
            return error(404, f"no such endpoint {request.path}: use {routes(app)}")
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error: the service could not answer this request")


def routes(app: Flask) -> str:
    """The app's routes as a 404 lists them: "POST /predict, GET /health, ..."."""
    return ", ".join(
        f"{method} {rule.rule}"
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    )


def body() -> bytes:
    """The current request's body, read whole by guard() before the route runs."""
    return request.environ[BODY_KEY]


def parse_rides(body: bytes, max_rides: int) -> tuple[list[dict], bool]:
    """The validated rides of a request body and whether it held one ride (not a list).

    Raises InvalidRide with a message naming what is wrong.
    """
    payload = _decode(body, "send a JSON ride or a list of rides")
    if isinstance(payload, dict):
        return [validate_ride(payload)], True
    if isinstance(payload, list):
        return _validate_list(payload, max_rides, "the list of rides", "rides"), False
    raise InvalidRide(f"the request body must be a JSON object (one ride) or a list of rides, got {json_type(payload)}")


def parse_invocation(body: bytes, content_type: str | None, max_rides: int) -> list[dict]:
    """The validated rides of an MLflow scoring request (POST /invocations), in their order.

    Takes what mlflow.pyfunc.scoring_server takes for these fields: one of MLFLOW_FORMATS (other
    keys, such as "params", are ignored, as MLflow ignores them for a model without params).
    Raises UnsupportedMediaType (415) for a body that is not application/json in UTF-8, and
    InvalidRide (400) for the rest, naming the format and the row.
    """
    mimetype, options = parse_options_header(content_type or "")
    if mimetype.lower() != "application/json":
        raise UnsupportedMediaType(f"/invocations reads application/json (MLflow's JSON formats), got {mimetype!r}")
    if options.get("charset", "utf-8").lower() != "utf-8" or set(options) - {"charset"}:
        raise UnsupportedMediaType(f"/invocations reads application/json in UTF-8 only, got {content_type!r}")
    formats = ", ".join(MLFLOW_FORMATS)
    payload = _decode(body, f"send a JSON object with one of {formats}")
    found = [key for key in MLFLOW_FORMATS if isinstance(payload, dict) and key in payload]
    if len(found) != 1:
        got = f"the keys {', '.join(payload) or '(none)'}" if isinstance(payload, dict) else json_type(payload)
        raise InvalidRide(f"an MLflow scoring request is a JSON object with exactly one of {formats}; got {got}")
    (key,) = found
    data = payload[key]
    if key == "dataframe_split":
        return _validate_list(_split_rows(data), max_rides, "dataframe_split.data", "dataframe_split.data")
    if key in ("instances", "inputs") and isinstance(data, dict):
        return _validate_list(_column_rows(data, key), max_rides, f"every column of {key}", key)
    if not isinstance(data, list):
        accepted = "a list of rides" if key == "dataframe_records" else "a list of rides or a dict of columns"
        raise InvalidRide(f"{key} must be {accepted}, got {json_type(data)}")
    return _validate_list(data, max_rides, key, key)


def _split_rows(split) -> list:
    """dataframe_split's rows as rides: {"columns": [...], "data": [[...], ...], "index": [...]}."""
    if not isinstance(split, dict):
        raise InvalidRide(
            f'dataframe_split must be an object {{"columns": [...], "data": [[...], ...]}}, got {json_type(split)}'
        )
    unknown = set(split) - {"columns", "data", "index"}
    if unknown:
        raise InvalidRide(f"dataframe_split takes columns, data and index only, got {', '.join(sorted(unknown))}")
    columns, rows = split.get("columns"), split.get("data")
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or len(set(columns)) < len(columns)
    ):
        got = repr(columns)[:80] if isinstance(columns, list) else json_type(columns)
        raise InvalidRide(f"dataframe_split.columns must be a list of distinct field names, got {got}")
    missing = [name for name in features.RAW_FIELDS if name not in columns]
    if missing:
        raise InvalidRide(f"dataframe_split.columns is missing field(s): {', '.join(missing)}")
    if not isinstance(rows, list):
        raise InvalidRide(f"dataframe_split.data must be a list of rows, got {json_type(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidRide(f"dataframe_split.data[{i}] must be a list of {len(columns)} values, one per column")
    return [dict(zip(columns, row)) for row in rows]


def _column_rows(columns: dict, key: str) -> list:
    """A dict of columns {"PULocationID": [130, ...], ...} as rides, row by row.

    A dict of single values is one ride, as MLflow reads it for a model with a column signature."""
    missing = [name for name in features.RAW_FIELDS if name not in columns]
    if missing:
        raise InvalidRide(f"{key} is missing field(s): {', '.join(missing)}")
    if not any(isinstance(columns[name], list) for name in features.RAW_FIELDS):
        return [columns]
    for name in features.RAW_FIELDS:
        if not isinstance(columns[name], list):
            raise InvalidRide(f"{key}.{name} must be a list, one value per ride, got {json_type(columns[name])}")
    lengths = {name: len(columns[name]) for name in features.RAW_FIELDS}
    if len(set(lengths.values())) > 1:
        raise InvalidRide(f"{key}'s columns must have the same length, got {lengths}")
    return [dict(zip(features.RAW_FIELDS, values)) for values in zip(*(columns[name] for name in features.RAW_FIELDS))]


def _validate_list(rides: list, max_rides: int, what: str, where: str) -> list[dict]:
    if not rides:
        raise InvalidRide(f"{what} is empty")
    if len(rides) > max_rides:
        raise InvalidRide(f"too many rides: at most {max_rides} per request, got {len(rides)}")
    return [validate_ride(ride, where=f"{where}[{i}]") for i, ride in enumerate(rides)]


def _decode(body: bytes, what_to_send: str):
    if not body.strip():
        raise InvalidRide(f"the request body is empty: {what_to_send}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidRide(f"the request body is not valid JSON ({_short(exc)})") from None


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
