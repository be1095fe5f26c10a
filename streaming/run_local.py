"""The whole streaming loop on the local stand-ins: ride events in, predictions out.

    python streaming/run_local.py [--rides 1000] [--malformed 0.1] [--model models/lin_reg.npz]

Starts the stand-ins if they are not up (python -m ride_duration.local.standins), creates the
ride_events and ride_predictions streams and the dead-letter queue, puts real TLC rides (and
a share of malformed events) on ride_events, drives lambda_function.lambda_handler from the
stream as Lambda's event-source mapping would, and reads the predictions back. Without
--model it serves the registered model (MODEL_NAME@MODEL_ALIAS, trained and registered first
if needed). The demo itself is ride_duration.local.streaming_demo.stream.

If the stand-in stops answering on the way, it stops with one line saying so and what was
done until then, and exits 1.
"""

import argparse
import logging
import sys

from ride_duration.config import SettingError
from ride_duration.data import DataError
from ride_duration.local import streaming_demo
from ride_duration.local.event_source import LoopStopped
from ride_duration.local.standins import StandinError
from ride_duration.models import ModelNotFound


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rides", type=int, default=1000)
    parser.add_argument("--malformed", type=float, default=0.1, help="malformed events to add, a share of --rides")
    parser.add_argument("--model", help="a local .npz or s3:// model instead of the registered one")
    parser.add_argument("--verbose", action="store_true", help="log each malformed record and every delivery error")
    args = parser.parse_args(argv)
    # Quiet by default: the summary counts what the log would list record by record.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL, format="%(levelname)s %(message)s")
    try:
        run = streaming_demo.stream(args.rides, args.malformed, args.model)
    except (LoopStopped, StandinError, ModelNotFound, SettingError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(run.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
