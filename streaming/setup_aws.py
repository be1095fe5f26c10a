"""Create, update or remove the streaming deployment on AWS; running it twice changes nothing.

    python streaming/setup_aws.py up --image-uri <ECR image URI>   # create or update
    python streaming/setup_aws.py up --image-uri ... --architecture arm64   # an image built for arm64
    python streaming/setup_aws.py show                             # what exists, read back
    python streaming/setup_aws.py down                             # remove it

`up` makes: the two streams, the dead-letter queue (SQS), the IAM role with one inline
policy that names every resource it may touch (read the events stream, write the
predictions stream, send to the queue, write the function's logs, read the model object:
nothing else, and no managed policy), the function from the container image with its
environment, memory and timeout, and the event-source mapping from the events stream with
the settings of ride_duration.streaming.EVENT_SOURCE_MAPPING (partial batch responses,
bisect on error, bounded retries, a maximum record age) and the queue as its on-failure
destination. `show` (`describe()`) reads back what exists, with the settings to check.
`down` removes them in reverse order; the model bucket stays, and so does the
queue while it holds dead letters (read them first: streaming/README.md).

Environment (defaults in brackets): FUNCTION_NAME [ride-duration-stream], ROLE_NAME
[lambda-kinesis-role], IMAGE_URI (or --image-uri), RIDE_EVENTS_STREAM_NAME [ride_events],
PREDICTIONS_STREAM_NAME [ride_predictions], DEAD_LETTER_QUEUE [ride_events_dead_letter],
LAMBDA_ARCHITECTURE [x86_64] (or --architecture: the processor the image was built for, x86_64
or arm64; an image built for the other one fails at its first call), the model:
MODEL_LOCATION=s3://..., or RUN_ID + MLFLOW_EXPERIMENT_ID + MODEL_BUCKET [ride-duration-models].
boto3 finds the account and region as usual (AWS_PROFILE,
AWS_DEFAULT_REGION; AWS_ENDPOINT_URL for the stand-in); every call has the deadlines of
ride_duration.aws.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ride_duration import aws, config, streaming
from ride_duration.models import RUN_ID, ModelNotFound, run_artifact_url, spec_from_env, split_s3_url

INLINE_POLICY_NAME = "ride-duration-stream-access"
# The cold start's time and peak memory are in the README's Performance section
# (benchmarks/streaming.py). 128 MB would hold it, but Lambda's CPU share grows with memory
# (1,769 MB = 1 vCPU): 256 MB doubles it for the imports and for the forest's batches, at
# about the same cost per batch.
MEMORY_MB = 256
# Worst case per batch: a cold start on that CPU share (~5 s), KinesisWriter's retries
# (no new attempt after 10 s) plus one call in flight (at most 2 x (3 s connect + 5 s read)),
# then the dead-letter queue's call (at most 2 x 8 s): 47 s. A timeout is only a function
# error, retried, but the budget avoids it. Lambda's 3 s default is what the course's
# function overran.
TIMEOUT_S = 60
# The trust policy: who may assume the role. Only the Lambda service, for the function.
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
MODEL_VARIABLES = ("MODEL_LOCATION", "RUN_ID", "MLFLOW_EXPERIMENT_ID", "MODEL_BUCKET")
# Lambda's names for the processors; x86_64 is its default and what `--platform linux/amd64` builds.
ARCHITECTURES = ("x86_64", "arm64")
DEFAULT_ARCHITECTURE = "x86_64"


def function_name() -> str:
    return os.environ.get("FUNCTION_NAME", "ride-duration-stream")


def role_name() -> str:
    return os.environ.get("ROLE_NAME", "lambda-kinesis-role")


def function_environment(queue_url: str) -> dict[str, str]:
    """What the function needs to find its model, its output stream and its dead-letter queue."""
    variables = {name: os.environ[name] for name in MODEL_VARIABLES if os.environ.get(name)}
    variables["PREDICTIONS_STREAM_NAME"] = streaming.predictions_stream()
    variables["DEAD_LETTER_QUEUE"] = queue_url  # a URL: the function needs no sqs:GetQueueUrl
    return variables


def model_object_arn() -> str:
    """The one S3 object the function reads its model from, for its role's policy."""
    spec = spec_from_env(streaming.MODEL_SETTINGS)
    if spec.startswith("s3://"):
        bucket, key = split_s3_url(spec)
        return f"arn:aws:s3:::{bucket}/{key}"
    # The role may read that object only, not list the bucket: the experiment must be given.
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if RUN_ID.fullmatch(spec) and experiment:
        bucket, key = split_s3_url(run_artifact_url(config.model_bucket(), experiment, spec))
        return f"arn:aws:s3:::{bucket}/{key}"
    raise ModelNotFound(
        f"the function can only read its model from S3, not {spec}: set MODEL_LOCATION=s3://... "
        "or RUN_ID (a run id) and MLFLOW_EXPERIMENT_ID"
    )


