"""Benchmark batch scoring: rows/s and peak memory of batch/score.py against the course's way.

    python benchmarks/batch.py [--rows 3000000] [--models lin_reg random_forest]
                               [--real green:2021-02] [--json results.json]

Two months are scored: a real one (from the TLC mirror or cache) and a synthetic one of
--rows rows (ride_duration.synthetic, written once to data/synthetic/ and labelled there).
For each month and model, two variants run, each in a fresh process of its own:

- score.py: `batch/score.py --input <month> --model models/<model>.npz` (chunks of
  BATCH_CHUNK_ROWS rows, the compact numpy model, a streaming parquet writer);
- course: what the original course's batch script does with the same pipeline: read the
  whole month with pandas, one uuid4 per ride, `df.to_dict(orient="records")`, one
  scikit-learn `pipeline.predict` over all rows (models/<model>.pkl), then `to_parquet`.

Reported per run: seconds inside the process (imports, model load, read, score, write),
rows/s over the month's raw rows, and the peak resident memory (ru_maxrss) of that process.
The parent process stays small (standard library only) so that no child inherits its
memory. Imports are timed as on a user's machine, from compiled bytecode: the children write
and reuse .pyc files under a cache folder (PYTHONPYCACHEPREFIX), warmed up before the first
measurement, even where PYTHONDONTWRITEBYTECODE is set. The models are the files
`python -m ride_duration.train [--model forest]` writes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("score.py", "course")
PYCACHE = Path(tempfile.gettempdir()) / "ride-duration-bench-pycache"
WARM_UP = (
    "import numpy, pandas, pyarrow.parquet, sklearn.pipeline, sklearn.ensemble, sklearn.linear_model, "
    "tqdm, boto3, ride_duration.batch, ride_duration.train, ride_duration.synthetic"
)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(PYCACHE)}


# ---- what runs in each child process ------------------------------------------------------
def run_score_py(month: str, model: Path, output: Path, taxi_type: str, year: int, month_number: int) -> None:
    import runpy

    sys.argv = [
        "score.py",
        "--taxi-type",
        taxi_type,
        "--year",
        str(year),
        "--month",
        str(month_number),
        "--input",
        month,
        "--model",
        str(model.with_suffix(".npz")),
        "--output",
        str(output),
    ]
    try:
        runpy.run_path(str(REPO / "batch" / "score.py"), run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise RuntimeError(f"score.py exited with {done.code}") from None


def run_course(month: str, model: Path, output: Path, taxi_type: str, year: int, month_number: int) -> None:
    """The original course's batch logic (04-deployment/batch/score.py), with this project's pipeline."""
    import pickle
    import uuid

    import pandas as pd

    df = pd.read_parquet(month)
    pickup, dropoff = (
        ("lpep_pickup_datetime", "lpep_dropoff_datetime")
        if "lpep_pickup_datetime" in df
        else ("tpep_pickup_datetime", "tpep_dropoff_datetime")
    )
    df["duration"] = (df[dropoff] - df[pickup]).dt.total_seconds() / 60
    df = df[(df.duration >= 1) & (df.duration <= 60)]
    df["ride_id"] = [str(uuid.uuid4()) for _ in range(len(df))]
    with open(model.with_suffix(".pkl"), "rb") as f:
        pipeline = pickle.load(f)
    # The course's pipeline took PU_DO dicts; this one takes the raw ride dicts and builds them.
    rides = df[["PULocationID", "DOLocationID", "trip_distance"]].to_dict(orient="records")
    y_pred = pipeline.predict(rides)
    result = pd.DataFrame()
    result["ride_id"] = df["ride_id"]
    result[pickup] = df[pickup]
    result["PULocationID"] = df["PULocationID"]
    result["DOLocationID"] = df["DOLocationID"]
    result["actual_duration"] = df["duration"]
    result["predicted_duration"] = y_pred
    result["diff"] = result["actual_duration"] - result["predicted_duration"]
    result["model_version"] = model.stem
    output.mkdir(parents=True, exist_ok=True)
    result.to_parquet(output / f"{model.stem}.parquet", index=False)


def child(spec: dict) -> None:
    """Run one variant and print {"seconds", "peak_mb"} as JSON on stdout's last line."""
    import resource

    started = time.perf_counter()
    runner = run_score_py if spec["variant"] == "score.py" else run_course
    runner(
        spec["month"], Path(spec["model"]), Path(spec["output"]), spec["taxi_type"], spec["year"], spec["month_number"]
    )
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


