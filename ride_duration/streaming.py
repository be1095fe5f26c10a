"""Streaming deployment: ride events from Kinesis in, duration predictions out.

The Lambda (streaming/lambda_function.py) shows the handler's flow; this module is its
parts: the settings, decoding and validation, the model call, PutRecords with retries, the
batch response. Running it all without AWS (a producer, a shard reader, Lambda's
event-source mapping in-process) is ride_duration.local.event_source, which no image ships.

Environment (defaults in brackets):

RIDE_EVENTS_STREAM_NAME [ride_events]          the stream rides arrive on
PREDICTIONS_STREAM_NAME [ride_predictions]     the stream predictions are written to
MODEL_LOCATION or RUN_ID (set one)             the model (ride_duration.models.load_model):
                                               MODEL_LOCATION an s3://bucket/key.npz or a local
                                               .npz/.pkl; RUN_ID an MLflow run whose
                                               compact/model.npz is read from S3: MODEL_BUCKET
                                               [ride-duration-models], MLFLOW_EXPERIMENT_ID
                                               [found by listing, which needs s3:ListBucket]
TEST_RUN [False]                               predict but write nothing
MALFORMED_RECORDS [report]                     report: log, list under "rejected" and return
                                               in batchItemFailures (Lambda's contract);
                                               reject: log and list only, never re-delivered
PUT_RECORDS_MAX_ATTEMPTS [5]                   PutRecords attempts before a prediction counts
                                               as undelivered

Failure policy (Lambda's ReportBatchItemFailures contract: Lambda retries *every* record from
the lowest reported sequence number on):
- A prediction that PutRecords still refuses after the retries is *undelivered*: its record
  goes into batchItemFailures, so Lambda retries it (the records behind it are predicted
  again: at-least-once, as Kinesis always is).
- A malformed record (not base64 or JSON, a missing or bad field) does not stop the others:
  by default it is logged with its reason, listed under "rejected" AND returned in
  batchItemFailures with its sequence number, as the ReportBatchItemFailures contract asks.
  It can never succeed, though, so Lambda re-delivers it and every valid record behind it
  until the mapping's MaximumRetryAttempts run out (the on-failure destination, if any, then
  gets the batch's description), and those valid rides are predicted and written again
  each time: at-least-once.
- MALFORMED_RECORDS=reject is the opt-in for deployments that want each valid ride predicted
  exactly once: the malformed record is still logged and listed under "rejected", but not
  returned in batchItemFailures, so Lambda never re-delivers the valid records behind it.

Only numpy, boto3 and the package's light modules are imported here: this is the Lambda's
cold start.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ride_duration import config
from ride_duration.rides import InvalidRide, validate_ride

log = logging.getLogger(__name__)

MODEL_NAME = "ride_duration_prediction_model"
DEFAULT_RIDE_EVENTS_STREAM = "ride_events"
DEFAULT_PREDICTIONS_STREAM = "ride_predictions"
# PutRecords limits: 500 records and 5 MiB a call.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_PARTITION_KEY_LENGTH = 256
# Where Settings.from_env finds the model spec (ride_duration.models.spec_from_env).
MODEL_SETTINGS = ("MODEL_LOCATION", "RUN_ID")
# Error codes worth another attempt; anything else (missing stream, no permission) is final.
RETRYABLE_ERRORS = {
    "ProvisionedThroughputExceededException",
    "InternalFailure",
    "InternalFailureException",
    "ServiceUnavailable",
    "ThrottlingException",
    "LimitExceededException",
    "ConnectionError",
}


# ---- configuration ------------------------------------------------------------------
def ride_events_stream() -> str:
    return os.environ.get("RIDE_EVENTS_STREAM_NAME", DEFAULT_RIDE_EVENTS_STREAM)


def predictions_stream() -> str:
    return os.environ.get("PREDICTIONS_STREAM_NAME", DEFAULT_PREDICTIONS_STREAM)


def is_test_run() -> bool:
    return os.environ.get("TEST_RUN", "False").strip().lower() in ("1", "true", "yes")


def kinesis_client():
    """A Kinesis client with the package's deadlines (ride_duration.aws)."""
    from ride_duration import aws

    # One botocore retry per call at most: KinesisWriter does its own, per entry, with backoff.
    return aws.client("kinesis", max_attempts=2)


# ---- records ------------------------------------------------------------------------
class BadRecord(ValueError):
    """A Kinesis record that holds no usable ride event; str() says why."""


def encode_ride_event(ride: dict, ride_id) -> bytes:
    return json.dumps({"ride": ride, "ride_id": ride_id}).encode()


