"""Experiment tracking and the model registry (MLflow): training and registering the model that serving loads.

    python -m ride_duration.registry [--retrain] [--load SPEC]

makes sure MODEL_NAME@MODEL_ALIAS names a trained random forest (training and registering
one if not, or always with --retrain), or loads a model to check it.

Settings (environment variables, defaults in brackets):
    MODEL_NAME [ride-duration]        the registered model's name
    MODEL_ALIAS [production]          the alias that serving follows
    EXPERIMENT_NAME [ride-duration]   the experiment that training runs go to
    MLFLOW_TRACKING_URI               the tracking server (ride_duration.local.standins sets it)
    MODEL_BUCKET [ride-duration-models]   the bucket holding MLflow's artifacts
    MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and _PASSWORD   for a server that
                                      asks for them (MLflow's own variables)

What one training run leaves (MLflow 3 layout on the artifact store):
    <experiment>/models/m-<model id>/artifacts/   the whole pipeline (feature step,
        DictVectorizer, forest) as ONE MLflow model: model.skops, MLmodel with its
        signature, input_example.json. This is what the registry versions.
    <experiment>/<run id>/artifacts/compact/model.npz   the same fitted pipeline exported to
        numpy arrays (ride_duration.compact): a derived serving form that numpy and boto3
        can load without MLflow or scikit-learn (the Lambda, the web service started from S3).

Serving loads these with ride_duration.models.load_model (MLflow URIs through MLflow's client,
then the run's compact export from S3; run and model ids from S3 alone). Whichever way, a
model's `.version` is the run id of the run that trained it; the registry's version number is
in RegisteredModel.version.

Real AWS: with AWS_ENDPOINT_URL and MLFLOW_S3_ENDPOINT_URL unset, MODEL_BUCKET naming your
bucket and MLFLOW_TRACKING_URI your tracking server, the same code talks to AWS.

The skops format needs two types trusted explicitly: the pipeline's feature function and
scikit-learn's tree storage (both our own output, models.SKOPS_TRUSTED_TYPES). They are
recorded in the MLmodel file, so `mlflow.sklearn.load_model` loads the model with no extra
argument and no warning; ride_duration.models passes its own list instead, so that a model
file cannot widen what it is trusted with. Loading it needs this package installed (the
feature step lives in ride_duration.features).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ride_duration import config
from ride_duration.compact import CompactModel
from ride_duration.models import (
    COMPACT_ARTIFACT,
    SKOPS_TRUSTED_TYPES,
    ModelNotFound,
    import_mlflow,
    tracking_server_errors,
)

MODEL_ARTIFACT = "model"  # the logged model's name: runs:/<run id>/model


def model_name() -> str:
    return os.environ.get("MODEL_NAME", "ride-duration")


def model_alias() -> str:
    return os.environ.get("MODEL_ALIAS", "production")


def experiment_name() -> str:
    return os.environ.get("EXPERIMENT_NAME", "ride-duration")


def model_bucket() -> str:
    return config.model_bucket()


@dataclass
class RegisteredModel:
    """One trained and registered pipeline: where it is and how good it is."""

    run_id: str
    model_id: str
    version: str  # the registry's version number, as MLflow gives it
    rmse: float
    experiment_id: str
    artifact_uri: str  # the MLflow model's folder: <root>/<experiment>/models/m-<id>/artifacts
    fit_seconds: float | None = None  # None when an existing registration was reused
    pipeline: object = field(default=None, repr=False, compare=False)  # set when trained here

    @property
    def compact_uri(self) -> str:
        """The compact serving export, readable with boto3 alone."""
        experiment_root = self.artifact_uri.rsplit("/models/", 1)[0]
        return f"{experiment_root}/{self.run_id}/artifacts/{COMPACT_ARTIFACT}"

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"


# ---- training and registering ------------------------------------------------------------
def train_and_register(
    train_month: str = "green:2021-01",
    valid_month: str = "green:2021-02",
    *,
    forest_params: dict | None = None,
    data=None,
    name: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Fit the random-forest pipeline (ride_duration.train.train), log it to MLflow, register it
    (the version's description gives the validation RMSE) and point the alias at it.

    Args:
        train_month, valid_month: taxi_type:YYYY-MM months to fit on and to validate on.
        forest_params: overrides of ride_duration.train.FOREST_PARAMS (tests use small ones).
        data: (train_df, valid_df) already read, instead of the months.
        name, alias: the registered model and its alias [MODEL_NAME, MODEL_ALIAS].
    """
    from ride_duration import features, train

    name, alias = name or model_name(), alias or model_alias()
    mlflow = _mlflow()
    import mlflow.sklearn  # noqa: F811  (the submodule, after _mlflow's settings)

    client = _client()  # before the fit: a missing server should not cost a minute of training
    train_df, valid_df = data if data is not None else train.read_months(train_month, valid_month)
    result = train.train("forest", train_month, valid_month, data=(train_df, valid_df), params=forest_params)
    pipeline = result.pipeline

    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        experiment_id = _experiment_id(client, experiment_name())
        with mlflow.start_run(experiment_id=experiment_id) as run:
            run_id = run.info.run_id
            mlflow.log_params(
                {
                    "model": "random_forest",
                    **result.params,
                    "train_month": train_month,
                    "valid_month": valid_month,
                    "train_rows": result.train_rows,
                    "valid_rows": result.valid_rows,
                }
            )
            mlflow.log_metrics({"rmse": result.rmse, "fit_seconds": result.fit_seconds})
            info = mlflow.sklearn.log_model(
                pipeline,
                name=MODEL_ARTIFACT,
                signature=_signature(),
                input_example=valid_df[list(features.RAW_FIELDS)].head(3).reset_index(drop=True),
                pip_requirements=_pip_requirements(),
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
            )
            compact_file = CompactModel.from_pipeline(pipeline, version=run_id).save(Path(tmp) / "model.npz")
            mlflow.log_artifact(str(compact_file), artifact_path=COMPACT_ARTIFACT.rsplit("/", 1)[0])
        description = f"random forest fitted on {train_month}; validation RMSE {result.rmse:.4f} min on {valid_month}"
        version = _register(client, name, info.model_id, run_id, description)
        client.set_registered_model_alias(name, alias, version)
        artifact_uri = client.get_logged_model(info.model_id).artifact_location
    return RegisteredModel(
        run_id,
        info.model_id,
        str(version),
        result.rmse,
        str(experiment_id),
        artifact_uri,
        fit_seconds=result.fit_seconds,
        pipeline=pipeline,
    )


