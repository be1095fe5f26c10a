"""Each runnable folder copied out of the repository, as a user would do it: in a temporary
directory outside the checkout, a fresh virtual environment with the package installed from a
wheel (not editable) and the folder's own requirements.txt, then the folder's README commands.

What this proves: no folder depends on the checkout, and the defaults (models/, data/,
output/: ride_duration.config) resolve beside where the folder runs, not in site-packages.

The installs follow the Dockerfiles and the requirements files' own header: the folder's
requirements.txt, then the package with --no-deps. The wheel's declared dependencies
(scikit-learn, boto3) would otherwise hide a package that a requirements.txt forgot.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ride_duration import config
from ride_duration.compact import CompactModel
from ride_duration.healthcheck import probe
from ride_duration.local import processes

REPO = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).with_name("uv")
# What web-service/test.py sends when given no ride: its answer is checked against the pipeline.
RIDE = runpy.run_path(str(REPO / "web-service" / "test.py"))["RIDE"]
EVENT_RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}  # streaming/event.json, ride 256
GUNICORN = ["gunicorn", "--config", "python:ride_duration.gunicorn_conf"]
# Settings of the test process that would point a copied folder back at the checkout or at
# another test's resources: the folder must find everything by itself.
LEAKY_SETTINGS = (
    "RIDE_DURATION_",
    "MODEL_",
    "BATCH_",
    "MLFLOW_",
    "AWS_",
    "RUN_ID",
    "PYTHON",
    "VIRTUAL_ENV",
    "PORT",
    "HOST",
    "WEB_",
    "TEST_RUN",
    "PREDICT_URL",
    "TLC_",
)
# Written by pytest, hypothesis, ruff, the stand-ins or editors, never by a copied folder.
NOT_OURS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".ipynb_checkpoints",
    ".standins",
    "spark-warehouse",
    "mlruns",
}


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run to completion; a failure shows the command's own output."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def uv(*args: str, timeout: float = 300) -> None:
    """uv from its warm cache alone; online only when the cache lacks something (a fresh machine)."""
    if not UV.exists():
        pytest.fail(f"no uv at {UV}: `make test` installs it into the virtualenv", pytrace=False)
    offline = subprocess.run([str(UV), *args, "--offline"], capture_output=True, text=True, timeout=timeout)
    if offline.returncode != 0:
        run([str(UV), *args], timeout=timeout)


def repository_files() -> dict[str, int]:
    """Every file of the checkout (caches and environments aside) -> its modification time."""
    found = {}
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in NOT_OURS]
        for name in files:
            path = Path(folder, name)
            with contextlib.suppress(FileNotFoundError):  # an editor's swap file, gone already
                found[str(path.relative_to(REPO))] = path.stat().st_mtime_ns
    return found


@pytest.fixture(scope="module", autouse=True)
def repository_untouched():
    """Nothing these tests run writes into the checkout (build/, *.egg-info, output/, models/...).

    Other people may edit the checkout meanwhile: files git tracks and Python sources are
    theirs, so only the other files count."""
    before = repository_files()
    yield
    tracked = set(run(["git", "ls-files", "-z"], timeout=60, cwd=REPO).stdout.split("\0"))
    written = sorted(
        path
        for path, mtime in repository_files().items()
        if before.get(path) != mtime and path not in tracked and not path.endswith(".py")
    )
    assert not written, f"the copy-out tests wrote into the repository: {written}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The package as a user installs it: a wheel, built from a copy of the sources (a build
    leaves build/ and *.egg-info/ beside its sources, which must not land in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "ride_duration", source / "ride_duration", ignore=ignored)
    uv("build", "--quiet", "--wheel", "--out-dir", str(root / "dist"), str(source))
    (built,) = (root / "dist").glob("ride_duration-*.whl")
    return built


@dataclass
class CopiedFolder:
    folder: Path  # the copy, where its commands run
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **settings: str) -> dict[str, str]:
        """A clean environment with the venv first on PATH, as after `source .venv/bin/activate`."""
        env = {name: value for name, value in os.environ.items() if not name.startswith(LEAKY_SETTINGS)}
        env.update(PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.venv))
        env.update(PYTHONNOUSERSITE="1", **settings)
        return env

    def put_model(self, npz: Path) -> Path:
        """The model where the defaults look for it: models/lin_reg.npz beside where the folder runs."""
        target = self.folder / "models" / "lin_reg.npz"
        target.parent.mkdir()
        shutil.copy(npz, target)
        return target


def copy_out(name: str, tmp_path: Path, wheel: Path) -> CopiedFolder:
    """Copy the folder (and only it), make a fresh venv, install its requirements and the wheel."""
    assert not tmp_path.is_relative_to(REPO), "the copy must be outside the checkout"
    copied = CopiedFolder(tmp_path / name, tmp_path / "venv")
    shutil.copytree(REPO / name, copied.folder, ignore=shutil.ignore_patterns("__pycache__"))
    requirements = copied.folder / "requirements.txt"
    assert requirements.is_file(), f"{name}/ has no requirements.txt to install"
    uv("venv", "--quiet", "--python", sys.executable, str(copied.venv), timeout=120)
    uv("pip", "install", "--quiet", "--python", str(copied.python), "-r", str(requirements))
    uv("pip", "install", "--quiet", "--python", str(copied.python), "--no-deps", str(wheel))

    # The package is the venv's, not the checkout's, and its home is the working directory.
    where = "import json, ride_duration.config as c; print(json.dumps([c.__file__, c.IN_CHECKOUT, str(c.HOME)]))"
    done = run([str(copied.python), "-c", where], timeout=60, cwd=copied.folder, env=copied.env())
    module, in_checkout, home = json.loads(done.stdout)
    assert Path(module).is_relative_to(copied.venv) and not in_checkout
    assert Path(home) == copied.folder.resolve()
    return copied


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@contextlib.contextmanager
def gunicorn(copied: CopiedFolder, log: Path, *args: str, **settings: str) -> Iterator[str]:
    """The README's gunicorn command in the copied folder, on a free port; its base URL once
    /health answers. It runs in its own process group, stopped whole at the end."""
    port = free_port()
    env = copied.env(PORT=str(port), **settings)
    assert shutil.which("gunicorn", path=env["PATH"]) == str(copied.venv / "bin" / "gunicorn")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*GUNICORN, *args, "predict:app"],
            cwd=copied.folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while probe(f"{url}/health") is None:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not become healthy (exit {process.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        stop_group(process)


def post_ride(url: str, ride: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(ride).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def stop_group(process: subprocess.Popen) -> None:
    gracefully = processes.stop_group(process.pid, 20, reap=process.poll)
    process.wait(timeout=10)
    assert gracefully, "gunicorn or its workers did not stop within 20 s of SIGTERM"


# ---- the defaults ------------------------------------------------------------------------
def test_a_checkout_is_a_folder_with_a_pyproject(tmp_path):
    assert config.is_checkout(REPO) and config.IN_CHECKOUT
    assert not config.is_checkout(tmp_path)  # no pyproject.toml at all
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'ride-duration'\n")
    assert config.is_checkout(tmp_path)


def test_home_is_the_setting_else_the_checkout_else_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("RIDE_DURATION_HOME", str(tmp_path / "elsewhere"))
    assert config.default_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("RIDE_DURATION_HOME")
    assert config.default_home() == config.REPO_ROOT == REPO
    monkeypatch.setattr(config, "IN_CHECKOUT", False)
    monkeypatch.chdir(tmp_path)
    assert config.default_home() == tmp_path


def test_an_installed_package_keeps_its_defaults_out_of_site_packages(tmp_path):
    """The package in a folder that is not a checkout (as site-packages is), imported from elsewhere."""
    site_packages, work = tmp_path / "site-packages", tmp_path / "work"
    ignored = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "ride_duration", site_packages / "ride_duration", ignore=ignored)
    work.mkdir()
    show = "from ride_duration import config as c; print(c.HOME, c.models_dir(), c.data_dir(), sep='\\n')"
    env = {name: value for name, value in os.environ.items() if not name.startswith(LEAKY_SETTINGS)}
    done = run([sys.executable, "-c", show], timeout=60, cwd=work, env={**env, "PYTHONPATH": str(site_packages)})
    assert done.stdout.splitlines() == [str(work), str(work / "models"), str(work / "data")]


# ---- the folders, copied out ---------------------------------------------------------------
@pytest.mark.timeout(300)
def test_web_service_copied_out_serves_the_model_from_its_default_place(tmp_path, wheel, model_files, linear_pipeline):
    copied = copy_out("web-service", tmp_path, wheel)
    npz = copied.put_model(model_files[1])  # no MODEL_PATH: the default must find it
    version = CompactModel.load(npz).version
    with gunicorn(copied, tmp_path / "gunicorn.log") as url:
        assert probe(f"{url}/health") == {"status": "ok", "model_version": version}
        answer = run(["python", "test.py", f"{url}/predict", "--json"], timeout=30, cwd=copied.folder, env=copied.env())
    assert json.loads(answer.stdout) == {
        "duration": pytest.approx(linear_pipeline.predict([RIDE])[0], rel=1e-12),
        "model_version": version,
    }


@pytest.mark.timeout(300)
def test_streaming_copied_out_predicts_the_test_event(tmp_path, wheel, model_files, linear_pipeline):
    copied = copy_out("streaming", tmp_path, wheel)
    handle_event = (
        "import json, os\n"
        "os.environ['TEST_RUN'] = 'True'\n"
        f"os.environ['MODEL_LOCATION'] = {str(model_files[1])!r}\n"
        "import lambda_function\n"
        "event = json.load(open('event.json'))\n"
        "print(json.dumps(lambda_function.lambda_handler(event, None)))\n"
    )
    done = run(["python", "-c", handle_event], timeout=60, cwd=copied.folder, env=copied.env())
    result = json.loads(done.stdout)
    (prediction,) = result["predictions"]
    assert prediction["prediction"] == {
        "ride_duration": pytest.approx(linear_pipeline.predict([EVENT_RIDE])[0], rel=1e-12),
        "ride_id": 256,
    }
    assert prediction["version"] == CompactModel.load(model_files[1]).version
    assert result["batchItemFailures"] == [] and result["rejected"] == []

    # The folder's own test.py, with the model where its defaults look (README: python test.py).
    copied.put_model(model_files[1])
    own = run(["python", "test.py"], timeout=60, cwd=copied.folder, env=copied.env())
    assert json.loads(own.stdout) == result


@pytest.mark.timeout(300)
def test_batch_copied_out_writes_its_output_beside_where_it_runs(tmp_path, wheel, model_files, tlc_mirror):
    requirements = (REPO / "batch" / "requirements.txt").read_text()
    assert "pandas==" in requirements and "pyarrow==" in requirements
    copied = copy_out("batch", tmp_path, wheel)
    copied.put_model(model_files[1])
    command = ["python", "score.py", "--taxi-type", "green", "--year", "2021", "--month", "2"]
    done = run(
        [*command, "--model", "models/lin_reg.npz"],
        timeout=180,
        cwd=copied.folder,
        env=copied.env(TLC_MIRROR=str(tlc_mirror)),
    )
    version = CompactModel.load(model_files[1]).version
    written = sorted(p.relative_to(copied.folder) for p in copied.folder.rglob("*.parquet"))
    assert written == [Path("output/taxi_type=green/year=2021/month=02") / f"{version}.parquet"], done.stdout
    assert not list(copied.venv.rglob("taxi_type=*"))  # nothing in site-packages
    assert not (copied.folder / "data").exists()  # the months came from the mirror, not a download

    import pyarrow.parquet as pq

    table = pq.read_table(copied.folder / written[0])
    assert table.num_rows > 60_000 and set(table.column("model_version").to_pylist()) == {version}


@pytest.mark.timeout(300)
def test_web_service_mlflow_copied_out_serves_a_run_from_s3_alone(tmp_path, wheel, linear_pipeline, aws_endpoint):
    """The README's S3-only start (RUN_ID, no tracking server), on the moto stand-in."""
    import boto3

    bucket, experiment_id, run_id = f"copy-out-{uuid.uuid4().hex[:12]}", "1", uuid.uuid4().hex
    s3 = boto3.client("s3", endpoint_url=aws_endpoint)
    s3.create_bucket(Bucket=bucket)
    # Where a training run logs its compact export (ride_duration.registry), versioned by its run id.
    compact = CompactModel.from_pipeline(linear_pipeline, version=run_id)
    s3.put_object(Bucket=bucket, Key=f"{experiment_id}/{run_id}/artifacts/compact/model.npz", Body=compact.to_bytes())

    copied = copy_out("web-service-mlflow", tmp_path, wheel)
    aws = {
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    log = tmp_path / "gunicorn.log"
    with gunicorn(copied, log, "--preload", RUN_ID=run_id, MODEL_BUCKET=bucket, **aws) as url:
        assert probe(f"{url}/health") == {"status": "ok", "model_version": run_id}
        printed = run(["python", "test.py", f"{url}/predict"], timeout=30, cwd=copied.folder, env=copied.env())
        exact = post_ride(f"{url}/predict", RIDE)
    expected = linear_pipeline.predict([RIDE])[0]
    assert printed.stdout.strip() == f"{expected:.1f} minutes (model_version {run_id})"
    assert exact == {"duration": pytest.approx(expected, rel=1e-12), "model_version": run_id}
