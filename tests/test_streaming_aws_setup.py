"""streaming/setup_aws.py against moto: idempotent up, least privilege, the mapping's error handling, down."""

from __future__ import annotations

import importlib.util
import json

import boto3
import pytest
from streaming_support import REPO, unique

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration-stream:{tag}"
RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def setup_aws(aws_endpoint, monkeypatch):
    """The script as a module, with names of its own."""
    names = {
        "FUNCTION_NAME": unique("fn"),
        "ROLE_NAME": unique("role"),
        "RIDE_EVENTS_STREAM_NAME": unique("events"),
        "PREDICTIONS_STREAM_NAME": unique("predictions"),
        "DEAD_LETTER_QUEUE": unique("dead-letters"),
        "MODEL_BUCKET": "ride-duration-models",
        "RUN_ID": RUN,
        "MLFLOW_EXPERIMENT_ID": "1",
    }
    monkeypatch.delenv("MODEL_LOCATION", raising=False)
    for name, value in names.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("setup_aws", REPO / "streaming" / "setup_aws.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.down()


def snapshot(module) -> dict:
    iam, lam, kinesis = boto3.client("iam"), boto3.client("lambda"), boto3.client("kinesis")
    role = module.role_name()
    function = lam.get_function(FunctionName=module.function_name())
    config = function["Configuration"]
    mappings = lam.list_event_source_mappings(FunctionName=module.function_name())["EventSourceMappings"]
    return {
        "role": iam.get_role(RoleName=role)["Role"]["Arn"],
        "managed": sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]),
        "inline": {
            name: _document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
        },
        "function": {
            key: config.get(key)
            for key in ("FunctionArn", "Role", "MemorySize", "Timeout", "PackageType", "Environment")
        }
        | {"image": function["Code"]["ImageUri"]},
        "mappings": [
            {
                key: m.get(key)
                for key in (
                    "UUID",
                    "EventSourceArn",
                    "BatchSize",
                    "FunctionResponseTypes",
                    "BisectBatchOnFunctionError",
                    "MaximumRetryAttempts",
                    "MaximumRecordAgeInSeconds",
                    "DestinationConfig",
                    "State",
                )
            }
            for m in mappings
        ],
        "streams": sorted(
            name
            for name in kinesis.list_streams()["StreamNames"]
            if name in (module.streaming.ride_events_stream(), module.streaming.predictions_stream())
        ),
    }


def _document(policy) -> dict:
    return policy if isinstance(policy, dict) else json.loads(policy)


def _queue_arn(url: str) -> str:
    return boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def test_up_twice_leaves_the_same_resources(setup_aws):
    first = setup_aws.up(IMAGE.format(tag="v1"))
    before = snapshot(setup_aws)
    second = setup_aws.up(IMAGE.format(tag="v1"))
    assert second == first and snapshot(setup_aws) == before
    assert (
        before["function"]["MemorySize"] == setup_aws.MEMORY_MB and before["function"]["Timeout"] == setup_aws.TIMEOUT_S
    )
    assert before["function"]["PackageType"] == "Image" and before["function"]["image"] == IMAGE.format(tag="v1")
    assert before["function"]["Environment"]["Variables"] == {
        "RUN_ID": RUN,
        "MLFLOW_EXPERIMENT_ID": "1",
        "MODEL_BUCKET": "ride-duration-models",
        "PREDICTIONS_STREAM_NAME": setup_aws.streaming.predictions_stream(),
        "DEAD_LETTER_QUEUE": first["dead_letter_queue"],
    }
    assert len(before["streams"]) == 2


