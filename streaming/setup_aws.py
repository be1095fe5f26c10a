"""Create, update or remove the streaming deployment on AWS; running it twice changes nothing.

    python streaming/setup_aws.py up --image-uri <ECR image URI>   # create or update
    python streaming/setup_aws.py down                             # remove all of it

`up` makes: the IAM role (AWSLambdaKinesisExecutionRole to read the events stream and
write logs, plus an inline policy that may read the model bucket and write the predictions
stream, nothing else), the two streams, the function from the container image with its
environment, memory and timeout, and the event-source mapping from the events stream with
ReportBatchItemFailures. `down` removes them in reverse order (the model bucket stays).

Environment (defaults in brackets): FUNCTION_NAME [ride-duration-stream], ROLE_NAME
[lambda-kinesis-role], IMAGE_URI (or --image-uri), RIDE_EVENTS_STREAM_NAME [ride_events],
PREDICTIONS_STREAM_NAME [ride_predictions], the model: MODEL_LOCATION, or RUN_ID +
MLFLOW_EXPERIMENT_ID + MODEL_BUCKET [ride-duration-models]. boto3 finds the account and
region as usual (AWS_PROFILE, AWS_DEFAULT_REGION; AWS_ENDPOINT_URL for the stand-in).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import boto3

from ride_duration import config, streaming
from ride_duration.models import ModelNotFound, spec_from_env, split_s3_url

KINESIS_EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaKinesisExecutionRole"
INLINE_POLICY_NAME = "ride-duration-stream-access"
# The cold start's time and peak memory are in the README's Performance section
# (benchmarks/streaming.py). 128 MB would hold it, but Lambda's CPU share grows with memory
# (1,769 MB = 1 vCPU): 256 MB doubles it for the imports and for the forest's batches, at
# about the same cost per batch.
MEMORY_MB = 256
# Worst case per batch: a cold start on that CPU share (~5 s), KinesisWriter's retries
# (no new attempt after 10 s) plus one call in flight (at most 2 x (3 s connect + 5 s read)).
# Lambda's 3 s default is what the course's function overran.
TIMEOUT_S = 30
BATCH_SIZE = 100
# Retries of a batch whose predictions could not be delivered; then Lambda moves on.
MAXIMUM_RETRY_ATTEMPTS = 3
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
MODEL_VARIABLES = ("MODEL_LOCATION", "RUN_ID", "MLFLOW_EXPERIMENT_ID", "MODEL_BUCKET")


def function_name() -> str:
    return os.environ.get("FUNCTION_NAME", "ride-duration-stream")


def role_name() -> str:
    return os.environ.get("ROLE_NAME", "lambda-kinesis-role")


def function_environment() -> dict[str, str]:
    """What the function needs to find its model and its output stream."""
    variables = {name: os.environ[name] for name in MODEL_VARIABLES if os.environ.get(name)}
    variables["PREDICTIONS_STREAM_NAME"] = streaming.predictions_stream()
    return variables


def model_bucket() -> str:
    """The bucket the function reads its model from, for its role's policy."""
    spec = spec_from_env(streaming.MODEL_SETTINGS)
    if spec.startswith("s3://"):
        return split_s3_url(spec)[0]
    # The role may read objects, not list the bucket: the experiment must be given.
    if os.environ.get("RUN_ID") and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return config.model_bucket()
    raise ModelNotFound(
        f"the function can only read its model from S3, not {spec}: set MODEL_LOCATION=s3://... "
        "or RUN_ID and MLFLOW_EXPERIMENT_ID"
    )


def access_policy(bucket: str, predictions_arn: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadModel", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
            {
                "Sid": "WritePredictions",
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord", "kinesis:PutRecords"],
                "Resource": predictions_arn,
            },
        ],
    }


def up(image_uri: str, session=None) -> dict:
    """Create or update everything; returns the ARNs and the mapping's UUID."""
    session = session or boto3.session.Session()
    bucket = model_bucket()
    iam, kinesis, lam = session.client("iam"), session.client("kinesis"), session.client("lambda")
    events_arn, predictions_arn = streaming.ensure_streams(
        [streaming.ride_events_stream(), streaming.predictions_stream()], client=kinesis
    )
    role_arn = ensure_role(iam, access_policy(bucket, predictions_arn))
    function_arn = ensure_function(lam, image_uri, role_arn)
    mapping = ensure_mapping(lam, events_arn)
    return {
        "role": role_arn,
        "function": function_arn,
        "events_stream": events_arn,
        "predictions_stream": predictions_arn,
        "event_source_mapping": mapping,
    }


