"""Ride-duration prediction service with its model from MLflow: the registry or S3.

    gunicorn --config python:ride_duration.gunicorn_conf --preload predict:app   (from this folder)

Where the model comes from (environment variables; set at most one):
    MODEL_URI [models:/$MODEL_NAME@$MODEL_ALIAS = models:/ride-duration@production]
        an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>,
        runs:/<run id>/model), resolved through the tracking server at MLFLOW_TRACKING_URI;
    RUN_ID or MODEL_ID
        read straight from S3 (MODEL_BUCKET, MLFLOW_EXPERIMENT_ID or found by listing) with
        numpy and boto3 only: no tracking server needs to run.
AWS settings come from the usual variables (AWS_ENDPOINT_URL for a stand-in; unset for AWS).
The HTTP contract is web-service's (ride_duration.service); model_version in every answer is
the run id of the run that trained the model, whichever way it was loaded.

With --preload (as in the Dockerfile) the model is loaded once, in gunicorn's master, before
the workers fork. A missing or wrong model then stops the service at start-up with one line
on stderr and exit status 3. (Without --preload every worker loads the model; gunicorn still
stops, since 3 is its "worker failed to boot" status, but two failing workers can race and
leave a traceback.)
"""

import os
import sys

from ride_duration import registry
from ride_duration.config import SettingError
from ride_duration.models import ModelNotFound
from ride_duration.service import create_app

BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR


def model_spec(env=os.environ) -> str:
    """The one model location given by MODEL_URI, RUN_ID or MODEL_ID."""
    given = {name: env[name] for name in ("MODEL_URI", "RUN_ID", "MODEL_ID") if env.get(name)}
    if len(given) > 1:
        raise ModelNotFound(f"set only one of MODEL_URI, RUN_ID, MODEL_ID (got {', '.join(given)})")
    if given:
        return next(iter(given.values()))
    return f"models:/{registry.model_name()}@{registry.model_alias()}"


def build_app():
    try:
        model = registry.load_model(model_spec())
        return model, create_app(model)
    except (ModelNotFound, SettingError) as exc:
        print(f"web-service-mlflow cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(BOOT_ERROR)


model, app = build_app()
