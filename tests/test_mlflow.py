"""MLflow registry and web-service-mlflow against the real stand-ins: moto's server and an
MLflow tracking server, each a process of its own, on ports and in a folder of this test's
own (a developer's stand-ins or the notebooks' are not touched).

The tests run in file order: the tracking server is stopped half-way, to show that a model
still loads from S3 alone, and the last test stops everything and checks no process is left.
A small forest keeps the fit to seconds; the notebook trains the full one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ride_duration import registry
from ride_duration.local import processes, standins
from ride_duration.local.background import ServiceFailed, free_port, serve_in_background
from ride_duration.models import MlflowModel, ModelNotFound, ModelStoreUnavailable, load_model

REPO = Path(__file__).resolve().parent.parent
SERVICE_DIR = REPO / "web-service-mlflow"
SMALL_FOREST = {"n_estimators": 10, "max_depth": 10}
NAME = "test-ride-duration"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Stand-ins started by standins.up() with this module's settings; stopped at the end."""
    patch = pytest.MonkeyPatch()
    settings = {
        "STANDINS_DIR": str(tmp_path_factory.mktemp("standins")),
        "MOTO_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "MODEL_BUCKET": "test-ride-duration-models",
        "MODEL_NAME": NAME,
        "MODEL_ALIAS": "production",
        "EXPERIMENT_NAME": "test-ride-duration",
    }
    for name, value in settings.items():
        patch.setenv(name, value)
    patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    started = time.perf_counter()
    env = standins.up()
    print(f"\nstand-ins up in {time.perf_counter() - started:.1f} s")
    for name, value in env.items():
        patch.setenv(name, value)
    yield env
    try:
        standins.down()
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def registered(stand_ins, trips):
    return registry.train_and_register(forest_params=SMALL_FOREST, data=trips)


@pytest.fixture(scope="module")
def rides(trips):
    return trips[1][["PULocationID", "DOLocationID", "trip_distance"]].head(2000).to_dict("records")