def test_the_role_may_do_exactly_what_the_function_needs_on_named_resources(setup_aws):
    made = setup_aws.up(IMAGE.format(tag="v1"))
    role = snapshot(setup_aws)
    assert role["managed"] == []  # no AWSLambdaKinesisExecutionRole: its resources are "*"
    (policy,) = role["inline"].values()
    granted = {s["Sid"]: (sorted(_listed(s["Action"])), sorted(_listed(s["Resource"]))) for s in policy["Statement"]}
    region, account = made["events_stream"].split(":")[3:5]
    log_group = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{setup_aws.function_name()}"
    assert granted == {
        "ReadRideEvents": (
            [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
            ],
            [made["events_stream"]],
        ),
        "WritePredictions": (["kinesis:PutRecord", "kinesis:PutRecords"], [made["predictions_stream"]]),
        "SendDeadLetters": (["sqs:SendMessage"], [_queue_arn(made["dead_letter_queue"])]),
        "WriteLogs": (
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            [log_group, f"{log_group}:*"],
        ),
        "ReadModel": (["s3:GetObject"], [f"arn:aws:s3:::ride-duration-models/1/{RUN}/artifacts/compact/model.npz"]),
    }
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert "*" not in json.dumps(policy).replace(f"{log_group}:*", "")  # no wildcard but the log group's streams


def _listed(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_the_mapping_reports_partial_failures_bisects_retries_a_bounded_number_and_records_what_it_gives_up(
    setup_aws,
):
    made = setup_aws.up(IMAGE.format(tag="v1"))
    (mapping,) = snapshot(setup_aws)["mappings"]
    assert mapping == {
        "UUID": made["event_source_mapping"],
        "EventSourceArn": made["events_stream"],
        "BatchSize": 100,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 3,
        "MaximumRecordAgeInSeconds": 3600,
        "DestinationConfig": {"OnFailure": {"Destination": _queue_arn(made["dead_letter_queue"])}},
        "State": "Enabled",
    }
    assert mapping["MaximumRecordAgeInSeconds"] < 24 * 3600  # inside the stream's retention: a replay is possible
    retention = boto3.client("sqs").get_queue_attributes(
        QueueUrl=made["dead_letter_queue"], AttributeNames=["MessageRetentionPeriod"]
    )["Attributes"]["MessageRetentionPeriod"]
    assert int(retention) == 14 * 24 * 3600


def test_up_detaches_a_managed_policy_such_as_an_earlier_version_attached(setup_aws):
    """Earlier versions attached AWSLambdaKinesisExecutionRole; any managed policy goes, the inline one stays."""
    setup_aws.up(IMAGE.format(tag="v1"))
    iam = boto3.client("iam")
    broad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesis:*", "Resource": "*"}]}
    legacy = iam.create_policy(PolicyName=unique("legacy"), PolicyDocument=json.dumps(broad))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=setup_aws.role_name(), PolicyArn=legacy)
    assert snapshot(setup_aws)["managed"] == [legacy]
    setup_aws.up(IMAGE.format(tag="v1"))
    assert snapshot(setup_aws)["managed"] == [] and len(snapshot(setup_aws)["inline"]) == 1
    iam.delete_policy(PolicyArn=legacy)


def test_a_model_file_on_s3_is_the_one_object_the_role_may_read(setup_aws, monkeypatch):
    monkeypatch.delenv("RUN_ID")
    monkeypatch.setenv("MODEL_LOCATION", "s3://my-models/stream/lin_reg.npz")
    setup_aws.up(IMAGE.format(tag="v1"))
    (policy,) = snapshot(setup_aws)["inline"].values()
    (read,) = [s for s in policy["Statement"] if s["Sid"] == "ReadModel"]
    assert read["Resource"] == "arn:aws:s3:::my-models/stream/lin_reg.npz"


def test_up_with_a_new_image_updates_the_function_in_place(setup_aws):
    first = setup_aws.up(IMAGE.format(tag="v1"))
    setup_aws.up(IMAGE.format(tag="v2"))
    after = snapshot(setup_aws)
    assert after["function"]["image"] == IMAGE.format(tag="v2")
    assert [m["UUID"] for m in after["mappings"]] == [first["event_source_mapping"]]


