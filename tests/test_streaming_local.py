"""The local event-source mapping, and the whole loop on the Kinesis and SQS stand-ins."""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections import Counter

import boto3
import pytest
from streaming_support import (  # noqa: F401  (fixtures)
    MALFORMED,
    TEST_EVENT,
    compact_linear,
    load_lambda,
    model_on_s3,
    new_queue,
    read_queue,
    unique,
)

from ride_duration import streaming
from ride_duration.local import event_source


@pytest.fixture
def events_stream(aws_endpoint):
    """A fresh stream holding 25 ride events, ride ids 0..24."""
    stream = unique("events")
    streaming.ensure_streams([stream])
    rides = [{"PULocationID": 1 + i, "DOLocationID": 2 + i, "trip_distance": 1.0 + i} for i in range(25)]
    assert event_source.put_ride_events(rides, list(range(25)), stream).failed == []
    return stream


def ride_ids(event) -> list[int]:
    return [json.loads(base64.b64decode(r["kinesis"]["data"]))["ride_id"] for r in event["Records"]]


class Handler:
    """Records the ride ids it sees; reports the ones `fail` names, raises when `raises` says so."""

    def __init__(self, fail=lambda ride_id, seen: False, raises=lambda event, calls: False):
        self.fail, self.raises, self.seen, self.events = fail, raises, Counter(), []

    def __call__(self, event, context):
        self.events.append(event)
        if self.raises(event, len(self.events)):
            raise RuntimeError("the function failed")
        failures = []
        for r, ride_id in zip(event["Records"], ride_ids(event)):
            self.seen[ride_id] += 1
            if self.fail(ride_id, self.seen[ride_id]):
                failures.append({"itemIdentifier": r["kinesis"]["sequenceNumber"]})
        return {"batchItemFailures": failures}


def test_batches_are_built_like_lambdas_event(events_stream):
    handler = Handler()
    mapping = event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10)
    assert mapping.run(timeout=30) == 3
    assert handler.seen == Counter(range(25))
    assert [len(e["Records"]) for e in handler.events] == [10, 10, 5]
    template = json.loads(TEST_EVENT.read_text())["Records"][0]
    got = handler.events[0]["Records"][0]
    assert got.keys() == template.keys() and got["kinesis"].keys() == template["kinesis"].keys()
    assert got["eventSourceARN"].endswith(f":stream/{events_stream}") and got["eventID"].startswith("shardId-")
    assert mapping.checkpoints == {
        "shardId-000000000000": handler.events[-1]["Records"][-1]["kinesis"]["sequenceNumber"]
    }


def test_a_partial_failure_is_retried_from_the_first_failed_record(events_stream):
    handler = Handler(fail=lambda ride_id, seen: ride_id in (3, 7) and seen == 1)
    mapping = event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10)
    mapping.run(timeout=30)
    assert ride_ids(handler.events[1]) == list(range(3, 13))
    assert all(handler.seen[i] == 1 for i in (0, 1, 2)) and all(handler.seen[i] == 2 for i in range(3, 10))
    assert set(handler.seen) == set(range(25)) and mapping.given_up == []


def test_a_record_that_keeps_failing_is_recorded_in_the_queue_after_the_retries(events_stream):
    queue = new_queue()
    handler = Handler(fail=lambda ride_id, seen: ride_id == 5)
    mapping = event_source.LocalEventSourceMapping(
        handler, events_stream, batch_size=10, max_retries=2, on_failure=streaming.DeadLetterQueue(queue)
    )
    mapping.run(timeout=30)
    assert handler.seen[5] == 3  # the first attempt and two retries
    (gave_up,) = mapping.given_up
    assert read_queue(queue) == [gave_up]  # Lambda's on-failure record, in the queue
    assert gave_up["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert gave_up["requestContext"]["approximateInvokeCount"] == 3
    batch = gave_up["KinesisBatchInfo"]
    assert batch["batchSize"] == 10 and batch["streamArn"] == mapping.stream_arn
    assert batch["startSequenceNumber"] == handler.events[-2]["Records"][0]["kinesis"]["sequenceNumber"]
    assert set(handler.seen) == set(range(25))  # and then it moved on
    assert mapping.checkpoints["shardId-000000000000"] == handler.events[-1]["Records"][-1]["kinesis"]["sequenceNumber"]


@pytest.mark.parametrize(
    "bisect, sizes", [(False, [10, 10, 10, 5]), (True, [10, 5, 5, 10, 5])], ids=["whole", "bisect"]
)
def test_an_exception_fails_the_whole_batch_or_halves_it(events_stream, caplog, bisect, sizes):
    handler = Handler(raises=lambda event, calls: calls == 1)
    with caplog.at_level(logging.ERROR, logger="ride_duration.local.event_source"):
        event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10, bisect_on_error=bisect).run(30)
    assert handler.seen == Counter(range(25))  # the first batch was read again, all of it
    assert [len(e["Records"]) for e in handler.events] == sizes and "handler failed" in caplog.text


