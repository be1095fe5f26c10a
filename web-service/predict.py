"""Ride-duration prediction service: a model file behind POST /predict.

    gunicorn --config python:ride_duration.gunicorn_conf predict:app    (from this folder)

MODEL_PATH [models/lin_reg.npz of the repo]   the model: a .npz serving export (numpy only),
    a .pkl pipeline (needs scikit-learn, and ALLOW_UNSAFE_PICKLE=1: unpickling runs the
    file's code), an s3://bucket/key.npz object (needs boto3), or any other spec
    ride_duration.models.load_model takes (an MLflow one: see web-service-mlflow).
Workers, port and the time limit for a request: ride_duration/gunicorn_conf.py; input
limits, checks and JSON errors: ride_duration/service.py. Each gunicorn worker imports this
module, so loads the model once, before it answers anything.
"""

import os
import sys

from flask import Flask, request

from ride_duration import service
from ride_duration.config import SettingError, models_dir
from ride_duration.models import ModelNotFound, load_model

MODEL_PATH = os.environ.get("MODEL_PATH", str(models_dir() / "lin_reg.npz"))

try:
    model = load_model(MODEL_PATH)
    limits = service.Limits.from_env()  # a bad MAX_* setting stops the start, like a missing model
except (ModelNotFound, SettingError) as exc:
    print(f"web-service cannot start: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": it stops instead of retrying forever
print(f"worker {os.getpid()} loaded model {model.version} from {MODEL_PATH}", file=sys.stderr, flush=True)

app = Flask(__name__)
service.guard(app, limits)  # whole bodies read within the limits; every error answered as JSON


@app.post("/predict")
def predict():
    rides, single = service.parse_rides(service.body(), limits.max_rides)  # bad input -> 400 naming the field
    durations = model.predict(rides)  # one model call for the whole list
    answers = [{"duration": float(d), "model_version": model.version} for d in durations]
    return service.answer(answers[0] if single else answers)


@app.post("/invocations")
def invocations():
    # MLflow's scoring protocol, as `mlflow models serve` speaks it: MLflow's clients and SageMaker call this.
    rides = service.parse_invocation(service.body(), request.content_type, limits.max_rides)  # 400 or 415
    durations = model.predict(rides)
    return service.answer({"predictions": [float(d) for d in durations]})


@app.get("/health")
@app.get("/ping")  # MLflow's and SageMaker's name for the same check
def health():
    # The model is loaded before the app exists, so answering means ready.
    return service.answer({"status": "ok", "model_version": model.version})
