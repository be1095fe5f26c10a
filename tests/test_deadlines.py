"""Every network call has a deadline: against a loopback server that accepts connections and
never answers, each model-store, batch and Kinesis call fails within 30 s with one line that
names the endpoint, after a bounded number of attempts.

The calls run with short timeouts set through the environment, so each test takes seconds;
the bounds at the default settings are computed from the same formulas and checked below, and
web-service-mlflow's start is measured at its defaults (the last tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ride_duration import aws, batch, models, streaming
from ride_duration.local.background import free_port
from ride_duration.models import ModelStoreUnavailable, load_model

REPO = Path(__file__).resolve().parent.parent
SERVICE_DIR = REPO / "web-service-mlflow"
DEADLINE = 30  # seconds: issue 13's limit for a hung endpoint, at start-up and at run time
SLACK = 3  # seconds beyond a computed bound: thread start-up and two busy cores
pytestmark = pytest.mark.timeout(120)


class MuteServer:
    """A loopback port that accepts every connection, holds it open and never answers."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.hold, daemon=True)
        self.thread.start()

    def hold(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.accepted.append(self.listener.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for connection in self.accepted:
            connection.close()
        self.listener.close()


@pytest.fixture
def mute():
    server = MuteServer()
    yield server
    server.close()


@pytest.fixture
def short_deadlines(monkeypatch, mute):
    """S3, Kinesis and the tracking server all at the mute server, with 1 s timeouts."""
    for name, value in {
        "AWS_ENDPOINT_URL": mute.url,
        "MLFLOW_S3_ENDPOINT_URL": mute.url,
        "MLFLOW_TRACKING_URI": mute.url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONNECT_TIMEOUT": "1",
        "AWS_READ_TIMEOUT": "1",
        "AWS_MAX_ATTEMPTS": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "PUT_RECORDS_MAX_ATTEMPTS": "1",
        "MODEL_BUCKET": "models",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return mute


def fails_in_time(call, error, bound: float) -> tuple[str, float]:
    """The one-line message `call` fails with (as `error`) and the seconds it took, within `bound`."""
    started = time.perf_counter()
    with pytest.raises(error) as failure:
        call()
    seconds = time.perf_counter() - started
    message = str(failure.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert seconds < min(bound + SLACK, DEADLINE), f"{seconds:.1f} s: {message}"
    print(f"\n{seconds:.1f} s: {message}")
    return message, seconds


def test_an_s3_model_fails_at_load_after_the_set_attempts(short_deadlines):
    message, _ = fails_in_time(
        lambda: load_model("s3://models/lin_reg.npz"), ModelStoreUnavailable, aws.worst_case_seconds()
    )
    assert f'Read timeout on endpoint URL: "{short_deadlines.url}/models/lin_reg.npz"' in message
    assert len(short_deadlines.accepted) == 2  # AWS_MAX_ATTEMPTS, the first included


def test_a_run_id_fails_while_listing_the_bucket(short_deadlines):
    message, _ = fails_in_time(lambda: load_model("a" * 32), ModelStoreUnavailable, aws.worst_case_seconds())
    assert message.startswith("S3 does not answer (Read timeout on endpoint URL") and short_deadlines.url in message


def test_a_registry_uri_fails_when_the_tracking_server_is_mute(short_deadlines):
    message, _ = fails_in_time(
        lambda: load_model("models:/ride-duration@production"),
        ModelStoreUnavailable,
        models.tracking_server_worst_case_seconds(),
    )
    assert message.startswith(f"the MLflow tracking server at {short_deadlines.url} does not answer (Read timed out)")
    assert len(short_deadlines.accepted) == 2  # MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 retry


def test_mlflows_own_s3_download_has_the_same_deadline(short_deadlines):
    """A registered model without a compact export is downloaded by MLflow's S3 client, not ours."""
    message, _ = fails_in_time(
        lambda: models.MlflowModel.load("s3://models/1/models/m-1/artifacts", version="v"),
        ModelStoreUnavailable,
        aws.worst_case_seconds(),
    )
    assert "timeout on endpoint URL" in message and short_deadlines.url in message


def test_batch_checking_an_output_fails_in_seconds(short_deadlines):
    message, _ = fails_in_time(
        lambda: batch.exists("s3://out/month.parquet"), batch.USER_ERRORS, aws.worst_case_seconds()
    )
    assert "cannot check s3://out/month.parquet" in message and short_deadlines.url in message


def test_batch_uploading_an_output_fails_in_seconds(short_deadlines):
    import pyarrow as pa

    tables = [pa.Table.from_pylist([], schema=batch.output_schema())]
    message, _ = fails_in_time(
        lambda: batch.write_parquet_atomic(tables, "s3://out/month.parquet"),
        batch.USER_ERRORS,
        aws.worst_case_seconds(upload=True),
    )
    assert "cannot write s3://out/month.parquet" in message and short_deadlines.url in message


def test_kinesis_put_reports_every_entry_undelivered_in_seconds(short_deadlines):
    writer = streaming.KinesisWriter("ride_predictions")
    entries = [{"Data": b'{"ride_id": 1}', "PartitionKey": "1"}, {"Data": b'{"ride_id": 2}', "PartitionKey": "2"}]
    started = time.perf_counter()
    report = writer.put(entries)
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.1f} s: {report.failed[0].message if report.failed else report}")
    assert report.sent == 0 and [failed.index for failed in report.failed] == [0, 1]
    assert all(short_deadlines.url in failed.message and "\n" not in failed.message for failed in report.failed)
    assert seconds < min(aws.worst_case_seconds(max_attempts=2) + SLACK, DEADLINE)


def test_the_bounds_at_the_default_settings_are_under_half_a_minute(monkeypatch):
    for name in (*models.MLFLOW_DEFAULTS, "AWS_CONNECT_TIMEOUT", "AWS_READ_TIMEOUT", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    assert aws.worst_case_seconds() == pytest.approx(3 * (3 + 5) + 0.05 + 0.1)  # three attempts, two back-offs
    assert aws.worst_case_seconds(upload=True) == pytest.approx(3 * (3 + 1 + 5) + 0.15)  # waits for 100-continue
    assert models.tracking_server_worst_case_seconds() == 3 * 2 * 4 + 2 + 1
    bounds = (aws.worst_case_seconds(upload=True), aws.worst_case_seconds(max_attempts=2))  # (Kinesis: 2)
    assert max(*bounds, models.tracking_server_worst_case_seconds()) < DEADLINE


def test_mlflows_s3_client_is_made_with_the_default_deadlines(monkeypatch):
    """What MLflow's S3 artifact store gets once the package has prepared MLflow."""
    for name in ("AWS_CONNECT_TIMEOUT", "AWS_READ_TIMEOUT", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    models.import_mlflow()
    from mlflow.store.artifact.s3_artifact_repo import _get_s3_client

    # A fresh endpoint: MLflow caches one client per endpoint.
    config = _get_s3_client(s3_endpoint_url=f"http://127.0.0.1:{free_port()}").meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert config.signature_version == "s3v4"  # MLflow's own settings are kept


# ---- web-service-mlflow's start, at the default settings ----------------------------------
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


def test_a_tracking_server_that_is_down_stops_the_start_in_seconds():
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result, seconds = start_the_service(uri)
    assert_one_line_start_failure(result, uri, "Connection refused")
    print(f"\nrefused: gave up in {seconds:.1f} s")
    assert seconds < DEADLINE  # ~3 s of retries; importing mlflow takes 3-7 s of it on two busy cores


def test_a_tracking_server_that_never_answers_stops_the_start_within_half_a_minute(mute):
    result, seconds = start_the_service(mute.url)
    assert_one_line_start_failure(result, mute.url, "Read timed out")
    print(f"\nno answer: gave up in {seconds:.1f} s after {len(mute.accepted)} connections")
    assert len(mute.accepted) == 3  # the first attempt and MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 retries
    assert seconds < DEADLINE
