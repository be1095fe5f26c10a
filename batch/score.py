#!/usr/bin/env python
"""Score one month of TLC trips with a ride-duration model and write the predictions.

    python batch/score.py --taxi-type green --year 2021 --month 2 --model models/lin_reg.npz
                          [--output DIR|s3://bucket/prefix] [--engine pandas|spark]

--model takes a model file (.npz or .pkl), s3://bucket/key.npz, models:/NAME@alias,
models:/NAME/VERSION, models:/m-<id>, runs:/RUN_ID/model, a run id or m-<id>: whatever
ride_duration.models.load_model takes [$BATCH_MODEL or models/lin_reg.npz].
The predictions go to <output>/taxi_type=<t>/year=<yyyy>/month=<mm>/<model version>.parquet
[$BATCH_OUTPUT or output/]. Exit status: 0 done, 1 cannot do it (message on stderr), 130 stopped.
"""

from __future__ import annotations

import argparse
import sys

from ride_duration import batch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taxi-type", required=True, help="green or yellow")
    parser.add_argument("--year", type=int, required=True)
    parser.add_argument("--month", type=int, required=True, help="1..12: the month scored")
    parser.add_argument("--model", default=None, help="model file, s3:// URL, MLflow URI or run id")
    parser.add_argument("--output", default=None, help="output root: a directory or s3://bucket/prefix")
    parser.add_argument("--input", default=None, help="score this parquet file instead of the TLC's month")
    parser.add_argument("--engine", choices=["pandas", "spark"], default="pandas")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = batch.score_month(
            args.taxi_type, args.year, args.month, args.model, args.output, source=args.input, engine=args.engine
        )
    except batch.USER_ERRORS as exc:
        print(f"score.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("score.py: stopped; nothing was written", file=sys.stderr)
        return 130
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
