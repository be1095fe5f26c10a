"""No image holds the lesson tooling (ride_duration/local), and the product never imports it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from docker_support import REPO, context_files, copy_sources, dockerfiles, ignore_patterns, is_ignored

LOCAL = "ride_duration/local"
# What the web services and the Lambda import; each must load without the local tooling.
SERVING_MODULES = ["aws", "compact", "config", "features", "http_worker", "models", "rides", "streaming", "service"]


def test_every_image_recipe_is_found():
    assert {p.relative_to(REPO).as_posix() for p in dockerfiles()} >= {
        "web-service/Dockerfile",
        "web-service-mlflow/Dockerfile",
        "streaming/Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_image_copies_the_local_tooling(dockerfile):
    for source in copy_sources(dockerfile):
        # Named outright it is a mistake even though .dockerignore would fail the build.
        assert not (source.strip("/") + "/").startswith(LOCAL + "/"), f"{dockerfile.parent.name} copies {source}"
        reached = [f for f in context_files(source) if f.startswith(LOCAL + "/")]
        assert not reached, f"COPY {source} puts {reached} into the image: .dockerignore must exclude {LOCAL}"


def test_the_build_context_leaves_out_the_local_tooling_and_only_it():
    patterns = ignore_patterns()
    assert is_ignored(f"{LOCAL}/standins.py", patterns) and is_ignored(LOCAL, patterns)
    assert not any(is_ignored(f"ride_duration/{name}.py", patterns) for name in SERVING_MODULES)
    # Without .dockerignore the check above would see the folder: it is not vacuous.
    assert f"{LOCAL}/standins.py" in context_files("ride_duration", patterns=[])


def test_no_product_module_imports_the_local_tooling():
    """Not at the top, not inside a function: the product runs where ride_duration/local is absent."""
    for path in sorted((REPO / "ride_duration").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.startswith("ride_duration.local") for n in names), f"{path.name}:{node.lineno}"


def test_the_serving_modules_load_without_the_local_tooling():
    imports = "; ".join(f"import ride_duration.{name}" for name in SERVING_MODULES)
    script = f"import json, sys; {imports}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not [m for m in json.loads(out.stdout) if m.startswith("ride_duration.local")]
