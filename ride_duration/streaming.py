"""Streaming deployment: ride events from Kinesis in, duration predictions out.

The Lambda (streaming/lambda_function.py) is a thin edge over `PredictionService`. The rest
of this module lets the same code run without AWS: a producer, a reader, and
`LocalEventSourceMapping`, which drives the handler from a stream the way Lambda does.

Environment (defaults in brackets):

RIDE_EVENTS_STREAM_NAME [ride_events]          the stream rides arrive on
PREDICTIONS_STREAM_NAME [ride_predictions]     the stream predictions are written to
MODEL_LOCATION [unset]                         an s3://bucket/key.npz or a local .npz/.pkl
RUN_ID, MLFLOW_EXPERIMENT_ID, MODEL_BUCKET [ride-duration-models]
                                               else: the MLflow run's compact/model.npz on S3
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


def model_location() -> str:
    """MODEL_LOCATION, or the S3 address of an MLflow run's compact model."""
    location = os.environ.get("MODEL_LOCATION")
    if location:
        return location
    run_id, experiment_id = os.environ.get("RUN_ID"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if run_id and experiment_id:
        from ride_duration.models import run_artifact_url

        return run_artifact_url(config.model_bucket(), experiment_id, run_id)
    from ride_duration.models import ModelNotFound

    raise ModelNotFound(
        "no model configured: set MODEL_LOCATION (s3://bucket/key.npz or a local .npz), "
        "or RUN_ID and MLFLOW_EXPERIMENT_ID (and MODEL_BUCKET)"
    )


def kinesis_client():
    """A Kinesis client that gives up on a dead endpoint in seconds, not minutes."""
    import boto3
    from botocore.config import Config

    # One botocore retry per call at most: KinesisWriter does its own, per entry, with backoff.
    return boto3.client(
        "kinesis", config=Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 2})
    )


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


# ---- the handler's core ---------------------------------------------------------------
class PredictionService:
    """Turns a Lambda Kinesis event into predictions, written to a stream.

    Args:
        model: anything with `.predict(list_of_rides)` and `.version` (a CompactModel).
        writer: a KinesisWriter, or None to write nothing (TEST_RUN).
        report_malformed: return malformed records in batchItemFailures too (the default,
            Lambda's contract); False keeps them out, so that Lambda never re-delivers the
            valid records behind them (MALFORMED_RECORDS=reject; see the module's failure policy).
    """

    def __init__(self, model, writer: KinesisWriter | None = None, report_malformed: bool = True):
        self.model, self.writer, self.report_malformed = model, writer, report_malformed

    def handle(self, event: dict) -> dict:
        ride_ids, rides, sequence_numbers, rejected = [], [], [], []
        for record in event.get("Records", []):
            sequence_number = record.get("kinesis", {}).get("sequenceNumber")
            try:
                ride_id, ride = decode_record(record)
            except BadRecord as exc:
                log.warning("rejected record %s: %s", sequence_number, exc)
                rejected.append({"itemIdentifier": sequence_number, "reason": str(exc)})
                continue
            ride_ids.append(ride_id)
            rides.append(ride)
            sequence_numbers.append(sequence_number)
        # One model call for the whole batch: numpy pays its overhead once.
        durations = self.model.predict(rides) if rides else []
        predictions = [prediction_event(i, d, self.model.version) for i, d in zip(ride_ids, durations)]
        failed = [r["itemIdentifier"] for r in rejected] if self.report_malformed else []
        if self.writer is not None and predictions:
            entries = [{"Data": json.dumps(p).encode(), "PartitionKey": str(i)} for p, i in zip(predictions, ride_ids)]
            for failure in self.writer.put(entries).failed:
                log.error(
                    "undelivered prediction for record %s (ride_id %s): %s %s",
                    sequence_numbers[failure.index],
                    ride_ids[failure.index],
                    failure.code,
                    failure.message,
                )
                failed.append(sequence_numbers[failure.index])
        order = {r.get("kinesis", {}).get("sequenceNumber"): n for n, r in enumerate(event.get("Records", []))}
        failed.sort(key=order.__getitem__)
        return {
            "predictions": predictions,
            "batchItemFailures": [{"itemIdentifier": s} for s in failed],
            "rejected": rejected,
        }


def service_from_env() -> PredictionService:
    """The service as the Lambda's environment describes it (see the module docstring)."""
    from ride_duration.models import load_compact

    model = load_compact(model_location())
    writer = None if is_test_run() else KinesisWriter(predictions_stream())
    policy = os.environ.get("MALFORMED_RECORDS", "report").strip().lower()
    if policy not in ("reject", "report"):
        raise ValueError(f"MALFORMED_RECORDS must be report or reject, got {policy!r}")
    return PredictionService(model, writer, report_malformed=policy == "report")


