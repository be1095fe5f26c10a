"""MLflow's scoring protocol on both services (POST /invocations, GET /ping), through Flask's
test client: the four input formats as MLflow's documentation writes them, a request built
by MLflow's own client, and every class of bad input answered with the JSON 4xx of /predict."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from test_service import import_predict

RIDES = [
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    {"PULocationID": 43, "DOLocationID": 238, "trip_distance": 1.2},
    {"PULocationID": 132, "DOLocationID": 48, "trip_distance": 17.5},
]
FIELDS = ["PULocationID", "DOLocationID", "trip_distance"]
COLUMNS = {name: [ride[name] for ride in RIDES] for name in FIELDS}
MAX_RIDES, MAX_BYTES = 5, 2048
JSON = "application/json"

# The shapes of https://mlflow.org/docs/latest/ml/deployment/deploy-model-locally/ ("Inference
# Server Specification"), with the ride's fields for the docs' a, b, c.
DOCUMENTED = {
    "dataframe_split": {"dataframe_split": {"columns": FIELDS, "data": [[r[n] for n in FIELDS] for r in RIDES]}},
    "dataframe_split with an index": {
        "dataframe_split": {"index": [7, 8, 9], "columns": FIELDS, "data": [[r[n] for n in FIELDS] for r in RIDES]}
    },
    "dataframe_records": {"dataframe_records": RIDES},
    "instances as records": {"instances": RIDES},
    "instances as columns": {"instances": COLUMNS},
    "inputs as records": {"inputs": RIDES},
    "inputs as columns": {"inputs": COLUMNS},
    "columns in another order, extra ones ignored": {
        "dataframe_split": {
            "columns": ["trip_distance", "VendorID", "DOLocationID", "PULocationID"],
            "data": [[r["trip_distance"], 2, r["DOLocationID"], r["PULocationID"]] for r in RIDES],
        }
    },
}


@pytest.fixture(scope="module")
def model_file(linear_pipeline, tmp_path_factory):
    from ride_duration.compact import CompactModel

    compact = CompactModel.from_pipeline(linear_pipeline, version="lin_reg-test")
    return compact.save(tmp_path_factory.mktemp("invocations") / "lin_reg-test.npz")


@pytest.fixture(scope="module", params=["web-service", "web-service-mlflow"])
def client(request, model_file):
    limits = {"MAX_RIDES_PER_REQUEST": str(MAX_RIDES), "MAX_REQUEST_BYTES": str(MAX_BYTES)}
    return import_predict(request.param, model_file, **limits).app.test_client()


@pytest.fixture(scope="module")
def expected(client):
    """What /predict answers for RIDES: /invocations must give the same minutes."""
    response = client.post("/predict", json=RIDES)
    assert response.status_code == 200
    return [answer["duration"] for answer in response.get_json()]


def invoke(client, body, content_type=JSON):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/invocations", data=data, headers=headers)
    return response.status_code, response.get_json()


@pytest.mark.parametrize("payload", DOCUMENTED.values(), ids=DOCUMENTED.keys())
def test_each_documented_format_answers_predictions_in_request_order(client, expected, payload):
    status, answer = invoke(client, payload)
    assert status == 200 and answer == {"predictions": expected}
    assert len(set(expected)) == len(RIDES)  # distinct rides, so the order is checked


@pytest.mark.parametrize("payload", DOCUMENTED.values(), ids=DOCUMENTED.keys())
def test_mlflows_own_parser_reads_each_documented_payload_as_the_three_rides(payload):
    """So these payloads are MLflow's, not an invention of this project."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    parsed = pd.DataFrame(infer_and_parse_data(payload))
    assert parsed[FIELDS].astype(float).values.tolist() == [[float(r[n]) for n in FIELDS] for r in RIDES]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json;", "Application/JSON"])
def test_json_with_its_usual_content_type_variants_is_read(client, expected, content_type):
    assert invoke(client, DOCUMENTED["dataframe_records"], content_type) == (200, {"predictions": expected})