def log_group_arn(events_arn: str) -> str:
    """The function's log group (Lambda writes to /aws/lambda/<name>), in the stream's region and account."""
    region, account = events_arn.split(":")[3:5]
    return f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function_name()}"


def access_policy(events_arn: str, predictions_arn: str, queue_arn: str, model_arn: str, logs_arn: str) -> dict:
    """The role's whole permission, every resource named."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadRideEvents",  # what Lambda's event-source mapping calls
                "Effect": "Allow",
                "Action": [
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:GetRecords",
                    "kinesis:GetShardIterator",
                    "kinesis:ListShards",
                ],
                "Resource": events_arn,
            },
            {
                "Sid": "WritePredictions",
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord", "kinesis:PutRecords"],
                "Resource": predictions_arn,
            },
            {
                # The handler's malformed records, and the mapping's on-failure records.
                "Sid": "SendDeadLetters",
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
            },
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [logs_arn, f"{logs_arn}:*"],  # the group, and its streams
            },
            {"Sid": "ReadModel", "Effect": "Allow", "Action": "s3:GetObject", "Resource": model_arn},
        ],
    }


def up(image_uri: str, architecture: str = DEFAULT_ARCHITECTURE) -> dict:
    """Create or update everything; returns the ARNs, the queue's URL and the mapping's UUID.

    `architecture` (one of ARCHITECTURES) is the processor the image was built for."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be {' or '.join(ARCHITECTURES)}, got {architecture!r}")
    model_arn = model_object_arn()  # first: refuse a model the function could not read
    iam, kinesis, lam, sqs = (aws.client(name) for name in ("iam", "kinesis", "lambda", "sqs"))
    # 1. the two streams, and the queue for what the function cannot use
    events_arn, predictions_arn = streaming.ensure_streams(
        [streaming.ride_events_stream(), streaming.predictions_stream()], client=kinesis
    )
    queue_url, queue_arn = streaming.ensure_dead_letter_queue(client=sqs)
    # 2. the role the function runs as: Lambda may assume it, and it may touch these resources only
    policy = access_policy(events_arn, predictions_arn, queue_arn, model_arn, log_group_arn(events_arn))
    role_arn = ensure_role(iam, policy)
    # 3. the function, from the container image
    function_arn = ensure_function(lam, image_uri, architecture, role_arn, queue_url)
    # 4. the event-source mapping: Lambda reads the events stream and calls the function with batches
    mapping = ensure_mapping(lam, events_arn, queue_arn)
    return {
        "role": role_arn,
        "function": function_arn,
        "events_stream": events_arn,
        "predictions_stream": predictions_arn,
        "dead_letter_queue": queue_url,
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
    iam.put_role_policy(RoleName=role_name(), PolicyName=INLINE_POLICY_NAME, PolicyDocument=json.dumps(policy))
    _detach_managed_policies(iam)  # earlier versions attached AWSLambdaKinesisExecutionRole ("*" resources)
    return role_arn


def _detach_managed_policies(iam) -> None:
    for attached in iam.list_attached_role_policies(RoleName=role_name())["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=role_name(), PolicyArn=attached["PolicyArn"])


def function_settings(role_arn: str, queue_url: str) -> dict:
    """The function's configuration, as create_function and update_function_configuration take it."""
    return {
        "Role": role_arn,
        "MemorySize": MEMORY_MB,
        "Timeout": TIMEOUT_S,
        "Environment": {"Variables": function_environment(queue_url)},
    }


def ensure_function(lam, image_uri: str, architecture: str, role_arn: str, queue_url: str) -> str:
    settings = function_settings(role_arn, queue_url)
    try:
        current = lam.get_function(FunctionName=function_name())
    except lam.exceptions.ResourceNotFoundException:
        arn = _retry_until_role_usable(
            lam,
            lambda: lam.create_function(
                FunctionName=function_name(),
                PackageType="Image",
                Code={"ImageUri": image_uri},
                Architectures=[architecture],
                Description="ride-duration predictions from Kinesis ride events",
                **settings,
            ),
        )["FunctionArn"]
        lam.get_waiter("function_active_v2").wait(FunctionName=function_name())
        return arn
    # An existing function: a new image first, then the configuration, each waited for. The
    # architecture goes with the code (update_function_configuration does not take it).
    built_for = current["Configuration"].get("Architectures") or [DEFAULT_ARCHITECTURE]
    if current["Code"].get("ImageUri") != image_uri or built_for != [architecture]:
        lam.update_function_code(FunctionName=function_name(), ImageUri=image_uri, Architectures=[architecture])
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


def mapping_settings(queue_arn: str) -> dict:
    """How Lambda feeds the function: streaming.EVENT_SOURCE_MAPPING, and what it gives up goes to the queue."""
    return {
        **streaming.EVENT_SOURCE_MAPPING,
        # A batch that exhausts its retries (or its records' age) is described here, not just skipped.
        "DestinationConfig": {"OnFailure": {"Destination": queue_arn}},
        "Enabled": True,
    }


def ensure_mapping(lam, events_arn: str, queue_arn: str) -> str:
    settings = mapping_settings(queue_arn)
    existing = lam.list_event_source_mappings(FunctionName=function_name(), EventSourceArn=events_arn)[
        "EventSourceMappings"
    ]
    if existing:
        uuid = existing[0]["UUID"]
        lam.update_event_source_mapping(UUID=uuid, FunctionName=function_name(), **settings)
        return uuid
    # The starting position is fixed at creation: LATEST, the rides from now on.
    return lam.create_event_source_mapping(
        FunctionName=function_name(), EventSourceArn=events_arn, StartingPosition="LATEST", **settings
    )["UUID"]


def down() -> list[str]:
    """Remove the mapping, the function, the role, the streams and an empty queue.

    Returns a line for each: "removed ...", or "kept queue ..." for a queue holding dead letters."""
    iam, kinesis, lam, sqs = (aws.client(name) for name in ("iam", "kinesis", "lambda", "sqs"))
    removed = []
    try:
        mappings = lam.list_event_source_mappings(FunctionName=function_name())["EventSourceMappings"]
    except lam.exceptions.ResourceNotFoundException:
        mappings = []
    for mapping in mappings:
        lam.delete_event_source_mapping(UUID=mapping["UUID"])
        removed.append(f"removed event-source mapping {mapping['UUID']}")
    try:
        lam.delete_function(FunctionName=function_name())
        removed.append(f"removed function {function_name()}")
    except lam.exceptions.ResourceNotFoundException:
        pass
    try:
        _detach_managed_policies(iam)
        iam.delete_role_policy(RoleName=role_name(), PolicyName=INLINE_POLICY_NAME)
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        iam.delete_role(RoleName=role_name())
        removed.append(f"removed role {role_name()}")
    except iam.exceptions.NoSuchEntityException:
        pass
    for name in (streaming.ride_events_stream(), streaming.predictions_stream()):
        try:
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        except kinesis.exceptions.ResourceNotFoundException:
            continue
        kinesis.get_waiter("stream_not_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        removed.append(f"removed stream {name}")
    removed += _remove_queue_if_empty(sqs)
    return removed


def _remove_queue_if_empty(sqs) -> list[str]:
    """Dead letters are the only copy of what the stream could not use: a queue holding some stays."""
    name = streaming.dead_letter_queue().rstrip("/").rsplit("/", 1)[-1]
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return []
    counts = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    held = sum(int(counts.get(key, 0)) for key in counts)
    if held:
        return [f"kept queue {url}: it holds {held} dead letter(s); read them, then delete it (aws sqs delete-queue)"]
    sqs.delete_queue(QueueUrl=url)
    return [f"removed queue {name}"]


def ecr_image_uri(tag: str, repository: str = "ride-duration-stream") -> str:
    """The image's URI in this account's ECR, where `docker push` puts it (streaming/README.md)."""
    account = aws.client("sts").get_caller_identity()["Account"]
    region = aws.client("lambda").meta.region_name
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


FUNCTION_KEYS = ("PackageType", "MemorySize", "Timeout", "Architectures", "Environment", "Role", "State")
MAPPING_KEYS = (
    "UUID",
    "EventSourceArn",
    "State",
    "StartingPosition",
    *streaming.EVENT_SOURCE_MAPPING,
    "DestinationConfig",
)


def describe() -> dict:
    """What exists now, read back from AWS: the settings to check after `up`, None for what is absent."""
    iam, kinesis, lam, sqs = (aws.client(name) for name in ("iam", "kinesis", "lambda", "sqs"))
    return {
        "role": _read_role(iam),
        "streams": {
            name: _read_stream(kinesis, name)
            for name in (streaming.ride_events_stream(), streaming.predictions_stream())
        },
        "dead_letter_queue": _read_queue(sqs),
        "function": _read_function(lam),
        "event_source_mappings": _read_mappings(lam),
    }


def _read_role(iam) -> dict | None:
    try:
        role = iam.get_role(RoleName=role_name())["Role"]
    except iam.exceptions.NoSuchEntityException:
        return None
    inline = {
        name: _policy(iam.get_role_policy(RoleName=role_name(), PolicyName=name)["PolicyDocument"])
        for name in iam.list_role_policies(RoleName=role_name())["PolicyNames"]
    }
    managed = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role_name())["AttachedPolicies"]]
    return {
        "Arn": role["Arn"],
        "trust": _policy(role["AssumeRolePolicyDocument"]),
        "inline": inline,
        "managed": managed,
    }


def _policy(document) -> dict:
    # boto3 decodes IAM's URL-encoded JSON; some endpoints hand it back as a string
    return document if isinstance(document, dict) else json.loads(document)


def _read_stream(kinesis, name: str) -> dict | None:
    try:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except kinesis.exceptions.ResourceNotFoundException:
        return None
    return {key: summary[key] for key in ("StreamARN", "StreamStatus", "OpenShardCount", "RetentionPeriodHours")}


def _read_queue(sqs) -> dict | None:
    name = streaming.dead_letter_queue().rstrip("/").rsplit("/", 1)[-1]
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return None
    keys = [
        "QueueArn",
        "MessageRetentionPeriod",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    ]
    return {"QueueUrl": url, **sqs.get_queue_attributes(QueueUrl=url, AttributeNames=keys)["Attributes"]}


def _read_function(lam) -> dict | None:
    try:
        function = lam.get_function(FunctionName=function_name())
    except lam.exceptions.ResourceNotFoundException:
        return None
    configuration = function["Configuration"]
    return {"ImageUri": function["Code"].get("ImageUri")} | {key: configuration.get(key) for key in FUNCTION_KEYS}


def _read_mappings(lam) -> list[dict]:
    try:
        mappings = lam.list_event_source_mappings(FunctionName=function_name())["EventSourceMappings"]
    except lam.exceptions.ResourceNotFoundException:
        return []
    return [{key: mapping.get(key) for key in MAPPING_KEYS} for mapping in mappings]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "show", "down"])
    parser.add_argument(
        "--image-uri", default=os.environ.get("IMAGE_URI"), help="the function's container image [$IMAGE_URI]"
    )
    parser.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default=os.environ.get("LAMBDA_ARCHITECTURE") or DEFAULT_ARCHITECTURE,
        help="the processor the image was built for, set as the function's Architectures [$LAMBDA_ARCHITECTURE "
        f"or {DEFAULT_ARCHITECTURE}]",
    )
    args = parser.parse_args(argv)
    if args.action == "up":
        if not args.image_uri:
            parser.error(
                "up needs --image-uri (or IMAGE_URI): the ECR URI of the image built from streaming/Dockerfile"
            )
        try:
            print(json.dumps(up(args.image_uri, args.architecture), indent=2))
        except (ModelNotFound, ValueError) as exc:  # ValueError: a LAMBDA_ARCHITECTURE not in ARCHITECTURES
            parser.error(str(exc))
    elif args.action == "show":
        print(json.dumps(describe(), indent=2))
    else:
        print("\n".join(down()) or "nothing to remove")


if __name__ == "__main__":
    main()
