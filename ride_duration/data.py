"""TLC trip files: find them (cache, mirror, download), read them, validate and clean them."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ride_duration import config
from ride_duration.features import MAX_LOCATION_ID, MIN_LOCATION_ID, RAW_FIELDS

# Checksums of months we know, so that a damaged or substituted file is never used.
KNOWN_SHA256 = {
    "green_tripdata_2021-01.parquet": "b8e2c9496c5eada0f10adbd88f98d91721ec6fe2787a2b355cf0ccfa9678ee7b",
    "green_tripdata_2021-02.parquet": "fd43c7afa2002716c8afadfd57665ab9c9ad99be419570a9b0a08de15cbeb64e",
    "taxi_zone_lookup.csv": "5e8f5ff10175d75f468c6fbdf0f68ca93e77ecd48942718d5403f8b7232e90b0",
}
# First month the TLC published for each taxi type.
FIRST_MONTH = {"yellow": (2009, 1), "green": (2013, 8), "fhv": (2015, 1), "fhvhv": (2019, 2)}
# Pickup/drop-off column names by taxi type; location ids are shared by green and yellow.
DATETIME_COLUMNS = {
    "green": ("lpep_pickup_datetime", "lpep_dropoff_datetime"),
    "yellow": ("tpep_pickup_datetime", "tpep_dropoff_datetime"),
}
LOCATION_COLUMNS = ("PULocationID", "DOLocationID")
NUMERIC_COLUMNS = (*LOCATION_COLUMNS, "trip_distance")  # what cleaning reads besides the datetimes
MIN_DURATION, MAX_DURATION = 1.0, 60.0


class DataError(Exception):
    """A trip file cannot be had or cannot be used; the message says what to do."""


class ChecksumMismatch(DataError):
    pass


def trip_filename(taxi_type: str, year: int, month: int) -> str:
    _check_month(taxi_type, year, month)
    return f"{taxi_type}_tripdata_{year:04d}-{month:02d}.parquet"


def _check_month(taxi_type: str, year: int, month: int) -> None:
    if taxi_type not in config.TAXI_TYPES:
        raise DataError(f"unknown taxi type {taxi_type!r}: choose one of {', '.join(config.TAXI_TYPES)}")
    if not 1 <= int(month) <= 12:
        raise DataError(f"month must be 1..12, got {month}")
    first = FIRST_MONTH[taxi_type]
    today = dt.date.today()
    if (year, month) < first or (year, month) > (today.year, today.month):
        raise DataError(
            f"the TLC never published {taxi_type} trips for {year:04d}-{month:02d}: "
            f"{taxi_type} files start at {first[0]:04d}-{first[1]:02d} and end a month or two before today"
        )


def trip_file(taxi_type: str, year: int, month: int) -> Path:
    """Local path of a month's trip file: from the cache, the mirror, or downloaded."""
    name = trip_filename(taxi_type, year, month)
    return fetch(name, f"trip-data/{name}")


def zone_lookup_file() -> Path:
    return fetch("taxi_zone_lookup.csv", "misc/taxi_zone_lookup.csv")


def fetch(name: str, url_path: str) -> Path:
    """Resolve a TLC file: the cache (data/), then $TLC_MIRROR, then the TLC's server."""
    cached = config.data_dir() / name
    if cached.is_file():
        return _verified(cached)
    mirror = config.tlc_mirror()
    if mirror is not None and not mirror.is_dir():
        raise DataError(f"cannot look for {name} in TLC_MIRROR={mirror}: no such folder (fix TLC_MIRROR or unset it)")
    if mirror is not None and (mirror / name).is_file():
        return _verified(mirror / name)
    url = f"{config.tlc_base_url()}/{url_path}"
    _download(url, cached)
    return cached


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, name: str | None = None) -> Path:
    name = name or path.name
    expected = KNOWN_SHA256.get(name)
    if expected is not None and sha256(path) != expected:
        raise ChecksumMismatch(
            f"{path} does not match the known sha256 of {name}: delete it and fetch it again (or fix the mirror)"
        )
    return path


def _download(url: str, target: Path) -> None:
    import requests
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = requests.get(url, stream=True, timeout=30)
    except requests.RequestException as exc:
        raise DataError(
            f"cannot download {url} ({exc.__class__.__name__}) and it is not in "
            f"{config.data_dir()}: go online, or set TLC_MIRROR to a directory that holds {target.name}"
        ) from None
    with response:
        # The TLC's CloudFront answers 403 (not 404) for a file it does not have.
        if response.status_code in (403, 404):
            raise DataError(f"the TLC has not published {target.name} (HTTP {response.status_code} from {url})")
        if response.status_code != 200:
            raise DataError(f"downloading {url} failed: HTTP {response.status_code}")
        total = int(response.headers.get("content-length", 0)) or None
        # Written beside the target and renamed, so a cut download never looks like a file.
        try:
            with config.atomic_path(target) as tmp:
                with (
                    open(tmp, "wb") as out,
                    tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as bar,
                ):
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
                _verified(tmp, target.name)
        except requests.RequestException as exc:
            raise DataError(
                f"downloading {url} broke off ({exc.__class__.__name__}): try again, or set TLC_MIRROR"
            ) from None


