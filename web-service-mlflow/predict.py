"""Ride-duration prediction service with its model from MLflow: the registry or S3.

    gunicorn --config python:ride_duration.gunicorn_conf --preload predict:app   (from this folder)

Where the model comes from (environment variables; set at most one):
    MODEL_URI [models:/$MODEL_NAME@$MODEL_ALIAS = models:/ride-duration@production]
        an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>,
        runs:/<run id>/model), resolved by MLflow's client at MLFLOW_TRACKING_URI;
    RUN_ID or MODEL_ID
        read straight from S3 (MODEL_BUCKET, MLFLOW_EXPERIMENT_ID or found by listing) with
        numpy and boto3 only: no tracking server needs to run.

How it is loaded, MODEL_LOADER [compact]:
    compact  ride_duration.models.load_model: MLflow's client (mlflow-skinny) resolves the URI
             to its run, whose compact numpy export is read from S3. What the image does.
    pyfunc   mlflow.pyfunc.load_model, MLflow's own way, for any MLflow model (MODEL_URI only).
             Needs the full mlflow, scikit-learn and pandas: not in the image. A model whose
             loading would run code from it (anything but scikit-learn saved with skops, and
             skops trusting no more than ride_duration.models.SKOPS_TRUSTED_TYPES) is refused
             unless ALLOW_UNSAFE_PICKLE=1.
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

import os
import sys
import tempfile

from flask import Flask, request

from ride_duration import models, registry, service
from ride_duration.config import SettingError

BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR
LOADERS = ("compact", "pyfunc")


def model_loader() -> str:
    """MODEL_LOADER [compact]: which of LOADERS loads the model."""
    loader = os.environ.get("MODEL_LOADER", "").strip() or "compact"
    if loader not in LOADERS:
        raise SettingError(f"MODEL_LOADER must be {' or '.join(LOADERS)}, got {loader!r}")
    return loader


def load_pyfunc(uri: str) -> models.MlflowModel:
    """mlflow.pyfunc.load_model on the model's own files, once they show it runs no code of theirs."""
    if not uri.startswith(("models:/", "runs:/")):
        raise models.ModelNotFound(
            f"MODEL_LOADER=pyfunc loads an MLflow URI, not {uri!r}: set MODEL_URI (runs:/<run id>/model for a run), "
            "or MODEL_LOADER=compact to read a run from S3 alone"
        )
    models.parse_mlflow_uri(uri)  # a malformed URI fails here, before MLflow is imported
    mlflow = models.import_mlflow(f"MODEL_LOADER=pyfunc ({uri})")
    import mlflow.artifacts  # noqa: F811  (the submodules, after import_mlflow's settings)
    import mlflow.models
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        with models.tracking_server_errors(uri, mlflow.get_tracking_uri()):
            # Downloaded once: the files checked are the files loaded, even if the alias moves meanwhile.
            folder = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        mlmodel = mlflow.models.Model.load(folder)
        sklearn = mlmodel.flavors.get("sklearn", {})
        skops = sklearn.get("serialization_format") == "skops"
        if skops and not set(sklearn.get("skops_trusted_types") or []) <= set(models.SKOPS_TRUSTED_TYPES):
            # skops trusts the list in the model's own MLmodel file: a wider one could run anything.
            raise models.UnsafeModelRefused(
                f"{uri} asks skops to trust {sklearn['skops_trusted_types']}, more than "
                f"{models.SKOPS_TRUSTED_TYPES}: refused, ALLOW_UNSAFE_PICKLE or not"
            )
        loader = mlmodel.flavors.get("python_function", {}).get("loader_module")
        if not (skops and loader == "mlflow.sklearn"):
            # MLflow's default for an sklearn flavour that names no format is pickle.
            stored_as = (
                f"stored as {sklearn.get('serialization_format', 'pickle')}" if sklearn else f"loaded by {loader}"
            )
            models.refuse_unless_pickle_allowed(
                uri, f"an MLflow model {stored_as}", "register one logged with skops (make register)"
            )
        try:
            loaded = mlflow.pyfunc.load_model(folder)
        except Exception as exc:  # ImportError too: no scikit-learn, skops or pandas here
            raise models.ModelUnreadable(f"mlflow.pyfunc cannot load {uri}: {exc}") from None
    return models.MlflowModel(loaded, version=mlmodel.run_id or uri)


def load_or_exit():
    """The model and the request limits, or one line on stderr and exit status 3."""
    try:
        registered = f"models:/{registry.model_name()}@{registry.model_alias()}"
        spec = models.spec_from_env(("MODEL_URI", "RUN_ID", "MODEL_ID"), default=registered)
        # ride_duration.models.load_model takes all three; mlflow.pyfunc an MLflow URI only.
        model = load_pyfunc(spec) if model_loader() == "pyfunc" else models.load_model(spec)
        return model, service.Limits.from_env()
    except (models.ModelNotFound, SettingError) as exc:
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
