"""Benchmark batch scoring: rows/s and peak memory of batch/score.py against the course's way
and against the I/O floor.

    python benchmarks/batch.py [--rows 3000000] [--models lin_reg random_forest]
                               [--real green:2021-02] [--spark] [--results benchmarks/results.json]

Two months are scored: a real one (from the TLC mirror or cache) and a synthetic one of
--rows rows (ride_duration.synthetic, written once to a temporary folder and reused).
For each month and model, these variants run, each in a fresh process of its own:

- score.py: `batch/score.py --input <month> --model models/<model>.npz` (chunks of
  BATCH_CHUNK_ROWS rows, batch's model: the linear export, or the forest walked as
  BATCH_FOREST_WALK picks; a streaming parquet writer);
- course: what the original course's batch script does with the same pipeline: read the
  whole month with pandas, one uuid4 per ride, `df.to_dict(orient="records")`, one
  scikit-learn `pipeline.predict` over all rows (models/<model>.pkl), then `to_parquet`;
- floor (once per month): read the columns score.py reads and write a file of the output's
  shape, in the same chunks, with no cleaning and no model: what the I/O alone costs;
- spark (with --spark, the synthetic month): `batch/score.py --engine spark` on local[2].

Reported per run: seconds inside the process (imports, model load, read, score, write),
rows/s over the month's raw rows, and the peak resident memory (ru_maxrss) of that process
(for spark the Python driver's: the JVM is another process). The issue's targets are
checked on the same run. The parent process stays small (standard library only) so that no
child inherits its memory. Imports are timed as on a user's machine, from compiled
bytecode: the children write and reuse .pyc files under a cache folder
(PYTHONPYCACHEPREFIX), warmed up before the first measurement, even where
PYTHONDONTWRITEBYTECODE is set. The models are the files `python -m ride_duration.train
[--model forest]` writes. With --results, the run (its machine, date, rows and targets) is
written to that file's "batch" section, from which benchmarks/results.py renders the
README's Performance section.
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
VARIANTS = ("score.py", "course")  # per month and model; "floor" once per month, "spark" on request
SYNTHETIC_DIR = Path(tempfile.gettempdir()) / "ride-duration-bench"
PYCACHE = Path(tempfile.gettempdir()) / "ride-duration-bench-pycache"
WARM_UP = (
    "import numpy, pandas, pyarrow.parquet, sklearn.pipeline, sklearn.ensemble, sklearn.linear_model, "
    "tqdm, boto3, ride_duration.batch, ride_duration.train, ride_duration.synthetic"
)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(PYCACHE)}


# ---- what runs in each child process ------------------------------------------------------
def run_score_py(
    month: str, model: Path, output: Path, taxi_type: str, year: int, month_number: int, engine: str = "pandas"
) -> None:
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
        "--engine",
        engine,
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


def run_spark(month: str, model: Path, output: Path, taxi_type: str, year: int, month_number: int) -> None:
    run_score_py(month, model, output, taxi_type, year, month_number, engine="spark")


def run_floor(month: str, model: Path, output: Path, taxi_type: str, year: int, month_number: int) -> None:
    """Read what score.py reads and write a file of the output's shape, in the same chunks: no
    cleaning, no model (the predictions are zeros)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ride_duration import batch

    file = pq.ParquetFile(month)
    columns = batch.input_columns(file.schema_arrow)
    pickup, dropoff = columns[:2]
    schema, offset = batch.output_schema(), 0
    output.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(output / "floor.parquet"), schema) as writer:
        for chunk in file.iter_batches(batch_size=batch.chunk_rows(), columns=columns):
            rows = len(chunk)
            minutes = (
                chunk[dropoff].to_numpy(zero_copy_only=False) - chunk[pickup].to_numpy(zero_copy_only=False)
            ) / np.timedelta64(1, "m")
            row_index = pc.cast(pa.array(np.arange(offset, offset + rows)), pa.string())
            offset += rows
            table = pa.table(
                {
                    "ride_id": pc.binary_join_element_wise(
                        f"{taxi_type}/{year:04d}/{month_number:02d}_", row_index, ""
                    ),
                    "pickup_datetime": chunk[pickup],
                    "PULocationID": chunk["PULocationID"],
                    "DOLocationID": chunk["DOLocationID"],
                    "actual_duration": minutes,
                    "predicted_duration": np.zeros(rows),
                    "diff": minutes,
                    "model_version": pa.repeat("floor", rows),
                }
            )
            writer.write_table(table.cast(schema))


RUNNERS = {"score.py": "run_score_py", "course": "run_course", "floor": "run_floor", "spark": "run_spark"}


def child(spec: dict) -> None:
    """Run one variant and print {"seconds", "peak_mb"} as JSON on stdout's last line."""
    import resource

    started = time.perf_counter()
    runner = globals()[RUNNERS[spec["variant"]]]
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
        "import sys; from pathlib import Path; from ride_duration import synthetic as s; "
        "rows, t, y, m = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]); "
        "p = Path(sys.argv[5]) / s.default_path(t, y, m, rows).name; "
        "p.exists() and s.is_synthetic(p) or s.write(s.generate(rows, t, y, m), p); print(p)",
        str(rows),
        taxi_type,
        str(year),
        str(month),
        str(SYNTHETIC_DIR),
    )
    return Path(out), taxi_type, year, month, rows


