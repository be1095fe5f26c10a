"""Without the TLC data, the tests that need none still pass and those that need it fail, by name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_pytest_without_data(tmp_path: Path, *tests: str) -> subprocess.CompletedProcess:
    """pytest on `tests` in a fresh process whose mirror and cache are empty folders."""
    (tmp_path / "mirror").mkdir()
    (tmp_path / "cache").mkdir()
    env = {
        **os.environ,
        "TLC_MIRROR": str(tmp_path / "mirror"),
        "RIDE_DURATION_DATA": str(tmp_path / "cache"),
        "TLC_BASE_URL": "http://127.0.0.1:9",  # nothing listens there: no test may download instead
    }
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:nbval"]
    # No --nbval (the notebooks need data) and no root conftest.py (it would look at the stand-ins).
    command += ["-o", "addopts=", "--confcutdir", str(REPO / "tests"), *tests]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_tests_that_need_no_data_pass_without_it(tmp_path):
    done = run_pytest_without_data(tmp_path, "tests/test_config.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "error" not in done.stdout


def test_a_test_that_needs_data_fails_saying_where_to_put_it(tmp_path):
    done = run_pytest_without_data(
        tmp_path, "tests/test_config.py", "tests/test_data.py::test_cleaning_report_counts_every_dropped_row"
    )
    assert done.returncode == 1, done.stdout + done.stderr  # failed: neither skipped (0) nor cut short (2)
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, 1 error in ", summary), summary
    assert f"neither TLC_MIRROR={tmp_path / 'mirror'} nor the cache {tmp_path / 'cache'}" in done.stdout
