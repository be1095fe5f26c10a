"""Synthetic TLC months, for scale tests only: never used unless asked for, always labelled.

The statistics come from a real month (green 2021-01 by default): how often each
pickup/drop-off pair occurs, each pair's median distance and duration, how far rides spread
around those medians (and how the two spreads go together), and the share of rides that the
cleaning step drops. Rows are drawn from those, so a synthetic month
of any size looks like the real one to the model and to the cleaning code.

    python -m ride_duration.synthetic --rows 3000000 [--taxi-type yellow --year 2021 --month 3]

writes data/synthetic/SYNTHETIC_<taxi>_tripdata_<YYYY>-<MM>_<rows>.parquet, whose parquet
metadata says `synthetic: true`.
"""

from __future__ import annotations

import argparse
import calendar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ride_duration import config
from ride_duration.data import DATETIME_COLUMNS, clean_trips, datetime_columns

METADATA_KEY = b"synthetic"


@dataclass
class Profile:
    """What a real month says about rides, in the form the sampler needs."""

    pairs: np.ndarray  # (n, 2) pickup/drop-off ids
    pair_weights: np.ndarray  # share of rides per pair
    pair_distance: np.ndarray  # median miles per pair
    pair_minutes: np.ndarray  # median duration per pair
    distance_spread: float  # sigma of log(distance / pair median)
    minutes_spread: float  # sigma of log(duration / pair median)
    correlation: float  # between the two log ratios
    zero_distance_share: float
    short_share: float  # rides under 1 minute (dropped by cleaning)
    long_share: float  # rides over 60 minutes (dropped by cleaning)
    raw_template: object  # one real row per column dtype, to copy the schema


def profile(raw) -> Profile:
    """Measure a raw TLC month."""
    import pandas as pd

    pickup, dropoff = datetime_columns(raw.columns)
    minutes = (raw[dropoff] - raw[pickup]).dt.total_seconds() / 60
    clean, _ = clean_trips(raw)
    moving = clean[clean["trip_distance"] > 0]
    by_pair = moving.groupby(["PULocationID", "DOLocationID"])
    medians = by_pair[["trip_distance", "duration"]].median()
    counts = by_pair.size()
    row_medians = medians.reindex(pd.MultiIndex.from_frame(moving[["PULocationID", "DOLocationID"]]))
    log_distance = np.log(moving["trip_distance"].to_numpy() / row_medians["trip_distance"].to_numpy())
    log_minutes = np.log(moving["duration"].to_numpy() / row_medians["duration"].to_numpy())
    return Profile(
        pairs=np.array(medians.index.tolist(), dtype=np.int64),
        pair_weights=(counts / counts.sum()).to_numpy(),
        pair_distance=medians["trip_distance"].to_numpy(),
        pair_minutes=medians["duration"].to_numpy(),
        distance_spread=float(np.std(log_distance)),
        minutes_spread=float(np.std(log_minutes)),
        correlation=float(np.corrcoef(log_distance, log_minutes)[0, 1]),
        zero_distance_share=float((clean["trip_distance"] == 0).mean()),
        short_share=float((minutes < 1).mean()),
        long_share=float((minutes > 60).mean()),
        raw_template=raw.head(1),
    )


def generate(
    rows: int,
    taxi_type: str = "green",
    year: int = 2021,
    month: int = 1,
    seed: int = 0,
    reference: tuple[str, int, int] = ("green", 2021, 1),
    measured: Profile | None = None,
):
    """A DataFrame of `rows` synthetic trips in the TLC schema; df.attrs['synthetic'] is True."""
    import pandas as pd

    from ride_duration.data import trip_file

    if taxi_type not in DATETIME_COLUMNS:
        raise ValueError(f"synthetic months exist for {', '.join(DATETIME_COLUMNS)} taxis only")
    p = measured or profile(pd.read_parquet(trip_file(*reference)))
    rng = np.random.default_rng(seed)
    pair = rng.choice(len(p.pairs), size=rows, p=p.pair_weights)
    # Correlated log-normal spreads around each pair's medians: longer rides take longer.
    z_distance, z_other = rng.standard_normal(rows), rng.standard_normal(rows)
    z_minutes = p.correlation * z_distance + np.sqrt(1 - p.correlation**2) * z_other
    distance = p.pair_distance[pair] * np.exp(p.distance_spread * z_distance)
    distance = np.where(rng.random(rows) < p.zero_distance_share, 0.0, np.round(distance, 2))
    minutes = np.clip(p.pair_minutes[pair] * np.exp(p.minutes_spread * z_minutes), 1, 60)
    # Rides the cleaning step must drop, in the real month's proportions.
    fate = rng.random(rows)
    minutes = np.where(fate < p.short_share, rng.uniform(0, 1, rows), minutes)
    minutes = np.where(fate > 1 - p.long_share, rng.uniform(60.5, 1440, rows), minutes)
    minutes = np.clip(minutes, 0, 1440)

    start = pd.Timestamp(year=year, month=month, day=1)
    seconds_in_month = calendar.monthrange(year, month)[1] * 86400
    pickup_at = start + pd.to_timedelta(rng.integers(0, seconds_in_month, rows), unit="s")
    dropoff_at = pickup_at + pd.to_timedelta(np.round(minutes * 60), unit="s")

    template = p.raw_template
    frame = pd.DataFrame({c: np.repeat(template[c].to_numpy(), rows) for c in template.columns})
    old_pickup, old_dropoff = datetime_columns(template.columns)
    frame = frame.drop(columns=[old_pickup, old_dropoff])
    new_pickup, new_dropoff = DATETIME_COLUMNS[taxi_type]
    frame.insert(1, new_pickup, pickup_at.astype(template[old_pickup].dtype))
    frame.insert(2, new_dropoff, dropoff_at.astype(template[old_dropoff].dtype))
    frame["PULocationID"] = p.pairs[pair, 0].astype(template["PULocationID"].dtype)
    frame["DOLocationID"] = p.pairs[pair, 1].astype(template["DOLocationID"].dtype)
    frame["trip_distance"] = distance
    frame = frame.sort_values(new_pickup, kind="stable").reset_index(drop=True)
    frame.attrs["synthetic"] = True
    return frame


def write(frame, path: Path) -> Path:
    """Write a synthetic month as parquet, labelled in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: b"true"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1_000_000)
    return path


def is_synthetic(path: Path) -> bool:
    import pyarrow.parquet as pq

    return (pq.read_schema(path).metadata or {}).get(METADATA_KEY) == b"true"


def default_path(taxi_type: str, year: int, month: int, rows: int) -> Path:
    return config.data_dir() / "synthetic" / f"SYNTHETIC_{taxi_type}_tripdata_{year:04d}-{month:02d}_{rows}.parquet"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a labelled synthetic TLC month.")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--taxi-type", default="green", choices=list(DATETIME_COLUMNS))
    parser.add_argument("--year", type=int, default=2021)
    parser.add_argument("--month", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    frame = generate(args.rows, args.taxi_type, args.year, args.month, args.seed)
    path = write(frame, args.output or default_path(args.taxi_type, args.year, args.month, args.rows))
    print(f"SYNTHETIC month: {len(frame):,} rows -> {path}")


if __name__ == "__main__":
    main()
