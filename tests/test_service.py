"""The deployed routes (both predict.py files, imported as gunicorn does) through Flask's test
client: answers and every class of bad input, each with its status and an error that names
what is wrong. The checks and errors themselves live in ride_duration.service."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

from ride_duration.compact import CompactModel
from ride_duration.features import MAX_TRIP_DISTANCE

RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}
MAX_RIDES, MAX_BYTES = 50, 4096
DISTANCE_RANGE = f"between 0 and {MAX_TRIP_DISTANCE:g}"  # as the errors print it
REPO = Path(__file__).resolve().parent.parent
# Each service folder and the variable its predict.py takes a model file from.
MODEL_VARIABLE = {"web-service": "MODEL_PATH", "web-service-mlflow": "MODEL_URI"}
MODEL_VARIABLES = ("MODEL_PATH", "MODEL_URI", "RUN_ID", "MODEL_ID")
_fresh_names = itertools.count()


def import_predict(folder: str, model_file: Path, **env: str):
    """A fresh import of `folder`/predict.py serving `model_file`, with `env` set while it loads.

    Its own module name each time, so that each import builds its own app and reads its own limits."""
    with pytest.MonkeyPatch.context() as patch:
        for name in MODEL_VARIABLES + ("MAX_RIDES_PER_REQUEST", "MAX_REQUEST_BYTES"):
            patch.delenv(name, raising=False)
        patch.setenv(MODEL_VARIABLE[folder], str(model_file))
        for name, value in env.items():
            patch.setenv(name, value)
        name = f"deployed_predict_{next(_fresh_names)}"
        spec = importlib.util.spec_from_file_location(name, REPO / folder / "predict.py")
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, name, module)  # as an import does, while the module runs
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compact(linear_pipeline):
    return CompactModel.from_pipeline(linear_pipeline, version="lin_reg-test")


@pytest.fixture(scope="module")
def model_file(compact, tmp_path_factory):
    return compact.save(tmp_path_factory.mktemp("service") / "lin_reg-test.npz")


@pytest.fixture(scope="module", params=sorted(MODEL_VARIABLE))
def folder(request):
    return request.param


@pytest.fixture(scope="module")
def deployed(folder, model_file):
    limits = {"MAX_RIDES_PER_REQUEST": str(MAX_RIDES), "MAX_REQUEST_BYTES": str(MAX_BYTES)}
    return import_predict(folder, model_file, **limits)


@pytest.fixture(scope="module")
def client(deployed):
    assert not deployed.app.debug
    return deployed.app.test_client()


def with_model(folder, model_file, monkeypatch, model):
    """A test client of a fresh deployed app whose routes call `model`."""
    module = import_predict(folder, model_file)
    monkeypatch.setattr(module, "model", model)
    return module.app.test_client()


def post(client, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = client.post("/predict", data=data, **kwargs)
    return response.status_code, response.get_json()


def test_one_ride_answers_the_pipeline_prediction(client, linear_pipeline):
    status, answer = post(client, RIDE, content_type="application/json")
    assert status == 200
    assert answer["model_version"] == "lin_reg-test"
    assert answer["duration"] == pytest.approx(linear_pipeline.predict([RIDE])[0], rel=1e-12)
    assert set(answer) == {"duration", "model_version"}


def test_a_list_answers_a_list_in_the_same_order(client, linear_pipeline, trips):
    rides = trips[1][["PULocationID", "DOLocationID", "trip_distance"]].head(MAX_RIDES).to_dict("records")
    status, answers = post(client, rides)
    assert status == 200
    assert [a["duration"] for a in answers] == pytest.approx(linear_pipeline.predict(rides).tolist(), rel=1e-12)
    assert {a["model_version"] for a in answers} == {"lin_reg-test"}


def test_the_list_is_one_model_call(compact, folder, model_file, monkeypatch):
    calls = []

    class Counting:
        version = "counting"

        def predict(self, rides):
            calls.append(len(rides))
            return compact.predict(rides)

    status, answers = post(with_model(folder, model_file, monkeypatch, Counting()), [RIDE] * 7)
    assert status == 200 and len(answers) == 7
    assert calls == [7]


def test_extra_fields_are_ignored(client):
    plain = post(client, RIDE)[1]
    status, answer = post(client, {**RIDE, "ride_id": "abc", "passengers": [1, 2], "note": None})
    assert status == 200 and answer == plain


def test_whole_floats_and_integer_distances_are_accepted(client):
    assert post(client, {"PULocationID": 10.0, "DOLocationID": 50, "trip_distance": 40})[1] == post(client, RIDE)[1]


def test_the_body_is_read_as_json_whatever_its_content_type(client):
    assert post(client, json.dumps(RIDE), content_type="text/plain")[0] == 200


def test_health_answers_the_model_version(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "model_version": "lin_reg-test"}


BAD_INPUT = [
    # (case, body, status, words the error must contain)
    ("empty body", b"", 400, ["empty"]),
    ("not JSON", b"PULocationID=10", 400, ["not valid JSON"]),
    ("truncated JSON", b'{"PULocationID": 10,', 400, ["not valid JSON"]),
    ("not UTF-8", b'{"PULocationID": "\xff"}', 400, ["not valid JSON"]),
    ("nested too deep", b"[" * 100_000, 413, ["larger than 4096 bytes"]),
    ("a bare number", b"42", 400, ["JSON object", "got a number"]),
    ("a bare string", b'"ride"', 400, ["got a string"]),
    ("null", b"null", 400, ["got null"]),
    ("missing field", {"PULocationID": 10, "DOLocationID": 50}, 400, ["missing", "trip_distance"]),
    ("all fields missing", {}, 400, ["PULocationID", "DOLocationID", "trip_distance"]),
    ("string distance", {**RIDE, "trip_distance": "40"}, 400, ["trip_distance", "string"]),
    ("string zone", {**RIDE, "PULocationID": "10"}, 400, ["PULocationID", "string"]),
    ("boolean zone", {**RIDE, "DOLocationID": True}, 400, ["DOLocationID", "boolean"]),
    ("boolean distance", {**RIDE, "trip_distance": False}, 400, ["trip_distance", "boolean"]),
    ("null zone", {**RIDE, "PULocationID": None}, 400, ["PULocationID", "null"]),
    ("null distance", {**RIDE, "trip_distance": None}, 400, ["trip_distance", "null"]),
    (
        "NaN distance",
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": NaN}',
        400,
        ["trip_distance", "finite"],
    ),
    (
        "Infinity distance",
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": Infinity}',
        400,
        ["trip_distance", "finite"],
    ),
    (
        "-Infinity distance",
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": -Infinity}',
        400,
        ["trip_distance", "finite"],
    ),
    ("NaN zone", b'{"PULocationID": NaN, "DOLocationID": 50, "trip_distance": 4}', 400, ["PULocationID"]),
    (
        "overflowing number",
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 1e999}',
        400,
        ["trip_distance", "finite"],
    ),
    ("negative distance", {**RIDE, "trip_distance": -1.5}, 400, ["trip_distance", DISTANCE_RANGE]),
    ("absurd distance", {**RIDE, "trip_distance": 12_000}, 400, ["trip_distance", DISTANCE_RANGE]),
    (
        "integer too large for a float",
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 1' + b"0" * 400 + b"}",
        400,
        ["trip_distance", DISTANCE_RANGE],
    ),
    ("zone 0", {**RIDE, "PULocationID": 0}, 400, ["PULocationID", "between 1 and 265"]),
    ("zone 266", {**RIDE, "DOLocationID": 266}, 400, ["DOLocationID", "between 1 and 265"]),
    ("negative zone", {**RIDE, "DOLocationID": -3}, 400, ["DOLocationID", "between 1 and 265"]),
    ("fractional zone", {**RIDE, "PULocationID": 10.5}, 400, ["PULocationID", "integer"]),
    ("list zone", {**RIDE, "PULocationID": [10]}, 400, ["PULocationID", "list"]),
    ("empty list", [], 400, ["empty"]),
    ("list too long", [RIDE] * (MAX_RIDES + 1), 400, [f"at most {MAX_RIDES}", f"got {MAX_RIDES + 1}"]),
    ("bad ride inside a list", [RIDE, {**RIDE, "trip_distance": "far"}], 400, ["rides[1].trip_distance"]),
    ("non-object inside a list", [RIDE, 7], 400, ["rides[1]", "JSON object"]),
    ("body over the size limit", json.dumps([{**RIDE, "pad": "x" * 100}] * 40), 413, ["larger than 4096 bytes"]),
]


@pytest.mark.parametrize("case, body, status, words", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_gets_a_4xx_naming_the_problem(client, case, body, status, words):
    got_status, answer = post(client, body, content_type="application/json")
    assert got_status == status
    assert set(answer) == {"error"}
    for word in words:
        assert word in answer["error"]


def test_a_body_just_under_the_limit_is_read(client):
    body = json.dumps({**RIDE, "pad": "x" * (MAX_BYTES - 120)})
    assert len(body) <= MAX_BYTES
    assert post(client, body)[0] == 200


def test_wrong_method_and_unknown_path_answer_json(client):
    response = client.get("/predict")
    assert response.status_code == 405 and "use POST" in response.get_json()["error"]
    response = client.post("/predict/v2", json=RIDE)
    assert response.status_code == 404 and "/predict/v2" in response.get_json()["error"]


def test_a_failing_model_gets_a_json_500_not_a_traceback(folder, model_file, monkeypatch):
    class Broken:
        version = "broken"

        def predict(self, rides):
            raise RuntimeError("secret internals")

    response = with_model(folder, model_file, monkeypatch, Broken()).post("/predict", json=RIDE)
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error: the service could not answer this request"}


def test_limits_come_from_the_environment(folder, model_file):
    client = import_predict(folder, model_file, MAX_RIDES_PER_REQUEST="2", MAX_REQUEST_BYTES="200").app.test_client()
    assert post(client, [RIDE] * 2)[0] == 200
    assert "at most 2" in post(client, [RIDE] * 3)[1]["error"]
    assert post(client, {**RIDE, "pad": "x" * 200})[0] == 413
