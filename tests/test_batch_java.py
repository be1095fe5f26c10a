"""Without a Java Spark can use, --engine spark says what is missing and how to get it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ride_duration import batch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_java(tmp_path, monkeypatch):
    """An environment with no JAVA_HOME and nothing on PATH: no java to be found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    return tmp_path


def test_no_java_is_a_one_line_error_that_says_how_to_get_it(no_java):
    with pytest.raises(batch.BatchError) as error:
        batch.java_for_spark()
    message = str(error.value)
    assert "\n" not in message and "no java found" in message
    assert "Java 17" in message and "JAVA_HOME" in message and "apt-get install" in message


def test_a_java_too_old_for_spark_is_named(no_java, monkeypatch):
    home = no_java / "old-java"
    (home / "bin").mkdir(parents=True)
    fake = home / "bin" / "java"
    fake.write_text("#!/bin/sh\necho '    java.specification.version = 11' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(batch.BatchError, match=r"is Java 11\)$"):
        batch.java_for_spark()


def test_the_cli_stops_with_that_line_and_exit_status_1(no_java, model_files):
    command = [sys.executable, str(REPO / "batch" / "score.py"), "--taxi-type", "green", "--year", "2021"]
    command += ["--month", "2", "--model", str(model_files[1]), "--engine", "spark", "--output", str(no_java / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("(no java found)")
    assert not (no_java / "out").exists()


def test_the_spark_tests_skip_with_that_line(no_java):
    command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-rs", "-q"]
    done = subprocess.run(
        [*command, "tests/test_batch_spark.py"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 5), done.stdout  # 5: the module's one test skipped, none ran
    assert "1 skipped" in done.stdout and "--engine spark needs Java 17 or newer" in done.stdout