DESCRIPTION = (
    '`batch/score.py` against the course\'s way (a uuid4 per ride, `to_dict(orient="records")` and one '
    "scikit-learn `predict` over the month, with the same pipeline) and against the I/O floor (the columns "
    "score.py reads, read in the same chunks, and a file of the output's shape written, with no cleaning and "
    "no model). Each run in a fresh process; seconds include imports, model load, read, score and write; "
    "rows/s over the month's raw rows; peak MB is the process's resident peak. score.py's memory stays "
    "bounded by `BATCH_CHUNK_ROWS` whatever the month's size. The forest is walked on both cores, with numpy "
    "for the real month and by scikit-learn's compiled trees, rebuilt from the `.npz`, for the 3M-row one "
    "(`BATCH_FOREST_WALK=auto`: [`batch/README.md`](batch/README.md#scale))."
)


# The "done when", checked on every run: (what, month, model, the figure, its bound).
def targets(results: list[dict]) -> list[dict]:
    def figure(month: str, model: str | None, variant: str) -> dict:
        return next(r for r in results if r["month"] == month and r["model"] == model and r["variant"] == variant)

    checks = []
    for r in results:
        if r["variant"] != "score.py":
            continue
        course = figure(r["month"], r["model"], "course")
        floor = figure(r["month"], None, "floor")
        speed = r["rows_per_second"] / course["rows_per_second"]
        checks.append(dict(month=r["month"], model=r["model"], what="rows/s, x the course's", value=speed))
        checks.append(
            dict(
                month=r["month"],
                model=r["model"],
                what="rows/s, x the I/O floor's",
                value=r["rows_per_second"] / floor["rows_per_second"],
            )
        )
        checks.append(
            dict(
                month=r["month"],
                model=r["model"],
                what="peak memory, x the course's",
                value=r["peak_mb"] / course["peak_mb"],
            )
        )
    bounds = {
        ("synthetic", "random_forest", "rows/s, x the course's"): (">=", 1.5),
        ("synthetic", "lin_reg", "rows/s, x the course's"): (">=", 8.0),
        ("synthetic", "lin_reg", "rows/s, x the I/O floor's"): (">=", 0.5),
        ("synthetic", "random_forest", "peak memory, x the course's"): ("<=", 0.25),
        ("synthetic", "lin_reg", "peak memory, x the course's"): ("<=", 0.25),
        ("real", "random_forest", "rows/s, x the course's"): (">=", 1.5),
        ("real", "lin_reg", "rows/s, x the course's"): (">=", 1.5),
    }
    for check in checks:
        bound = bounds.get((check["month"], check["model"], check["what"]))
        if bound:
            op, limit = bound
            check.update(
                target=f"{op} {limit:g}", met=check["value"] >= limit if op == ">=" else check["value"] <= limit
            )
    return checks


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
    parser.add_argument("--spark", action="store_true", help="also --engine spark on the synthetic month")
    parser.add_argument("--results", type=Path, default=None, help="write the run to this results file's batch section")
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
    runs = []
    for label, path, taxi_type, year, month, rows in months:
        runs.append((label, path, taxi_type, year, month, rows, None, "floor"))
        for model in models:
            variants = (*VARIANTS, "spark") if args.spark and label == "synthetic" else VARIANTS
            runs.extend((label, path, taxi_type, year, month, rows, model, v) for v in variants)
    results = []
    print(f"{'month':<10} {'rows':>10} {'model':<14} {'variant':<9} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}")
    for label, path, taxi_type, year, month, rows, model, variant in runs:
        # The floor writes no prediction: any model file's name serves as its argument.
        r = measure(variant, path, model or models[0], taxi_type, year, month)
        r.update(
            month=label,
            file=path.name,
            model=model.name if model else None,
            variant=variant,
            rows=rows,
            rows_per_second=rows / r["seconds"],
        )
        results.append(r)
        print(
            f"{label:<10} {rows:>10,} {r['model'] or '-':<14} {variant:<9} {r['seconds']:>8.1f} "
            f"{r['rows_per_second']:>10,.0f} {r['peak_mb']:>8,.0f}",
            flush=True,
        )
    checks = targets(results)
    print()
    for check in checks:
        verdict = "" if "target" not in check else f"  target {check['target']}: {'met' if check['met'] else 'NOT MET'}"
        print(f"{check['month']:<10} {check['model']:<14} {check['what']:<28} {check['value']:6.2f}{verdict}")
    if args.results:
        import results as results_file  # benchmarks/, the script's own folder, is on sys.path

        results_file.update(
            args.results,
            "batch",
            {"title": "Batch", "command": "python benchmarks/batch.py --spark", "description": DESCRIPTION}
            | {"runs": results, "targets": checks},
        )


if __name__ == "__main__":
    main()
