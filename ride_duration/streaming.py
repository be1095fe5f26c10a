"""Streaming deployment: ride events from Kinesis in, duration predictions out.

The Lambda (streaming/lambda_function.py) shows the handler's flow; this module is its
parts: the settings, decoding and validation, the model call, PutRecords with retries, the
dead-letter queue, the batch response, and the event-source mapping's settings. Running it
all without AWS (a producer, a shard reader, Lambda's event-source mapping in-process) is
ride_duration.local.event_source, which no image ships.

Environment (defaults in brackets):

RIDE_EVENTS_STREAM_NAME [ride_events]          the stream rides arrive on
PREDICTIONS_STREAM_NAME [ride_predictions]     the stream predictions are written to
DEAD_LETTER_QUEUE [ride_events_dead_letter]    the SQS queue (a name or a queue URL) that
                                               receives every malformed record, and the
                                               mapping's on-failure records
MODEL_LOCATION or RUN_ID (set one)             the model (ride_duration.models.load_model):
                                               MODEL_LOCATION an s3://bucket/key.npz or a local
                                               .npz (a .pkl only with ALLOW_UNSAFE_PICKLE=1);
                                               RUN_ID an MLflow run whose compact/model.npz is
                                               read from S3: MODEL_BUCKET [ride-duration-models],
                                               MLFLOW_EXPERIMENT_ID [found by listing, which
                                               needs s3:ListBucket]
TEST_RUN [False]                               predict but write nothing, anywhere
PUT_RECORDS_MAX_ATTEMPTS [5]                   PutRecords attempts before a prediction counts
                                               as undelivered

Failure policy (Lambda's ReportBatchItemFailures contract: Lambda retries *every* record from
the lowest reported sequence number on):
- A malformed record (not base64 or JSON, a missing or bad field) can never succeed, so it is
  never reported to Lambda: it goes, with its reason, to the dead-letter queue and the batch
  goes on. Only if the queue does not take it is it returned in batchItemFailures, so that
  it is not lost.
- A prediction that PutRecords still refuses after the retries is *undelivered*: its record
  goes into batchItemFailures and Lambda retries it. The records behind it in the batch are
  then delivered again: the one source of duplicate predictions (at least once).

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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ride_duration import config
from ride_duration.rides import InvalidRide, validate_ride

log = logging.getLogger(__name__)

MODEL_NAME = "ride_duration_prediction_model"
DEFAULT_RIDE_EVENTS_STREAM = "ride_events"
DEFAULT_PREDICTIONS_STREAM = "ride_predictions"
DEFAULT_DEAD_LETTER_QUEUE = "ride_events_dead_letter"
# PutRecords limits: 500 records and 5 MiB a call.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_PARTITION_KEY_LENGTH = 256
# SendMessageBatch limits: 10 messages a call; 256 KiB for the call (and a message) on queues
# that keep the old maximum, which this stays within so any queue takes the messages.
MAX_MESSAGES_PER_BATCH = 10
MAX_MESSAGE_BYTES = 256 * 1024
# A record's data beyond this is cut from its dead letter; the sequence number still finds
# the whole record in the stream (24 hours by default).
MAX_DEAD_LETTER_DATA = 192 * 1024
# Dead letters wait for a reader: SQS's longest retention, 14 days.
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600
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

# The event-source mapping: streaming/setup_aws.py deploys these settings and
# ride_duration.local.event_source emulates them. A batch that still fails after the retries
# (or holds records older than the maximum age) is described in the on-failure destination,
# the dead-letter queue, and skipped. The age stays well inside the stream's 24-hour
# retention, so the records a description names can still be read from the stream.
EVENT_SOURCE_MAPPING = {
    "BatchSize": 100,
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "BisectBatchOnFunctionError": True,  # halve a batch that raised, to isolate the cause
    "MaximumRetryAttempts": 3,
    "MaximumRecordAgeInSeconds": 3600,
}


# ---- configuration ------------------------------------------------------------------
def ride_events_stream() -> str:
    return os.environ.get("RIDE_EVENTS_STREAM_NAME", DEFAULT_RIDE_EVENTS_STREAM)


def predictions_stream() -> str:
    return os.environ.get("PREDICTIONS_STREAM_NAME", DEFAULT_PREDICTIONS_STREAM)


def dead_letter_queue() -> str:
    return os.environ.get("DEAD_LETTER_QUEUE", DEFAULT_DEAD_LETTER_QUEUE)


def is_test_run() -> bool:
    return os.environ.get("TEST_RUN", "False").strip().lower() in ("1", "true", "yes")


def kinesis_client():
    """A Kinesis client with the package's deadlines (ride_duration.aws)."""
    from ride_duration import aws

    # One botocore retry per call at most: KinesisWriter does its own, per entry, with backoff.
    return aws.client("kinesis", max_attempts=2)


