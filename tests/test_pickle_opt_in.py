"""No code runs from a model file by default: a pickle is refused, from a path or from S3, by
load_model and by every entry point that takes a model, unless ALLOW_UNSAFE_PICKLE=1.

The payload's __reduce__ opens (creates) a marker file when unpickled: the marker appearing
is the proof that code ran. The control test shows that it does appear once opted in.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ride_duration.models import UnsafeModelRefused, load_model

REPO = Path(__file__).resolve().parent.parent
RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
BUCKET = "pickle-test-models"


class Payload:
    """Unpickled, it calls open(marker, "w"): a file that appears only if pickle ran our code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A .pkl file whose loading would create tmp_path/marker; the opt-in unset."""
    monkeypatch.delenv("ALLOW_UNSAFE_PICKLE", raising=False)
    marker = tmp_path / "marker"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path, marker


@pytest.fixture
def bucket(aws_endpoint):
    from ride_duration import aws

    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    return s3


def assert_refused(spec: str, marker: Path) -> None:
    with pytest.raises(UnsafeModelRefused) as refused:
        load_model(spec)
    message = str(refused.value)
    assert message.startswith(f"{spec} is a pickle, and loading it would run any code it holds: refused")
    assert "set ALLOW_UNSAFE_PICKLE=1" in message and "\n" not in message
    assert not marker.exists(), "the payload ran"


def test_a_pickle_file_is_refused_without_running(payload):
    path, marker = payload
    assert_refused(str(path), marker)


def test_a_pickle_on_s3_is_refused_without_running(payload, bucket):
    path, marker = payload
    bucket.put_object(Bucket=BUCKET, Key="evil/model.pkl", Body=path.read_bytes())
    assert_refused(f"s3://{BUCKET}/evil/model.pkl", marker)


@pytest.mark.parametrize("value", ["0", ""])
def test_only_one_opts_in(payload, monkeypatch, value):
    path, marker = payload
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", value)
    assert_refused(str(path), marker)


def test_an_unclear_opt_in_is_a_setting_error(payload, monkeypatch):
    from ride_duration.config import SettingError

    path, marker = payload
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "yes")
    with pytest.raises(SettingError, match="ALLOW_UNSAFE_PICKLE must be 1 or 0, got 'yes'"):
        load_model(str(path))
    assert not marker.exists()


def test_opted_in_the_payload_does_run(payload, monkeypatch):
    """The control: what the refusals above prevent."""
    path, marker = payload
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")
    with pytest.raises(Exception, match="is not a readable model"):  # it is no pipeline
        load_model(str(path))
    assert marker.exists()


def test_opted_in_a_real_pipeline_loads_from_a_file_and_from_s3(model_files, bucket, monkeypatch):
    pkl, npz = model_files
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")
    bucket.put_object(Bucket=BUCKET, Key="trusted/lin_reg.pkl", Body=pkl.read_bytes())
    export = load_model(npz)
    for spec in (str(pkl), f"s3://{BUCKET}/trusted/lin_reg.pkl"):
        model = load_model(spec)
        assert model.version == export.version, spec
        np.testing.assert_array_equal(model.predict([RIDE]), export.predict([RIDE]))


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("ALLOW_UNSAFE_PICKLE", "RUN_ID", "MODEL_LOCATION")}
    return subprocess.run(command, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_no_entry_point_runs_a_pickled_payload(payload):
    """MODEL_PATH (web-service), --model (batch/score.py), MODEL_LOCATION (the Lambda)."""
    path, marker = payload
    lambda_import = "import sys; sys.path.insert(0, 'streaming'); import lambda_function"
    started = {
        "web-service": run([sys.executable, "predict.py"], REPO / "web-service", MODEL_PATH=str(path)),
        "batch": run(
            [sys.executable, "batch/score.py", "--taxi-type", "green", "--year", "2021", "--month", "2"]
            + ["--model", str(path), "--output", str(path.parent / "output")],
            REPO,
        ),
        "lambda": run([sys.executable, "-c", lambda_import], REPO, MODEL_LOCATION=str(path), TEST_RUN="True"),
    }
    for name, result in started.items():
        assert result.returncode != 0, name
        assert "is a pickle, and loading it would run any code it holds" in result.stderr, (name, result.stderr)
    assert not marker.exists(), "the payload ran"
