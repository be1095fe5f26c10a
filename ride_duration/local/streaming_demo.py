"""The streaming deployment end to end on the stand-ins: the one demo of it.

`stream()` is what `make stream` (streaming/run_local.py) and `make demo` run: real TLC rides
with a share of malformed events, through Kinesis, the local event-source mapping and
streaming/lambda_function.py itself, predictions read back. The notebook, the benchmark and
the tests take its parts (`sample_rides`, `import_lambda_function`).

Heavier than ride_duration.streaming on purpose: it starts the stand-ins, reads TLC rides
with pandas and fetches the registered model through MLflow. The Lambda never imports it.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ride_duration.config import REPO_ROOT

if TYPE_CHECKING:
    from ride_duration.local.event_source import LoopResult

LAMBDA_FILE = REPO_ROOT / "streaming" / "lambda_function.py"
# One of each way an event goes wrong: not JSON, no ride, a zone out of range, a wrong type.
MALFORMED_EVENTS = [
    b"not json",
    b'{"ride_id": 1}',
    b'{"ride": {"PULocationID": 0, "DOLocationID": 1, "trip_distance": 1}, "ride_id": 2}',
    b'{"ride": {"PULocationID": 1, "DOLocationID": 1, "trip_distance": "far"}, "ride_id": 3}',
]
_imports = itertools.count()


def sample_rides(
    count: int, taxi_type: str = "green", year: int = 2021, month: int = 2
) -> tuple[list[dict], list[str]]:
    """The month's first `count` clean rides and stable ids for them ("green-2021-02-<row>")."""
    from ride_duration.data import read_trips
    from ride_duration.features import RIDE_FIELDS

    frame = read_trips(taxi_type, year, month)[0].head(count)
    ids = [f"{taxi_type}-{year:04d}-{month:02d}-{row}" for row in frame.index]
    return frame[list(RIDE_FIELDS)].to_dict("records"), ids


def registered_model_location() -> str:
    """The S3 address of the registered model's compact export (trained first if needed)."""
    from ride_duration import registry

    return registry.ensure_registered_model().compact_uri


def import_lambda_function():
    """streaming/lambda_function.py imported afresh, a cold start: it reads the environment as it is now."""
    spec = importlib.util.spec_from_file_location(f"lambda_function_{next(_imports)}", LAMBDA_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_malformed(entries: list[dict], count: int, seed: int = 0) -> list[dict]:
    """The entries with `count` malformed events scattered among them, the same way every run."""
    generator, mixed = random.Random(seed), list(entries)
    for n in range(count):
        bad = {"Data": generator.choice(MALFORMED_EVENTS), "PartitionKey": f"bad-{n}"}
        mixed.insert(generator.randrange(len(mixed) + 1), bad)
    return mixed


@dataclass
class StreamRun:
    model_version: str
    model_location: str
    ride_ids: list[str]
    malformed: int  # malformed events put among the rides
    loop: LoopResult

    @property
    def counts(self) -> Counter:
        return Counter(p["prediction"]["ride_id"] for p in self.loop.predictions)

    @property
    def every_ride_delivered(self) -> bool:
        return set(self.counts) == set(self.ride_ids)

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.counts.values())

    def lines(self) -> list[str]:
        loop = self.loop
        by_id = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in loop.predictions}
        return [
            f"model {self.model_version} from {self.model_location}",
            f"{loop.summary()} ({loop.seconds:.1f} s)",
            f"every ride delivered: {self.every_ride_delivered}; duplicate predictions: {self.duplicates} "
            "(re-deliveries after an undelivered prediction); "
            f"{loop.dead_lettered} of {self.malformed} malformed events in the dead-letter queue "
            f"{loop.dead_letter_queue}",
            *(f"  ride {i}: {by_id[i]:.1f} min" for i in self.ride_ids[:3] if i in by_id),
        ]


def stream(n_rides: int = 1000, malformed: float = 0.1, model: str | None = None) -> StreamRun:
    """`n_rides` real rides, plus malformed events (`malformed` x n_rides), through the Lambda on the stand-ins.

    `model` is a local .npz or s3:// model; without it the registered model is served (the
    tracking server is started, and the model trained and registered first if needed).
    Raises event_source.LoopStopped (one line, with what was done) if the stand-in stops.
    """
    from ride_duration.local import event_source, standins

    standins.ensure(with_mlflow=model is None)
    os.environ["MODEL_LOCATION"] = model or registered_model_location()
    handler = import_lambda_function()  # loads the model: the cold start
    rides, ride_ids = sample_rides(n_rides)
    bad = round(n_rides * malformed)
    entries = with_malformed(event_source.ride_entries(rides, ride_ids), bad)
    loop = event_source.run_loop(handler.lambda_handler, entries)
    return StreamRun(handler.model.version, os.environ["MODEL_LOCATION"], ride_ids, bad, loop)


def demo(n_rides: int = 300) -> str:
    """`make demo`'s streaming stage: the registered model, 10% malformed events; one line."""
    handler_log = logging.getLogger("ride_duration.streaming")
    level = handler_log.level
    handler_log.setLevel(logging.ERROR)  # a warning per malformed record: the line counts them
    try:
        run = stream(n_rides)
    finally:
        handler_log.setLevel(level)
    examples = ", ".join(line.strip() for line in run.lines()[3:])
    return (
        f"{len(run.counts)}/{n_rides} rides predicted via Kinesis + the Lambda handler on the stand-ins in "
        f"{run.loop.invocations} batches, {run.loop.dead_lettered}/{run.malformed} malformed events dead-lettered "
        f"({examples})"
    )
