#!/usr/bin/env python
"""Score a range of months, skipping those already written; run it again to resume.

    python batch/backfill.py --from 2021-01 --to 2021-02 --taxi-type green --model models/lin_reg.npz
                             [--output DIR|s3://bucket/prefix] [--force] [--engine pandas|spark]

Each month goes through the steps of batch/score.py and is written atomically, so a stopped run
leaves every month either complete or absent, and the next run scores only the absent ones.
--force scores them all again. A month that fails (a missing, damaged or mistyped file, no
usable ride, an unwritable output) is logged and the others still run; the run ends with a
summary of which months failed and why. A .pkl model loads only with ALLOW_UNSAFE_PICKLE=1.
Exit status: 0 every month done or skipped, 1 some month failed (or the run could not start),
130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from ride_duration import batch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="start", required=True, help="first month, YYYY-MM")
    parser.add_argument("--to", dest="end", required=True, help="last month, YYYY-MM (included)")
    parser.add_argument("--taxi-type", required=True, help="green or yellow")
    parser.add_argument("--model", default=None, help="model file, s3:// URL, MLflow URI or run id")
    parser.add_argument("--output", default=None, help="output root: a directory or s3://bucket/prefix")
    parser.add_argument("--force", action="store_true", help="score months that are already written again")
    parser.add_argument("--engine", choices=batch.ENGINES, default="pandas")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with batch.sigterm_stops():  # a `kill` cleans up as Ctrl-C does
            outcome = batch.backfill(
                args.taxi_type,
                batch.parse_year_month(args.start),
                batch.parse_year_month(args.end),
                args.model,
                args.output,
                force=args.force,
                engine=args.engine,
            )
    except batch.USER_ERRORS as exc:
        print(f"backfill.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backfill.py: stopped; finished months are kept, run again to do the rest", file=sys.stderr)
        return 130
    failed = any(isinstance(result, Exception) for result in outcome.values())
    print(f"backfill.py: {batch.backfill_summary(outcome)}", file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
