"""Ride-duration prediction service with its model from MLflow: the registry or S3.

    gunicorn --config python:ride_duration.gunicorn_conf --preload predict:app   (from this folder)

Where the model comes from (environment variables; set at most one):
    MODEL_URI [models:/$MODEL_NAME@$MODEL_ALIAS = models:/ride-duration@production]
        an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>,
        runs:/<run id>/model), resolved by MLflow's client (mlflow-skinny) at
        MLFLOW_TRACKING_URI to its run, whose compact export is then read from S3;
    RUN_ID or MODEL_ID
        read straight from S3 (MODEL_BUCKET, MLFLOW_EXPERIMENT_ID or found by listing) with
        numpy and boto3 only: no tracking server needs to run.
AWS settings come from the usual variables (AWS_ENDPOINT_URL for a stand-in; unset for AWS).
The routes below are web-service's, line for line (checks and JSON errors: ride_duration.service);
model_version in every answer is the run id of the run that trained the model, whichever way
it was loaded.

With --preload (as in the Dockerfile) the model is loaded once, in gunicorn's master, before
the workers fork. A missing or wrong model then stops the service at start-up with one line
on stderr and exit status 3. (Without --preload every worker loads the model; gunicorn still
stops, since 3 is its "worker failed to boot" status, but two failing workers can race and
leave a traceback.)
"""

import sys

from flask import Flask

from ride_duration import registry, service
from ride_duration.config import SettingError
from ride_duration.models import ModelNotFound, load_model, spec_from_env

BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR


def load_or_exit():
    """The model and the request limits, or one line on stderr and exit status 3."""
    try:
        # ride_duration.models.load_model takes all three; the registry's alias when none is set.
        registered = f"models:/{registry.model_name()}@{registry.model_alias()}"
        model = load_model(spec_from_env(("MODEL_URI", "RUN_ID", "MODEL_ID"), default=registered))
        return model, service.Limits.from_env()
    except (ModelNotFound, SettingError) as exc:
        print(f"web-service-mlflow cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(BOOT_ERROR)


model, limits = load_or_exit()

app = Flask(__name__)
service.guard(app, limits)  # whole bodies read within the limits; every error answered as JSON


@app.post("/predict")
def predict():
    rides, single = service.parse_rides(service.body(), limits.max_rides)  # bad input -> 400 naming the field
    durations = model.predict(rides)  # one model call for the whole list
    answers = [{"duration": float(d), "model_version": model.version} for d in durations]
    return service.answer(answers[0] if single else answers)


@app.get("/health")
def health():
    # The model is loaded before the app exists, so answering means ready.
    return service.answer({"status": "ok", "model_version": model.version})