def ensure_registered_model(**train_kwargs) -> RegisteredModel:
    """The model behind MODEL_NAME@MODEL_ALIAS, trained and registered first if needed.

    Reuses the alias when it resolves and both its MLflow model and its compact export can
    still be read (a restarted S3 stand-in loses them); otherwise calls train_and_register.
    """
    name, alias = train_kwargs.get("name") or model_name(), train_kwargs.get("alias") or model_alias()
    client = _client()
    from mlflow.exceptions import RestException

    with _quiet():
        try:
            found = client.get_model_version_by_alias(name, alias)
            run = client.get_run(found.run_id)
            model_id = found.model_id or _model_id_from_source(found.source)
            artifact_uri = client.get_logged_model(model_id).artifact_location
            if _artifacts_exist(artifact_uri, "MLmodel") and _artifacts_exist(run.info.artifact_uri, COMPACT_ARTIFACT):
                return RegisteredModel(
                    found.run_id,
                    model_id,
                    str(found.version),
                    run.data.metrics.get("rmse", float("nan")),
                    run.info.experiment_id,
                    artifact_uri,
                )
        except RestException:
            pass  # the server's answer: no such model or alias yet
    return train_and_register(**train_kwargs)


# ---- MLflow helpers ------------------------------------------------------------------------
def _mlflow():
    """MLflow, imported on first use with ride_duration.models' defaults (quiet, quick to fail)."""
    mlflow = import_mlflow("the registry")
    import mlflow.artifacts  # noqa: F811  (mlflow.sklearn is imported where needed: it needs pandas)

    return mlflow


