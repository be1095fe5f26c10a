"""The front page: its pictures exist and can be redrawn, and every command it shows is run by a test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")
COMMAND = re.compile(r"^(make [\w-]+|python (?:-m [\w.]+|[\w/.-]+)|papermill [\w/.-]+)", re.M)


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|cron)\n(.*?)```", text, re.S)


def commands_table() -> dict[str, str]:
    """First column -> third column of the commands table (in CONTRIBUTING.md)."""
    section = CONTRIBUTING.split("## Commands, and the tests that run them", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return {row[0].strip("| "): row[2] for row in rows}


def notebook_images() -> list[tuple[Path, str]]:
    found = []
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                found += [(path, ref) for ref in IMAGE.findall("".join(cell["source"]))]
    return found


def test_every_picture_of_the_readme_and_the_notebooks_is_in_imgs():
    references = [(REPO / "README.md", ref) for ref in IMAGE.findall(README)] + notebook_images()
    assert len(references) >= 10
    for source, ref in references:
        target = (source.parent / ref).resolve()
        assert target.parent == REPO / "imgs" and target.is_file(), f"{source.name}: {ref}"


def test_each_lesson_notebook_opens_with_its_picture():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        first = json.loads(path.read_text())["cells"][0]
        assert first["cell_type"] == "markdown" and IMAGE.search("".join(first["source"])), path.name


def test_the_diagrams_script_redraws_the_committed_pictures(tmp_path):
    subprocess.run([sys.executable, str(REPO / "imgs" / "make_diagrams.py"), str(tmp_path)], check=True, timeout=120)
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == ["deploy.png", "marketing_example.png", "scoring_job.png", "streaming.png", "web_service.png"]
    for name in drawn:
        assert (tmp_path / name).read_bytes() == (REPO / "imgs" / name).read_bytes(), (
            f"{name} is stale: run make diagrams"
        )


def test_every_make_target_the_pages_name_exists():
    pages = README + CONTRIBUTING
    targets = sorted(set(re.findall(r"`make ([\w-]+)`", pages)) | set(re.findall(r"^make ([\w-]+)", pages, re.M)))
    assert {"demo", "test", "lab"} <= set(targets)
    for target in targets:
        # -n prints what the target would run without running it: it fails for an unknown target.
        result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


def test_the_first_lines_are_the_two_commands():
    first_block = fenced_blocks(README)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make demo", "make test"]


def test_every_command_of_the_readme_points_to_a_test_that_exists():
    table = commands_table()
    shown = {match for block in fenced_blocks(README + CONTRIBUTING) for match in COMMAND.findall(block)}
    shown |= set(re.findall(r"`(make [\w-]+)`", README + CONTRIBUTING))
    listed = " ".join(table)
    for command in shown:
        assert command in listed, f"{command!r} is shown but not in the commands table"
    for where in table.values():
        for file, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", where):
            assert re.search(rf"^def {name}\(", (REPO / file).read_text(), re.M), f"{file}::{name} does not exist"


def test_ci_runs_the_readme_test_command(tmp_path):
    """.ci/run, run with a `make` that only records its arguments, asks for the README's target."""
    readme_command = fenced_blocks(README)[0].splitlines()[1].split("#")[0].split()
    fake_make = tmp_path / "make"
    fake_make.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "called"}\n')
    fake_make.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run([str(REPO / ".ci" / "run")], env=env, check=True, timeout=60)
    assert ["make", *(tmp_path / "called").read_text().split()] == readme_command
