"""The whole walkthrough, end to end: `make demo` (python -m ride_duration.local.demo).

Train the baseline, serve it, start the stand-ins, train and register the random forest,
serve it from the registry, stream rides through the Lambda handler, score a month in
batch. Each stage prints one line with the figure that matters; a summary table closes the
run. Everything it starts it stops, so it can run again at once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from ride_duration import config
from ride_duration.local.webservice import SAMPLE_RIDES, post

REPO = config.REPO_ROOT
summary: list[tuple[str, str, float]] = []


@contextmanager
def stage(name: str):
    """Time a stage; the stage records its figure with `done`."""
    started = time.perf_counter()
    record = {"figure": ""}
    yield record
    seconds = time.perf_counter() - started
    summary.append((name, record["figure"], seconds))
    print(f"[{name}] {record['figure']} ({seconds:.1f} s)", flush=True)


def rides_line(answers) -> str:
    return ", ".join(
        f"{r['PULocationID']}->{r['DOLocationID']} {r['trip_distance']:g} mi: {a['duration']:.1f} min"
        for r, a in zip(SAMPLE_RIDES, answers)
    )


def main() -> None:
    from ride_duration import batch, registry, train
    from ride_duration.local import background, standins, streaming_demo

    started = time.perf_counter()
    with stage("1 train baseline") as s:
        result = train.train("linear")
        _, npz = train.save(result.pipeline, config.models_dir(), "lin_reg")
        s["figure"] = f"linear regression, validation RMSE {result.rmse:.4f} -> {npz.relative_to(config.HOME)}"

    with stage("2 web service") as s:
        with background.serve_in_background(REPO / "web-service", env={"MODEL_PATH": str(npz)}) as service:
            _, answers = post(service.predict_url, SAMPLE_RIDES)
        s["figure"] = f"gunicorn answered {rides_line(answers)}"

    try:
        with stage("3 stand-ins") as s:
            env = standins.ensure()
            s["figure"] = f"moto (S3, Kinesis) at {env['AWS_ENDPOINT_URL']}, MLflow at {env['MLFLOW_TRACKING_URI']}"

        with stage("4 register forest") as s:
            model = registry.ensure_registered_model()
            fitted = f"fit in {model.fit_seconds:.0f} s" if model.fit_seconds else "reused"
            s["figure"] = (
                f"random forest, validation RMSE {model.rmse:.4f} ({fitted}), "
                f"{registry.model_name()}@{registry.model_alias()} = version {model.version}"
            )

        with stage("5 web service from MLflow") as s:
            uri = f"models:/{registry.model_name()}@{registry.model_alias()}"
            with background.serve_in_background(
                REPO / "web-service-mlflow", env={"MODEL_URI": uri}, args=("--preload",)
            ) as service:
                _, answers = post(service.predict_url, SAMPLE_RIDES)
            s["figure"] = f"{uri} (run {answers[0]['model_version'][:8]}...) answered {rides_line(answers)}"

        with stage("6 streaming") as s:
            s["figure"] = streaming_demo.demo(300)

        with stage("7 batch") as s:
            scored = batch.score_month("green", 2021, 2, model.run_id, progress=False)
            s["figure"] = (
                f"{scored.rows_scored:,} rides of green 2021-02 scored, mean predicted "
                f"{scored.mean_predicted_duration:.2f} min -> {_short(scored.location)}"
            )
    finally:
        standins.down()

    total = time.perf_counter() - started
    width = max(len(name) for name, _, _ in summary)
    print("\nSummary")
    for name, figure, seconds in summary:
        print(f"  {name:<{width}}  {seconds:6.1f} s  {figure}")
    print(f"  {'total':<{width}}  {total:6.1f} s")
    print(
        "\nTo look around: `make standins-up`, then the MLflow UI at "
        f"{standins.settings().mlflow_url} and `make lab` for the notebooks. "
        "The demo stopped every process it started."
    )


def _short(location: str) -> str:
    path = Path(location)
    return str(path.relative_to(config.HOME)) if path.is_absolute() and path.is_relative_to(config.HOME) else location


if __name__ == "__main__":
    main()
