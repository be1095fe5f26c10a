"""Load a serving model from any spec: `load_model`, the one loader of every service.

    load_model(spec) -> Model   (SPEC_HELP lists the specs)

path/to/model.npz (or .pkl), s3://bucket/key.npz (or .pkl)
    the compact export (ride_duration.compact): numpy, and boto3 for S3. A .pkl pipeline needs
    scikit-learn, and loads only with ALLOW_UNSAFE_PICKLE=1 (see "What runs code" below).
models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, runs:/<run id>/model
    resolved with MLflow's client (mlflow-skinny is enough) at MLFLOW_TRACKING_URI to the run
    that trained the model, whose compact export (COMPACT_ARTIFACT) is then read from S3 with
    boto3. A version registered without one is loaded by mlflow.pyfunc instead (MlflowModel:
    that needs pandas and the model's flavor, scikit-learn).
<run id> (32 hex digits), m-<model id>
    read straight from S3 (MODEL_BUCKET; MLFLOW_EXPERIMENT_ID, or the experiments found by
    listing the bucket) with boto3 alone: no tracking server, so a service still starts when
    it is down.
Whichever way, `.version` is the run id of the run that trained the model (a file's is its
name and a hash of it), so a service answers with the same model_version from either source.

What runs code: nothing, by default. The .npz export is read with allow_pickle=False, and an
MLflow model without one loads only from scikit-learn's skops format, with this package's
own list of trusted types (SKOPS_TRUSTED_TYPES, not the list the model file carries).
Unpickling runs whatever code the file holds, so a .pkl file or S3 object, or an MLflow model
in another format, is refused (UnsafeModelRefused) unless ALLOW_UNSAFE_PICKLE=1 [0] is set.

Deadlines: S3 calls use ride_duration.aws (AWS_CONNECT_TIMEOUT, AWS_READ_TIMEOUT,
AWS_MAX_ATTEMPTS); the tracking server MLFLOW_DEFAULTS; MLflow's own S3 client gets the
same AWS deadlines (aws.use_deadlines_by_default). A hung endpoint fails in under 30 s.

Light on purpose: the web service and the Lambda import this module, which costs numpy;
boto3, mlflow, pandas and scikit-learn are imported only in the branch a spec needs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ride_duration import aws, config
from ride_duration.compact import CompactModel, file_version

if TYPE_CHECKING:
    import numpy as np

COMPACT_ARTIFACT = "compact/model.npz"  # in a run's artifacts: registry.train_and_register logs it
RUN_ID = re.compile(r"[0-9a-f]{32}")
MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
# How botocore says an endpoint did not answer, in the messages MLflow wraps around it.
S3_UNREACHABLE = re.compile(r'(Connect timeout|Read timeout|Could not connect to the endpoint URL)[^"]*"[^"]*"')
SPEC_HELP = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, runs:/<run id>/model (through the "
    "tracking server), a run id <32 hex> or model id m-<32 hex> (read from S3), s3://bucket/key.npz "
    "or a model file (.npz/.pkl)"
)
# Defaults for MLflow's own variables, each unless already set. Its client retries a tracking
# server that does not answer 7 times with a 120 s timeout, minutes before a service could say
# so: 3 attempts of 4 s fail in ~3 s (refused) or ~15 s (no answer), 27 s at worst
# (tracking_server_worst_case_seconds). They apply to the process's later MLflow calls too;
# set them to choose other values.
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
UNSAFE_PICKLE_SETTING = "ALLOW_UNSAFE_PICKLE"
# skops loads only these types beyond its own safe set: our feature step and scikit-learn's
# tree storage. Passed at load, so a model file cannot widen the list it is loaded with.
SKOPS_TRUSTED_TYPES = ["ride_duration.features.ride_features", "sklearn.tree._tree.Tree"]


class Model(Protocol):
    """What serving needs of a model, whichever way it was loaded."""

    version: str  # reported with every prediction

    def predict(self, rides: Sequence[dict]) -> np.ndarray:
        """One duration in minutes per ride dict (PULocationID, DOLocationID, trip_distance)."""
        ...


class ModelNotFound(Exception):
    """No model at the given location; the message names the location and what to check."""


class ModelStoreUnavailable(ModelNotFound):
    """The tracking server or S3 does not answer: the model may exist, but cannot be read."""


class ModelUnreadable(ModelNotFound):
    """The file is there but holds no model this code can load (damaged, foreign, an old format)."""


class UnsafeModelRefused(ModelUnreadable):
    """A model whose loading would run code from it (a pickle), without ALLOW_UNSAFE_PICKLE=1."""


def unsafe_pickle_allowed() -> bool:
    """ALLOW_UNSAFE_PICKLE [0]: 1 lets pickled models load, and with them any code they hold."""
    value = os.environ.get(UNSAFE_PICKLE_SETTING, "").strip()
    if value not in ("", "0", "1"):
        raise config.SettingError(f"{UNSAFE_PICKLE_SETTING} must be 1 or 0, got {value!r}")
    return value == "1"


def refuse_unless_pickle_allowed(
    location: str, what: str = "a pickle", instead: str = "load its .npz export (ride_duration.train writes both)"
) -> None:
    """UnsafeModelRefused for `location`, before any byte of it is read, unless the opt-in is set."""
    if not unsafe_pickle_allowed():
        raise UnsafeModelRefused(
            f"{location} is {what}, and loading it would run any code it holds: refused. Instead, {instead}, "
            f"or set {UNSAFE_PICKLE_SETTING}=1 if you trust where it comes from"
        )


def load_model(spec: str | Path) -> Model:
    """The model `spec` names (see the module docstring); ModelNotFound if there is none.

    Raises ModelStoreUnavailable (a ModelNotFound) when the tracking server or S3 does not answer.
    """
    spec = str(spec).strip()
    if spec.startswith(("models:/", "runs:/")):
        return _load_through_tracking_server(spec)
    if MODEL_ID.fullmatch(spec):
        return _load_model_id_from_s3(spec)
    if RUN_ID.fullmatch(spec):
        return _load_run_from_s3(spec)
    if spec.startswith("s3://"):
        if all(split_s3_url(spec)):  # a bucket and a key
            return load_compact(spec)
    elif spec.endswith((".npz", ".pkl")) or Path(spec).is_file():
        return load_compact(spec)
    raise ModelNotFound(f"{spec!r} is not a model location: use {SPEC_HELP}")


def spec_from_env(variables: Sequence[str], default: str | None = None) -> str:
    """The spec in the one environment variable of `variables` that is set, else `default`."""
    given = {name: os.environ[name].strip() for name in variables if os.environ.get(name, "").strip()}
    if len(given) > 1:
        raise ModelNotFound(f"set only one of {', '.join(variables)} (got {', '.join(given)})")
    if given:
        return given.popitem()[1]
    if default:
        return default
    raise ModelNotFound(f"no model configured: set {' or '.join(variables)} to {SPEC_HELP}")


# ---- the compact export: a file or an S3 object ---------------------------------------------
def load_compact(location: str | Path) -> CompactModel:
    """A CompactModel from a local .npz/.pkl file or an s3://bucket/key.npz (or .pkl) object.

    A .pkl is refused before it is read unless ALLOW_UNSAFE_PICKLE=1 (UnsafeModelRefused)."""
    location = str(location)
    is_pickle = location.endswith(".pkl")
    if is_pickle:
        refuse_unless_pickle_allowed(location)
    if location.startswith("s3://"):
        blob = read_s3(location)
    else:
        path = Path(location)
        if not path.is_file():
            raise ModelNotFound(f"no model file at {path}: train one with `make train`, or give {SPEC_HELP}")
        blob = path.read_bytes()
    try:
        if not is_pickle:
            return CompactModel.from_bytes(blob)
        import pickle  # opted in above; unpickling a pipeline imports scikit-learn

        return CompactModel.from_pipeline(pickle.loads(blob), version=file_version(Path(location).stem, blob))
    except Exception as exc:  # a damaged or foreign file: whatever numpy or pickle raised
        raise ModelUnreadable(f"{location} is not a readable model ({type(exc).__name__}: {exc})") from None


def split_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def read_s3(url: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_url(url)
    try:
        return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ModelNotFound(f"no model at {url} ({code or exc})") from None
    except BotoCoreError as exc:  # no endpoint, no credentials, no network
        raise ModelStoreUnavailable(f"cannot read {url} ({exc}): is S3 (or its stand-in) reachable?") from None


def run_artifact_url(bucket: str, experiment_id: str, run_id: str, path: str = COMPACT_ARTIFACT) -> str:
    """Where MLflow keeps a run's artifact on S3, so a reader needs no tracking server."""
    return f"s3://{bucket}/{experiment_id}/{run_id}/artifacts/{path}"


