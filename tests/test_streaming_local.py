"""The local event-source mapping, and the whole loop on the Kinesis stand-in."""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections import Counter

import pytest
from streaming_support import MALFORMED, TEST_EVENT, compact_linear, load_lambda, model_on_s3, unique  # noqa: F401

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


class Handler:
    """Records the ride ids it sees; fails the ride ids it is told to (a set, or a callable)."""

    def __init__(self, fail=lambda ride_id, seen: False, raise_first=False):
        self.fail, self.raise_first, self.seen, self.events = fail, raise_first, Counter(), []

    def __call__(self, event, context):
        self.events.append(event)
        if self.raise_first and len(self.events) == 1:
            raise RuntimeError("cold start went wrong")
        failures = []
        for r in event["Records"]:
            ride_id = json.loads(base64.b64decode(r["kinesis"]["data"]))["ride_id"]
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
    first_retry = [json.loads(base64.b64decode(r["kinesis"]["data"]))["ride_id"] for r in handler.events[1]["Records"]]
    assert first_retry == list(range(3, 13))
    assert all(handler.seen[i] == 1 for i in (0, 1, 2)) and all(handler.seen[i] == 2 for i in range(3, 10))
    assert set(handler.seen) == set(range(25)) and mapping.discarded == []


def test_a_record_that_keeps_failing_is_given_up_after_the_retries(events_stream):
    handler = Handler(fail=lambda ride_id, seen: ride_id == 5)
    mapping = event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10, max_retries=2)
    mapping.run(timeout=30)
    assert handler.seen[5] == 3  # the first attempt and two retries
    (gave_up,) = mapping.discarded
    assert gave_up["condition"] == "RetryAttemptsExhausted" and gave_up["batchSize"] == 10
    assert set(handler.seen) == set(range(25))  # and then it moved on
    assert mapping.checkpoints["shardId-000000000000"] == handler.events[-1]["Records"][-1]["kinesis"]["sequenceNumber"]


def test_an_exception_fails_the_whole_batch(events_stream, caplog):
    handler = Handler(raise_first=True)
    with caplog.at_level(logging.ERROR, logger="ride_duration.streaming"):
        event_source.LocalEventSourceMapping(handler, events_stream, batch_size=10).run(timeout=30)
    assert handler.seen == Counter(range(25))  # the first batch was read again, all of it
    assert len(handler.events) == 4 and "handler failed" in caplog.text


def test_a_mapping_resumes_from_its_checkpoint(events_stream):
    first = event_source.LocalEventSourceMapping(Handler(), events_stream, batch_size=10)
    first.run(timeout=30)
    event_source.put_ride_events([{"PULocationID": 1, "DOLocationID": 2, "trip_distance": 3.0}], [99], events_stream)
    handler = Handler()
    event_source.LocalEventSourceMapping(handler, events_stream, checkpoints=first.checkpoints).run(timeout=30)
    assert handler.seen == Counter([99])


def _malformed_payloads(count, seed):
    kinds = list(MALFORMED.values())
    generator = random.Random(seed)
    return [generator.choice(kinds)[0] for _ in range(count)]


def test_end_to_end_ten_thousand_events_one_prediction_per_valid_ride(monkeypatch, trips, model_on_s3, compact_linear):
    events, predictions = unique("ride-events"), unique("ride-predictions")
    streaming.ensure_streams([events, predictions])
    # reject: a reported malformed record would make Lambda re-deliver the valid rides behind it.
    lam = load_lambda(
        monkeypatch, MODEL_LOCATION=model_on_s3, PREDICTIONS_STREAM_NAME=predictions, MALFORMED_RECORDS="reject"
    )
    frame = trips[1].head(9_000)
    rides = frame[["PULocationID", "DOLocationID", "trip_distance"]].to_dict("records")
    ride_ids = [f"2021-02-{i}" for i in frame.index]
    # 1,000 malformed events (10%) scattered among the 9,000 rides, with ride ids of their own.
    entries = [{"Data": streaming.encode_ride_event(r, i), "PartitionKey": i} for r, i in zip(rides, ride_ids)]
    malformed = _malformed_payloads(1_000, seed=5)
    for n, payload in enumerate(malformed):
        data = payload.encode() if isinstance(payload, str) else payload
        entries.insert(random.Random(n).randrange(len(entries) + 1), {"Data": data, "PartitionKey": f"bad-{n}"})
    started = time.monotonic()
    assert streaming.KinesisWriter(events).put(entries).failed == []

    rejected = []

    def handler(event, context):
        response = lam.lambda_handler(event, context)
        rejected.extend(response["rejected"])
        return response

    mapping = event_source.LocalEventSourceMapping(handler, events, batch_size=100)
    mapping.run(timeout=90)
    written = event_source.read_predictions(predictions, expected=9_000)
    elapsed = time.monotonic() - started

    counts = Counter(p["prediction"]["ride_id"] for p in written)
    assert len(written) == 9_000 and set(counts) == set(ride_ids) and max(counts.values()) == 1
    assert len(rejected) == 1_000 and len({r["itemIdentifier"] for r in rejected}) == 1_000
    assert mapping.discarded == [] and mapping.invocations == 100
    by_id = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in written}
    assert [by_id[i] for i in ride_ids[:500]] == pytest.approx(compact_linear.predict(rides[:500]).tolist(), abs=1e-12)
    assert elapsed < 60, f"the loop took {elapsed:.1f} s"


def test_reporting_malformed_records_makes_lambda_predict_the_rest_again(monkeypatch, model_on_s3):
    """Why MALFORMED_RECORDS=reject exists: under report, the default, a malformed record is
    retried with every valid record behind it, whose predictions are written again each time."""
    events, predictions = unique("ride-events"), unique("ride-predictions")
    streaming.ensure_streams([events, predictions])
    lam = load_lambda(
        monkeypatch, MODEL_LOCATION=model_on_s3, PREDICTIONS_STREAM_NAME=predictions, MALFORMED_RECORDS="report"
    )
    ride = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
    entries = [{"Data": streaming.encode_ride_event(ride, i), "PartitionKey": str(i)} for i in range(20)]
    entries.insert(10, {"Data": b"not json", "PartitionKey": "bad"})
    streaming.KinesisWriter(events).put(entries)
    mapping = event_source.LocalEventSourceMapping(lam.lambda_handler, events, batch_size=100, max_retries=2)
    mapping.run(timeout=30)
    counts = Counter(p["prediction"]["ride_id"] for p in event_source.read_predictions(predictions))
    assert set(counts) == set(range(20))  # nothing lost
    assert all(counts[i] == 1 for i in range(10)) and all(counts[i] == 3 for i in range(10, 20))
    (gave_up,) = mapping.discarded
    assert gave_up["batchSize"] == 11
