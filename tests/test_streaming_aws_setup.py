"""streaming/setup_aws.py against the moto server: idempotent up, complete down."""

from __future__ import annotations

import importlib.util
import json

import boto3
import pytest
from streaming_support import REPO, unique

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration-stream:{tag}"


@pytest.fixture
def setup_aws(aws_endpoint, monkeypatch):
    """The script as a module, with names of its own and AWS's managed policies in IAM."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    _ensure_managed_policies()
    names = {
        "FUNCTION_NAME": unique("fn"),
        "ROLE_NAME": unique("role"),
        "RIDE_EVENTS_STREAM_NAME": unique("events"),
        "PREDICTIONS_STREAM_NAME": unique("predictions"),
        "MODEL_BUCKET": "ride-duration-models",
        "RUN_ID": "0123456789abcdef0123456789abcdef",
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


def _ensure_managed_policies():
    # moto loads AWS's managed policies when its IAM backend starts, if the variable is set then;
    # the in-process server of the test session may have started IAM earlier without it.
    iam = boto3.client("iam")
    try:
        iam.get_policy(PolicyArn="arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole")
    except iam.exceptions.NoSuchEntityException:
        from moto.iam.models import iam_backends

        iam_backends.reset()


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
            name: iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
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
                    "MaximumRetryAttempts",
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


def test_up_twice_leaves_the_same_resources(setup_aws):
    first = setup_aws.up(IMAGE.format(tag="v1"))
    before = snapshot(setup_aws)
    second = setup_aws.up(IMAGE.format(tag="v1"))
    assert second == first and snapshot(setup_aws) == before

    assert before["managed"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole"]
    (policy,) = before["inline"].values()
    policy = policy if isinstance(policy, dict) else json.loads(policy)
    resources = {s["Sid"]: s["Resource"] for s in policy["Statement"]}
    assert resources == {
        "ReadModel": "arn:aws:s3:::ride-duration-models/*",
        "WritePredictions": first["predictions_stream"],
    }
    assert (
        before["function"]["MemorySize"] == setup_aws.MEMORY_MB and before["function"]["Timeout"] == setup_aws.TIMEOUT_S
    )
    assert before["function"]["PackageType"] == "Image" and before["function"]["image"] == IMAGE.format(tag="v1")
    assert before["function"]["Environment"]["Variables"] == {
        "RUN_ID": "0123456789abcdef0123456789abcdef",
        "MLFLOW_EXPERIMENT_ID": "1",
        "MODEL_BUCKET": "ride-duration-models",
        "PREDICTIONS_STREAM_NAME": setup_aws.streaming.predictions_stream(),
    }
    (mapping,) = before["mappings"]
    assert mapping["EventSourceArn"] == first["events_stream"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert len(before["streams"]) == 2


def test_up_with_a_new_image_updates_the_function_in_place(setup_aws):
    first = setup_aws.up(IMAGE.format(tag="v1"))
    setup_aws.up(IMAGE.format(tag="v2"))
    after = snapshot(setup_aws)
    assert after["function"]["image"] == IMAGE.format(tag="v2")
    assert [m["UUID"] for m in after["mappings"]] == [first["event_source_mapping"]]


def test_down_removes_everything_and_can_run_again(setup_aws):
    setup_aws.up(IMAGE.format(tag="v1"))
    removed = setup_aws.down()
    assert len(removed) == 5  # mapping, function, role, two streams
    iam, lam, kinesis = boto3.client("iam"), boto3.client("lambda"), boto3.client("kinesis")
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=setup_aws.role_name())
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=setup_aws.function_name())
    assert lam.list_event_source_mappings(FunctionName=setup_aws.function_name())["EventSourceMappings"] == []
    assert snapshot_streams(setup_aws, kinesis) == []
    assert setup_aws.down() == []


def snapshot_streams(module, kinesis):
    names = (module.streaming.ride_events_stream(), module.streaming.predictions_stream())
    return [n for n in kinesis.list_streams()["StreamNames"] if n in names]


def test_up_refuses_a_model_the_function_cannot_read(setup_aws, monkeypatch):
    monkeypatch.delenv("RUN_ID")  # one model setting at a time
    monkeypatch.setenv("MODEL_LOCATION", "models/lin_reg.npz")
    with pytest.raises(setup_aws.ModelNotFound, match="S3"):
        setup_aws.up(IMAGE.format(tag="v1"))
    assert snapshot_streams(setup_aws, boto3.client("kinesis")) == []  # it stopped before creating anything
