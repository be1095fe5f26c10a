"""The Lambda handler: predictions, TEST_RUN, malformed records to the dead-letter queue, undelivered predictions."""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from datetime import datetime

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
    new_queue,
    read_queue,
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
    assert result["written"] == 0 and result["dead_lettered"] == 0  # TEST_RUN


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


@pytest.mark.parametrize("policy", ["report", "reject"])
def test_the_removed_malformed_records_setting_is_refused(monkeypatch, model_npz, policy):
    from ride_duration.config import SettingError

    with pytest.raises(SettingError, match="MALFORMED_RECORDS is no longer supported.*dead-letter queue"):
        load_lambda(monkeypatch, MODEL_LOCATION=model_npz, MALFORMED_RECORDS=policy)


def _stream(name):
    streaming.ensure_streams([name])
    return name


def _written(name):
    return event_source.read_predictions(name)


def test_test_run_writes_nothing_anywhere_and_otherwise_both_are_written(monkeypatch, aws_endpoint, model_npz):
    event = json.loads(TEST_EVENT.read_text())
    event["Records"].append(record("not base64 %%%", "77"))
    quiet, loud = _stream(unique("quiet")), _stream(unique("loud"))
    quiet_queue, loud_queue = new_queue(), new_queue()
    dry = load_lambda(
        monkeypatch,
        MODEL_LOCATION=model_npz,
        TEST_RUN="True",
        PREDICTIONS_STREAM_NAME=quiet,
        DEAD_LETTER_QUEUE=quiet_queue,
    ).lambda_handler(event, None)
    result = load_lambda(
        monkeypatch, MODEL_LOCATION=model_npz, PREDICTIONS_STREAM_NAME=loud, DEAD_LETTER_QUEUE=loud_queue
    ).lambda_handler(event, None)
    assert _written(quiet) == [] and read_queue(quiet_queue) == []
    assert dry["batchItemFailures"] == [] and [r["itemIdentifier"] for r in dry["rejected"]] == ["77"]
    assert _written(loud) == result["predictions"] and result["written"] == 1
    assert [d["record"]["sequenceNumber"] for d in read_queue(loud_queue)] == ["77"] and result["dead_lettered"] == 1


def _mixed_event():
    """Valid rides (ids 1000+) interleaved with one record of each malformed kind."""
    records, valid, bad = [], {}, {}
    for n, (kind, (payload, _)) in enumerate(MALFORMED.items()):
        ride = {"PULocationID": 1 + n, "DOLocationID": 200 - n, "trip_distance": 0.5 + n}
        valid[1000 + n] = ride
        records.append(ride_record(ride, 1000 + n, f"{2 * n:04d}"))
        bad[f"{2 * n + 1:04d}"] = kind
        records.append(record(payload, f"{2 * n + 1:04d}", partition_key=f"bad-{n}"))
    return {"Records": records}, valid, bad


def test_each_malformed_kind_goes_to_the_dead_letter_queue_and_not_back_to_lambda(
    monkeypatch, aws_endpoint, model_npz, compact_linear, caplog
):
    stream, queue = _stream(unique("mixed")), new_queue()
    handler = load_lambda(
        monkeypatch, MODEL_LOCATION=model_npz, PREDICTIONS_STREAM_NAME=stream, DEAD_LETTER_QUEUE=queue
    ).lambda_handler
    event, valid, bad = _mixed_event()
    before = time.time()
    with caplog.at_level(logging.WARNING, logger="ride_duration.streaming"):
        result = handler(event, None)

    written = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in _written(stream)}
    expected = dict(zip(valid, compact_linear.predict(list(valid.values())).tolist()))
    assert written == pytest.approx(expected, abs=1e-12)
    assert result["batchItemFailures"] == []  # a record that can never succeed is not retried
    assert result["dead_lettered"] == len(bad) and result["written"] == len(valid)
    letters = {d["record"]["sequenceNumber"]: d for d in read_queue(queue)}
    assert set(letters) == set(bad)
    sent = {r["kinesis"]["sequenceNumber"]: r for r in event["Records"]}
    for sequence_number, kind in bad.items():
        letter = letters[sequence_number]
        assert letter["condition"] == "MalformedRecord" and MALFORMED[kind][1] in letter["reason"], kind
        assert letter["record"]["data"] == sent[sequence_number]["kinesis"]["data"], kind  # the raw data, base64
        assert letter["record"]["partitionKey"] == sent[sequence_number]["kinesis"]["partitionKey"]
        stamped = datetime.fromisoformat(letter["timestamp"].replace("Z", "+00:00")).timestamp()
        assert before - 1 <= stamped <= time.time() + 1
        assert any(sequence_number in m and letter["reason"] in m for m in caplog.messages), kind
    assert {r["itemIdentifier"]: r["reason"] for r in result["rejected"]} == {s: letters[s]["reason"] for s in bad}