# ---- a run or logged model read straight from S3 --------------------------------------------
def _load_run_from_s3(run_id: str, experiment_ids: list[str] | None = None) -> CompactModel:
    bucket = config.model_bucket()
    experiment_ids = experiment_ids or _experiment_ids_in(bucket)
    for experiment_id in experiment_ids:
        try:
            return load_compact(run_artifact_url(bucket, experiment_id, run_id))
        except (ModelStoreUnavailable, ModelUnreadable):
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
    bucket = config.model_bucket()
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
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/")
        prefixes = [p["Prefix"].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ModelNotFound(f"cannot list s3://{bucket}/ ({code}): check MODEL_BUCKET and the credentials") from None
    except BotoCoreError as exc:
        raise ModelStoreUnavailable(
            f"S3 does not answer ({exc}): is the stand-in up (python -m ride_duration.local.standins up)?"
        ) from None
    return sorted((p for p in prefixes if p.isdigit()), key=int)


# ---- MLflow URIs, through the tracking server -----------------------------------------------
def parse_mlflow_uri(spec: str) -> tuple[str, ...]:
    """("run", id) | ("logged", m-id) | ("alias", name, alias) | ("version", name, number):
    which client call resolves the URI, checked before MLflow is imported."""
    if spec.startswith("runs:/"):
        run_id = spec.removeprefix("runs:/").split("/", 1)[0]
        if RUN_ID.fullmatch(run_id):
            return ("run", run_id)
    else:
        target = spec.removeprefix("models:/").strip("/")
        if MODEL_ID.fullmatch(target):
            return ("logged", target)
        if "@" in target:
            name, alias = target.split("@", 1)
            if name and alias:
                return ("alias", name, alias)
        name, _, version = target.rpartition("/")
        if name and version.isdigit():
            return ("version", name, version)
    raise ModelNotFound(f"{spec!r} is not a model location: use {SPEC_HELP}")


def import_mlflow(purpose: str = "the MLflow client"):
    """mlflow, with MLFLOW_DEFAULTS; ModelNotFound naming `purpose` where it is not installed."""
    import warnings

    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    aws.use_deadlines_by_default()  # MLflow's S3 artifact client is its own, made without our Config
    try:
        with warnings.catch_warnings():
            # `import mlflow` imports tqdm.auto, which warns in a Jupyter kernel without ipywidgets.
            warnings.filterwarnings("ignore", message="IProgress not found")
            import mlflow
    except ImportError:
        raise ModelNotFound(
            f"{purpose} needs MLflow's client (pip install mlflow-skinny; web-service-mlflow's image has it), "
            "or load the model by run id from S3"
        ) from None
    return mlflow


def tracking_server_worst_case_seconds() -> float:
    """The longest one MLflow client call waits on a tracking server that never answers, at the
    current settings (MLFLOW_DEFAULTS where unset): requests applies the timeout to connecting
    and to the answer, each attempt; urllib3 sleeps before retry n from the second on, for
    factor * 2**(n - 1) s plus up to `jitter` s."""

    def setting(name: str) -> float:
        return float(os.environ.get(name) or MLFLOW_DEFAULTS[name])

    retries = int(setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    factor, jitter = setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"), setting("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER")
    backoff = sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    return (retries + 1) * 2 * setting("MLFLOW_HTTP_REQUEST_TIMEOUT") + backoff


@contextmanager
def tracking_server_errors(what: str, uri: str) -> Iterator[None]:
    """MLflow's exceptions as one line: ModelNotFound if the server answered, else ModelStoreUnavailable."""
    from mlflow.exceptions import MlflowException, RestException

    try:
        yield
    except RestException as exc:  # the server's answer: no such model, alias, version or run
        raise ModelNotFound(f"no model at {what} on {uri}: {_first_line(exc)}") from None
    except MlflowException as exc:
        text = str(exc)
        if not text.startswith("API request to"):
            raise ModelNotFound(f"cannot resolve {what} on {uri}: {_first_line(exc)}") from None
        # requests' message is a paragraph; its cause is enough.
        causes = ("Connection refused", "Read timed out", "Name or service not known")
        reason = next((cause for cause in causes if cause in text), "")
        raise ModelStoreUnavailable(
            f"the MLflow tracking server at {uri} does not answer ({reason or _first_line(exc)}): start it "
            "(python -m ride_duration.local.standins up), or load the model by run id from S3"
        ) from None


def _load_through_tracking_server(spec: str) -> Model:
    """MLflow's client resolves the URI to the run that trained the model; that run's compact
    export is read from S3 with boto3. A version registered without one is left to mlflow.pyfunc."""
    kind, *target = parse_mlflow_uri(spec)
    mlflow = import_mlflow(spec)
    if not mlflow.is_tracking_uri_set():  # MLflow would create an empty local store instead
        raise ModelNotFound(f"{spec} needs a tracking server: set MLFLOW_TRACKING_URI, or load the model by run id")
    uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient()
    with tracking_server_errors(spec, uri):
        if kind == "run":
            run_id = target[0]
        elif kind == "logged":
            run_id = client.get_logged_model(*target).source_run_id
        elif kind == "alias":
            run_id = client.get_model_version_by_alias(*target).run_id
        else:
            run_id = client.get_model_version(*target).run_id
        artifact_uri = client.get_run(run_id).info.artifact_uri if run_id else ""
    try:
        return _read_compact_artifact(artifact_uri, spec, uri)
    except (ModelStoreUnavailable, ModelUnreadable):
        raise
    except ModelNotFound:  # none exported: MLflow loads the model itself
        return MlflowModel.load(spec, version=run_id or spec)


def _read_compact_artifact(artifact_uri: str, spec: str, tracking_uri: str) -> CompactModel:
    """The run's compact export: boto3 on S3, MLflow's download elsewhere (a local store, the server's proxy)."""
    if not artifact_uri:
        raise ModelNotFound(f"{spec} names no run")
    if artifact_uri.startswith("s3://"):
        return load_compact(f"{artifact_uri}/{COMPACT_ARTIFACT}")
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp, tracking_server_errors(spec, tracking_uri):
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{artifact_uri}/{COMPACT_ARTIFACT}", dst_path=tmp)
        except OSError as exc:
            raise ModelNotFound(f"no {COMPACT_ARTIFACT} at {artifact_uri} ({exc})") from None
        return load_compact(local)


class MlflowModel:
    """A registered model without a compact export (a version registered by other means, e.g.
    from the UI), loaded by this package from MLflow's scikit-learn flavour in the skops
    format. Loading it imports scikit-learn and skops (and pandas to predict): web-service-mlflow's
    image has none of them. Any other format unpickles, so it is left to mlflow.pyfunc, and only
    with ALLOW_UNSAFE_PICKLE=1."""

    def __init__(self, model, version: str):
        self.model = model  # a scikit-learn pipeline, or (opted in) an mlflow.pyfunc model
        self.version = version

    @classmethod
    def load(cls, spec: str, version: str) -> MlflowModel:
        import tempfile

        mlflow = import_mlflow(spec)
        import mlflow.artifacts  # noqa: F811  (the submodules, after import_mlflow's settings)
        import mlflow.models

        with (
            tempfile.TemporaryDirectory() as tmp,
            tracking_server_errors(spec, mlflow.get_tracking_uri()),
            _artifact_store_errors(spec),
        ):
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=tmp))
            flavor = mlflow.models.Model.load(folder / "MLmodel").flavors.get("sklearn", {})
            if flavor.get("serialization_format") == "skops":
                return cls(_load_skops(folder / flavor["pickled_model"], spec, version), version)
        # MLflow's own default, for an sklearn flavour that names no format, is pickle.
        stored_as = f"stored as {flavor.get('serialization_format', 'pickle')}" if flavor else "of another flavour"
        refuse_unless_pickle_allowed(
            spec, f"an MLflow model {stored_as}", "register one logged with skops or a compact export (make register)"
        )
        try:
            import mlflow.pyfunc

            return cls(mlflow.pyfunc.load_model(spec), version)
        except Exception as exc:  # ImportError too (no pandas or the model's flavour here)
            reason = _first_line(exc)
            raise ModelUnreadable(f"{spec}: mlflow.pyfunc cannot load run {version}'s model: {reason}") from None

    def predict(self, rides: Sequence[dict]) -> np.ndarray:
        import numpy as np
        import pandas as pd

        rides = list(rides)
        if not rides:
            return np.empty(0)
        return np.asarray(self.model.predict(pd.DataFrame(rides)), dtype=np.float64)

    def to_compact(self) -> CompactModel:
        """The scikit-learn pipeline exported to numpy, for batch's column-wise scoring and Spark."""
        pipeline = self.model.get_raw_model() if hasattr(self.model, "get_raw_model") else self.model
        try:
            return CompactModel.from_pipeline(pipeline, version=self.version)
        except Exception as exc:  # another flavor, or a pipeline of other steps
            reason = _first_line(exc)
            raise ModelUnreadable(f"run {self.version}'s model cannot be exported to numpy: {reason}") from None


