"""Experiment tracking and the model registry (MLflow), and loading registered models to serve.

    python -m ride_duration.registry [--retrain] [--load SPEC]

makes sure MODEL_NAME@MODEL_ALIAS names a trained random forest (training and registering
one if not, or always with --retrain), or loads a model to check it.

Settings (environment variables, defaults in brackets):
    MODEL_NAME [ride-duration]        the registered model's name
    MODEL_ALIAS [production]          the alias that serving follows
    EXPERIMENT_NAME [ride-duration]   the experiment that training runs go to
    MLFLOW_TRACKING_URI               the tracking server (ride_duration.standins sets it)
    MODEL_BUCKET [ride-duration-models], MLFLOW_EXPERIMENT_ID [found by listing]
                                      where to read a run or model id straight from S3
    MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and _PASSWORD   for a server that
                                      asks for them (MLflow's own variables)

What one training run leaves (MLflow 3 layout on the artifact store):
    <experiment>/models/m-<model id>/artifacts/   the whole pipeline (feature step,
        DictVectorizer, forest) as ONE MLflow model: model.skops, MLmodel with its
        signature, input_example.json. This is what the registry versions.
    <experiment>/<run id>/artifacts/compact/model.npz   the same fitted pipeline exported to
        numpy arrays (ride_duration.compact): a derived serving form that numpy and boto3
        can load without MLflow or scikit-learn (the Lambda, the web service started from S3).

load_model(spec) accepts:
    models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, runs:/<run id>/model
        resolved through the tracking server (MLFLOW_TRACKING_URI), over its REST API, to the
        run that trained the model, whose compact export is then read from S3: urllib, numpy
        and boto3, no MLflow import, so a service starts in seconds. The MLflow client takes
        over where that does not apply (a local tracking store, a non-S3 artifact store, a
        version registered without a compact export: then the MLflow model itself is loaded
        and exported on the fly, which needs scikit-learn);
    m-<model id>, or a bare run id (32 hex digits)
        read straight from S3 with no tracking server: numpy and boto3 only.
Whichever way a model is loaded, its `.version` is the run id of the run that trained it, so a
service answers with the same model_version whether it started from the registry or from S3;
the registry's version number is in RegisteredModel.version.

Real AWS: with AWS_ENDPOINT_URL and MLFLOW_S3_ENDPOINT_URL unset, MODEL_BUCKET naming your
bucket and MLFLOW_TRACKING_URI your tracking server, the same code talks to AWS.

The skops format needs two types trusted explicitly: the pipeline's feature function and
scikit-learn's tree storage (both our own output). They are recorded in the MLmodel file, so
`mlflow.sklearn.load_model` loads the model with no extra argument and no warning. Loading it
needs this package installed (the feature step lives in ride_duration.features).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ride_duration import config
from ride_duration.compact import CompactModel
from ride_duration.models import ModelNotFound, ModelStoreUnavailable, load_compact, run_artifact_url

COMPACT_ARTIFACT = "compact/model.npz"
MODEL_ARTIFACT = "model"  # the logged model's name: runs:/<run id>/model
SKOPS_TRUSTED_TYPES = ["ride_duration.features.ride_features", "sklearn.tree._tree.Tree"]
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
SPEC_HELP = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, runs:/<run id>/model "
    "(through the tracking server), or a model id m-<32 hex> or run id <32 hex> (read from S3)"
)


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
    """Fit the random-forest pipeline, log it to MLflow, register it and point the alias at it.

    Args:
        train_month, valid_month: taxi_type:YYYY-MM months to fit on and to validate on.
        forest_params: overrides of ride_duration.train.FOREST_PARAMS (tests use small ones).
        data: (train_df, valid_df) already read, instead of the months.
        name, alias: the registered model and its alias [MODEL_NAME, MODEL_ALIAS].
    """
    from sklearn.ensemble import RandomForestRegressor

    from ride_duration.features import RIDE_FIELDS, make_pipeline
    from ride_duration.train import FOREST_PARAMS, TARGET, parse_month, rmse

    name, alias = name or model_name(), alias or model_alias()
    mlflow = _mlflow()
    import mlflow.sklearn  # noqa: F811  (the submodule, after _mlflow's settings)

    client = _client()  # before the fit: a missing server should not cost a minute of training
    if data is None:
        from ride_duration.data import read_trips

        data = read_trips(*parse_month(train_month))[0], read_trips(*parse_month(valid_month))[0]
    train_df, valid_df = data
    params = {**FOREST_PARAMS, **(forest_params or {})}
    pipeline = make_pipeline(RandomForestRegressor(n_jobs=-1, **params))
    started = time.perf_counter()
    pipeline.fit(train_df, train_df[TARGET].to_numpy())
    fit_seconds = time.perf_counter() - started
    score = rmse(valid_df[TARGET], pipeline.predict(valid_df))

    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        experiment_id = _experiment_id(client, experiment_name())
        with mlflow.start_run(experiment_id=experiment_id) as run:
            run_id = run.info.run_id
            mlflow.log_params(
                {
                    "model": "random_forest",
                    **params,
                    "train_month": train_month,
                    "valid_month": valid_month,
                    "train_rows": len(train_df),
                    "valid_rows": len(valid_df),
                }
            )
            mlflow.log_metrics({"rmse": score, "fit_seconds": fit_seconds})
            info = mlflow.sklearn.log_model(
                pipeline,
                name=MODEL_ARTIFACT,
                signature=_signature(),
                input_example=valid_df[list(RIDE_FIELDS)].head(3).reset_index(drop=True),
                pip_requirements=_pip_requirements(),
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
            )
            compact_file = CompactModel.from_pipeline(pipeline, version=run_id).save(Path(tmp) / "model.npz")
            mlflow.log_artifact(str(compact_file), artifact_path=COMPACT_ARTIFACT.rsplit("/", 1)[0])
        version = _register(client, name, info.model_id, run_id)
        client.set_registered_model_alias(name, alias, version)
        artifact_uri = client.get_logged_model(info.model_id).artifact_location
    return RegisteredModel(
        run_id,
        info.model_id,
        str(version),
        score,
        str(experiment_id),
        artifact_uri,
        fit_seconds=fit_seconds,
        pipeline=pipeline,
    )


def ensure_registered_model(**train_kwargs) -> RegisteredModel:
    """The model behind MODEL_NAME@MODEL_ALIAS, trained and registered first if needed.

    Reuses the alias when it resolves and both its MLflow model and its compact export can
    still be read (a restarted S3 stand-in loses them); otherwise calls train_and_register.
    """
    name, alias = train_kwargs.get("name") or model_name(), train_kwargs.get("alias") or model_alias()
    client = _client()
    from mlflow.exceptions import MlflowException

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
        except MlflowException:
            pass  # no such model or alias yet
    return train_and_register(**train_kwargs)


# ---- loading -------------------------------------------------------------------------------
def load_model(spec: str) -> CompactModel:
    """A servable model from an MLflow URI (tracking server) or a run/model id (S3 alone).

    Raises ModelNotFound, naming the spec and where it looked, when there is no such model;
    ModelStoreUnavailable (a ModelNotFound) when the tracking server or S3 does not answer.
    """
    spec = (spec or "").strip()
    if spec.startswith(("models:/", "runs:/")):
        return _load_through_tracking_server(spec)
    if MODEL_ID.match(spec):
        return _load_model_id_from_s3(spec)
    if RUN_ID.match(spec):
        return _load_run_from_s3(spec)
    raise ModelNotFound(f"{spec!r} is not a model location: use {SPEC_HELP}")


def _load_through_tracking_server(spec: str) -> CompactModel:
    """Resolve the URI to its run over MLflow's REST API and read the run's compact export from
    S3: urllib and boto3 only, so a service starts in about a second without importing MLflow.
    Anything else (a local tracking store, a non-S3 artifact store, a model registered without
    a compact export) is left to the MLflow client."""
    target = _parse_uri(spec)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        _check_tracking_server(uri)
        run_id = _run_id_over_rest(uri, spec, target)
        if run_id:
            artifact_uri = _rest(uri, spec, "runs/get", run_id=run_id)["run"]["info"]["artifact_uri"]
            if artifact_uri.startswith("s3://"):
                try:
                    return load_compact(f"{artifact_uri}/{COMPACT_ARTIFACT}")
                except ModelStoreUnavailable:
                    raise
                except ModelNotFound:
                    pass  # no compact export: MLflow loads the model itself below
    return _load_with_mlflow(spec, target)


def _parse_uri(spec: str) -> tuple[str, ...]:
    """("run", id) | ("logged", m-id) | ("alias", name, alias) | ("version", name, number)."""
    if spec.startswith("runs:/"):
        run_id = spec.removeprefix("runs:/").split("/", 1)[0]
        if RUN_ID.match(run_id):
            return ("run", run_id)
    else:
        target = spec.removeprefix("models:/").strip("/")
        if MODEL_ID.match(target):
            return ("logged", target)
        if "@" in target:
            name, alias = target.split("@", 1)
            if name and alias:
                return ("alias", name, alias)
        name, _, version = target.rpartition("/")
        if name and version.isdigit():
            return ("version", name, version)
    raise ModelNotFound(f"{spec!r} is not a model location: use {SPEC_HELP}")


def _run_id_over_rest(base: str, spec: str, target: tuple[str, ...]) -> str:
    kind = target[0]
    if kind == "run":
        return target[1]
    if kind == "logged":
        return _rest(base, spec, f"logged-models/{target[1]}")["model"]["info"].get("source_run_id", "")
    if kind == "alias":
        return _rest(base, spec, "registered-models/alias", name=target[1], alias=target[2])["model_version"].get(
            "run_id", ""
        )
    return _rest(base, spec, "model-versions/get", name=target[1], version=target[2])["model_version"].get("run_id", "")


def _rest(base: str, spec: str, endpoint: str, **params) -> dict:
    """One GET of MLflow's REST API; its errors become ModelNotFound with MLflow's message."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{base.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_auth_headers()), timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            reason = f"{error.get('error_code', exc.code)}: {error.get('message', '')}"
        except ValueError:
            reason = f"HTTP {exc.code}"
        raise ModelNotFound(f"no model at {spec} on {base}: {reason}") from None
    except OSError as exc:
        raise ModelStoreUnavailable(f"the MLflow tracking server at {base} does not answer ({exc})") from None