# ---- streams, producer, reader -----------------------------------------------------------
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


def put_ride_events(rides: list[dict], ride_ids: list, stream: str | None = None, client=None) -> DeliveryReport:
    """The producer: one event per ride, partition key the ride id, PutRecords with retry."""
    return KinesisWriter(stream or ride_events_stream(), client).put(ride_entries(rides, ride_ids))


class ShardReader:
    """Reads every shard of a stream from a position on, one GetRecords call per shard a step."""

    def __init__(self, stream: str, client=None, position: str = "TRIM_HORIZON"):
        self.stream = stream
        self.client = client if client is not None else kinesis_client()
        shards = self.client.list_shards(StreamName=stream)["Shards"]
        self.iterators = {s["ShardId"]: self.iterator(s["ShardId"], position) for s in shards}

    def iterator(self, shard_id: str, position: str, sequence_number: str | None = None) -> str:
        extra = {"StartingSequenceNumber": sequence_number} if sequence_number else {}
        return self.client.get_shard_iterator(
            StreamName=self.stream, ShardId=shard_id, ShardIteratorType=position, **extra
        )["ShardIterator"]

    def read_all(self, expected: int | None = None, timeout: float = 30.0, limit: int = 1000) -> list[dict]:
        """Every record until the stream is drained (or `expected` arrived, or timeout).

        Drained means an empty read with MillisBehindLatest 0 on every shard: a real shard
        may return nothing for a while before records it still holds.
        """
        records, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, behind = 0, 0
            for shard_id, iterator in list(self.iterators.items()):
                response = self.client.get_records(ShardIterator=iterator, Limit=limit)
                self.iterators[shard_id] = response["NextShardIterator"]
                records += response["Records"]
                got += len(response["Records"])
                behind += response.get("MillisBehindLatest", 0)
            if expected is not None and len(records) >= expected:
                break
            if expected is None and not got and not behind:
                break
            if not got:
                time.sleep(0.05)
        return records


def read_predictions(
    stream: str | None = None,
    client=None,
    expected: int | None = None,
    timeout: float = 30.0,
    reader: ShardReader | None = None,
) -> list[dict]:
    """The prediction events on a stream (from its start, or from where `reader` stands)."""
    reader = reader or ShardReader(stream or predictions_stream(), client)
    return [json.loads(r["Data"]) for r in reader.read_all(expected=expected, timeout=timeout)]


