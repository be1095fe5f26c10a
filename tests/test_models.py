"""ride_duration.models.load_model without stand-ins: which branch a spec takes, what a light
spec imports, and how fast a service gives up on a tracking server that is down or mute
(against real servers: test_mlflow.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ride_duration import models
from ride_duration.local.background import free_port
from ride_duration.models import ModelNotFound, load_model, spec_from_env

REPO = Path(__file__).resolve().parent.parent
SERVICE_DIR = REPO / "web-service-mlflow"


def test_each_spec_takes_its_branch(monkeypatch, tmp_path):
    unnamed = tmp_path / "model"  # any existing file is read as a model file
    unnamed.write_bytes(b"")
    asked = []
    for branch in ("_load_through_tracking_server", "_load_run_from_s3", "_load_model_id_from_s3", "load_compact"):
        monkeypatch.setattr(models, branch, lambda spec, branch=branch: asked.append((branch, str(spec))))
    specs = {
        "models:/ride-duration@production": "_load_through_tracking_server",
        "models:/ride-duration/3": "_load_through_tracking_server",
        "models:/m-" + "a" * 32: "_load_through_tracking_server",
        "runs:/" + "a" * 32 + "/model": "_load_through_tracking_server",
        "m-" + "b" * 32: "_load_model_id_from_s3",
        "c" * 32: "_load_run_from_s3",
        "s3://bucket/some/model.npz": "load_compact",
        "models/nothing.npz": "load_compact",  # a missing file is named by load_compact
        str(unnamed): "load_compact",
    }
    for spec in specs:
        load_model(f"  {spec}\n")
    assert asked == [(branch, spec) for spec, branch in specs.items()]


def test_a_local_model_imports_neither_boto3_nor_mlflow(model_files):
    code = (
        "import sys; from ride_duration.models import load_model; "
        f"model = load_model({str(model_files[1])!r}); "
        "print(model.version, sorted(m for m in ('boto3', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:] == ["[]"]


def test_the_spec_comes_from_one_variable(monkeypatch):
    names = ("MODEL_URI", "RUN_ID", "MODEL_ID")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert spec_from_env(names, default="models:/x@y") == "models:/x@y"
    with pytest.raises(ModelNotFound, match="no model configured: set MODEL_URI or RUN_ID or MODEL_ID"):
        spec_from_env(names)
    monkeypatch.setenv("RUN_ID", " " + "a" * 32 + " ")
    assert spec_from_env(names, default="models:/x@y") == "a" * 32
    monkeypatch.setenv("MODEL_URI", "models:/x@z")
    with pytest.raises(ModelNotFound, match=r"set only one of MODEL_URI, RUN_ID, MODEL_ID \(got MODEL_URI, RUN_ID\)"):
        spec_from_env(names)


def test_a_uri_needs_a_tracking_server_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    monkeypatch.setattr(mlflow, "is_tracking_uri_set", lambda: False)
    with pytest.raises(ModelNotFound, match="needs a tracking server: set MLFLOW_TRACKING_URI"):
        load_model("models:/ride-duration@production")


@pytest.fixture
def mute_server():
    """A loopback port that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, stop = [], threading.Event()

    def hold():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


def start_the_service(tracking_uri: str) -> tuple[subprocess.CompletedProcess, float]:
    """web-service-mlflow/predict.py, as a fresh process, with MLflow's HTTP settings left to the loader."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env = {k: v for k, v in env.items() if k not in ("MODEL_URI", "RUN_ID", "MODEL_ID")}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "predict.py"],
        cwd=SERVICE_DIR,
        env={**env, "MLFLOW_TRACKING_URI": tracking_uri, "MODEL_URI": "models:/ride-duration@production"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, time.perf_counter() - started


def assert_one_line_start_failure(result: subprocess.CompletedProcess, uri: str, cause: str) -> None:
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"web-service-mlflow cannot start: the MLflow tracking server at {uri} does not")
    assert f"answer ({cause})" in result.stderr


@pytest.mark.timeout(120)
def test_a_tracking_server_that_is_down_stops_the_start_in_seconds():
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result, seconds = start_the_service(uri)
    assert_one_line_start_failure(result, uri, "Connection refused")
    print(f"\nrefused: gave up in {seconds:.1f} s")
    assert seconds < 30  # ~3 s of retries; importing mlflow takes 3-7 s of it on two busy cores


@pytest.mark.timeout(120)
def test_a_tracking_server_that_never_answers_stops_the_start_within_half_a_minute(mute_server):
    uri, accepted = mute_server
    result, seconds = start_the_service(uri)
    assert_one_line_start_failure(result, uri, "Read timed out")
    print(f"\nno answer: gave up in {seconds:.1f} s after {len(accepted)} connections")
    assert len(accepted) == 3  # the first attempt and MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 retries
    assert seconds < 30