def _auth_headers() -> dict[str, str]:
    """MLflow's own variables for a server behind authentication."""
    import base64

    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


def _load_with_mlflow(spec: str, target: tuple[str, ...]) -> CompactModel:
    """The same resolution with the MLflow client, for the cases the light path leaves."""
    mlflow = _mlflow()
    client = _client()
    with _quiet():
        try:
            run_id = _run_id_with_client(client, target)
            artifact_uri = client.get_run(run_id).info.artifact_uri
        except mlflow.exceptions.MlflowException as exc:
            raise ModelNotFound(f"no model at {spec} on {mlflow.get_tracking_uri()}: {_first_line(exc)}") from None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{artifact_uri}/{COMPACT_ARTIFACT}", dst_path=tmp
                )
                return CompactModel.load(local)
            except Exception:  # a model registered by other means: export it on the fly
                pass
        try:
            import mlflow.sklearn

            pipeline = mlflow.sklearn.load_model(spec)
        except Exception as exc:  # ImportError too: the light image has no scikit-learn
            raise ModelNotFound(
                f"{spec} resolves to run {run_id}, but neither {COMPACT_ARTIFACT} nor an "
                f"scikit-learn model could be read: {_first_line(exc)}"
            ) from None
    return CompactModel.from_pipeline(pipeline, version=run_id)


