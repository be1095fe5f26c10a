"""Helpers for the streaming tests: a model on the S3 stand-in, fresh Lambda modules, events, queues."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_EVENT = REPO / "streaming" / "event.json"
COURSE_RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
# What the Lambda reads; cleared before each cold start so that the outer environment does not leak in.
LAMBDA_SETTINGS = (
    "MODEL_LOCATION",
    "RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "TEST_RUN",
    "MALFORMED_RECORDS",
    "DEAD_LETTER_QUEUE",
    "PREDICTIONS_STREAM_NAME",
)


def unique(prefix: str) -> str:
    """A stream or bucket name no other test uses (the moto server lives for the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def compact_linear(linear_pipeline):
    from ride_duration.compact import CompactModel

    return CompactModel.from_pipeline(linear_pipeline, version="lin_reg-test")


@pytest.fixture(scope="session")
def model_npz(compact_linear, tmp_path_factory) -> Path:
    return compact_linear.save(tmp_path_factory.mktemp("stream-model") / "model.npz")


@pytest.fixture
def model_on_s3(aws_endpoint, compact_linear) -> str:
    """The linear model's compact export uploaded to a fresh bucket of the S3 stand-in."""
    import boto3

    bucket = unique("models")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="stream/model.npz", Body=compact_linear.to_bytes())
    return f"s3://{bucket}/stream/model.npz"


def load_lambda(monkeypatch, **env):
    """streaming/lambda_function.py imported afresh (a cold start) with this environment."""
    from ride_duration.local.streaming_demo import import_lambda_function

    for name in LAMBDA_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return import_lambda_function()


def new_queue(prefix: str = "dead-letters") -> str:
    """A fresh dead-letter queue on the SQS stand-in; its URL."""
    from ride_duration import streaming

    return streaming.ensure_dead_letter_queue(unique(prefix))[0]


def read_queue(url: str) -> list[dict]:
    """Every message body in the queue, parsed, and the messages deleted (moto reads a short queue faster)."""
    import boto3

    sqs, bodies = boto3.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not messages:
            return bodies
        bodies += [json.loads(m["Body"]) for m in messages]
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)


def record(payload: bytes | str, sequence_number: str, partition_key: str = "k") -> dict:
    """One record of a Lambda Kinesis event; str payloads are sent as they are (not base64)."""
    data = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": sequence_number,
            "data": data,
            "approximateArrivalTimestamp": 1654161514.132,
        },
        "eventSource": "aws:kinesis",
        "eventID": f"shardId-000000000000:{sequence_number}",
    }


def ride_record(ride, ride_id, sequence_number: str) -> dict:
    return record(json.dumps({"ride": ride, "ride_id": ride_id}).encode(), sequence_number, str(ride_id))


# Every kind of bad record the handler must reject, each with a word its reason must contain.
MALFORMED = {
    "not base64": ("%%% not base64 %%%", "base64"),
    "not JSON": (b"\x00\xffnot json", "JSON"),
    "JSON but not an object": (b"[1, 2, 3]", "object"),
    "no ride": (json.dumps({"ride_id": 1}).encode(), "ride"),
    "no ride_id": (json.dumps({"ride": COURSE_RIDE}).encode(), "ride_id"),
    "ride_id a float": (json.dumps({"ride": COURSE_RIDE, "ride_id": 1.5}).encode(), "ride_id"),
    "ride_id a boolean": (json.dumps({"ride": COURSE_RIDE, "ride_id": True}).encode(), "ride_id"),
    "ride_id empty": (json.dumps({"ride": COURSE_RIDE, "ride_id": ""}).encode(), "ride_id"),
    "ride not an object": (json.dumps({"ride": "130-205", "ride_id": 1}).encode(), "object"),
    "field missing": (
        json.dumps({"ride": {"PULocationID": 130, "DOLocationID": 205}, "ride_id": 1}).encode(),
        "trip_distance",
    ),
    "id a string": (
        json.dumps({"ride": {**COURSE_RIDE, "PULocationID": "130"}, "ride_id": 1}).encode(),
        "PULocationID",
    ),
    "id a boolean": (
        json.dumps({"ride": {**COURSE_RIDE, "DOLocationID": True}, "ride_id": 1}).encode(),
        "DOLocationID",
    ),
    "id null": (json.dumps({"ride": {**COURSE_RIDE, "PULocationID": None}, "ride_id": 1}).encode(), "PULocationID"),
    "id out of range": (
        json.dumps({"ride": {**COURSE_RIDE, "DOLocationID": 266}, "ride_id": 1}).encode(),
        "DOLocationID",
    ),
    "distance NaN": (
        b'{"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": NaN}, "ride_id": 1}',
        "trip_distance",
    ),
    "distance negative": (
        json.dumps({"ride": {**COURSE_RIDE, "trip_distance": -1}, "ride_id": 1}).encode(),
        "trip_distance",
    ),
    "distance a string": (
        json.dumps({"ride": {**COURSE_RIDE, "trip_distance": "3.66"}, "ride_id": 1}).encode(),
        "trip_distance",
    ),
    "distance too large for a float": (
        json.dumps({"ride": {**COURSE_RIDE, "trip_distance": 10**400}, "ride_id": 1}).encode(),
        "trip_distance",
    ),
    "ride_id too long for a partition key": (json.dumps({"ride": COURSE_RIDE, "ride_id": 10**300}).encode(), "ride_id"),
}
