"""A Kinesis event source on one machine: producer, shard reader, Lambda's event-source mapping.

Lambda's poller does not run outside AWS, and moto runs no function code without Docker.
`LocalEventSourceMapping` drives a handler from a stream in-process the way Lambda's mapping
does, with the deployed settings (ride_duration.streaming.EVENT_SOURCE_MAPPING: partial batch
responses, bounded retries, bisect on error, a maximum record age, an on-failure destination),
so the handler is tested as Lambda runs it; `run_loop` is the whole loop on the stand-ins:
events in, predictions out, malformed records in the dead-letter queue. The lessons, the tests
and the demo use it. The Lambda image does not ship it: the handler's parts are
ride_duration.streaming.

When Kinesis or the queue stops answering (or loses the stream, as a restarted stand-in
does), both stop with one line: EventSourceError, and LoopStopped with what was done so far.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from ride_duration.streaming import (
    EVENT_SOURCE_MAPPING,
    DeadLetterQueue,
    DeliveryReport,
    KinesisWriter,
    encode_ride_event,
    ensure_dead_letter_queue,
    ensure_streams,
    first_line,
    kinesis_client,
    predictions_stream,
    ride_events_stream,
    utc_timestamp,
)

log = logging.getLogger(__name__)


class EventSourceError(RuntimeError):
    """Kinesis or the dead-letter queue failed under the event source; str() is one line."""


def _call(client, operation: str, what: str, **kwargs):
    """client.<operation>(**kwargs), its failure an EventSourceError naming what and where."""
    try:
        return getattr(client, operation)(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise EventSourceError(f"{what} at {client.meta.endpoint_url} failed: {first_line(exc)}") from None


# ---- producer and reader --------------------------------------------------------------------
def ride_entries(rides: list[dict], ride_ids: list) -> list[dict]:
    """PutRecords entries for ride events, partition key the ride id."""
    return [{"Data": encode_ride_event(r, i), "PartitionKey": str(i)} for r, i in zip(rides, ride_ids)]


def put_ride_events(rides: list[dict], ride_ids: list, stream: str | None = None, client=None) -> DeliveryReport:
    """The producer: one event per ride, partition key the ride id, PutRecords with retry."""
    return KinesisWriter(stream or ride_events_stream(), client).put(ride_entries(rides, ride_ids))


class ShardReader:
    """Reads every shard of a stream from a position on, one GetRecords call per shard a step."""

    def __init__(self, stream: str, client=None, position: str = "TRIM_HORIZON"):
        self.stream = stream
        self.client = client if client is not None else kinesis_client()
        shards = _call(self.client, "list_shards", f"listing the shards of {stream}", StreamName=stream)["Shards"]
        self.iterators = {s["ShardId"]: self.iterator(s["ShardId"], position) for s in shards}

    def iterator(self, shard_id: str, position: str, sequence_number: str | None = None) -> str:
        extra = {"StartingSequenceNumber": sequence_number} if sequence_number else {}
        return _call(
            self.client,
            "get_shard_iterator",
            f"positioning on {self.stream}/{shard_id}",
            StreamName=self.stream,
            ShardId=shard_id,
            ShardIteratorType=position,
            **extra,
        )["ShardIterator"]

    def get_records(self, shard_id: str, limit: int) -> dict:
        """One GetRecords call on the shard; its iterator moves on."""
        response = _call(
            self.client,
            "get_records",
            f"reading {self.stream}/{shard_id}",
            ShardIterator=self.iterators[shard_id],
            Limit=limit,
        )
        self.iterators[shard_id] = response["NextShardIterator"]
        return response

    def read_all(self, expected: int | None = None, timeout: float = 30.0, limit: int = 1000) -> list[dict]:
        """Every record until the stream is drained (or `expected` arrived, or timeout).

        Drained means an empty read with MillisBehindLatest 0 on every shard: a real shard
        may return nothing for a while before records it still holds.
        """
        records, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, behind = 0, 0
            for shard_id in list(self.iterators):
                response = self.get_records(shard_id, limit)
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

    Per shard, with the deployed settings (EVENT_SOURCE_MAPPING) unless told otherwise:
    - up to `batch_size` records after the checkpoint make one event for `handler(event,
      context)`; a full success moves the checkpoint past them;
    - batchItemFailures: the checkpoint moves to just before the lowest reported record and
      the stream is read again from there (an identifier not in the batch fails all of it);
    - an exception is a function error: with `bisect_on_error` the batch is halved and each
      half invoked on its own (halving uses no retry); a single record is retried as it is;
    - after `max_retries` retries starting at the same record, the records are given up, and
      so are records older than `max_record_age` seconds: Lambda's on-failure record
      describing them goes to `on_failure` (a DeadLetterQueue) and to `given_up`, and the
      checkpoint moves past them. If the queue does not take it, EventSourceError: the
      checkpoint stays before them.
    """

    def __init__(
        self,
        handler: Callable,
        stream: str | None = None,
        client=None,
        batch_size: int = EVENT_SOURCE_MAPPING["BatchSize"],
        max_retries: int = EVENT_SOURCE_MAPPING["MaximumRetryAttempts"],
        bisect_on_error: bool = EVENT_SOURCE_MAPPING["BisectBatchOnFunctionError"],
        max_record_age: float | None = EVENT_SOURCE_MAPPING["MaximumRecordAgeInSeconds"],
        on_failure: DeadLetterQueue | None = None,
        starting_position: str = "TRIM_HORIZON",
        checkpoints: dict[str, str] | None = None,
        role_arn: str | None = None,
        function_name: str = "ride-duration-stream",
        context=None,
        clock: Callable[[], float] = time.time,
    ):
        self.handler, self.context, self.clock = handler, context, clock
        self.batch_size, self.max_retries, self.bisect_on_error = batch_size, max_retries, bisect_on_error
        self.max_record_age, self.on_failure = max_record_age, on_failure
        self.reader = ShardReader(stream or ride_events_stream(), client, starting_position)
        self.client, self.stream = self.reader.client, self.reader.stream
        summary = _call(self.client, "describe_stream_summary", f"describing {self.stream}", StreamName=self.stream)
        self.stream_arn = summary["StreamDescriptionSummary"]["StreamARN"]
        region, account = self.stream_arn.split(":")[3:5]
        self.role_arn = role_arn or f"arn:aws:iam::{account}:role/lambda-kinesis-role"
        self.function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.checkpoints = dict(checkpoints or {})  # shard id -> last sequence number done
        for shard_id, sequence_number in self.checkpoints.items():
            self.reader.iterators[shard_id] = self.reader.iterator(shard_id, "AFTER_SEQUENCE_NUMBER", sequence_number)
        self.given_up: list[dict] = []  # the on-failure records, as Lambda writes them
        self.invocations = 0
        self.records_read: set[str] = set()  # sequence numbers handed to the handler
        self._held: dict[str, tuple[list[dict], int]] = {}  # shard -> (records read, how many to invoke next)
        self._retries: dict[str, tuple[str, int]] = {}  # shard -> (record retried, retries so far)
        self._behind = False

    def poll(self) -> int:
        """One batch from every shard; the number of records handed to the handler or given up."""
        settled, self._behind = 0, False
        for shard_id in list(self.reader.iterators):
            records, limit = self._held.pop(shard_id, (None, 0))
            if records is None:
                response = self.reader.get_records(shard_id, self.batch_size)
                records, limit = response["Records"], len(response["Records"])
                self._behind |= response.get("MillisBehindLatest", 0) > 0
            fresh = self._drop_expired(shard_id, records)
            settled += len(records) - len(fresh)
            if fresh:
                limit = min(limit, len(fresh)) or len(fresh)
                settled += limit
                self._process(shard_id, fresh[:limit], fresh[limit:])
        return settled

    def run(self, timeout: float = 60.0) -> int:
        """Poll until every shard is drained (or timeout); the number of invocations made."""
        before, deadline = self.invocations, time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.poll():
                if not self._behind:
                    break
                time.sleep(0.05)
        return self.invocations - before

    def _process(self, shard_id: str, batch: list[dict], rest: list[dict]) -> None:
        first_failed, function_error = self._invoke(shard_id, batch)
        if first_failed is None and not function_error:
            self._done(shard_id, batch[-1]["SequenceNumber"], rest)
        elif function_error and self.bisect_on_error and len(batch) > 1:
            self._held[shard_id] = (batch + rest, len(batch) // 2)
        elif not self._retry_left(shard_id, batch[first_failed or 0]["SequenceNumber"]):
            self._give_up(shard_id, batch[first_failed or 0 :], "RetryAttemptsExhausted", function_error)
            self._done(shard_id, batch[-1]["SequenceNumber"], rest)
        elif function_error:  # the same records again
            self._held[shard_id] = (batch + rest, len(batch))
        else:  # Lambda's checkpoint: read again from the lowest reported record
            if first_failed:
                self.checkpoints[shard_id] = batch[first_failed - 1]["SequenceNumber"]
            retried = batch[first_failed]["SequenceNumber"]
            self.reader.iterators[shard_id] = self.reader.iterator(shard_id, "AT_SEQUENCE_NUMBER", retried)

    def _invoke(self, shard_id: str, records: list[dict]) -> tuple[int | None, bool]:
        """(position of the first record to retry or None, whether the function failed)."""
        event = kinesis_event(records, shard_id, self.stream_arn, self.client.meta.region_name, self.role_arn)
        self.invocations += 1
        self.records_read.update(r["SequenceNumber"] for r in records)
        try:
            response = self.handler(event, self.context)
        except Exception:
            log.exception("handler failed on %d records of %s", len(records), shard_id)
            return None, True
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if not failures:
            return None, False
        positions = {r["SequenceNumber"]: n for n, r in enumerate(records)}
        try:
            return min(positions[f["itemIdentifier"]] for f in failures), False
        except (KeyError, TypeError):
            log.error("batchItemFailures names records not in the batch: the whole batch failed")
            return 0, False

    def _retry_left(self, shard_id: str, sequence_number: str) -> bool:
        """Count one retry starting at this record; False once max_retries (-1: no limit, as Lambda's) are used up."""
        previous, count = self._retries.get(shard_id, (None, 0))
        count = count + 1 if previous == sequence_number else 1
        self._retries[shard_id] = (sequence_number, count)
        return self.max_retries < 0 or count <= self.max_retries

    def _drop_expired(self, shard_id: str, records: list[dict]) -> list[dict]:
        """Give up the records older than max_record_age (a prefix: arrival times only grow)."""
        if self.max_record_age is None or self.max_record_age < 0:
            return records
        oldest_allowed = self.clock() - self.max_record_age
        expired = 0
        while expired < len(records) and records[expired]["ApproximateArrivalTimestamp"].timestamp() < oldest_allowed:
            expired += 1
        if expired:
            self._give_up(shard_id, records[:expired], "RecordAgeExceeded", function_error=False)
            self._done(shard_id, records[expired - 1]["SequenceNumber"], [])
        return records[expired:]

    def _give_up(self, shard_id: str, records: list[dict], condition: str, function_error: bool) -> None:
        retried, count = self._retries.get(shard_id, (None, 0))
        document = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.function_arn,
                "condition": condition,
                # Every failed invocation of the first record counted one retry.
                "approximateInvokeCount": count if retried == records[0]["SequenceNumber"] else 0,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"}
            | ({"functionError": "Unhandled"} if function_error else {}),
            "version": "1.0",
            "timestamp": utc_timestamp(self.clock()),
            "KinesisBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": records[0]["SequenceNumber"],
                "endSequenceNumber": records[-1]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": utc_timestamp(records[0]["ApproximateArrivalTimestamp"].timestamp()),
                "approximateArrivalOfLastRecord": utc_timestamp(records[-1]["ApproximateArrivalTimestamp"].timestamp()),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        if self.on_failure is not None:
            refused = self.on_failure.send([document])
            if refused:
                raise EventSourceError(
                    f"the on-failure destination {self.on_failure.queue} did not take the record of "
                    f"{len(records)} given-up records of {shard_id} ({refused[0][1]}): the checkpoint stays before them"
                )
        self.given_up.append(document)
        log.error(
            "gave up on %s records %s..%s (%s)",
            shard_id,
            records[0]["SequenceNumber"],
            records[-1]["SequenceNumber"],
            condition,
        )

    def _done(self, shard_id: str, sequence_number: str, rest: list[dict]) -> None:
        # The iterator GetRecords returned already stands after the records read.
        self.checkpoints[shard_id] = sequence_number
        self._retries.pop(shard_id, None)
        if rest:  # the other half of a bisected batch
            self._held[shard_id] = (rest, len(rest))


# ---- the whole loop, locally ----------------------------------------------------------------
@dataclass
class LoopResult:
    sent: int = 0  # events the producer put on the events stream
    read: int = 0  # of them, records handed to the handler
    invocations: int = 0
    written: int = 0  # predictions the handler wrote (re-deliveries included)
    dead_lettered: int = 0  # malformed records the handler put in the dead-letter queue
    given_up: list[dict] = field(default_factory=list)  # the mapping's on-failure records (also in the queue)
    rejected: list[dict] = field(default_factory=list)  # {"itemIdentifier", "reason"} of every malformed record
    predictions: list[dict] = field(default_factory=list)  # read back from the predictions stream
    dead_letter_queue: str = ""  # its URL
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.sent:,} events put, {self.read:,} read in {self.invocations:,} invocations, "
            f"{self.written:,} predictions written, {self.dead_lettered:,} malformed records dead-lettered, "
            f"{len(self.given_up):,} batches given up"
        )


