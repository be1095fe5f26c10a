"""Benchmark the streaming Lambda: cold start, peak memory, and records/s against a naive handler.

    python benchmarks/streaming.py [--models models/lin_reg.npz models/random_forest.npz]
                                   [--cold-starts 5] [--records 3000] [--naive-records 500] [--repeats 3]
                                   [--results benchmarks/results.json]

Everything runs against a moto server that this script starts on a free loopback port, in
its own process (so it does not share the handler's interpreter) and stops at the end.

- Cold start: a fresh `python` imports streaming/lambda_function.py, which loads the model
  from the S3 stand-in; measured inside the process (imports + model load) and from outside
  (the whole process, interpreter start included), with the peak resident memory (VmHWM).
- Throughput: the handler on 100- and 500-record Kinesis events, writing every prediction
  to the predictions stream with PutRecords, against a naive handler that predicts and
  put_record()s one record at a time (what the course's Lambda does), in the same run.

The models are the files `python -m ride_duration.train [--model forest]` writes. With
--results, the table goes to that file's "streaming" section (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ride_duration import streaming  # noqa: E402
from ride_duration.config import models_dir  # noqa: E402
from ride_duration.local import streaming_demo  # noqa: E402
from ride_duration.local.processes import stop_group  # noqa: E402

BUCKET = "ride-duration-bench"
# Peak memory is the process's own high-water mark (VmHWM): ru_maxrss would also count the
# parent's pages that a forked child starts with, i.e. this benchmark's pandas.
COLD_START = """
import time
started = time.perf_counter()
import json, re, sys
sys.path.insert(0, "streaming")
import lambda_function
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024, "version": lambda_function.model.version}))
"""


# ---- the stand-in --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise SystemExit("the moto server did not start") from None
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return process, env


def stop(process: subprocess.Popen) -> None:
    stop_group(process.pid, 10, reap=process.poll)
    process.wait()


# ---- cold start -----------------------------------------------------------------------------
def cold_starts(location: str, env: dict[str, str], times: int) -> list[dict]:
    results = []
    for _ in range(times):
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-c", COLD_START],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**os.environ, **env, "MODEL_LOCATION": location, "TEST_RUN": "True"},
        ).stdout
        results.append({**json.loads(output), "process_seconds": time.perf_counter() - started})
    return results


# ---- throughput -----------------------------------------------------------------------------
def events(rides: list[dict], batch_size: int) -> list[dict]:
    records = [
        {
            "kinesis": {
                "data": base64.b64encode(streaming.encode_ride_event(r, i)).decode(),
                "sequenceNumber": str(i),
                "partitionKey": str(i),
            }
        }
        for i, r in enumerate(rides)
    ]
    return [{"Records": records[i : i + batch_size]} for i in range(0, len(records), batch_size)]


class NaiveHandler:
    """One prediction and one put_record per record, as the course's Lambda does."""

    def __init__(self, model, stream: str, client):
        self.model, self.stream, self.client = model, stream, client

    def __call__(self, event, context=None):
        predictions = []
        for record in event["Records"]:
            ride_id, ride = streaming.decode_record(record)
            prediction = streaming.prediction_event(ride_id, self.model.predict([ride])[0], self.model.version)
            self.client.put_record(
                StreamName=self.stream, Data=json.dumps(prediction).encode(), PartitionKey=str(ride_id)
            )
            predictions.append(prediction)
        return {"predictions": predictions}


def records_per_second(handler, batches: list[dict]) -> float:
    handler(batches[0], None)  # warm: connections, caches
    started = time.perf_counter()
    count = 0
    for event in batches:
        handler(event, None)
        count += len(event["Records"])
    return count / (time.perf_counter() - started)


def throughput(location: str, rides: list[dict], naive_rides: int, repeats: int) -> dict:
    """Median records/s of each handler over `repeats` interleaved rounds (the machine's load
    drifts; interleaving lets every handler see the same drift). Each measurement writes to a
    fresh stream: moto's PutRecords slows down as a shard fills up.

    The batched handlers are the Lambda's own steps (lambda_function.handle) with a writer
    of the benchmark's; the rides are all valid, so the dead-letter queue is never called."""
    os.environ.update(MODEL_LOCATION=location, TEST_RUN="True")
    lam = streaming_demo.import_lambda_function()
    client = streaming.kinesis_client()

    def fresh_stream(label: str) -> str:
        name = f"bench-{label}-{time.monotonic_ns()}"
        streaming.ensure_streams([name], client=client)
        return name

    def batched(writer):
        return lambda event, context: lam.handle(event, lam.model, writer, None)

    measurements = {
        "batched_100": lambda: (batched(streaming.KinesisWriter(fresh_stream("b100"), client=client)), 100, len(rides)),
        "batched_500": lambda: (batched(streaming.KinesisWriter(fresh_stream("b500"), client=client)), 500, len(rides)),
        "test_run_100": lambda: (batched(None), 100, len(rides)),
        "naive_100": lambda: (NaiveHandler(lam.model, fresh_stream("naive"), client), 100, naive_rides),
    }
    figures = {name: [] for name in measurements}
    for _ in range(repeats):
        for name, make in measurements.items():
            handler, size, count = make()
            figures[name].append(records_per_second(handler, events(rides[:count], size)))
    return {name: statistics.median(values) for name, values in figures.items()}


