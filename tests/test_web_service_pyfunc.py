"""web-service-mlflow with MODEL_LOADER=pyfunc (mlflow.pyfunc.load_model) beside the default,
compact (the numpy export), both serving one small forest registered in an MLflow on sqlite
with its artifacts on the test moto server: no tracking server process, so the module stays
within a minute and a half (the services resolve the alias through the same sqlite file).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_mlflow import NAME, SERVICE_DIR, SMALL_FOREST, _post, register_without_export

from ride_duration import registry
from ride_duration.local.background import serve_in_background
from ride_duration.models import UnsafeModelRefused

BUCKET = "test-pyfunc-models"
MODEL_SETTINGS = ("MODEL_URI", "RUN_ID", "MODEL_ID", "MODEL_LOADER", "ALLOW_UNSAFE_PICKLE")
pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def registered(aws_endpoint, trips, tmp_path_factory):
    """The small forest trained and registered as NAME@production, the environment pointing at it."""
    import boto3
    import mlflow

    settings = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db",
        "MLFLOW_S3_ENDPOINT_URL": aws_endpoint,
        "MODEL_BUCKET": BUCKET,
        "MODEL_NAME": NAME,
        "MODEL_ALIAS": "production",
        "EXPERIMENT_NAME": "test-pyfunc",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        for name in (*MODEL_SETTINGS, "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        # A sqlite store would keep artifacts in ./mlruns: this experiment keeps them on S3, as the stand-ins do.
        mlflow.MlflowClient().create_experiment("test-pyfunc", artifact_location=f"s3://{BUCKET}/pyfunc")
        yield registry.train_and_register(forest_params=SMALL_FOREST, data=trips)


@pytest.fixture(scope="module")
def predict(registered):
    """web-service-mlflow/predict.py imported (its compact model loaded), for its load_pyfunc."""
    spec = importlib.util.spec_from_file_location("web_service_mlflow_predict", SERVICE_DIR / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_predict(**env: str) -> subprocess.CompletedProcess:
    """`python predict.py` in the folder: loads the model as the service would, then exits."""
    clean = {k: v for k, v in os.environ.items() if k not in MODEL_SETTINGS}
    return subprocess.run(
        [sys.executable, "predict.py"],
        cwd=SERVICE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_pyfunc_service_answers_as_the_compact_service(registered, trips):
    rides = trips[1][["PULocationID", "DOLocationID", "trip_distance"]].head(500).to_dict("records")
    answers = {}
    for loader in ("pyfunc", "compact"):
        started = time.perf_counter()
        env = {"MODEL_URI": f"models:/{NAME}@production", "MODEL_LOADER": loader}
        with serve_in_background(SERVICE_DIR, env=env, args=("--preload",), timeout=60) as service:
            print(f"\nMODEL_LOADER={loader}: /health after {time.perf_counter() - started:.1f} s")
            assert service.wait_healthy()["model_version"] == registered.run_id
            answers[loader] = _post(service.predict_url, rides)
    for loader, answer in answers.items():
        assert [a["model_version"] for a in answer] == [registered.run_id] * len(rides), loader
    pyfunc, compact = ([a["duration"] for a in answers[loader]] for loader in ("pyfunc", "compact"))
    np.testing.assert_allclose(pyfunc, compact, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pyfunc, registered.pipeline.predict(rides), rtol=0, atol=1e-6)


class Tripwire:
    """Unpickling it creates `path`: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))

    def predict(self, rides):  # so that MLflow logs a python_function flavour for it
        raise NotImplementedError


def test_a_pickled_model_is_never_unpickled_unless_opted_in(registered, predict, tmp_path, monkeypatch):
    tripwire = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Tripwire(tmp_path / "works")))
    assert (tmp_path / "works").exists(), "the tripwire fires when unpickled"
    spec, run_id = register_without_export(
        registered, "pyfunc-pickled", Tripwire(tripwire), serialization_format="pickle"
    )
    monkeypatch.delenv("ALLOW_UNSAFE_PICKLE", raising=False)
    with pytest.raises(UnsafeModelRefused, match=f"{spec} is an MLflow model stored as pickle.*ALLOW_UNSAFE_PICKLE=1"):
        predict.load_pyfunc(spec)
    assert not tripwire.exists()
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")
    assert predict.load_pyfunc(spec).version == run_id
    assert tripwire.exists(), "opted in, mlflow.pyfunc unpickles it"


def test_a_skops_model_trusting_more_types_is_refused_even_opted_in(registered, predict, monkeypatch):
    """skops trusts the types the model's own MLmodel file lists: here os.system."""
    from sklearn.dummy import DummyRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    trusted = [f"{os.system.__module__}.system"]
    model = make_pipeline(FunctionTransformer(os.system), DummyRegressor())
    spec, _ = register_without_export(registered, "pyfunc-widened", model, skops_trusted_types=trusted)
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")
    with pytest.raises(UnsafeModelRefused, match=f"{spec} asks skops to trust \\['{trusted[0]}'\\]"):
        predict.load_pyfunc(spec)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MODEL_LOADER": "sklearn"}, "MODEL_LOADER must be compact or pyfunc, got 'sklearn'"),
        ({"MODEL_LOADER": "pyfunc", "RUN_ID": "a" * 32}, f"MODEL_LOADER=pyfunc loads an MLflow URI, not '{'a' * 32}'"),
    ],
)
def test_a_wrong_setting_stops_the_start_with_one_line(env, message):
    result = start_predict(**env)
    assert result.returncode == 3
    assert result.stderr.startswith("web-service-mlflow cannot start:") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