class LoopStopped(EventSourceError):
    """run_loop could not go on; str() is one line with the reason and what was done so far."""

    def __init__(self, message: str, result: LoopResult):
        super().__init__(message)
        self.result = result


def run_loop(handler: Callable, entries: list[dict], timeout: float = 120.0, client=None, **mapping) -> LoopResult:
    """Events in, predictions out, on the Kinesis and SQS that boto3 points at (the stand-in).

    Creates the streams and the dead-letter queue if needed, reads both streams from their
    current end (earlier runs' records are left alone), puts the entries (`ride_entries(...)`,
    possibly mixed with malformed ones) on the events stream, drives `handler` with a
    LocalEventSourceMapping (settings as deployed, or `mapping`'s keywords) until that stream
    is drained, and reads the predictions back. LoopStopped if Kinesis or the queue fails.
    """
    client = client if client is not None else kinesis_client()
    result, started = LoopResult(), time.perf_counter()

    def counting(event, context):
        response = handler(event, context)
        if isinstance(response, dict):
            result.written += response.get("written", 0)
            result.dead_lettered += response.get("dead_lettered", 0)
            result.rejected.extend(response.get("rejected", []))
        return response

    source = None
    try:
        ensure_streams([ride_events_stream(), predictions_stream()], client=client)
        result.dead_letter_queue, _ = ensure_dead_letter_queue()
        on_failure = DeadLetterQueue(result.dead_letter_queue)
        source = LocalEventSourceMapping(
            counting, ride_events_stream(), client, starting_position="LATEST", on_failure=on_failure, **mapping
        )
        reader = ShardReader(predictions_stream(), client, position="LATEST")
        result.sent = KinesisWriter(ride_events_stream(), client).put(entries).sent
        source.run(timeout)
        result.predictions = read_predictions(reader=reader)
    except (EventSourceError, BotoCoreError, ClientError) as exc:
        _tally(result, source, started)
        raise LoopStopped(f"the loop stopped: {first_line(exc)}. Done so far: {result.summary()}", result) from None
    return _tally(result, source, started)


def _tally(result: LoopResult, source: LocalEventSourceMapping | None, started: float) -> LoopResult:
    if source is not None:
        result.read, result.invocations, result.given_up = len(source.records_read), source.invocations, source.given_up
    result.seconds = time.perf_counter() - started
    return result
