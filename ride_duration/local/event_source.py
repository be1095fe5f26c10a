"""A Kinesis event source on one machine: producer, shard reader, Lambda's event-source mapping.

Lambda's poller does not run outside AWS, and moto runs no function code without Docker.
`LocalEventSourceMapping` drives a handler from a stream in-process the way Lambda's mapping
does (same event, `batchItemFailures` honoured, retries bounded), so the handler is tested as
Lambda runs it; `run_loop` is the whole loop on the stand-ins: events in, predictions out.
The lessons, the tests and the demo use it. The Lambda image does not ship it: the handler's
parts are ride_duration.streaming.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ride_duration.streaming import (
    DeliveryReport,
    KinesisWriter,
    encode_ride_event,
    ensure_streams,
    kinesis_client,
    predictions_stream,
    ride_events_stream,
)

log = logging.getLogger(__name__)


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