@dataclass
class CleaningReport:
    """How many rows a month had, how many were kept, and why the others were dropped."""

    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def rows_out(self) -> int:
        return self.rows_in - sum(self.dropped.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{n:,} {why}" for why, n in self.dropped.items() if n) or "none"
        return f"{self.rows_in:,} rows read, {self.rows_out:,} kept; dropped: {reasons}"


def datetime_columns(columns, taxi_type: str | None = None) -> tuple[str, str]:
    """The pickup and drop-off column names of a green or yellow trip file; with `taxi_type`,
    those of that type, and a DataError naming both types for a file of the other one."""
    if taxi_type is not None and taxi_type not in DATETIME_COLUMNS:
        raise DataError(f"no datetime columns are known for {taxi_type!r} trips: only {', '.join(DATETIME_COLUMNS)}")
    present = {kind: names for kind, names in DATETIME_COLUMNS.items() if all(n in columns for n in names)}
    if taxi_type in present:
        return present[taxi_type]
    if taxi_type is not None and present:
        found = next(iter(present))
        raise DataError(
            f"these are {found} trips ({', '.join(present[found])}), not {taxi_type} "
            f"({', '.join(DATETIME_COLUMNS[taxi_type])})"
        )
    if present:
        return next(iter(present.values()))
    raise DataError(
        "no pickup/drop-off datetime columns: expected "
        + " or ".join(f"{p} and {d}" for p, d in DATETIME_COLUMNS.values())
    )


def check_columns(dtypes, taxi_type: str | None = None, numeric=NUMERIC_COLUMNS) -> tuple[str, str]:
    """Check that trips with these column types (name -> pandas dtype) can be cleaned: the
    datetime columns hold date-times, the `numeric` ones numbers. Returns the datetime columns'
    names; a DataError names what is missing or mistyped."""
    import pandas as pd

    pickup, dropoff = datetime_columns(dtypes, taxi_type)
    missing = [c for c in numeric if c not in dtypes]
    if missing:
        raise DataError(f"trip data lacks required column(s): {', '.join(missing)}")
    for column in (pickup, dropoff):
        if not pd.api.types.is_datetime64_any_dtype(dtypes[column]):
            raise DataError(f"column {column} holds {dtypes[column]}, not date-times")
    for column in numeric:
        dtype = dtypes[column]
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise DataError(f"column {column} holds {dtype}, not numbers")
    return pickup, dropoff


def read_trips(taxi_type: str, year: int, month: int):
    """A month of trips, cleaned: see `clean_trips`. Returns (DataFrame, CleaningReport)."""
    import pandas as pd

    return clean_trips(pd.read_parquet(trip_file(taxi_type, year, month)), taxi_type)


def clean_trips(df, taxi_type: str | None = None):
    """Validate a raw trip frame and keep the rides a duration model can learn from.

    Adds `duration` (minutes) and keeps rides lasting 1 to 60 minutes whose zones and distance
    are present and in the ranges the services accept (features.RAW_FIELDS: zones 1..265 of the
    TLC's table, 0 to 100 miles); the others are typos. Location ids may be int32 or int64 (the
    TLC changed it in 2023); they come out as int64. Columns of the wrong type (see `check_columns`)
    are a DataError. Returns (cleaned frame, CleaningReport).
    """
    import pandas as pd

    pickup, dropoff = check_columns(df.dtypes, taxi_type)
    report = CleaningReport(rows_in=len(df))
    df = df.copy()
    df["duration"] = (df[dropoff] - df[pickup]).dt.total_seconds() / 60
    incomplete = df[[*NUMERIC_COLUMNS, "duration"]].isna().any(axis=1)
    # A raw field outside the range the services accept (features.RAW_FIELDS) is a typo: kept,
    # it would widen the zone-pair keys, or, for the distance, set a linear model's weight.
    outside = {
        f"zone id outside {MIN_LOCATION_ID}..{MAX_LOCATION_ID}": ~(
            _in_zone_table(df[LOCATION_COLUMNS[0]]) & _in_zone_table(df[LOCATION_COLUMNS[1]])
        )
    }
    for name, spec in RAW_FIELDS.items():
        if name not in LOCATION_COLUMNS and name in df.columns:
            outside[f"{name} outside {spec.minimum:g}..{spec.maximum:g} {spec.unit}".rstrip()] = ~pd.to_numeric(
                df[name]
            ).between(spec.minimum, spec.maximum)
    kept = ~incomplete
    dropped = {"missing location, distance or time": int(incomplete.sum())}
    for why, rows in outside.items():  # each row counted once, under the first reason it fails
        dropped[why] = int((kept & rows).sum())
        kept &= ~rows
    too_short = kept & (df["duration"] < MIN_DURATION)
    too_long = kept & (df["duration"] > MAX_DURATION)
    report.dropped = {
        **dropped,
        f"shorter than {MIN_DURATION:g} min": int(too_short.sum()),
        f"longer than {MAX_DURATION:g} min": int(too_long.sum()),
    }
    df = df[kept & ~(too_short | too_long)].reset_index(drop=True)
    for column in LOCATION_COLUMNS:
        df[column] = df[column].astype("int64")
    df["trip_distance"] = pd.to_numeric(df["trip_distance"]).astype("float64")
    return df, report


def _in_zone_table(ids):
    """Whether each id is a whole number in MIN_LOCATION_ID..MAX_LOCATION_ID (floats: 130.0 counts)."""
    return ids.between(MIN_LOCATION_ID, MAX_LOCATION_ID) & (ids % 1 == 0)


def fetch_known(log=print) -> list[Path]:
    """Every file with a known checksum (the months the lessons and tests use), checked."""
    found = []
    for name in KNOWN_SHA256:
        path = zone_lookup_file() if name == "taxi_zone_lookup.csv" else fetch(name, f"trip-data/{name}")
        log(f"{name}: {path} (sha256 checked)")
        found.append(path)
    return found


def main(argv=None) -> None:
    """python -m ride_duration.data fetch: the lessons' TLC files into the cache, checked."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["fetch"])
    parser.parse_args(argv)
    try:
        fetch_known()
    except DataError as exc:
        sys.exit(f"ride_duration.data: {exc}")


if __name__ == "__main__":
    main()
