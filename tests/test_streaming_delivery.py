"""PutRecords in chunks, with failed entries retried: every prediction delivered, none twice."""

from __future__ import annotations

import json
import random

import boto3
import pytest
from botocore.stub import Stubber
from streaming_support import unique

from ride_duration import streaming
from ride_duration.local import event_source


def _entries(n, size=40):
    return [{"Data": json.dumps({"ride_id": i, "pad": "x" * size}).encode(), "PartitionKey": str(i)} for i in range(n)]


class FlakyKinesis:
    """Forwards PutRecords to a real client but fails a share of the entries the first time each is sent."""

    def __init__(self, client, fail_share=0.3, seed=0):
        self.client, self.fail_share, self.random = client, fail_share, random.Random(seed)
        self.seen, self.calls = set(), []

    def put_records(self, StreamName, Records):
        self.calls.append([r["PartitionKey"] for r in Records])
        refused = [r["PartitionKey"] not in self.seen and self.random.random() < self.fail_share for r in Records]
        self.seen.update(r["PartitionKey"] for r in Records)
        accepted = [r for r, no in zip(Records, refused) if not no]
        results = iter(self.client.put_records(StreamName=StreamName, Records=accepted)["Records"] if accepted else [])
        records = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
            if no
            else next(results)
            for no in refused
        ]
        return {"FailedRecordCount": sum(refused), "Records": records}


def test_partial_failures_are_retried_until_all_are_delivered_once(aws_endpoint):
    stream = unique("flaky")
    streaming.ensure_streams([stream])
    flaky = FlakyKinesis(boto3.client("kinesis"), fail_share=0.3)
    delays = []
    writer = streaming.KinesisWriter(stream, client=flaky, max_attempts=8, sleep=delays.append)
    entries = _entries(1200)

    report = writer.put(entries)

    assert report.failed == [] and report.sent == 1200
    first_attempt = [key for call in flaky.calls[:3] for key in call]
    assert sorted(first_attempt, key=int) == [str(i) for i in range(1200)]  # 500 + 500 + 200
    assert [len(c) for c in flaky.calls[:3]] == [500, 500, 200]
    assert 250 < sum(len(c) for c in flaky.calls[3:]) < 470  # only the ~30% refused were sent again
    delivered = [json.loads(r["Data"])["ride_id"] for r in event_source.ShardReader(stream).read_all(expected=1200)]
    assert sorted(delivered) == list(range(1200))  # every entry, none twice
    assert delays and all(0 <= d <= writer.max_delay for d in delays)


def test_only_the_failed_entries_are_sent_again():
    client = boto3.client("kinesis", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    entries = _entries(4)
    ok = {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}
    throttled = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"}
    with Stubber(client) as stub:
        stub.add_response(
            "put_records",
            {"FailedRecordCount": 2, "Records": [ok, throttled, ok, throttled]},
            {"StreamName": "s", "Records": entries},
        )
        stub.add_response(
            "put_records",
            {"FailedRecordCount": 1, "Records": [ok, throttled]},
            {"StreamName": "s", "Records": [entries[1], entries[3]]},
        )
        stub.add_response("put_records", {"Records": [ok]}, {"StreamName": "s", "Records": [entries[3]]})
        report = streaming.KinesisWriter("s", client=client, sleep=lambda s: None).put(entries)
        stub.assert_no_pending_responses()
    assert report.sent == 4 and report.failed == [] and report.calls == 3


def test_what_never_gets_through_is_reported_not_dropped():
    client = boto3.client("kinesis", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    entries = _entries(3)
    ok = {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}
    failure = {"ErrorCode": "InternalFailure", "ErrorMessage": "Internal service failure."}
    delays = []
    with Stubber(client) as stub:
        stub.add_response("put_records", {"FailedRecordCount": 1, "Records": [ok, failure, ok]})
        for _ in range(3):
            stub.add_response("put_records", {"FailedRecordCount": 1, "Records": [failure]})
        report = streaming.KinesisWriter("s", client=client, max_attempts=4, sleep=delays.append).put(entries)
    assert report.sent == 2
    assert [(f.index, f.code) for f in report.failed] == [(1, "InternalFailure")]
    assert len(delays) == 3


def test_a_final_error_is_not_retried():
    client = boto3.client("kinesis", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    with Stubber(client) as stub:
        stub.add_client_error("put_records", "ResourceNotFoundException", "Stream s not found")
        report = streaming.KinesisWriter("s", client=client, sleep=pytest.fail).put(_entries(2))
    assert [(f.index, f.code) for f in report.failed] == [
        (0, "ResourceNotFoundException"),
        (1, "ResourceNotFoundException"),
    ]


def test_calls_stay_within_the_size_limit():
    sizes = []

    class Recorder:
        def put_records(self, StreamName, Records):
            sizes.append(sum(len(r["Data"]) + len(r["PartitionKey"]) for r in Records))
            return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1"} for _ in Records]}

    report = streaming.KinesisWriter("s", client=Recorder()).put(_entries(60, size=200_000))
    assert report.sent == 60 and len(sizes) == 3
    assert all(size <= streaming.MAX_BYTES_PER_CALL for size in sizes)


def test_no_attempt_starts_after_the_time_budget():
    now = [0.0]

    class Refuses:
        calls = 0

        def put_records(self, StreamName, Records):
            Refuses.calls += 1
            now[0] += 4.0  # each call takes four seconds
            return {
                "FailedRecordCount": len(Records),
                "Records": [{"ErrorCode": "InternalFailure", "ErrorMessage": "down"} for _ in Records],
            }

    writer = streaming.KinesisWriter(
        "s", client=Refuses(), max_attempts=10, time_budget=10.0, sleep=lambda s: None, clock=lambda: now[0]
    )
    report = writer.put(_entries(3))
    assert Refuses.calls == 3 and [f.index for f in report.failed] == [0, 1, 2]