def _run_id_with_client(client, target: tuple[str, ...]) -> str:
    kind = target[0]
    if kind == "run":
        return client.get_run(target[1]).info.run_id
    if kind == "logged":
        return client.get_logged_model(target[1]).source_run_id
    if kind == "alias":
        return client.get_model_version_by_alias(target[1], target[2]).run_id
    return client.get_model_version(target[1], target[2]).run_id


def _load_run_from_s3(run_id: str, experiment_ids: list[str] | None = None) -> CompactModel:
    bucket = model_bucket()
    experiment_ids = experiment_ids or _experiment_ids_in(bucket)
    for experiment_id in experiment_ids:
        try:
            return load_compact(run_artifact_url(bucket, experiment_id, run_id, COMPACT_ARTIFACT))
        except ModelStoreUnavailable:
            raise
        except ModelNotFound:
            continue
    raise ModelNotFound(
        f"no run {run_id} with {COMPACT_ARTIFACT} in s3://{bucket}/ "
        f"(experiments looked in: {', '.join(experiment_ids) or 'none'}): "
        "check the id, MODEL_BUCKET and MLFLOW_EXPERIMENT_ID"
    )


def _load_model_id_from_s3(model_id: str) -> CompactModel:
    """The MLmodel file names the run that logged the model; that run holds the compact export."""
    from ride_duration.models import read_s3

    bucket = model_bucket()
    experiment_ids = _experiment_ids_in(bucket)
    for experiment_id in experiment_ids:
        try:
            mlmodel = read_s3(f"s3://{bucket}/{experiment_id}/models/{model_id}/artifacts/MLmodel").decode()
        except ModelStoreUnavailable:
            raise
        except ModelNotFound:
            continue
        found = re.search(r"^run_id: *([0-9a-f]{32})\s*$", mlmodel, re.MULTILINE)
        if not found:
            raise ModelNotFound(f"the MLmodel file of {model_id} names no run: load it with models:/{model_id}")
        return _load_run_from_s3(found.group(1), [experiment_id])
    raise ModelNotFound(
        f"no model {model_id} in s3://{bucket}/ (experiments looked in: "
        f"{', '.join(experiment_ids) or 'none'}): check the id, MODEL_BUCKET and MLFLOW_EXPERIMENT_ID"
    )