def _client():
    """An MlflowClient, after one cheap call: MLflow's retries would otherwise let a dead
    tracking server cost a minute of training before the first call that fails."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    with tracking_server_errors("the registry", mlflow.get_tracking_uri()):
        client.get_experiment_by_name(experiment_name())
    return client


@contextlib.contextmanager
def _quiet():
    """No INFO lines from MLflow on stderr (they vary from run to run and break nbval)."""
    import logging

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # MLflow's own input-example code compares an Index with a range, deprecated in pandas 3.
            warnings.filterwarnings("ignore", message="Operation with range is deprecated")
            yield
    finally:
        logger.setLevel(level)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


MODEL_DESCRIPTION = "Minutes a NYC taxi ride takes, from its pickup zone, drop-off zone and trip distance."


def _register(client, name: str, model_id: str, run_id: str, description: str) -> str:
    """A new version of `name` for the logged model, with its description (what the UI's
    version page shows); the client calls print nothing."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, description=description
    ).version


# MLflow's column type for each kind of raw field (ride_duration.features.DTYPES).
SIGNATURE_TYPES = {"integer": "long", "number": "double"}


def _signature():
    """The model's input columns: the raw fields ride_duration.features declares, as it declares them."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from ride_duration import features

    inputs = [ColSpec(SIGNATURE_TYPES[field.kind], name) for name, field in features.RAW_FIELDS.items()]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double")]))


def _pip_requirements() -> list[str]:
    """Pinned from what is installed; stating them spares MLflow a slow inference step.
    The feature step also needs this repository's package (pip install -e .)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "scikit-learn", "numpy", "pandas", "skops")]


def _model_id_from_source(source: str) -> str:
    return source.removeprefix("models:/").strip("/")


def _artifacts_exist(artifact_uri: str, path: str) -> bool:
    import mlflow.artifacts

    folder, _, name = path.rpartition("/")
    try:
        listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{artifact_uri}/{folder}" if folder else artifact_uri)
    except Exception:
        return False
    return any(entry.path.rsplit("/", 1)[-1] == name for entry in listed)


# ---- command line ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """python -m ride_duration.registry [--retrain] [--load SPEC]"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m ride_duration.registry",
        description="Make sure MODEL_NAME@MODEL_ALIAS names a trained random forest (train and register "
        "one if not), or load a model to check it. Needs MLFLOW_TRACKING_URI: "
        "`source .standins/env` after `make standins-up`, or your own server.",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train and register a new version even if the alias resolves"
    )
    parser.add_argument(
        "--load", metavar="SPEC", help="load this model (URI, run id or model id) and print its version"
    )
    args = parser.parse_args(argv)
    from ride_duration.models import load_model

    try:
        if args.load:
            started = time.perf_counter()
            model = load_model(args.load)
            print(f"{args.load}: run {model.version}, loaded in {time.perf_counter() - started:.1f} s")
            return 0
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            print(
                "error: MLFLOW_TRACKING_URI is not set: `source .standins/env` (after `make standins-up`) "
                "or point it at your tracking server",
                file=sys.stderr,
            )
            return 1
        registered = train_and_register() if args.retrain else ensure_registered_model()
    except (ModelNotFound, config.SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    how = f"trained in {registered.fit_seconds:.0f} s" if registered.fit_seconds is not None else "already registered"
    print(
        f"models:/{model_name()}@{model_alias()} = version {registered.version} ({how}), "
        f"run {registered.run_id}, validation RMSE {registered.rmse:.4f}"
    )
    print(f"model: {registered.artifact_uri}\nserving export: {registered.compact_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