def test_down_removes_everything_and_can_run_again(setup_aws):
    setup_aws.up(IMAGE.format(tag="v1"))
    removed = setup_aws.down()
    assert len(removed) == 6 and all(line.startswith("removed ") for line in removed)  # mapping .. queue
    iam, lam, kinesis, sqs = (boto3.client(s) for s in ("iam", "lambda", "kinesis", "sqs"))
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=setup_aws.role_name())
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=setup_aws.function_name())
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=setup_aws.streaming.dead_letter_queue())
    assert lam.list_event_source_mappings(FunctionName=setup_aws.function_name())["EventSourceMappings"] == []
    assert snapshot_streams(setup_aws, kinesis) == []
    assert setup_aws.down() == []


def test_down_keeps_a_queue_that_holds_dead_letters(setup_aws):
    made = setup_aws.up(IMAGE.format(tag="v1"))
    boto3.client("sqs").send_message(QueueUrl=made["dead_letter_queue"], MessageBody='{"reason": "kept"}')
    lines = setup_aws.down()
    assert lines[-1].startswith(f"kept queue {made['dead_letter_queue']}: it holds 1 dead letter")
    assert boto3.client("sqs").get_queue_url(QueueName=setup_aws.streaming.dead_letter_queue())["QueueUrl"]
    boto3.client("sqs").delete_queue(QueueUrl=made["dead_letter_queue"])


def snapshot_streams(module, kinesis):
    names = (module.streaming.ride_events_stream(), module.streaming.predictions_stream())
    return [n for n in kinesis.list_streams()["StreamNames"] if n in names]


@pytest.mark.parametrize(
    "settings",
    [{"MODEL_LOCATION": "models/lin_reg.npz"}, {"RUN_ID": RUN, "MLFLOW_EXPERIMENT_ID": ""}],
    ids=["local file", "run without experiment"],
)
def test_up_refuses_a_model_the_function_cannot_read(setup_aws, monkeypatch, settings):
    monkeypatch.delenv("RUN_ID")  # one model setting at a time
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(setup_aws.ModelNotFound, match="S3"):
        setup_aws.up(IMAGE.format(tag="v1"))
    assert snapshot_streams(setup_aws, boto3.client("kinesis")) == []  # it stopped before creating anything


