#!/usr/bin/env python
"""Score one month of TLC trips with a ride-duration model and write the predictions.

    python batch/score.py --taxi-type green --year 2021 --month 2 --model models/lin_reg.npz
                          [--output DIR|s3://bucket/prefix] [--input FILE] [--engine pandas|spark]

--model takes a model file (.npz, or a pickled .pkl), s3://bucket/key.npz, models:/NAME@alias,
models:/NAME/VERSION, models:/m-<id>, runs:/RUN_ID/model, a run id or m-<id>: whatever
ride_duration.models.load_model takes [$BATCH_MODEL or models/lin_reg.npz]. A .pkl loads only
with ALLOW_UNSAFE_PICKLE=1: unpickling runs whatever code the file holds.
The predictions go to <output>/taxi_type=<t>/year=<yyyy>/month=<mm>/<model version>.parquet
[$BATCH_OUTPUT or output/]. Exit status: 0 done; 1 cannot do it (one line on stderr naming the
file or setting and the problem, nothing written); 130 stopped by Ctrl-C or SIGTERM (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from ride_duration import batch, data


def score(job: batch.Job) -> batch.ScoreResult:
    """The job on pandas: read the month in chunks -> clean -> predict -> write the output atomically.

    batch.score_month runs these same steps for the backfill and the demo
    (batch.score_chunk holds the clean-predict-output part, which Spark runs too).
    """
    with batch.Tally(job) as tally:  # rows and predictions counted; a progress bar on a terminal

        def output_tables():
            # Read: the needed columns of the month, `job.rows` trips at a time (memory stays bounded).
            for chunk in batch.read_chunks(job.source, job.rows, job.columns):
                # Clean: the rides the model can score, exactly as the training rows were (1-60 min, known zones).
                rides, report = data.clean_trips(chunk, job.taxi_type)
                # Predict: one column-wise call per chunk, the features built as in training.
                minutes = job.model.predict(rides)
                yield tally.add(batch.output_table(rides, minutes, job.model.version, *job.period), report)

        # Write: readers see the file only once it is complete; a month with no usable ride is an error.
        batch.write_parquet_atomic(tally.nonempty(output_tables()), job.location)
    return tally.result()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taxi-type", required=True, help="green or yellow")
    parser.add_argument("--year", type=int, required=True)
    parser.add_argument("--month", type=int, required=True, help="1..12: the month scored")
    parser.add_argument("--model", default=None, help="model file, s3:// URL, MLflow URI or run id")
    parser.add_argument("--output", default=None, help="output root: a directory or s3://bucket/prefix")
    parser.add_argument("--input", default=None, help="score this parquet file instead of the TLC's month")
    parser.add_argument("--engine", choices=batch.ENGINES, default="pandas")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with batch.sigterm_stops():  # a `kill` cleans up as Ctrl-C does
            # Check every input before reading a row: the month, its file's columns and taxi type, the model.
            job = batch.prepare(args.taxi_type, args.year, args.month, args.model, args.output, source=args.input)
            result = score(job) if args.engine == "pandas" else batch.score_on_spark(job)
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