@pytest.mark.parametrize("key", ["inputs", "instances"])
def test_a_dict_of_single_values_is_one_ride(client, expected, key):
    assert invoke(client, {key: RIDES[1]}) == (200, {"predictions": expected[1:2]})


def test_ping_answers_what_health_answers(client):
    ping, health = client.get("/ping"), client.get("/health")
    assert ping.status_code == 200 and ping.get_json() == health.get_json()
    assert ping.get_json()["model_version"] == "lin_reg-test"


def test_a_request_built_by_mlflows_own_client_is_answered(client, expected, monkeypatch):
    """mlflow's ScoringServerClient (what MLflow's tests and tools use against `mlflow models serve`)
    serialises a pandas DataFrame and parses the answer itself; its HTTP calls go to the test client."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server import client as scoring_client

    sent = []

    def to_app(method):
        def call(url, data=None, headers=None):
            sent.append((method, urlsplit(url).path, headers, data))
            response = getattr(client, method)(urlsplit(url).path, data=data, headers=headers)
            return SimpleNamespace(status_code=response.status_code, text=response.get_data(as_text=True))

        return call

    monkeypatch.setattr(scoring_client.requests, "post", to_app("post"))
    monkeypatch.setattr(scoring_client.requests, "get", to_app("get"))
    mlflow_client = scoring_client.ScoringServerClient("127.0.0.1", 5000)
    mlflow_client.wait_server_ready(timeout=5)  # GET /ping
    predictions = mlflow_client.invoke(pd.DataFrame(RIDES)).get_predictions()
    assert predictions.iloc[:, 0].tolist() == expected
    # What it sent: MLflow's own serialisation of a DataFrame, dataframe_split with pandas' index.
    method, path, headers, body = sent[-1]
    assert (method, path, headers) == ("post", "/invocations", {"Content-Type": JSON})
    assert json.loads(body) == {
        "dataframe_split": {"index": [0, 1, 2], **DOCUMENTED["dataframe_split"]["dataframe_split"]}
    }


def test_invocations_is_one_model_call_like_predict(client):
    status, answer = invoke(client, {"instances": [RIDES[0]] * MAX_RIDES})
    assert status == 200 and len(set(answer["predictions"])) == 1 and len(answer["predictions"]) == MAX_RIDES


SPLIT = DOCUMENTED["dataframe_split"]["dataframe_split"]
BAD = {
    "not JSON": (b"{dataframe_split", JSON, 400, ["not valid JSON"]),
    "empty body": (b"", JSON, 400, ["empty", "dataframe_split"]),
    "a list, not an object": (RIDES, JSON, 400, ["exactly one of", "a list"]),
    "no format key": ({"data": RIDES}, JSON, 400, ["exactly one of", "dataframe_records", "the keys data"]),
    "two format keys": ({"instances": RIDES, "inputs": RIDES}, JSON, 400, ["exactly one of", "instances, inputs"]),
    "the ride itself, as /predict takes it": (RIDES[0], JSON, 400, ["exactly one of", "PULocationID"]),
    "split: a column missing": (
        {"dataframe_split": {"columns": FIELDS[:2], "data": [[130, 205]]}},
        JSON,
        400,
        ["dataframe_split.columns is missing", "trip_distance"],
    ),
    "split: no columns": ({"dataframe_split": {"data": SPLIT["data"]}}, JSON, 400, ["dataframe_split.columns"]),
    "split: a short row": (
        {"dataframe_split": {"columns": FIELDS, "data": [[130, 205, 3.66], [130, 205]]}},
        JSON,
        400,
        ["dataframe_split.data[1]", "3 values"],
    ),
    "split: an unknown key": ({"dataframe_split": {**SPLIT, "rows": []}}, JSON, 400, ["rows"]),
    "split: a list": ({"dataframe_split": SPLIT["data"]}, JSON, 400, ["dataframe_split must be an object"]),
    "records: a string for a number": (
        {"dataframe_records": [RIDES[0], {**RIDES[1], "trip_distance": "far"}]},
        JSON,
        400,
        ["dataframe_records[1].trip_distance", "'far'"],
    ),
    "records: out of range": (
        {"dataframe_records": [{**RIDES[0], "PULocationID": 300}]},
        JSON,
        400,
        ["dataframe_records[0].PULocationID", "between 1 and 265"],
    ),
    "records: a field missing": (
        {"dataframe_records": [{"PULocationID": 130, "DOLocationID": 205}]},
        JSON,
        400,
        ["dataframe_records[0] is missing", "trip_distance"],
    ),
    "records: an object": ({"dataframe_records": RIDES[0]}, JSON, 400, ["dataframe_records must be a list"]),
    "records: empty": ({"dataframe_records": []}, JSON, 400, ["dataframe_records is empty"]),
    "instances: rows without names": ({"instances": [[130, 205, 3.66]]}, JSON, 400, ["instances[0] must be"]),
    "inputs: columns of different lengths": (
        {"inputs": {**COLUMNS, "trip_distance": [3.66]}},
        JSON,
        400,
        ["same length"],
    ),
    # MLflow would repeat the single value down the column; here that is more likely a mistake.
    "inputs: one single value among columns": (
        {"inputs": {**COLUMNS, "trip_distance": 3.66}},
        JSON,
        400,
        ["inputs.trip_distance must be a list"],
    ),
    "inputs: a column missing": ({"inputs": {"PULocationID": [130]}}, JSON, 400, ["inputs is missing"]),
    "inputs: a null": ({"inputs": {**COLUMNS, "DOLocationID": [205, None, 48]}}, JSON, 400, ["inputs[1].DOLocation"]),
    "too many rows (records)": (
        {"dataframe_records": [RIDES[0]] * (MAX_RIDES + 1)},
        JSON,
        400,
        [f"at most {MAX_RIDES}"],
    ),
    "too many rows (split)": (
        {"dataframe_split": {"columns": FIELDS, "data": [SPLIT["data"][0]] * (MAX_RIDES + 1)}},
        JSON,
        400,
        [f"at most {MAX_RIDES}"],
    ),
    "too many rows (columns)": (
        {"inputs": {name: [RIDES[0][name]] * (MAX_RIDES + 1) for name in FIELDS}},
        JSON,
        400,
        [f"at most {MAX_RIDES}"],
    ),
    "larger than MAX_REQUEST_BYTES": ({"inputs": RIDES, "pad": "x" * MAX_BYTES}, JSON, 413, [str(MAX_BYTES)]),
    # MLflow reads CSV and parquet too; these services read its JSON formats only.
    "CSV": (b"PULocationID,DOLocationID,trip_distance\n130,205,3.66\n", "text/csv", 415, ["application/json"]),
    "no Content-Type": (DOCUMENTED["inputs as records"], None, 415, ["application/json"]),
    "text/plain": (DOCUMENTED["inputs as records"], "text/plain", 415, ["application/json", "text/plain"]),
    "not UTF-8 (as MLflow)": (DOCUMENTED["inputs as records"], "application/json; charset=latin-1", 415, ["UTF-8"]),
    "another parameter (as MLflow)": (DOCUMENTED["inputs as records"], "application/json; format=pandas", 415, []),
}


@pytest.mark.parametrize("body, content_type, status, words", BAD.values(), ids=BAD.keys())
def test_bad_input_is_a_json_4xx_naming_what_is_wrong(client, body, content_type, status, words):
    got, answer = invoke(client, body, content_type)
    assert got == status and set(answer) == {"error"}
    for word in words:
        assert word in answer["error"]


def test_another_path_lists_the_routes_mlflow_clients_use_too(client):
    response = client.get("/score")
    assert response.status_code == 404
    message = response.get_json()["error"]
    for route in ("POST /predict", "POST /invocations", "GET /health", "GET /ping"):
        assert route in message


def test_get_on_invocations_says_to_post(client):
    response = client.get("/invocations")
    assert response.status_code == 405 and "use POST" in response.get_json()["error"]