def test_bisect_isolates_the_one_record_that_makes_the_function_fail(events_stream):
    handler = Handler(raises=lambda event, calls: 7 in ride_ids(event))
    mapping = event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10, max_retries=2)
    mapping.run(timeout=30)
    (gave_up,) = mapping.given_up
    assert gave_up["KinesisBatchInfo"]["batchSize"] == 1 and gave_up["responseContext"]["functionError"] == "Unhandled"
    poison = [e for e in handler.events if ride_ids(e) == [7]]
    assert gave_up["KinesisBatchInfo"]["startSequenceNumber"] == poison[0]["Records"][0]["kinesis"]["sequenceNumber"]
    assert len(poison) == 3  # alone, then two retries
    assert handler.seen == Counter(i for i in range(25) if i != 7)  # every other ride got through, once


def test_records_older_than_the_maximum_age_are_recorded_not_invoked(events_stream):
    handler = Handler()
    two_hours_later = lambda: time.time() + 7200  # noqa: E731
    mapping = event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10, clock=two_hours_later)
    mapping.run(timeout=30)
    assert handler.events == []
    assert {g["requestContext"]["condition"] for g in mapping.given_up} == {"RecordAgeExceeded"}
    assert sum(g["KinesisBatchInfo"]["batchSize"] for g in mapping.given_up) == 25


def test_a_mapping_resumes_from_its_checkpoint(events_stream):
    first = event_source.LocalEventSourceMapping(Handler(), events_stream, batch_size=10)
    first.run(timeout=30)
    event_source.put_ride_events([{"PULocationID": 1, "DOLocationID": 2, "trip_distance": 3.0}], [99], events_stream)
    handler = Handler()
    event_source.LocalEventSourceMapping(handler, events_stream, checkpoints=first.checkpoints).run(timeout=30)
    assert handler.seen == Counter([99])


# ---- the whole loop: nothing lost, and only undelivered predictions re-predicted --------------
class RefusesAShare:
    """Wraps a Kinesis client: PutRecords refuses a random share of the entries, every attempt."""

    def __init__(self, client, share: float, seed: int):
        self.client, self.share, self.random = client, share, random.Random(seed)

    def put_records(self, StreamName, Records):
        refused = [self.random.random() < self.share for _ in Records]
        accepted = [r for r, no in zip(Records, refused) if not no]
        written = iter(self.client.put_records(StreamName=StreamName, Records=accepted)["Records"] if accepted else [])
        throttled = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
        return {"FailedRecordCount": sum(refused), "Records": [throttled if no else next(written) for no in refused]}