def sqs_client():
    """An SQS client with the package's deadlines; what it cannot send goes back to Lambda."""
    from ride_duration import aws

    return aws.client("sqs", max_attempts=2)


def utc_timestamp(seconds: float | None = None) -> str:
    """ISO 8601 in UTC to the millisecond, as Lambda writes its on-failure records."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
            for chunk in _chunks(pending, _entry_size(entries), MAX_RECORDS_PER_CALL, MAX_BYTES_PER_CALL):
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


def _entry_size(entries: list[dict]) -> Callable[[int], int]:
    return lambda i: len(entries[i]["Data"]) + len(entries[i]["PartitionKey"].encode())


def _chunks(indices: list[int], size: Callable[[int], int], max_count: int, max_bytes: int) -> list[list[int]]:
    """Split indices into calls of at most `max_count` items and `max_bytes` bytes."""
    chunks, current, total = [], [], 0
    for i in indices:
        item_size = size(i)
        if current and (len(current) == max_count or total + item_size > max_bytes):
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += item_size
    if current:
        chunks.append(current)
    return chunks


# ---- the dead-letter queue: SQS, SendMessageBatch --------------------------------------
class DeadLetterQueue:
    """Sends JSON documents to an SQS queue, given by name or URL (a name is looked up once).

    The handler sends it the malformed records; Lambda's mapping (and the local one) its
    on-failure records. The queue takes both: Lambda's on-failure destination for a Kinesis
    mapping may be an SQS queue, so one resource serves both.
    """

    def __init__(self, queue: str, client=None):
        self.queue = queue
        self._client = client
        self._url = queue if "://" in queue else None

    @property
    def client(self):
        # Made at the first dead letter, not at the cold start: most batches never need it.
        if self._client is None:
            self._client = sqs_client()
        return self._client

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self.client.get_queue_url(QueueName=self.queue)["QueueUrl"]
        return self._url

    def send(self, documents: list[dict]) -> list[tuple[int, str]]:
        """(index, why) of every document the queue did not take; [] when it took them all."""
        from botocore.exceptions import BotoCoreError, ClientError

        bodies = [json.dumps(d) for d in documents]
        try:
            url = self.url
        except (BotoCoreError, ClientError) as exc:
            return [(i, first_line(exc)) for i in range(len(bodies))]
        refused = []
        calls = _chunks(list(range(len(bodies))), lambda i: len(bodies[i]), MAX_MESSAGES_PER_BATCH, MAX_MESSAGE_BYTES)
        for chunk in calls:
            try:
                response = self.client.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": bodies[i]} for i in chunk]
                )
            except (BotoCoreError, ClientError) as exc:
                refused += [(i, first_line(exc)) for i in chunk]
                continue
            refused += [(int(f["Id"]), f"{f.get('Code')}: {f.get('Message', '')}") for f in response.get("Failed", [])]
        return sorted(refused)


def first_line(exc: Exception) -> str:
    """The first line of an error's message: botocore's are one line, a few are more."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def ensure_dead_letter_queue(queue: str | None = None, client=None) -> tuple[str, str]:
    """Create the dead-letter queue if it does not exist; its (URL, ARN)."""
    client = client if client is not None else sqs_client()
    name = (queue or dead_letter_queue()).rstrip("/").rsplit("/", 1)[-1]  # a URL ends with the name
    try:
        url = client.create_queue(
            QueueName=name, Attributes={"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS)}
        )["QueueUrl"]
    except client.exceptions.QueueNameExists:  # made elsewhere with other attributes: use it as it is
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


# ---- the handler's steps (streaming/lambda_function.py runs them in order) -------------
@dataclass(frozen=True)
class Settings:
    """What the Lambda's environment asks for (see the module docstring)."""

    model_spec: str  # for ride_duration.models.load_model
    predictions_stream: str
    dead_letter_queue: str
    test_run: bool  # predict but write nothing

    @classmethod
    def from_env(cls) -> Settings:
        from ride_duration.models import spec_from_env

        model_spec = spec_from_env(MODEL_SETTINGS)  # first: a missing model is the likeliest mistake
        if os.environ.get("MALFORMED_RECORDS", "").strip():
            # Its old default re-delivered valid rides behind every bad record; refused, not
            # ignored, so that nobody relies on a policy that no longer exists.
            raise config.SettingError(
                "MALFORMED_RECORDS is no longer supported: every malformed record now goes to the dead-letter "
                "queue (DEAD_LETTER_QUEUE) and never into batchItemFailures; unset MALFORMED_RECORDS"
            )
        return cls(model_spec, predictions_stream(), dead_letter_queue(), is_test_run())


@dataclass(frozen=True)
class DecodedRecord:
    sequence_number: str
    ride_id: int | str
    ride: dict


@dataclass(frozen=True)
class RejectedRecord:
    record: dict  # as the event holds it
    reason: str

    @property
    def sequence_number(self) -> str | None:
        return self.record.get("kinesis", {}).get("sequenceNumber")


@dataclass(frozen=True)
class Sent:
    """What one step wrote (count) and the sequence numbers it must hand back to Lambda."""

    count: int = 0
    failed: list[str] = field(default_factory=list)


def decode_records(records: list[dict]) -> tuple[list[DecodedRecord], list[RejectedRecord]]:
    """The batch's valid rides, and each record that holds none with the reason.

    A bad record is logged and set aside: it never stops the valid ones around it.
    """
    decoded, rejected = [], []
    for record in records:
        try:
            ride_id, ride = decode_record(record)
        except BadRecord as exc:
            bad = RejectedRecord(record, str(exc))
            log.warning("malformed record %s: %s", bad.sequence_number, bad.reason)
            rejected.append(bad)
            continue
        decoded.append(DecodedRecord(record.get("kinesis", {}).get("sequenceNumber"), ride_id, ride))
    return decoded, rejected


def deliver(writer: KinesisWriter | None, decoded: list[DecodedRecord], predictions: list[dict]) -> Sent:
    """Write the predictions (PutRecords, retried); None writes nothing (TEST_RUN)."""
    if writer is None or not predictions:
        return Sent()
    entries = [{"Data": json.dumps(p).encode(), "PartitionKey": str(d.ride_id)} for p, d in zip(predictions, decoded)]
    report = writer.put(entries)
    undelivered = [decoded[f.index].sequence_number for f in report.failed]
    if undelivered:
        log.error(
            "%d of %d predictions undelivered after %d PutRecords attempt(s) (%s): their records go back to "
            "Lambda to retry, from %s",
            len(undelivered),
            len(predictions),
            writer.max_attempts,
            _error_counts(f.code for f in report.failed),
            undelivered[0],
        )
    return Sent(report.sent, undelivered)


def dead_letter_document(rejected: RejectedRecord) -> dict:
    """What the dead-letter queue keeps of a malformed record: where it was, its data, why."""
    record = rejected.record
    kinesis = record.get("kinesis", {})
    data = kinesis.get("data")
    kept = {
        "eventSourceARN": record.get("eventSourceARN"),
        "eventID": record.get("eventID"),
        "partitionKey": kinesis.get("partitionKey"),
        "sequenceNumber": kinesis.get("sequenceNumber"),
        "approximateArrivalTimestamp": kinesis.get("approximateArrivalTimestamp"),
        "data": data[:MAX_DEAD_LETTER_DATA] if isinstance(data, str) else data,  # base64, as Kinesis delivered it
    }
    if isinstance(data, str) and len(data) > MAX_DEAD_LETTER_DATA:
        kept |= {"dataTruncated": True, "dataLength": len(data)}
    return {
        "version": "1.0",
        "condition": "MalformedRecord",
        "reason": rejected.reason,
        "timestamp": utc_timestamp(),
        "record": kept,
    }


def dead_letter(queue: DeadLetterQueue | None, rejected: list[RejectedRecord]) -> Sent:
    """Send the malformed records to the dead-letter queue; None sends nothing (TEST_RUN).

    What the queue does not take goes back to Lambda, so that no record is lost.
    """
    if queue is None or not rejected:
        return Sent()
    refused = queue.send([dead_letter_document(r) for r in rejected])
    failed = [rejected[i].sequence_number for i, _ in refused]
    if refused:
        log.error(
            "%d of %d malformed records not taken by the dead-letter queue %s (%s): they go back to Lambda to retry",
            len(refused),
            len(rejected),
            queue.queue,
            _error_counts(why for _, why in refused),
        )
    return Sent(len(rejected) - len(refused), failed)


def _error_counts(reasons: Iterable[str]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in Counter(reasons).most_common(3))


def batch_response(
    records: list[dict], predictions: list[dict], rejected: list[RejectedRecord], delivered: Sent, dead_lettered: Sent
) -> dict:
    """The handler's answer; Lambda reads only batchItemFailures, in the batch's order.

    batchItemFailures holds the undelivered predictions' records and the malformed records
    the dead-letter queue did not take. The rest is for people and tests: the predictions,
    the malformed records with their reasons, and how many of each were written.
    """
    failed = delivered.failed + dead_lettered.failed
    order = {r.get("kinesis", {}).get("sequenceNumber"): n for n, r in enumerate(records)}
    failed.sort(key=order.__getitem__)
    return {
        "predictions": predictions,
        "batchItemFailures": [{"itemIdentifier": s} for s in failed],
        "rejected": [{"itemIdentifier": r.sequence_number, "reason": r.reason} for r in rejected],
        "written": delivered.count,
        "dead_lettered": dead_lettered.count,
    }


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