# ---- the parent -------------------------------------------------------------------------
def measure(variant: str, month: Path, model: Path, taxi_type: str, year: int, month_number: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as output:
        spec = {
            "variant": variant,
            "month": str(month),
            "model": str(model),
            "output": output,
            "taxi_type": taxi_type,
            "year": year,
            "month_number": month_number,
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=3600,
            env=child_env(),
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{variant} on {month.name} failed:\n{done.stderr[-2000:]}")
        scored_rows = sum(_parquet_rows(p) for p in Path(output).rglob("*.parquet"))
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": wall, "scored_rows": scored_rows}


def _parquet_rows(path: Path) -> int:
    # A child process again, so that the parent never imports pyarrow.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pyarrow.parquet as pq; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def in_child(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1800, cwd=REPO, env=child_env()
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]


def real_month(spec: str) -> tuple[Path, str, int, int, int]:
    taxi_type, _, ym = spec.partition(":")
    year, month = (int(x) for x in ym.split("-"))
    out = in_child(
        "import sys, pyarrow.parquet as pq; from ride_duration.data import trip_file; "
        "p = trip_file(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])); "
        "print(p, pq.ParquetFile(p).metadata.num_rows)",
        taxi_type,
        str(year),
        str(month),
    )
    path, rows = out.rsplit(" ", 1)
    return Path(path), taxi_type, year, month, int(rows)


def synthetic_month(rows: int, taxi_type: str = "yellow", year: int = 2021, month: int = 3):
    """A labelled synthetic month of `rows` rows, generated once (in a child process)."""
    out = in_child(
        "import sys; from ride_duration import synthetic as s; "
        "rows, t, y, m = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]); "
        "p = s.default_path(t, y, m, rows); "
        "p.exists() and s.is_synthetic(p) or s.write(s.generate(rows, t, y, m), p); print(p)",
        str(rows),
        taxi_type,
        str(year),
        str(month),
    )
    return Path(out), taxi_type, year, month, rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows of the synthetic month")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["lin_reg", "random_forest"],
        help="model names under models/ (.pkl for the course, .npz for score.py)",
    )
    parser.add_argument("--real", default="green:2021-02", help="the real month, taxi_type:YYYY-MM")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    models_dir = Path(os.environ.get("RIDE_DURATION_MODELS", REPO / "models"))
    models = [models_dir / name for name in args.models]
    missing = [m for m in models if not (m.with_suffix(".pkl").is_file() and m.with_suffix(".npz").is_file())]
    if missing:
        raise SystemExit(
            f"missing model files for {', '.join(m.name for m in missing)}: "
            "run `python -m ride_duration.train [--model forest]` first"
        )
    in_child(f"{WARM_UP}; print('warm')")
    months = [("real", *real_month(args.real)), ("synthetic", *synthetic_month(args.rows))]
    results = []
    print(f"{'month':<34} {'model':<14} {'variant':<9} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}")
    for label, path, taxi_type, year, month, rows in months:
        for model in models:
            for variant in VARIANTS:
                r = measure(variant, path, model, taxi_type, year, month)
                r.update(
                    month=f"{label} {path.name}",
                    model=model.name,
                    variant=variant,
                    rows=rows,
                    rows_per_second=rows / r["seconds"],
                )
                results.append(r)
                print(
                    f"{r['month'][:34]:<34} {model.name:<14} {variant:<9} {rows:>10,} {r['seconds']:>8.1f} "
                    f"{r['rows_per_second']:>10,.0f} {r['peak_mb']:>8,.0f}",
                    flush=True,
                )
    print()
    for label, path, *_ in months:
        for model in models:
            ours, course = (
                next(
                    r
                    for r in results
                    if r["month"] == f"{label} {path.name}" and r["model"] == model.name and r["variant"] == v
                )
                for v in VARIANTS
            )
            print(
                f"{label} month, {model.name}: score.py is {ours['rows_per_second'] / course['rows_per_second']:.1f}x "
                f"the rows/s at {ours['peak_mb'] / course['peak_mb']:.2f} of the peak memory "
                f"({ours['scored_rows']:,} vs {course['scored_rows']:,} rows written)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