def test_malformed_records_and_refused_puts_lose_nothing_and_duplicate_nothing_but_retries(
    monkeypatch, trips, model_on_s3
):
    """Issue 13's case: 10% malformed records and 30% of PutRecords entries refused, 2,000 rides."""
    events, predictions, queue = unique("ride-events"), unique("ride-predictions"), unique("dead-letters")
    monkeypatch.setenv("RIDE_EVENTS_STREAM_NAME", events)
    lam = load_lambda(
        monkeypatch, MODEL_LOCATION=model_on_s3, PREDICTIONS_STREAM_NAME=predictions, DEAD_LETTER_QUEUE=queue
    )
    flaky = RefusesAShare(boto3.client("kinesis"), share=0.3, seed=13)
    monkeypatch.setattr(lam, "writer", streaming.KinesisWriter(predictions, client=flaky, base_delay=0.001))

    frame = trips[1].head(2_000)
    rides = frame[["PULocationID", "DOLocationID", "trip_distance"]].to_dict("records")
    valid_ids = [f"2021-02-{i}" for i in frame.index]
    entries = event_source.ride_entries(rides, valid_ids)
    kinds = [kind for kind, (payload, _) in MALFORMED.items() if isinstance(payload, bytes)]  # what Kinesis can carry
    generator, expected_reason = random.Random(5), {}
    for n in range(222):  # 10% of the 2,222 records
        kind = generator.choice(kinds)
        expected_reason[f"bad-{n}"] = MALFORMED[kind][1]
        entries.insert(generator.randrange(len(entries) + 1), {"Data": MALFORMED[kind][0], "PartitionKey": f"bad-{n}"})

    invocations = []  # (event, response) of every call

    def handler(event, context):
        response = lam.lambda_handler(event, context)
        invocations.append((event, response))
        return response

    started = time.monotonic()
    loop = event_source.run_loop(handler, entries, timeout=60)
    elapsed = time.monotonic() - started

    key_of = {
        r["kinesis"]["sequenceNumber"]: r["kinesis"]["partitionKey"] for e, _ in invocations for r in e["Records"]
    }
    malformed = {s for s, key in key_of.items() if key.startswith("bad-")}
    reported = [f["itemIdentifier"] for _, response in invocations for f in response["batchItemFailures"]]
    # What each call wrote: its valid rides but the undelivered ones, which it reported.
    written_by_calls = Counter(
        key_of[r["kinesis"]["sequenceNumber"]]
        for event, response in invocations
        for r in event["Records"]
        if r["kinesis"]["sequenceNumber"]
        not in malformed | {f["itemIdentifier"] for f in response["batchItemFailures"]}
    )
    handed = Counter(key for e, _ in invocations for key in (r["kinesis"]["partitionKey"] for r in e["Records"]))
    counts = Counter(p["prediction"]["ride_id"] for p in loop.predictions)
    duplicates = sum(c - 1 for c in counts.values())
    redeliveries = sum(handed[i] - 1 for i in valid_ids)
    letters = read_queue(loop.dead_letter_queue)
    lettered = {d["record"]["partitionKey"]: d["reason"] for d in letters if "record" in d}
    figures = (
        f"valid rides {len(valid_ids):,}, delivered {len(set(counts) & set(valid_ids)):,}, predictions written "
        f"{len(loop.predictions):,}, duplicates {duplicates} (re-deliveries of valid records after "
        f"{len(reported)} undelivered predictions: {redeliveries}), malformed {len(expected_reason)}, "
        f"dead-lettered {len(lettered)} ({len(letters)} messages), {loop.invocations} invocations, {elapsed:.1f} s"
    )
    print(figures)

    assert loop.sent == len(entries) and loop.read == len(entries), figures
    assert set(counts) == set(valid_ids), figures  # every valid ride delivered at least once, nothing else
    assert not malformed & set(reported), figures  # no malformed record sent back to Lambda, so none re-delivered
    assert reported and set(reported) <= set(key_of) - malformed, figures  # the retries were exercised
    assert counts == written_by_calls, figures  # each prediction on the stream is one a call wrote
    assert all(handed[i] >= counts[i] for i in counts), figures  # a duplicate is a re-delivery, after a report
    assert set(lettered) == set(expected_reason), figures  # every malformed record is in the queue ...
    assert all(expected_reason[key] in reason for key, reason in lettered.items()), figures  # ... with its reason
    assert loop.given_up == [] and loop.dead_lettered == len(letters), figures
    assert elapsed < 40, figures


# ---- the loop when the stand-in dies or forgets its streams --------------------------------
@pytest.fixture
def own_moto(aws_endpoint, monkeypatch):
    """A moto server of this test's own, which the test may stop."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    for name in ("RIDE_EVENTS_STREAM_NAME", "PREDICTIONS_STREAM_NAME", "DEAD_LETTER_QUEUE"):
        monkeypatch.setenv(name, unique(name.split("_")[0].lower()))
    yield server
    server.stop()
    server._server.server_close()  # stop() leaves the socket listening: a hung endpoint, not a dead one


@pytest.mark.parametrize("failure", ["dies", "loses the stream"])
def test_the_loop_stops_with_one_line_and_what_it_delivered(monkeypatch, own_moto, model_on_s3, failure):
    lam = load_lambda(
        monkeypatch,
        MODEL_LOCATION=model_on_s3,
        PREDICTIONS_STREAM_NAME=streaming.predictions_stream(),
        DEAD_LETTER_QUEUE=streaming.dead_letter_queue(),
    )

    def handler(event, context):
        response = lam.lambda_handler(event, context)
        if len(calls) == 1:
            if failure == "dies":
                own_moto.stop()
                own_moto._server.server_close()
            else:  # what a restarted stand-in looks like: the same endpoint, no streams
                boto3.client("kinesis").delete_stream(StreamName=streaming.ride_events_stream())
        calls.append(event)
        return response

    calls = []
    rides = [{"PULocationID": 1 + i % 265, "DOLocationID": 2, "trip_distance": 1.5} for i in range(300)]
    started = time.monotonic()
    with pytest.raises(event_source.LoopStopped) as stopped:
        event_source.run_loop(handler, event_source.ride_entries(rides, list(range(300))), batch_size=100)
    message = str(stopped.value)
    assert "\n" not in message and stopped.value.__cause__ is None and stopped.value.__suppress_context__
    assert "the loop stopped: reading" in message and "Done so far: 300 events put, 200 read in 2" in message
    assert "200 predictions written, 0 malformed records dead-lettered" in message
    assert stopped.value.result.written == 200 and time.monotonic() - started < 30