def _experiment_ids_in(bucket: str) -> list[str]:
    """MLFLOW_EXPERIMENT_ID if set, else the experiment folders at the top of the bucket."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return [os.environ["MLFLOW_EXPERIMENT_ID"]]
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/")
        prefixes = [p["Prefix"].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ModelNotFound(f"cannot list s3://{bucket}/ ({code}): check MODEL_BUCKET and the credentials") from None
    except BotoCoreError as exc:
        raise ModelStoreUnavailable(
            f"S3 does not answer ({exc}): is the stand-in up (python -m ride_duration.standins up)?"
        ) from None
    return sorted((p for p in prefixes if p.isdigit()), key=int)


# ---- MLflow helpers ------------------------------------------------------------------------
def _mlflow():
    """MLflow, imported on first use with its console chatter turned off."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with warnings.catch_warnings():
        # `import mlflow` imports tqdm.auto, which warns in a Jupyter kernel without ipywidgets.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import mlflow
        import mlflow.artifacts  # mlflow.sklearn is imported where needed: it needs pandas

    return mlflow


def _client():
    """An MlflowClient, after checking that the tracking server answers."""
    mlflow = _mlflow()
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_tracking_server(uri)
    return mlflow.MlflowClient()


def _check_tracking_server(uri: str) -> None:
    """A quick /health first: MLflow's client retries for minutes on a server that is not there."""
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            response.read()
    except OSError as exc:
        raise ModelStoreUnavailable(
            f"the MLflow tracking server at {uri} does not answer ({exc}): start it with "
            "`python -m ride_duration.standins up`, or load the model by run id from S3"
        ) from None


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


def _register(client, name: str, model_id: str, run_id: str) -> str:
    """A new version of `name` for the logged model (the client calls print nothing)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id).version


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("long", "PULocationID"), ColSpec("long", "DOLocationID"), ColSpec("double", "trip_distance")]
        ),
        outputs=Schema([ColSpec("double")]),
    )


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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
    except ModelNotFound as exc:
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
