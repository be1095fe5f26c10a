"""Time the README's two commands on a fresh clone: what a new user waits for.

    python benchmarks/setup.py [--results benchmarks/results.json]

Clones this repository's HEAD into a temporary folder and runs there, as a new user would:
`make test` (the virtual environment installed from the lock, lint, every test and notebook),
then `make demo`, and measures the `.venv/` on disk. uv's download cache is whatever this
machine has (warm after one install), so the install time is that of a machine that has seen
the packages before. TLC data comes from TLC_MIRROR when set, else from the TLC's server.
About 10 minutes on 2 cores. With --results, the table goes to that file's "setup" section.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 3600  # seconds for each command: a hung one must not hang the benchmark


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds the command took, and its output; a failure stops the benchmark with its tail."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds, done.stdout


def minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def disk_usage(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*") if not path.is_symlink() and path.is_file())


def table(test_seconds: float, pytest_seconds: float, items: int, demo_seconds: float, venv_bytes: int) -> str:
    return "\n".join(
        [
            "| | |",
            "| --- | --- |",
            f"| `make test` on a fresh clone: install, lint, every test and notebook ({items:,} items) "
            f"| {minutes(test_seconds)}, of which the tests {minutes(pytest_seconds)} |",
            f"| `make demo` after that (7 stages) | {minutes(demo_seconds)} |",
            f"| `.venv/` on disk | {venv_bytes / 1e9:.1f} GB |",
        ]
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="write the table to this results file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ride-duration-clone-") as folder:
        clone = Path(folder) / "clone"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
        test_seconds, out = run(["make", "test"], clone)
        collected, summary = re.search(r"collected (\d+) items", out), re.search(r"=+ \d+ passed.* in ([\d.]+)s", out)
        if collected is None or summary is None:
            raise SystemExit(f"no pytest summary in make test's output:\n{out[-2000:]}")
        items, pytest_seconds = int(collected[1]), float(summary[1])
        demo_seconds, _ = run(["make", "demo"], clone)
        venv_bytes = disk_usage(clone / ".venv")
    markdown = table(test_seconds, pytest_seconds, items, demo_seconds, venv_bytes)
    print(markdown)
    if args.results:
        import results as results_file  # benchmarks/, the script's own folder, is on sys.path

        title = "Set-up and the two commands, timed from a fresh clone with uv's download cache warm"
        record = {"title": title, "command": "python benchmarks/setup.py", "markdown": markdown}
        results_file.update(args.results, "setup", record)


if __name__ == "__main__":
    main()
