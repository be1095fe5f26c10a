"""Benchmark what a serving process pays before its first answer: imports plus the model load.

    python benchmarks/startup.py [--repeats 5] [--model models/lin_reg] [--results benchmarks/results.json]

Each variant runs in a fresh `python` (--repeats times; medians printed), loading the same
fitted pipeline, and predicts one ride:

- compact: numpy + ride_duration.compact, the .npz serving export (what the services and the
  Lambda load);
- pickle: scikit-learn + the pickled pipeline (.pkl), as the course's services do;
- mlflow: `mlflow.pyfunc.load_model` on an MLflow model folder of the same pipeline (written
  once, in a temporary folder, with skops);
- when the stand-ins run with a registered model (`make register`), web-service-mlflow's
  start, `import predict`: on the registry's alias, resolved by MLflow's client, and on the
  alias's run id (RUN_ID), read from S3 with no tracking server.

Reported: seconds inside the process (imports + load + one prediction), the whole process
from outside (interpreter start included), and the peak resident memory (ru_maxrss). Ratios
are against `compact`, measured in the same run. Bytecode is compiled (as `make` installs it).
With --results, the table is written to that file's "startup" section (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import json
import os
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
SERVICE_START = "import sys\nsys.path.insert(0, 'web-service-mlflow')\nimport predict\nmodel = predict.model"
# What each variant is, as the README's table names it.
LABELS = {
    "compact": "numpy export (`.npz`, what the services and the Lambda load)",
    "pickle": "pickled pipeline (scikit-learn imported)",
    "mlflow": "`mlflow.pyfunc.load_model` (MLflow and scikit-learn imported)",
    "service-registry": "`web-service-mlflow` on `models:/ride-duration@production` (MLflow's client, then S3)",
    "service-run-id": "`web-service-mlflow` on `RUN_ID` (S3 alone, no tracking server)",
}


def child_code(variant: str, path: str, mlflow_dir: str) -> str:
    loader = (
        SERVICE_START if variant.startswith("service") else LOADERS[variant].format(path=path, mlflow_dir=mlflow_dir)
    )
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


def standin_env() -> dict[str, str] | None:
    """The stand-ins' environment with RUN_ID of the registered model, or None when they do not
    run or hold no registered model."""
    sys.path.insert(0, str(REPO))
    from ride_duration.local import standins

    if not all(service["running"] for service in (standins.status()[name] for name in ("moto", "mlflow"))):
        return None
    env = {**os.environ, **standins.environment()}
    find_run = (
        "from mlflow import MlflowClient\nfrom ride_duration import registry\n"
        "print(MlflowClient().get_model_version_by_alias(registry.model_name(), registry.model_alias()).run_id)"
    )
    done = subprocess.run([sys.executable, "-c", find_run], capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        return None
    return {**env, "RUN_ID": done.stdout.strip().splitlines()[-1]}


def measure(code: str, env: dict[str, str] | None = None) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"a start-up failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=str(REPO / "models" / "lin_reg"), help="path without .npz/.pkl")
    parser.add_argument("--results", type=Path, default=None, help="write the table to this results file")
    args = parser.parse_args(argv)
    if not Path(args.model + ".npz").is_file():
        subprocess.run([sys.executable, "-m", "ride_duration.train"], check=True, cwd=REPO)
    variants: dict[str, dict[str, str] | None] = dict.fromkeys(LOADERS)
    service_env = standin_env()
    if service_env is None:
        print("web-service-mlflow not measured: the stand-ins are not running with a registered model (make register)")
    else:
        no_run_id = {key: value for key, value in service_env.items() if key != "RUN_ID"}
        variants.update({"service-registry": no_run_id, "service-run-id": service_env})
    with tempfile.TemporaryDirectory() as folder:
        mlflow_dir = write_mlflow_model(args.model, Path(folder) / "mlflow-model")
        results = {}
        for variant, env in variants.items():
            code = child_code(variant, args.model, mlflow_dir)
            measure(code, env)  # a first run that nobody counts: files in the page cache
            runs = [measure(code, env) for _ in range(args.repeats)]
            results[variant] = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "wall", "peak_mb")}
            results[variant]["minutes"] = runs[0]["minutes"]
    base = results["compact"]
    print(f"model {Path(args.model).name}, {args.repeats} fresh processes each, medians")
    print(f"{'variant':16} {'in-process s':>12} {'whole s':>8} {'peak MB':>8} {'x compact (s)':>14} {'minutes':>8}")
    for variant, r in results.items():
        ratio = r["wall"] / base["wall"]
        print(
            f"{variant:16} {r['seconds']:12.2f} {r['wall']:8.2f} {r['peak_mb']:8.0f} {ratio:14.1f} {r['minutes']:8.2f}"
        )
    if args.results:
        import results as results_file  # benchmarks/, the script's own folder, is on sys.path

        record = {"markdown": table(results, Path(args.model).name, args.repeats), "runs": results}
        title = "Start-up: what a serving process pays before its first answer"
        results_file.update(
            args.results, "startup", {"title": title, "command": "python benchmarks/startup.py"} | record
        )


def table(results: dict[str, dict], model: str, repeats: int) -> str:
    """The README's table: each variant's whole process, against the numpy export's."""
    lines = [
        f"`models/{model}`, {repeats} fresh processes each, medians; the whole process from outside, "
        "interpreter start included.",
        "",
        "| the model loaded as | seconds | peak MB | x the numpy export |",
        "| --- | ---: | ---: | ---: |",
    ]
    for variant, r in results.items():
        ratio = r["wall"] / results["compact"]["wall"]
        lines.append(f"| {LABELS[variant]} | {r['wall']:.2f} | {r['peak_mb']:.0f} | {ratio:.0f} |")
    if "service-registry" in results:
        lines += [
            "",
            "The `web-service-mlflow` rows start the service on the registered model (`make register`: the "
            "random forest, a larger export than the linear one), with `import predict` in the project's "
            "environment against the stand-ins; its image has mlflow-skinny instead of the full MLflow.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