# ---- the local event-source mapping -------------------------------------------------------
def kinesis_event(records: list[dict], shard_id: str, stream_arn: str, region: str, role_arn: str) -> dict:
    """A Lambda Kinesis event, field for field, from GetRecords' records."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r["PartitionKey"],
                    "sequenceNumber": r["SequenceNumber"],
                    "data": base64.b64encode(r["Data"]).decode(),
                    "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": role_arn,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for r in records
        ]
    }


class LocalEventSourceMapping:
    """Drives a Lambda handler from a Kinesis stream in-process, as Lambda's mapping does.

    Per shard: read up to `batch_size` records after the checkpoint, build the event, call
    `handler(event, context)`. A full success moves the checkpoint past the batch. With
    batchItemFailures the checkpoint moves to just before the lowest reported record and the
    batch is read again from there; an exception, or an identifier that is not in the batch,
    fails the whole batch. After `max_retries` retries of the same record the rest of the
    batch is given up: described in `discarded` (like Lambda's on-failure destination) and
    the checkpoint moves past it.
    """

    def __init__(
        self,
        handler: Callable,
        stream: str | None = None,
        client=None,
        batch_size: int = 100,
        max_retries: int = 2,
        starting_position: str = "TRIM_HORIZON",
        checkpoints: dict[str, str] | None = None,
        role_arn: str | None = None,
        context=None,
    ):
        self.handler, self.batch_size, self.max_retries, self.context = handler, batch_size, max_retries, context
        self.reader = ShardReader(stream or ride_events_stream(), client, starting_position)
        self.client, self.stream = self.reader.client, self.reader.stream
        self.stream_arn = self.client.describe_stream_summary(StreamName=self.stream)["StreamDescriptionSummary"][
            "StreamARN"
        ]
        account = self.stream_arn.split(":")[4]
        self.role_arn = role_arn or f"arn:aws:iam::{account}:role/lambda-kinesis-role"
        self.checkpoints = dict(checkpoints or {})  # shard id -> last sequence number done
        for shard_id, sequence_number in self.checkpoints.items():
            self.reader.iterators[shard_id] = self.reader.iterator(shard_id, "AFTER_SEQUENCE_NUMBER", sequence_number)
        self.discarded: list[dict] = []
        self.invocations = 0
        self._retries: dict[str, tuple[str, int]] = {}  # shard id -> (record retried, retries so far)

    def poll(self) -> int:
        """One batch from every shard; the number of records handed to the handler."""
        handled = 0
        for shard_id, iterator in list(self.reader.iterators.items()):
            response = self.client.get_records(ShardIterator=iterator, Limit=self.batch_size)
            records = response["Records"]
            self.reader.iterators[shard_id] = response["NextShardIterator"]
            if records:
                handled += len(records)
                self._settle(shard_id, records, self._invoke(shard_id, records))
        return handled

    def run(self, timeout: float = 60.0) -> int:
        """Poll until every shard is drained (or timeout); the number of invocations made."""
        before, deadline = self.invocations, time.monotonic() + timeout
        while time.monotonic() < deadline and self.poll():
            pass
        return self.invocations - before

    def _invoke(self, shard_id: str, records: list[dict]) -> int | None:
        """Position of the first record to retry, or None when the batch succeeded."""
        event = kinesis_event(records, shard_id, self.stream_arn, self.client.meta.region_name, self.role_arn)
        self.invocations += 1
        try:
            response = self.handler(event, self.context)
        except Exception:
            log.exception("handler failed on %d records of %s", len(records), shard_id)
            return 0
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if not failures:
            return None
        positions = {r["SequenceNumber"]: n for n, r in enumerate(records)}
        try:
            return min(positions[f["itemIdentifier"]] for f in failures)
        except (KeyError, TypeError):
            log.error("batchItemFailures names records not in the batch: the whole batch failed")
            return 0

    def _settle(self, shard_id: str, records: list[dict], first_failed: int | None) -> None:
        if first_failed is None:
            self._done(shard_id, records[-1]["SequenceNumber"])
            return
        if first_failed:
            self.checkpoints[shard_id] = records[first_failed - 1]["SequenceNumber"]
        retried = records[first_failed]["SequenceNumber"]
        previous, count = self._retries.get(shard_id, (None, 0))
        count = count + 1 if previous == retried else 1
        if count > self.max_retries:
            self.discarded.append(
                {
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": count,
                    "shardId": shard_id,
                    "streamArn": self.stream_arn,
                    "batchSize": len(records) - first_failed,
                    "startSequenceNumber": retried,
                    "endSequenceNumber": records[-1]["SequenceNumber"],
                }
            )
            log.error(
                "gave up on %s records %s..%s after %d retries",
                shard_id,
                retried,
                records[-1]["SequenceNumber"],
                self.max_retries,
            )
            self._done(shard_id, records[-1]["SequenceNumber"])
            return
        self._retries[shard_id] = (retried, count)
        self.reader.iterators[shard_id] = self.reader.iterator(shard_id, "AT_SEQUENCE_NUMBER", retried)

    def _done(self, shard_id: str, sequence_number: str) -> None:
        # The iterator GetRecords returned already stands after the batch.
        self.checkpoints[shard_id] = sequence_number
        self._retries.pop(shard_id, None)


# ---- the whole loop, locally ----------------------------------------------------------------
@dataclass
class LoopResult:
    sent: int
    predictions: list[dict]
    rejected: list[dict]
    discarded: list[dict]
    invocations: int
    seconds: float


def ride_entries(rides: list[dict], ride_ids: list) -> list[dict]:
    """PutRecords entries for ride events, partition key the ride id."""
    return [{"Data": encode_ride_event(r, i), "PartitionKey": str(i)} for r, i in zip(rides, ride_ids)]


def run_loop(
    handler: Callable, entries: list[dict], batch_size: int = 100, timeout: float = 120.0, client=None
) -> LoopResult:
    """Events in, predictions out, on the Kinesis that boto3 points at (the stand-in).

    Creates the streams if needed, reads both from their current end (earlier runs' records
    are left alone), puts the entries (`ride_entries(...)`, possibly mixed with malformed
    ones) on the events stream, drives `handler` with a LocalEventSourceMapping until that
    stream is drained, and reads the predictions back.
    """
    client = client if client is not None else kinesis_client()
    ensure_streams([ride_events_stream(), predictions_stream()], client=client)
    rejected = []

    def collecting(event, context):
        response = handler(event, context)
        rejected.extend(response.get("rejected", []) if isinstance(response, dict) else [])
        return response

    mapping = LocalEventSourceMapping(collecting, ride_events_stream(), client, batch_size, starting_position="LATEST")
    reader = ShardReader(predictions_stream(), client, position="LATEST")
    started = time.perf_counter()
    report = KinesisWriter(ride_events_stream(), client).put(entries)
    mapping.run(timeout)
    predictions = read_predictions(reader=reader)
    return LoopResult(
        report.sent, predictions, rejected, mapping.discarded, mapping.invocations, time.perf_counter() - started
    )