def test_a_malformed_record_the_queue_does_not_take_goes_back_to_lambda(monkeypatch, aws_endpoint, model_npz, caplog):
    """Never lost: if the dead-letter queue cannot take it, Lambda must retry it."""
    stream = _stream(unique("no-queue"))
    handler = load_lambda(
        monkeypatch, MODEL_LOCATION=model_npz, PREDICTIONS_STREAM_NAME=stream, DEAD_LETTER_QUEUE=unique("missing")
    ).lambda_handler
    event = {"Records": [ride_record(COURSE_RIDE, 1, "001"), record(b"not json", "002"), record(b"[]", "003")]}
    with caplog.at_level(logging.ERROR, logger="ride_duration.streaming"):
        result = handler(event, None)
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == ["002", "003"]
    assert result["dead_lettered"] == 0 and result["written"] == 1
    assert any("2 of 2 malformed records not taken" in m and "queue does not exist" in m for m in caplog.messages)


def test_a_large_malformed_record_is_cut_in_its_dead_letter_and_still_found(monkeypatch, aws_endpoint, model_npz):
    queue = new_queue()
    lam = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, TEST_RUN="True")
    huge = b"x" * 400_000  # not JSON; its base64 is larger than a message may be
    result = lam.handle({"Records": [record(huge, "42")]}, lam.model, None, streaming.DeadLetterQueue(queue))
    (letter,) = read_queue(queue)
    assert result["batchItemFailures"] == [] and result["dead_lettered"] == 1
    assert letter["record"]["dataTruncated"] is True and letter["record"]["sequenceNumber"] == "42"
    assert letter["record"]["dataLength"] == len(base64.b64encode(huge))
    assert base64.b64encode(huge).decode().startswith(letter["record"]["data"])


def test_dead_letters_are_sent_ten_and_at_most_256_kib_a_call():
    calls = []

    class Recorder:
        def send_message_batch(self, QueueUrl, Entries):
            calls.append([len(e["MessageBody"]) for e in Entries])
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    queue = streaming.DeadLetterQueue("http://queue/url", client=Recorder())
    assert queue.send([{"n": n} for n in range(25)]) == []
    assert [len(c) for c in calls] == [10, 10, 5]
    calls.clear()
    assert queue.send([{"pad": "x" * 100_000} for _ in range(5)]) == []
    assert [len(c) for c in calls] == [2, 2, 1] and all(sum(c) <= streaming.MAX_MESSAGE_BYTES for c in calls)


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


def test_undelivered_predictions_go_back_to_lambda_with_a_count(monkeypatch, aws_endpoint, model_npz, caplog):
    queue = new_queue()
    lam = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, DEAD_LETTER_QUEUE=queue)
    client = FailingFor(refused=[2, 4])
    # The handler's writer, on a client that refuses rides 2 and 4 on every attempt.
    monkeypatch.setattr(lam, "writer", streaming.KinesisWriter("p", client=client, max_attempts=3, sleep=lambda s: 0))
    rides = [ride_record(COURSE_RIDE, ride_id, f"{ride_id:03d}") for ride_id in range(1, 6)]
    event = {"Records": rides[:2] + [record("bad", "009")] + rides[2:]}
    with caplog.at_level(logging.ERROR, logger="ride_duration.streaming"):
        result = lam.lambda_handler(event, None)
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == ["002", "004"]  # the bad 009 is not there
    assert sorted(p["prediction"]["ride_id"] for p in client.written) == [1, 3, 5] and result["written"] == 3
    assert len(result["predictions"]) == 5 and [d["record"]["sequenceNumber"] for d in read_queue(queue)] == ["009"]
    (line,) = [m for m in caplog.messages if "undelivered" in m]
    assert "2 of 5 predictions undelivered after 3 PutRecords attempt(s)" in line
    assert "2 ProvisionedThroughputExceededException" in line


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
