"""Benchmark what a serving process pays before its first answer: imports plus the model load.

    python benchmarks/startup.py [--repeats 5] [--model models/lin_reg]

Each variant runs in a fresh `python` (--repeats times; medians printed), loading the same
fitted pipeline, and predicts one ride:

- compact: numpy + ride_duration.compact, the .npz serving export (what the services and the
  Lambda load);
- pickle: scikit-learn + the pickled pipeline (.pkl), as the course's services do;
- mlflow: `mlflow.pyfunc.load_model` on an MLflow model folder of the same pipeline (written
  once, in a temporary folder, with skops).

Reported: seconds inside the process (imports + load + one prediction), the whole process
from outside (interpreter start included), and the peak resident memory (ru_maxrss). Ratios
are against `compact`, measured in the same run. Bytecode is compiled (as `make` installs it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}

LOADERS = {
    "compact": "from ride_duration.compact import CompactModel\nmodel = CompactModel.load({path!r} + '.npz')",
    "pickle": "import pickle\nwith open({path!r} + '.pkl', 'rb') as f:\n    model = pickle.load(f)",
    "mlflow": "import mlflow.pyfunc\nmodel = mlflow.pyfunc.load_model({mlflow_dir!r})",
}


def child_code(variant: str, path: str, mlflow_dir: str) -> str:
    loader = LOADERS[variant].format(path=path, mlflow_dir=mlflow_dir)
    ride = json.dumps(RIDE)
    predict = (
        f"model.predict(__import__('pandas').DataFrame([{ride}]))"
        if variant == "mlflow"
        else f"model.predict([{ride}])"
    )
    return (
        "import json, resource, time\n"
        "started = time.perf_counter()\n"
        f"{loader}\n"
        f"minutes = float({predict}[0])\n"
        "seconds = time.perf_counter() - started\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': seconds, 'peak_mb': peak, 'minutes': minutes}))\n"
    )


def write_mlflow_model(path: str, folder: Path) -> str:
    """The pickled pipeline saved as an MLflow model (skops, as the registry logs it)."""
    code = (
        "import pickle, sys, mlflow.sklearn\n"
        f"pipeline = pickle.load(open({path!r} + '.pkl', 'rb'))\n"
        f"mlflow.sklearn.save_model(pipeline, {str(folder)!r}, "
        "skops_trusted_types=['ride_duration.features.ride_features', 'sklearn.tree._tree.Tree'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return str(folder)


def measure(code: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"a start-up failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=str(REPO / "models" / "lin_reg"), help="path without .npz/.pkl")
    args = parser.parse_args(argv)
    if not Path(args.model + ".npz").is_file():
        subprocess.run([sys.executable, "-m", "ride_duration.train"], check=True, cwd=REPO)
    with tempfile.TemporaryDirectory() as folder:
        mlflow_dir = write_mlflow_model(args.model, Path(folder) / "mlflow-model")
        results = {}
        for variant in LOADERS:
            code = child_code(variant, args.model, mlflow_dir)
            measure(code)  # a first run that nobody counts: files in the page cache
            runs = [measure(code) for _ in range(args.repeats)]
            results[variant] = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "wall", "peak_mb")}
            results[variant]["minutes"] = runs[0]["minutes"]
    base = results["compact"]
    print(f"model {Path(args.model).name}, {args.repeats} fresh processes each, medians")
    print(f"{'variant':8} {'in-process s':>12} {'whole s':>8} {'peak MB':>8} {'x compact (s)':>14} {'minutes':>8}")
    for variant, r in results.items():
        ratio = r["wall"] / base["wall"]
        print(
            f"{variant:8} {r['seconds']:12.2f} {r['wall']:8.2f} {r['peak_mb']:8.0f} {ratio:14.1f} {r['minutes']:8.2f}"
        )


if __name__ == "__main__":
    main()