def decode_record(record: dict) -> tuple[int | str, dict]:
    """(ride_id, validated ride) from one record of a Lambda Kinesis event, or BadRecord."""
    data = record.get("kinesis", {}).get("data")
    if not isinstance(data, str):
        raise BadRecord("record has no kinesis.data")
    try:
        payload = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        kind = "base64" if isinstance(exc, binascii.Error) else "JSON"
        raise BadRecord(f"data is not {kind}: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRecord("event must be a JSON object with ride and ride_id")
    missing = [name for name in ("ride", "ride_id") if name not in payload]
    if missing:
        raise BadRecord(f"event is missing field(s): {', '.join(missing)}")
    ride_id = payload["ride_id"]
    # The id becomes the partition key, whose length Kinesis limits.
    valid_id = (
        isinstance(ride_id, (int, str))
        and not isinstance(ride_id, bool)
        and (0 < len(str(ride_id)) <= MAX_PARTITION_KEY_LENGTH)
    )
    if not valid_id:
        raise BadRecord(
            f"ride_id must be an integer or a string of 1 to {MAX_PARTITION_KEY_LENGTH} characters, got {ride_id!r:.40}"
        )
    try:
        return ride_id, validate_ride(payload["ride"], where="ride")
    except InvalidRide as exc:
        raise BadRecord(str(exc)) from None


def prediction_event(ride_id, duration: float, version: str) -> dict:
    return {
        "model": MODEL_NAME,
        "version": version,
        "prediction": {"ride_duration": float(duration), "ride_id": ride_id},
    }


# ---- writing: PutRecords in chunks, failed entries retried with backoff --------------
@dataclass
class FailedEntry:
    index: int  # position in the entries given to put()
    code: str
    message: str


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: list[FailedEntry] = field(default_factory=list)
    calls: int = 0


class KinesisWriter:
    """Writes entries ({"Data": bytes, "PartitionKey": str}) to a stream with PutRecords.

    Each call carries at most 500 entries and 5 MiB. Entries that PutRecords reports as
    failed (or all of a call that raised a retryable error) are sent again, alone, after an
    exponential backoff with full jitter; an entry that succeeded is never sent again.
    """

    def __init__(
        self,
        stream: str,
        client=None,
        max_attempts: int | None = None,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        time_budget: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream
        self.client = client if client is not None else kinesis_client()
        self.max_attempts = max(1, max_attempts or config.env_int("PUT_RECORDS_MAX_ATTEMPTS", 5))
        self.base_delay, self.max_delay, self.sleep, self.clock = base_delay, max_delay, sleep, clock
        # No new attempt starts after this many seconds: the Lambda's timeout must not run out
        # in our backoff (what is left is reported, and Lambda retries it).
        self.time_budget = time_budget

    def put(self, entries: list[dict]) -> DeliveryReport:
        report = DeliveryReport()
        pending, errors = list(range(len(entries))), {}
        started = self.clock()
        for attempt in range(self.max_attempts):
            if attempt:
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                if self.clock() - started + delay > self.time_budget:
                    break
                self.sleep(delay)
            retry = []
            for chunk in _chunks(pending, entries):
                report.calls += 1
                failures = self._put_chunk(chunk, entries)
                report.sent += len(chunk) - len(failures)
                for index, code, message in failures:
                    if code in RETRYABLE_ERRORS:
                        retry.append(index)
                        errors[index] = (code, message)
                    else:
                        report.failed.append(FailedEntry(index, code, message))
            pending = retry
            if not pending:
                break
        report.failed += [FailedEntry(i, *errors[i]) for i in pending]
        report.failed.sort(key=lambda f: f.index)
        return report

    def _put_chunk(self, chunk: list[int], entries: list[dict]) -> Iterable[tuple[int, str, str]]:
        """(index, error code, message) for every entry of the chunk that was not written."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.put_records(StreamName=self.stream, Records=[entries[i] for i in chunk])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            return [(i, error.get("Code", "ClientError"), error.get("Message", str(exc))) for i in chunk]
        except BotoCoreError as exc:
            return [(i, "ConnectionError", str(exc)) for i in chunk]
        if not response.get("FailedRecordCount"):
            return []
        return [
            (i, result["ErrorCode"], result.get("ErrorMessage", ""))
            for i, result in zip(chunk, response["Records"])
            if result.get("ErrorCode")
        ]


def _chunks(indices: list[int], entries: list[dict]) -> list[list[int]]:
    """Split entry indices into PutRecords calls within the count and size limits."""
    chunks, current, size = [], [], 0
    for i in indices:
        entry_size = len(entries[i]["Data"]) + len(entries[i]["PartitionKey"].encode())
        if current and (len(current) == MAX_RECORDS_PER_CALL or size + entry_size > MAX_BYTES_PER_CALL):
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += entry_size
    if current:
        chunks.append(current)
    return chunks


# ---- the handler's steps (streaming/lambda_function.py runs them in order) -------------
@dataclass(frozen=True)
class Settings:
    """What the Lambda's environment asks for (see the module docstring)."""

    model_spec: str  # for ride_duration.models.load_model
    predictions_stream: str
    test_run: bool  # predict but write nothing
    report_malformed: bool  # malformed records in batchItemFailures too (MALFORMED_RECORDS=report)

    @classmethod
    def from_env(cls) -> Settings:
        from ride_duration.models import spec_from_env

        model_spec = spec_from_env(MODEL_SETTINGS)  # first: a missing model is the likeliest mistake
        policy = os.environ.get("MALFORMED_RECORDS", "report").strip().lower()
        if policy not in ("reject", "report"):
            raise ValueError(f"MALFORMED_RECORDS must be report or reject, got {policy!r}")
        return cls(model_spec, predictions_stream(), is_test_run(), report_malformed=policy == "report")


@dataclass(frozen=True)
class DecodedRecord:
    sequence_number: str
    ride_id: int | str
    ride: dict


def decode_records(records: list[dict]) -> tuple[list[DecodedRecord], list[dict]]:
    """The batch's valid rides, and {"itemIdentifier", "reason"} for each record that holds none.

    A bad record is logged and set aside: it never stops the valid ones around it.
    """
    decoded, rejected = [], []
    for record in records:
        sequence_number = record.get("kinesis", {}).get("sequenceNumber")
        try:
            ride_id, ride = decode_record(record)
        except BadRecord as exc:
            log.warning("rejected record %s: %s", sequence_number, exc)
            rejected.append({"itemIdentifier": sequence_number, "reason": str(exc)})
            continue
        decoded.append(DecodedRecord(sequence_number, ride_id, ride))
    return decoded, rejected


def deliver(writer: KinesisWriter, decoded: list[DecodedRecord], predictions: list[dict]) -> list[str]:
    """Write the predictions (PutRecords, retried); the sequence numbers of the undelivered ones."""
    if not predictions:
        return []
    entries = [{"Data": json.dumps(p).encode(), "PartitionKey": str(d.ride_id)} for p, d in zip(predictions, decoded)]
    undelivered = []
    for failure in writer.put(entries).failed:
        record = decoded[failure.index]
        log.error(
            "undelivered prediction for record %s (ride_id %s): %s %s",
            record.sequence_number,
            record.ride_id,
            failure.code,
            failure.message,
        )
        undelivered.append(record.sequence_number)
    return undelivered


def batch_response(
    records: list[dict], predictions: list[dict], rejected: list[dict], undelivered: list[str], report_malformed: bool
) -> dict:
    """The handler's answer; Lambda reads only batchItemFailures, in the batch's order.

    Undelivered predictions always go into batchItemFailures, for Lambda to retry; malformed
    records too unless report_malformed is False (MALFORMED_RECORDS=reject).
    """
    failed = ([r["itemIdentifier"] for r in rejected] if report_malformed else []) + undelivered
    order = {r.get("kinesis", {}).get("sequenceNumber"): n for n, r in enumerate(records)}
    failed.sort(key=order.__getitem__)
    return {
        "predictions": predictions,
        "batchItemFailures": [{"itemIdentifier": s} for s in failed],
        "rejected": rejected,
    }


class PredictionService:
    """The Lambda's steps over a model and writer the caller brings (benchmarks, the demo).

    The deployed handler is streaming/lambda_function.py, which runs the same steps with the
    model and writer its environment describes; a test checks that the two agree.

    Args:
        model: anything with `.predict(list_of_rides)` and `.version` (a CompactModel).
        writer: a KinesisWriter, or None to write nothing (TEST_RUN).
        report_malformed: see batch_response.
    """

    def __init__(self, model, writer: KinesisWriter | None = None, report_malformed: bool = True):
        self.model, self.writer, self.report_malformed = model, writer, report_malformed

    def handle(self, event: dict) -> dict:
        records = event.get("Records", [])
        decoded, rejected = decode_records(records)
        durations = self.model.predict([d.ride for d in decoded]) if decoded else []
        predictions = [prediction_event(d.ride_id, x, self.model.version) for d, x in zip(decoded, durations)]
        undelivered = deliver(self.writer, decoded, predictions) if self.writer is not None else []
        return batch_response(records, predictions, rejected, undelivered, self.report_malformed)


# ---- streams: created by the AWS set-up (streaming/setup_aws.py) and by the local loop -----
def ensure_streams(names: Iterable[str] | None = None, client=None, shards: int = 1) -> list[str]:
    """Create the streams that do not exist yet and wait until all are ACTIVE; their ARNs."""
    client = client if client is not None else kinesis_client()
    names = list(names) if names is not None else [ride_events_stream(), predictions_stream()]
    for name in names:
        try:
            client.create_stream(StreamName=name, ShardCount=shards)
        except client.exceptions.ResourceInUseException:
            pass  # exists already (or is being created): the waiter below settles it
    waiter = client.get_waiter("stream_exists")
    for name in names:
        waiter.wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return [client.describe_stream_summary(StreamName=n)["StreamDescriptionSummary"]["StreamARN"] for n in names]