def test_the_notebooks_up_describe_and_down_show_each_setting_then_nothing(setup_aws, monkeypatch):
    """notebooks/05-streaming.ipynb's calls in its order: image URI from STS, up, describe, purge, down, describe."""
    monkeypatch.delenv("RUN_ID")
    monkeypatch.setenv("MODEL_LOCATION", f"s3://ride-duration-models/1/{RUN}/artifacts/compact/model.npz")
    image_uri = setup_aws.ecr_image_uri("v1")
    assert image_uri == IMAGE.format(tag="v1")  # moto's account and the fixture's region
    made = setup_aws.up(image_uri)
    boto3.client("sqs").send_message(QueueUrl=made["dead_letter_queue"], MessageBody='{"reason": "a test letter"}')
    seen = setup_aws.describe()

    role = seen["role"]
    assert role["Arn"] == made["role"] and role["managed"] == []
    assert role["trust"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    (policy,) = role["inline"].values()
    assert [s["Sid"] for s in policy["Statement"]] == [
        "ReadRideEvents",
        "WritePredictions",
        "SendDeadLetters",
        "WriteLogs",
        "ReadModel",
    ]
    events, predictions = (setup_aws.streaming.ride_events_stream(), setup_aws.streaming.predictions_stream())
    assert {name: (s["StreamARN"], s["StreamStatus"]) for name, s in seen["streams"].items()} == {
        events: (made["events_stream"], "ACTIVE"),
        predictions: (made["predictions_stream"], "ACTIVE"),
    }
    queue = seen["dead_letter_queue"]
    assert queue["QueueUrl"] == made["dead_letter_queue"] and queue["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert queue["ApproximateNumberOfMessages"] == "1"
    assert seen["function"] == {
        "ImageUri": image_uri,
        "PackageType": "Image",
        "MemorySize": setup_aws.MEMORY_MB,
        "Timeout": setup_aws.TIMEOUT_S,
        "Architectures": ["x86_64"],  # Lambda's default: the Dockerfile's base image is built for it
        "Environment": {
            "Variables": {
                "MODEL_LOCATION": f"s3://ride-duration-models/1/{RUN}/artifacts/compact/model.npz",
                "MODEL_BUCKET": "ride-duration-models",
                "MLFLOW_EXPERIMENT_ID": "1",
                "PREDICTIONS_STREAM_NAME": predictions,
                "DEAD_LETTER_QUEUE": made["dead_letter_queue"],
            }
        },
        "Role": made["role"],
        "State": "Active",
    }
    assert seen["event_source_mappings"] == [
        {
            "UUID": made["event_source_mapping"],
            "EventSourceArn": made["events_stream"],
            "State": "Enabled",
            "StartingPosition": "LATEST",
            "BatchSize": 100,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 3,
            "MaximumRecordAgeInSeconds": 3600,
            "DestinationConfig": {"OnFailure": {"Destination": queue["QueueArn"]}},
        }
    ]

    boto3.client("sqs").purge_queue(QueueUrl=queue["QueueUrl"])
    assert setup_aws.down() == [
        f"removed event-source mapping {made['event_source_mapping']}",
        f"removed function {setup_aws.function_name()}",
        f"removed role {setup_aws.role_name()}",
        f"removed stream {events}",
        f"removed stream {predictions}",
        f"removed queue {setup_aws.streaming.dead_letter_queue()}",
    ]
    assert setup_aws.describe() == {
        "role": None,
        "streams": {events: None, predictions: None},
        "dead_letter_queue": None,
        "function": None,
        "event_source_mappings": [],
    }


def test_show_prints_what_describe_reads(setup_aws, capsys):
    made = setup_aws.up(IMAGE.format(tag="v1"))
    setup_aws.main(["show"])
    shown = json.loads(capsys.readouterr().out)
    assert shown == setup_aws.describe() and shown["function"]["ImageUri"] == IMAGE.format(tag="v1")
    assert shown["event_source_mappings"][0]["UUID"] == made["event_source_mapping"]


def test_the_architecture_given_is_the_functions_and_x86_64_is_the_default(setup_aws, monkeypatch, capsys):
    monkeypatch.delenv("LAMBDA_ARCHITECTURE", raising=False)
    setup_aws.main(["up", "--image-uri", IMAGE.format(tag="v1")])
    assert setup_aws.describe()["function"]["Architectures"] == ["x86_64"]
    setup_aws.down()
    setup_aws.main(["up", "--image-uri", IMAGE.format(tag="v1"), "--architecture", "arm64"])
    assert setup_aws.describe()["function"]["Architectures"] == ["arm64"]
    setup_aws.down()
    monkeypatch.setenv("LAMBDA_ARCHITECTURE", "arm64")
    setup_aws.main(["up", "--image-uri", IMAGE.format(tag="v1")])
    assert setup_aws.describe()["function"]["Architectures"] == ["arm64"]
    capsys.readouterr()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_unknown_architecture_is_refused_before_anything_is_made(setup_aws, monkeypatch, capsys, how):
    argv = ["up", "--image-uri", IMAGE.format(tag="v1")]
    if how == "option":
        argv += ["--architecture", "amd64"]
    else:
        monkeypatch.setenv("LAMBDA_ARCHITECTURE", "amd64")
    with pytest.raises(SystemExit) as stopped:
        setup_aws.main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "amd64" in error and "x86_64" in error and "arm64" in error
    assert setup_aws.describe()["function"] is None and setup_aws.describe()["role"] is None