def ensure_role(iam, policy: dict) -> str:
    try:
        role_arn = iam.create_role(
            RoleName=role_name(),
            AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST),
            Description="ride-duration streaming Lambda",
        )["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=role_name(), PolicyDocument=json.dumps(LAMBDA_TRUST))
        role_arn = iam.get_role(RoleName=role_name())["Role"]["Arn"]
    iam.attach_role_policy(RoleName=role_name(), PolicyArn=KINESIS_EXECUTION_POLICY)
    iam.put_role_policy(RoleName=role_name(), PolicyName=INLINE_POLICY_NAME, PolicyDocument=json.dumps(policy))
    return role_arn


def ensure_function(lam, image_uri: str, role_arn: str) -> str:
    settings = {
        "Role": role_arn,
        "MemorySize": MEMORY_MB,
        "Timeout": TIMEOUT_S,
        "Environment": {"Variables": function_environment()},
    }
    try:
        current = lam.get_function(FunctionName=function_name())
    except lam.exceptions.ResourceNotFoundException:
        arn = _retry_until_role_usable(
            lam,
            lambda: lam.create_function(
                FunctionName=function_name(),
                PackageType="Image",
                Code={"ImageUri": image_uri},
                Description="ride-duration predictions from Kinesis ride events",
                **settings,
            ),
        )["FunctionArn"]
        lam.get_waiter("function_active_v2").wait(FunctionName=function_name())
        return arn
    if current["Code"].get("ImageUri") != image_uri:
        lam.update_function_code(FunctionName=function_name(), ImageUri=image_uri)
        lam.get_waiter("function_updated_v2").wait(FunctionName=function_name())
    arn = lam.update_function_configuration(FunctionName=function_name(), **settings)["FunctionArn"]
    lam.get_waiter("function_updated_v2").wait(FunctionName=function_name())
    return arn


def _retry_until_role_usable(lam, create, attempts: int = 10):
    # A new role takes a few seconds to reach Lambda; until then create_function says so.
    for attempt in range(attempts):
        try:
            return create()
        except lam.exceptions.InvalidParameterValueException as exc:
            if "role" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(3)


def ensure_mapping(lam, events_arn: str) -> str:
    settings = {
        "BatchSize": BATCH_SIZE,
        "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "Enabled": True,
    }
    existing = lam.list_event_source_mappings(FunctionName=function_name(), EventSourceArn=events_arn)[
        "EventSourceMappings"
    ]
    if existing:
        uuid = existing[0]["UUID"]
        lam.update_event_source_mapping(UUID=uuid, FunctionName=function_name(), **settings)
        return uuid
    return lam.create_event_source_mapping(
        FunctionName=function_name(), EventSourceArn=events_arn, StartingPosition="LATEST", **settings
    )["UUID"]


def down(session=None) -> list[str]:
    """Remove the mapping, the function, the role and the streams; what was removed."""
    session = session or boto3.session.Session()
    iam, kinesis, lam = session.client("iam"), session.client("kinesis"), session.client("lambda")
    removed = []
    try:
        mappings = lam.list_event_source_mappings(FunctionName=function_name())["EventSourceMappings"]
    except lam.exceptions.ResourceNotFoundException:
        mappings = []
    for mapping in mappings:
        lam.delete_event_source_mapping(UUID=mapping["UUID"])
        removed.append(f"event-source mapping {mapping['UUID']}")
    try:
        lam.delete_function(FunctionName=function_name())
        removed.append(f"function {function_name()}")
    except lam.exceptions.ResourceNotFoundException:
        pass
    try:
        iam.detach_role_policy(RoleName=role_name(), PolicyArn=KINESIS_EXECUTION_POLICY)
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        iam.delete_role_policy(RoleName=role_name(), PolicyName=INLINE_POLICY_NAME)
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        iam.delete_role(RoleName=role_name())
        removed.append(f"role {role_name()}")
    except iam.exceptions.NoSuchEntityException:
        pass
    for name in (streaming.ride_events_stream(), streaming.predictions_stream()):
        try:
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        except kinesis.exceptions.ResourceNotFoundException:
            continue
        kinesis.get_waiter("stream_not_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        removed.append(f"stream {name}")
    return removed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument(
        "--image-uri", default=os.environ.get("IMAGE_URI"), help="the function's container image [$IMAGE_URI]"
    )
    args = parser.parse_args(argv)
    if args.action == "up":
        if not args.image_uri:
            parser.error(
                "up needs --image-uri (or IMAGE_URI): the ECR URI of the image built from streaming/Dockerfile"
            )
        try:
            print(json.dumps(up(args.image_uri), indent=2))
        except ModelNotFound as exc:
            parser.error(str(exc))
    else:
        removed = down()
        print("\n".join(f"removed {what}" for what in removed) or "nothing to remove")


if __name__ == "__main__":
    main()
