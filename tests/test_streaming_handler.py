"""The Lambda handler: predictions, TEST_RUN, malformed records, undelivered predictions."""

from __future__ import annotations

import base64
import json
import logging
import math

import boto3
import pytest
from streaming_support import (  # noqa: F401  (fixtures)
    COURSE_RIDE,
    MALFORMED,
    TEST_EVENT,
    compact_linear,
    load_lambda,
    model_npz,
    model_on_s3,
    record,
    ride_record,
    unique,
)

from ride_duration import streaming
from ride_duration.local import event_source


def test_course_test_event_holds_the_course_ride():
    event = json.loads(TEST_EVENT.read_text())
    (only,) = event["Records"]
    assert json.loads(base64.b64decode(only["kinesis"]["data"])) == {"ride": COURSE_RIDE, "ride_id": 256}


def test_course_event_predicts_what_the_pipeline_predicts(monkeypatch, model_on_s3, linear_pipeline, compact_linear):
    handler = load_lambda(monkeypatch, MODEL_LOCATION=model_on_s3, TEST_RUN="True").lambda_handler
    result = handler(json.loads(TEST_EVENT.read_text()), None)
    (prediction,) = result["predictions"]
    duration = prediction["prediction"]["ride_duration"]
    assert math.isfinite(duration) and duration > 0
    assert duration == pytest.approx(float(linear_pipeline.predict([COURSE_RIDE])[0]), abs=1e-9)
    assert prediction == {
        "model": "ride_duration_prediction_model",
        "version": compact_linear.version,
        "prediction": {"ride_duration": duration, "ride_id": 256},
    }
    assert result["batchItemFailures"] == [] and result["rejected"] == []


def test_model_location_from_an_mlflow_run(monkeypatch, aws_endpoint, compact_linear):
    bucket = unique("mlflow")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    run_id = "0123abcd" * 4  # an MLflow run id: 32 hex digits
    s3.put_object(Bucket=bucket, Key=f"7/{run_id}/artifacts/compact/model.npz", Body=compact_linear.to_bytes())
    module = load_lambda(monkeypatch, RUN_ID=run_id, MLFLOW_EXPERIMENT_ID="7", MODEL_BUCKET=bucket, TEST_RUN="1")
    assert module.model.version == compact_linear.version


def test_no_model_configured_says_what_to_set(monkeypatch):
    from ride_duration.models import ModelNotFound

    with pytest.raises(ModelNotFound, match="MODEL_LOCATION"):
        load_lambda(monkeypatch)


def _stream(name):
    streaming.ensure_streams([name])
    return name


def _written(name):
    return event_source.read_predictions(name)


def test_predictions_are_written_unless_test_run(monkeypatch, aws_endpoint, model_npz):
    event = json.loads(TEST_EVENT.read_text())
    quiet, loud = _stream(unique("quiet")), _stream(unique("loud"))
    load_lambda(monkeypatch, MODEL_LOCATION=model_npz, TEST_RUN="True", PREDICTIONS_STREAM_NAME=quiet).lambda_handler(
        event, None
    )
    result = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, PREDICTIONS_STREAM_NAME=loud).lambda_handler(
        event, None
    )
    assert _written(quiet) == []
    assert _written(loud) == result["predictions"]


def _mixed_event():
    """Valid rides (ids 1000+) interleaved with one record of each malformed kind."""
    records, valid, bad = [], {}, {}
    for n, (kind, (payload, _)) in enumerate(MALFORMED.items()):
        ride = {"PULocationID": 1 + n, "DOLocationID": 200 - n, "trip_distance": 0.5 + n}
        valid[1000 + n] = ride
        records.append(ride_record(ride, 1000 + n, f"{2 * n:04d}"))
        bad[f"{2 * n + 1:04d}"] = kind
        records.append(record(payload, f"{2 * n + 1:04d}"))
    return {"Records": records}, valid, bad