def test_up_is_idempotent_and_writes_the_environment(stand_ins):
    pids = {s: info["pid"] for s, info in standins.status().items() if isinstance(info, dict)}
    started = time.perf_counter()
    assert standins.up() == stand_ins
    assert time.perf_counter() - started < 10, "a second up() must reuse the running servers"
    after = standins.status()
    assert all(after[s]["running"] and after[s]["pid"] == pids[s] for s in standins.SERVICES)
    env_file = Path(os.environ["STANDINS_DIR"]) / "env"
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
    assert exported["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{os.environ['MOTO_PORT']}"
    assert exported["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"
    assert exported["MODEL_BUCKET"] == "test-ride-duration-models"


def test_the_registered_model_loads_by_alias_with_the_pipelines_predictions(registered, rides):
    model = load_model(f"models:/{NAME}@production")
    assert model.version == registered.run_id
    np.testing.assert_allclose(model.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-9)


def test_every_mlflow_uri_of_the_model_loads_the_same_run(registered):
    for spec in (
        f"models:/{NAME}/{registered.version}",
        f"models:/{registered.model_id}",
        f"runs:/{registered.run_id}/model",
    ):
        assert load_model(spec).version == registered.run_id, spec


def test_loading_through_the_registry_needs_mlflows_client_but_not_scikit_learn(registered):
    """The serving path: MLflow's client resolves the alias, then numpy and boto3 read the
    compact export. (The full mlflow of this environment imports pandas with itself;
    web-service-mlflow's image has mlflow-skinny and no pandas.)"""
    code = (
        "import sys; from ride_duration.models import load_model; "
        f"model = load_model('models:/{NAME}@production'); "
        "print(model.version, type(model).__name__, 'mlflow' in sys.modules, 'sklearn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == [registered.run_id, "CompactModel", "True", "False"]
    assert result.stderr == ""


def test_the_run_logs_one_pipeline_with_signature_params_and_metric(registered, rides):
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow import MlflowClient

    files = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=registered.artifact_uri)}
    assert {"MLmodel", "model.skops", "input_example.json"} <= files
    assert not {"dv.pkl", "model.pkl"} & files, "the model artifact is one pipeline, no separate vectorizer"
    assert registered.artifact_uri.startswith(f"s3://test-ride-duration-models/{registered.experiment_id}/models/m-")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must not warn (nbval compares stderr)
        pipeline = mlflow.sklearn.load_model(f"models:/{NAME}@production")
    assert [type(step).__name__ for _, step in pipeline.steps] == [
        "FunctionTransformer",
        "DictVectorizer",
        "RandomForestRegressor",
    ]
    np.testing.assert_allclose(pipeline.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-12)
    info = mlflow.models.get_model_info(f"models:/{registered.model_id}")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["PULocationID", "DOLocationID", "trip_distance"]
    run = MlflowClient().get_run(registered.run_id)
    assert run.data.params["max_depth"] == "10" and run.data.params["n_estimators"] == "10"
    assert run.data.metrics["rmse"] == pytest.approx(registered.rmse)
    assert 6 < registered.rmse < 8


def test_the_registered_version_is_described_by_its_validation_rmse(registered):
    from mlflow import MlflowClient

    client = MlflowClient()
    described = client.get_model_version(NAME, registered.version).description
    assert f"validation RMSE {registered.rmse:.4f}" in described and "green:2021-02" in described
    assert client.get_registered_model(NAME).description == registry.MODEL_DESCRIPTION


def test_ensure_registered_model_reuses_the_alias(registered):
    again = registry.ensure_registered_model()
    assert (again.run_id, again.version, again.fit_seconds) == (registered.run_id, registered.version, None)
    assert again.rmse == pytest.approx(registered.rmse)


def test_a_model_without_compact_export_is_served_by_mlflow_and_exported_for_batch(registered, rides):
    """A version registered by other means (e.g. from the UI) still serves."""
    spec, run_id = register_without_export(
        registered, "test-uploaded", registered.pipeline, skops_trusted_types=registry.SKOPS_TRUSTED_TYPES
    )
    model = load_model(spec)
    assert isinstance(model, MlflowModel)
    assert model.version == run_id
    np.testing.assert_allclose(model.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-9)
    compact = model.to_compact()
    assert compact.version == run_id
    np.testing.assert_allclose(compact.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-9)


def register_without_export(registered, name: str, model, **log_kwargs) -> tuple[str, str]:
    """`model` logged by MLflow alone (no compact export) and registered as `name`: (its URI, its run id)."""
    import mlflow
    import mlflow.sklearn

    with mlflow.start_run(experiment_id=registered.experiment_id) as run:
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"], **log_kwargs)
    mlflow.MlflowClient().create_registered_model(name)
    mlflow.MlflowClient().create_model_version(name, info.model_uri, run.info.run_id, model_id=info.model_id)
    return f"models:/{name}/1", run.info.run_id


def test_a_pickled_mlflow_model_loads_only_when_opted_in(registered, rides, monkeypatch):
    from ride_duration.models import UnsafeModelRefused

    spec, run_id = register_without_export(
        registered, "test-pickled", registered.pipeline, serialization_format="pickle"
    )
    monkeypatch.delenv("ALLOW_UNSAFE_PICKLE", raising=False)
    refusal = f"{spec} is an MLflow model stored as pickle, .* ALLOW_UNSAFE_PICKLE=1"
    with pytest.raises(UnsafeModelRefused, match=refusal):
        load_model(spec)
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")
    model = load_model(spec)
    assert model.version == run_id
    np.testing.assert_allclose(model.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-9)


def test_a_skops_model_cannot_widen_the_types_it_is_trusted_with(registered, monkeypatch):
    """Its MLmodel file trusts os.system; the loader trusts only SKOPS_TRUSTED_TYPES."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from ride_duration.models import ModelUnreadable

    step = FunctionTransformer(os.system)
    trusted = [f"{os.system.__module__}.system"]
    spec, _ = register_without_export(registered, "test-widened", make_pipeline(step), skops_trusted_types=trusted)
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")  # not a pickle: the opt-in does not widen it either
    with pytest.raises(ModelUnreadable, match=f"its skops model cannot be loaded: .*{trusted[0]}"):
        load_model(spec)


@pytest.mark.parametrize(
    "spec, message",
    [
        (f"models:/{NAME}@staging", "alias staging not found"),
        (f"models:/{NAME}/99", "not found"),
        (f"runs:/{'1' * 32}/model", "not found"),
        ("0" * 32, f"no run {'0' * 32} with compact/model.npz in s3://test-ride-duration-models/"),
        ("m-" + "0" * 32, f"no model m-{'0' * 32} in s3://test-ride-duration-models/"),
        ("ride-duration", "is not a model location"),
    ],
)
def test_a_wrong_id_fails_with_a_message_naming_it(registered, spec, message):
    with pytest.raises(ModelNotFound, match=message):
        load_model(spec)


def test_the_service_serves_the_registry_model(registered, rides):
    started = time.perf_counter()
    with serve_in_background(
        SERVICE_DIR, env={"MODEL_URI": f"models:/{NAME}@production"}, args=("--preload",), timeout=120
    ) as service:
        print(f"\nweb-service-mlflow up from the registry in {time.perf_counter() - started:.1f} s")
        health = service.wait_healthy()
        answer = _post(service.predict_url, rides[:50])
    assert health["model_version"] == registered.run_id
    assert [a["model_version"] for a in answer] == [registered.run_id] * 50
    np.testing.assert_allclose([a["duration"] for a in answer], registered.pipeline.predict(rides[:50]), atol=1e-9)


def test_with_the_tracking_server_stopped_the_model_loads_from_s3(registered, rides):
    mlflow_pid = standins.status()["mlflow"]["pid"]
    standins.stop_mlflow()
    assert not processes.group_members(mlflow_pid)
    assert standins.status()["mlflow"]["running"] is False and standins.status()["moto"]["running"]
    for spec in (registered.run_id, registered.model_id):
        model = load_model(spec)
        assert model.version == registered.run_id
        np.testing.assert_allclose(model.predict(rides), registered.pipeline.predict(rides), rtol=0, atol=1e-9)
    started = time.perf_counter()
    with pytest.raises(ModelStoreUnavailable, match="tracking server .* does not answer"):
        load_model(f"models:/{NAME}@production")
    assert time.perf_counter() - started < 15


def test_the_service_starts_from_s3_alone_and_the_client_prints_its_answer(registered, rides):
    started = time.perf_counter()
    with serve_in_background(SERVICE_DIR, env={"RUN_ID": registered.run_id}, args=("--preload",)) as service:
        print(f"\nweb-service-mlflow up from S3 in {time.perf_counter() - started:.1f} s")
        assert service.wait_healthy()["model_version"] == registered.run_id
        client = subprocess.run(
            [sys.executable, "test.py", service.predict_url],
            cwd=SERVICE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    import runpy

    ride = runpy.run_path(str(SERVICE_DIR / "test.py"))["RIDE"]  # the client's default ride
    assert ride == runpy.run_path(str(SERVICE_DIR.parent / "web-service" / "test.py"))["RIDE"]  # one example ride
    expected = registered.pipeline.predict([ride])[0]
    assert client.stdout.strip() == f"{expected:.1f} minutes (model_version {registered.run_id})"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUN_ID": "0" * 32}, f"no run {'0' * 32}"),
        ({"MODEL_ID": "m-" + "f" * 32}, f"no model m-{'f' * 32}"),
        ({"RUN_ID": "0" * 32, "MODEL_URI": "models:/x@y"}, "set only one of MODEL_URI, RUN_ID, MODEL_ID"),
    ],
)
def test_a_wrong_model_stops_the_service_at_start_with_a_message(registered, env, message):
    clean = {k: v for k, v in os.environ.items() if k not in ("RUN_ID", "MODEL_ID", "MODEL_URI")}
    result = subprocess.run(
        [sys.executable, "predict.py"],
        cwd=SERVICE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("web-service-mlflow cannot start:") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_under_gunicorn_a_wrong_model_stops_the_start_with_one_line(registered):
    """With --preload (as in the Dockerfile) the master loads the model: exit 3, no traceback."""
    with pytest.raises(ServiceFailed, match="exited with status 3") as failure:
        serve_in_background(SERVICE_DIR, env={"RUN_ID": "0" * 32}, args=("--preload",), timeout=60)
    assert str(failure.value).count(f"web-service-mlflow cannot start: no run {'0' * 32}") == 1
    assert "Traceback" not in str(failure.value)


def test_down_leaves_no_process_and_a_fresh_moto_starts_a_fresh_registry(stand_ins):
    pids = [info["pid"] for info in standins.status().values() if isinstance(info, dict) and info["pid"]]
    assert pids, "moto should still run here"
    standins.down()
    assert all(not processes.group_members(pid) for pid in pids)
    assert not any(standins.status()[s]["running"] for s in standins.SERVICES)
    db = Path(os.environ["STANDINS_DIR"]) / "mlflow.db"
    assert db.exists(), "the registry of the stopped stand-ins stays on disk until the next up"
    standins.up(with_mlflow=False)
    try:
        assert not db.exists(), "a fresh moto has no artifacts: the old registry must go with it"
        import boto3

        assert boto3.client("s3").list_objects_v2(Bucket="test-ride-duration-models")["KeyCount"] == 0
    finally:
        moto_pid = standins.status()["moto"]["pid"]
        standins.down()
    assert not processes.group_members(moto_pid)


def _post(url: str, payload):
    import json
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
