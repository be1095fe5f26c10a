"""The README's Performance section is generated from benchmarks/results.json, and the batch
benchmark's targets and table follow its runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_the_readme_performance_section_is_what_the_renderer_makes_of_the_results_file():
    results = benchmark_module("results")
    readme = (REPO / "README.md").read_text()
    section = results.render(json.loads(results.RESULTS.read_text()))
    assert section.startswith("## Performance\n") and section in readme
    assert results.readme_with(readme, section) == readme
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "results.py"), "check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout


def test_the_check_fails_when_the_section_was_edited_by_hand():
    results = benchmark_module("results")
    readme = (REPO / "README.md").read_text()
    section = results.render(json.loads(results.RESULTS.read_text()))
    edited = readme.replace(section, section.replace("| linear |", "| linear (edited) |", 1))
    assert edited != readme and results.readme_with(edited, section) == readme


def run(variant: str, model: str | None, rows_per_second: float, peak_mb: float) -> dict:
    return dict(
        month="synthetic",
        file="month.parquet",
        model=model,
        variant=variant,
        rows=1_000,
        seconds=1_000 / rows_per_second,
        rows_per_second=rows_per_second,
        peak_mb=peak_mb,
    )


def test_batch_targets_and_table_are_computed_from_the_runs():
    bench, results = benchmark_module("batch"), benchmark_module("results")
    runs = [
        run("floor", None, 2_000.0, 100.0),
        run("score.py", "lin_reg", 900.0, 50.0),
        run("course", "lin_reg", 100.0, 400.0),
    ]
    checks = {check["what"]: check for check in bench.targets(runs)}
    assert checks["rows/s, x the course's"]["value"] == 9.0 and checks["rows/s, x the course's"]["met"]
    assert checks["rows/s, x the I/O floor's"]["value"] == 0.45 and not checks["rows/s, x the I/O floor's"]["met"]
    assert checks["peak memory, x the course's"]["value"] == 0.125 and checks["peak memory, x the course's"]["met"]
    table = results.render_batch({"description": "how", "runs": runs, "targets": list(checks.values())})
    assert "| synthetic, month.parquet (1,000 rows) | linear | 900 | 100 | 9.0 | 2,000 | 0.45 | 50 / 400 |" in table
    assert "rows/s, x the I/O floor's 0.45 (target >= 0.5: **not met**)" in table


def test_the_startup_table_divides_each_start_by_the_numpy_exports():
    startup = benchmark_module("startup")
    figures = {
        "compact": {"seconds": 0.1, "wall": 0.25, "peak_mb": 30.0},
        "pickle": {"seconds": 2.0, "wall": 2.5, "peak_mb": 180.0},
        "service-run-id": {"seconds": 0.5, "wall": 1.0, "peak_mb": 90.0},
    }
    table = startup.table(figures, "lin_reg", 5)
    assert f"| {startup.LABELS['compact']} | 0.25 | 30 | 1 |" in table
    assert f"| {startup.LABELS['pickle']} | 2.50 | 180 | 10 |" in table
    assert f"| {startup.LABELS['service-run-id']} | 1.00 | 90 | 4 |" in table
    assert "registered model" not in table  # the note belongs to the registry's row, absent here


def test_the_web_table_shows_each_services_median_round_and_the_checks():
    web = benchmark_module("web_service")
    rounds = {
        key: [web.Measure(key, requests, 1.0, 0, 1.0, p99, 500.0) for requests, p99 in figures]
        for key, figures in {"a": [(900, 9.0), (1_000, 8.0), (1_100, 7.0)], "b": [(1_000, 6.0)] * 3}.items()
    }
    checks, errors = web.report(rounds)
    args = web.argparse.Namespace(loadgen="wrk", connections=16, rounds=3, duration=3, app_dir=Path("web-service"))
    table = web.table(rounds, checks, errors, args, "workers=2", "")
    assert "| (a) `web-service/`, the numpy export | 1,000 | 1.0 | 8.0 | 500 us |" in table
    assert "- a/b: 1.00 (target >= 0.9: met; rounds 0.90, 1.00, 1.10" in table
    assert "- p99 of (a), ms: 8.00 (target <= 15: met" in table and "- errors in all rounds: 0" in table


def test_the_setup_table_gives_minutes_and_the_venv_in_gigabytes():
    setup = benchmark_module("setup")
    table = setup.table(test_seconds=468.4, pytest_seconds=59.6, items=663, demo_seconds=57.7, venv_bytes=2.04e9)
    assert "(663 items) | 7 min 48 s, of which the tests 1 min 0 s |" in table
    assert "| `make demo` after that (7 stages) | 58 s |" in table and "| 2.0 GB |" in table
