"""The whole streaming loop on the local stand-ins: ride events in, predictions out.

    python streaming/run_local.py [--rides 1000] [--malformed 0.1] [--model models/lin_reg.npz]

Starts the stand-ins if they are not up (python -m ride_duration.local.standins), creates the
ride_events and ride_predictions streams, puts real TLC rides (and a share of malformed
events) on ride_events, drives lambda_function.lambda_handler from the stream as Lambda's
event-source mapping would, and reads the predictions back. Without --model it serves the
registered model (MODEL_NAME@MODEL_ALIAS, trained and registered first if needed).

The handler runs with MALFORMED_RECORDS=reject, set here whatever the environment says: the
malformed events are logged and counted as rejected but not returned in batchItemFailures,
so the mapping never re-delivers the rides behind them and "every ride once" can be True.
Under the handler's default (report, Lambda's contract) the rides behind each malformed
event would be predicted again on every retry (see streaming/README.md, Failures).
"""

import argparse
import logging
import os
import random
import sys
from collections import Counter
from pathlib import Path

from ride_duration.local import event_source, standins
from ride_duration.local.streaming_demo import registered_model_location, sample_rides

MALFORMED = [
    b"not json",
    b'{"ride_id": 1}',
    b'{"ride": {"PULocationID": 0, "DOLocationID": 1, "trip_distance": 1}, "ride_id": 2}',
    b'{"ride": {"PULocationID": 1, "DOLocationID": 1, "trip_distance": "far"}, "ride_id": 3}',
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rides", type=int, default=1000)
    parser.add_argument("--malformed", type=float, default=0.1, help="share of malformed events to add")
    parser.add_argument("--model", help="a local .npz or s3:// model instead of the registered one")
    parser.add_argument("--verbose", action="store_true", help="log each rejected record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")

    standins.ensure(with_mlflow=args.model is None)
    os.environ["MODEL_LOCATION"] = args.model or registered_model_location()
    os.environ["MALFORMED_RECORDS"] = "reject"  # exactly once per ride: see the docstring
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import lambda_function  # loads the model: the cold start

    rides, ride_ids = sample_rides(args.rides)
    entries = event_source.ride_entries(rides, ride_ids)
    bad = [
        {"Data": random.Random(n).choice(MALFORMED), "PartitionKey": f"bad-{n}"}
        for n in range(round(args.rides * args.malformed))
    ]
    for n, entry in enumerate(bad):  # scattered among the rides, the same way every run
        entries.insert(random.Random(-n).randrange(len(entries) + 1), entry)
    result = event_source.run_loop(lambda_function.lambda_handler, entries)

    counts = Counter(p["prediction"]["ride_id"] for p in result.predictions)
    once = set(counts) == set(ride_ids) and max(counts.values(), default=0) <= 1
    print(f"model {lambda_function.model.version} from {os.environ['MODEL_LOCATION']}")
    print(
        f"{result.sent} events in, {len(result.predictions)} predictions out in {result.invocations} batches "
        f"({result.seconds:.1f} s); every ride once: {once}; "
        f"rejected {len(result.rejected)} of {len(bad)} malformed (MALFORMED_RECORDS=reject: not retried)"
    )
    if result.discarded:  # only undelivered predictions or a failing handler lead here under reject
        print(f"gave up on {len(result.discarded)} batch(es) after the retries: {result.discarded}")
    for prediction in result.predictions[:3]:
        print(f"  ride {prediction['prediction']['ride_id']}: {prediction['prediction']['ride_duration']:.1f} min")


if __name__ == "__main__":
    main()