def _load_skops(path: Path, spec: str, version: str):
    """The pipeline in a skops file, with our trusted types (never those the MLmodel file lists)."""
    try:
        import skops.io

        return skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)
    except Exception as exc:  # untrusted types, a damaged file, no skops or scikit-learn here
        raise ModelUnreadable(
            f"{spec} resolves to run {version}, which has no {COMPACT_ARTIFACT}, and its skops model "
            f"cannot be loaded: {_first_line(exc)}"
        ) from None


@contextmanager
def _artifact_store_errors(spec: str) -> Iterator[None]:
    """MLflow's S3 download failing as one line naming the endpoint (botocore's own words)."""
    from mlflow.exceptions import MlflowException

    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no boto3: the artifacts are not on S3
        BotoCoreError = ClientError = ()  # noqa: N806  (catches nothing)

    try:
        yield
    except BotoCoreError as exc:  # a listing: botocore's exception as it is
        raise ModelStoreUnavailable(f"cannot download {spec} from S3 ({exc}): is S3 reachable?") from None
    except ClientError as exc:
        raise ModelNotFound(f"cannot download {spec} from S3 ({_first_line(exc)})") from None
    except MlflowException as exc:  # a download: MLflow's paragraph around botocore's line
        cause = S3_UNREACHABLE.search(str(exc))
        if not cause:
            raise
        raise ModelStoreUnavailable(f"cannot download {spec} from S3 ({cause.group(0)}): is S3 reachable?") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