def default_model(kind: str) -> Path:
    """models/<name>.npz, trained first if it is not there (the forest takes a minute or two)."""
    from ride_duration.train import MODEL_NAMES

    path = models_dir() / f"{MODEL_NAMES[kind]}.npz"
    if not path.is_file():
        print(f"training the {kind} model for the benchmark ...", flush=True)
        subprocess.run([sys.executable, "-m", "ride_duration.train", "--model", kind], check=True, timeout=900)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        type=Path,
        help="model files [models/lin_reg.npz models/random_forest.npz, trained first if missing]",
    )
    parser.add_argument("--cold-starts", type=int, default=5)
    parser.add_argument("--records", type=int, default=3_000, help="records per batched measurement")
    parser.add_argument("--naive-records", type=int, default=500, help="records for the naive handler")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--results", type=Path, default=None, help="write the table to this results file")
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = [default_model(kind) for kind in ("linear", "forest")]
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: `python -m ride_duration.train [--model forest]` writes them")

    process, env = start_moto()
    try:
        os.environ.update(env)
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        locations = {}
        for path in args.models:
            locations[path] = f"s3://{BUCKET}/{path.name}"
            s3.put_object(Bucket=BUCKET, Key=path.name, Body=path.read_bytes())
        # Cold starts first, while this process is still small (it forks them).
        starts_by_model = {path: cold_starts(location, env, args.cold_starts) for path, location in locations.items()}
        rides = streaming_demo.sample_rides(args.records)[0]
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.records:,} records per "
            f"batched run, {args.naive_records:,} per naive run; medians of {args.repeats} interleaved rounds"
        )
        rows = []
        for path, location in locations.items():
            starts = starts_by_model[path]
            figures = throughput(location, rides, args.naive_records, args.repeats)
            rows.append((path.name, starts, figures))
            inside = [s["seconds"] for s in starts]
            print(f"{path.name} ({path.stat().st_size / 1e6:.1f} MB, version {starts[0]['version']})")
            print(
                f"  cold start (imports + model from S3): median {statistics.median(inside):.2f} s, "
                f"max {max(inside):.2f} s; whole process median "
                f"{statistics.median(s['process_seconds'] for s in starts):.2f} s; "
                f"peak RSS max {max(s['peak_mb'] for s in starts):.0f} MB ({len(starts)} runs)"
            )
            print(
                f"  records/s writing to the stand-in: batched 100 {figures['batched_100']:,.0f}, "
                f"batched 500 {figures['batched_500']:,.0f}, naive {figures['naive_100']:,.0f} "
                f"-> {figures['batched_100'] / figures['naive_100']:.0f}x and "
                f"{figures['batched_500'] / figures['naive_100']:.0f}x; "
                f"TEST_RUN (no writes) 100 {figures['test_run_100']:,.0f}"
            )
    finally:
        stop(process)
    if args.results:
        import results as results_file  # benchmarks/, the script's own folder, is on sys.path

        record = {"title": "Streaming", "command": "python benchmarks/streaming.py", "markdown": table(rows, args)}
        results_file.update(args.results, "streaming", record)


def table(rows: list[tuple[str, list[dict], dict]], args) -> str:
    """The README's table: per model its cold start and memory, and records/s batched against naive."""
    lines = [
        f"The handler against a moto server: {args.cold_starts} cold starts per model, {args.records:,} records "
        f"per batched run and {args.naive_records:,} per naive run, medians of {args.repeats} rounds.",
        "",
        "| model | cold start (imports + model from S3) | peak memory | records/s, batches of 100 "
        "| batches of 500 | one `put_record` per record | x (batches of 100) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, starts, figures in rows:
        inside = statistics.median(s["seconds"] for s in starts)
        whole = statistics.median(s["process_seconds"] for s in starts)
        lines.append(
            f"| `{name}` | {inside:.2f} s ({whole:.2f} s whole process) | {max(s['peak_mb'] for s in starts):.0f} MB "
            f"| {figures['batched_100']:,.0f} | {figures['batched_500']:,.0f} | {figures['naive_100']:,.0f} "
            f"| {figures['batched_100'] / figures['naive_100']:.0f} |"
        )
    lines += [
        "",
        "Lambda's defaults are 3 s and 128 MB; `streaming/setup_aws.py` gives the function 256 MB, for the CPU "
        "share that comes with it, and 60 s: a cold start plus the retries of PutRecords and of the dead-letter "
        "queue against a slow endpoint.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
