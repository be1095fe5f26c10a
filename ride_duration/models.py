"""Load a serving model from where it lives: a local file or an S3 object.

Light on purpose (numpy, and boto3 only for S3): the web service and the Lambda import it.
MLflow URIs are resolved by ride_duration.registry, which needs MLflow.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ride_duration.compact import CompactModel, file_version


class ModelNotFound(Exception):
    """No model at the given location; the message names the location."""


class ModelStoreUnavailable(ModelNotFound):
    """The tracking server or S3 does not answer: the model may exist, but cannot be read."""


def load_compact(location: str | Path) -> CompactModel:
    """A CompactModel from a local .npz/.pkl file or an s3://bucket/key.npz object."""
    location = str(location)
    if location.startswith("s3://"):
        blob = read_s3(location)
    else:
        path = Path(location)
        if not path.is_file():
            raise ModelNotFound(f"no model file at {path}: train one with `make train` (or set MODEL_PATH)")
        blob = path.read_bytes()
    try:
        if not location.endswith(".pkl"):
            return CompactModel.from_bytes(blob)
        # A pickled scikit-learn pipeline (this imports scikit-learn): exported on the fly.
        return CompactModel.from_pipeline(pickle.loads(blob), version=file_version(Path(location).stem, blob))
    except Exception as exc:  # a damaged or foreign file: whatever numpy or pickle raised
        raise ModelNotFound(f"{location} is not a readable model ({type(exc).__name__}: {exc})") from None


def split_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def read_s3(url: str) -> bytes:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_url(url)
    try:
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ModelNotFound(f"no model at {url} ({code or exc})") from None
    except BotoCoreError as exc:  # no endpoint, no credentials, no network
        raise ModelStoreUnavailable(f"cannot read {url} ({exc}): is S3 (or its stand-in) reachable?") from None


def run_artifact_url(bucket: str, experiment_id: str, run_id: str, path: str = "compact/model.npz") -> str:
    """Where MLflow keeps a run's artifact on S3, so a reader needs no tracking server."""
    return f"s3://{bucket}/{experiment_id}/{run_id}/artifacts/{path}"