@pytest.mark.parametrize("policy", [None, "report", "reject"], ids=["default", "report", "reject"])
def test_each_malformed_kind_is_rejected_and_the_valid_rides_are_written(
    monkeypatch, aws_endpoint, model_npz, compact_linear, caplog, policy
):
    """By default (no MALFORMED_RECORDS) every malformed kind is in batchItemFailures with its
    sequence number, Lambda's contract; MALFORMED_RECORDS=reject keeps them out of it."""
    stream = _stream(unique("mixed"))
    env = {} if policy is None else {"MALFORMED_RECORDS": policy}
    handler = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, PREDICTIONS_STREAM_NAME=stream, **env).lambda_handler
    event, valid, bad = _mixed_event()
    with caplog.at_level(logging.WARNING, logger="ride_duration.streaming"):
        result = handler(event, None)

    written = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in _written(stream)}
    expected = dict(zip(valid, compact_linear.predict(list(valid.values())).tolist()))
    assert written == pytest.approx(expected, abs=1e-12)
    rejected = {r["itemIdentifier"]: r["reason"] for r in result["rejected"]}
    assert set(rejected) == set(bad)
    for sequence_number, kind in bad.items():
        assert MALFORMED[kind][1] in rejected[sequence_number], kind
        assert any(sequence_number in m and rejected[sequence_number] in m for m in caplog.messages), kind
    failures = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    assert failures == ([] if policy == "reject" else list(bad))


class FailingFor:
    """A Kinesis client that refuses, on every attempt, the records with the given ride ids."""

    def __init__(self, refused):
        self.refused, self.written = {str(i) for i in refused}, []

    def put_records(self, StreamName, Records):
        results = []
        for entry in Records:
            if entry["PartitionKey"] in self.refused:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"})
            else:
                self.written.append(json.loads(entry["Data"]))
                results.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


@pytest.mark.parametrize(
    "policy, expected", [(None, ["002", "009", "004"]), ("reject", ["002", "004"])], ids=["default", "reject"]
)
def test_undelivered_predictions_are_reported_for_lambda_to_retry(monkeypatch, model_npz, caplog, policy, expected):
    """Under either malformed-record policy; the bad record 009 too by default, in batch order."""
    env = {} if policy is None else {"MALFORMED_RECORDS": policy}
    lam = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, **env)
    client = FailingFor(refused=[2, 4])
    # The handler's writer, on a client that refuses rides 2 and 4 on every attempt.
    writer = streaming.KinesisWriter("predictions", client=client, max_attempts=3, sleep=lambda s: None)
    monkeypatch.setattr(lam, "writer", writer)
    rides = [ride_record(COURSE_RIDE, ride_id, f"{ride_id:03d}") for ride_id in range(1, 6)]
    event = {"Records": rides[:2] + [record("bad", "009")] + rides[2:]}
    with caplog.at_level(logging.ERROR, logger="ride_duration.streaming"):
        result = lam.lambda_handler(event, None)
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == expected
    assert sorted(p["prediction"]["ride_id"] for p in client.written) == [1, 3, 5]
    assert len(result["predictions"]) == 5
    assert sum("undelivered" in m for m in caplog.messages) == 2


def test_one_model_call_per_batch(monkeypatch, model_npz, compact_linear):
    calls = []

    class CountingModel:
        version = "v"

        def predict(self, rides):
            calls.append(len(rides))
            return compact_linear.predict(rides)

    lam = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, TEST_RUN="True")
    monkeypatch.setattr(lam, "model", CountingModel())
    event = {"Records": [ride_record(COURSE_RIDE, i, str(i)) for i in range(50)] + [record("x", "99")]}
    result = lam.lambda_handler(event, None)
    assert calls == [50] and len(result["predictions"]) == 50
    assert lam.lambda_handler({"Records": [record("x", "1")]}, None)["predictions"] == []
    assert calls == [50]


@pytest.mark.parametrize("policy", ["report", "reject"])
def test_prediction_service_runs_the_handlers_steps(monkeypatch, model_npz, compact_linear, policy):
    """PredictionService (benchmarks, the demo) answers as the deployed handler does."""
    lam = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, TEST_RUN="True", MALFORMED_RECORDS=policy)
    service = streaming.PredictionService(compact_linear, report_malformed=policy == "report")
    event, _, _ = _mixed_event()
    assert service.handle(event) == lam.lambda_handler(event, None)
