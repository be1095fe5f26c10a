"""Finding TLC files (cache, mirror, download) and cleaning them."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pandas as pd
import pytest

from ride_duration import data, features

JANUARY = "green_tripdata_2021-01.parquet"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("RIDE_DURATION_DATA", str(folder))
    return folder


@pytest.fixture
def tlc_server(tmp_path, monkeypatch):
    """A loopback HTTP server laid out like the TLC's: trip-data/ and misc/."""
    root = tmp_path / "tlc-site"
    (root / "trip-data").mkdir(parents=True)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TLC_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("TLC_MIRROR")
    yield root
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_error(self, code, *args, **kwargs):
        # CloudFront answers 403 for objects it does not have.
        super().send_error(403 if code == 404 else code, *args, **kwargs)


def test_mirror_is_used_when_the_cache_is_empty(cache, tlc_mirror):
    assert data.trip_file("green", 2021, 1) == tlc_mirror / JANUARY
    assert not cache.exists()


def test_cache_comes_before_the_mirror(cache, tlc_mirror):
    cache.mkdir()
    shutil.copyfile(tlc_mirror / JANUARY, cache / JANUARY)
    assert data.trip_file("green", 2021, 1) == cache / JANUARY


def test_download_lands_in_the_cache_and_is_reused(cache, tlc_server, tlc_mirror, monkeypatch):
    shutil.copyfile(tlc_mirror / JANUARY, tlc_server / "trip-data" / JANUARY)
    path = data.trip_file("green", 2021, 1)
    assert path == cache / JANUARY
    assert data.sha256(path) == data.KNOWN_SHA256[JANUARY]
    assert [p.name for p in cache.iterdir()] == [JANUARY]  # no temporary file left behind
    # Second time round the server is gone: the cache answers.
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")
    assert data.trip_file("green", 2021, 1) == path


def test_zone_lookup_downloads_from_misc(cache, tlc_server, tlc_mirror):
    (tlc_server / "misc").mkdir()
    shutil.copyfile(tlc_mirror / "taxi_zone_lookup.csv", tlc_server / "misc" / "taxi_zone_lookup.csv")
    zones = pd.read_csv(data.zone_lookup_file(), keep_default_na=False)
    assert len(zones) == 265 and zones.loc[zones.LocationID == 265, "Borough"].item() == "N/A"


def test_fetch_known_downloads_every_checked_file(cache, tlc_server, tlc_mirror):
    """`make data` (python -m ride_duration.data fetch): what CI caches, each file checked."""
    (tlc_server / "misc").mkdir()
    for name in data.KNOWN_SHA256:
        folder = tlc_server / ("misc" if name.endswith(".csv") else "trip-data")
        shutil.copyfile(tlc_mirror / name, folder / name)
    logged = []
    fetched = data.fetch_known(log=logged.append)
    assert fetched == [cache / name for name in data.KNOWN_SHA256]
    assert all(data.sha256(path) == data.KNOWN_SHA256[path.name] for path in fetched)
    assert len(logged) == len(data.KNOWN_SHA256) and all("sha256 checked" in line for line in logged)


def test_checksum_mismatch_is_an_error_and_leaves_nothing(cache, tlc_server, tlc_mirror):
    damaged = (tlc_mirror / JANUARY).read_bytes()[:-10] + b"0123456789"
    (tlc_server / "trip-data" / JANUARY).write_bytes(damaged)
    with pytest.raises(data.ChecksumMismatch, match="sha256"):
        data.trip_file("green", 2021, 1)
    assert not any(cache.iterdir())


def test_damaged_cache_file_is_never_used(cache, tlc_mirror):
    cache.mkdir()
    (cache / JANUARY).write_bytes(b"not the TLC's file")
    with pytest.raises(data.ChecksumMismatch, match="delete it"):
        data.trip_file("green", 2021, 1)


def test_offline_error_names_the_url_and_the_mirror_variable(cache, monkeypatch):
    monkeypatch.delenv("TLC_MIRROR")
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(data.DataError) as error:
        data.trip_file("green", 2021, 3)
    message = str(error.value)
    assert "http://127.0.0.1:9/trip-data/green_tripdata_2021-03.parquet" in message
    assert "TLC_MIRROR" in message


def test_a_month_the_server_lacks_is_reported(cache, tlc_server):
    with pytest.raises(data.DataError, match="has not published green_tripdata_2021-03"):
        data.trip_file("green", 2021, 3)


@pytest.mark.parametrize(
    "taxi_type, year, month, reason",
    [
        ("green", 2099, 1, "never published"),
        ("green", 2012, 1, "never published"),
        ("purple", 2021, 1, "unknown taxi type"),
        ("green", 2021, 13, "month must be"),
    ],
)
def test_impossible_months_fail_before_any_download(cache, taxi_type, year, month, reason):
    with pytest.raises(data.DataError, match=reason):
        data.trip_file(taxi_type, year, month)


def test_cleaning_report_counts_every_dropped_row(tlc_mirror):
    raw = pd.read_parquet(tlc_mirror / JANUARY)
    clean, report = data.clean_trips(raw)
    minutes = (raw.lpep_dropoff_datetime - raw.lpep_pickup_datetime).dt.total_seconds() / 60
    # January 2021 has no missing values and no unknown zones, but distance typos (up to 244,152 miles).
    typo = ~raw.trip_distance.between(0, features.MAX_TRIP_DISTANCE)
    assert report.rows_in == len(raw) == 76_518
    assert report.rows_out == len(clean) == 73_846
    assert report.dropped["trip_distance outside 0..100 miles"] == typo.sum() == 63
    # Each row is counted once, under the first rule it breaks: the distance, then the duration.
    assert report.dropped["shorter than 1 min"] == (~typo & (minutes < 1)).sum()
    assert report.dropped["longer than 60 min"] == (~typo & (minutes > 60)).sum()
    assert clean.duration.between(1, 60).all()
    assert clean.trip_distance.between(0, features.MAX_TRIP_DISTANCE).all()
    assert "73,846 kept" in str(report)


def test_rows_missing_values_are_dropped_and_reported(tlc_mirror):
    raw = pd.read_parquet(tlc_mirror / JANUARY).head(100).copy()
    raw["PULocationID"] = raw["PULocationID"].astype("float64")
    raw.loc[:4, "PULocationID"] = None
    clean, report = data.clean_trips(raw)
    assert report.dropped["missing location, distance or time"] == 5
    assert clean.PULocationID.dtype == "int64"


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_location_ids_of_either_width_give_the_same_result(tlc_mirror, dtype):
    raw = pd.read_parquet(tlc_mirror / JANUARY)
    reference, _ = data.clean_trips(raw)
    raw[["PULocationID", "DOLocationID"]] = raw[["PULocationID", "DOLocationID"]].astype(dtype)
    clean, _ = data.clean_trips(raw)
    pd.testing.assert_frame_equal(
        clean.drop(columns=["PULocationID", "DOLocationID"]), reference.drop(columns=["PULocationID", "DOLocationID"])
    )
    assert (clean.PULocationID == reference.PULocationID).all()


def test_yellow_datetime_columns_are_understood(tlc_mirror):
    raw = pd.read_parquet(tlc_mirror / JANUARY).rename(columns=lambda c: c.replace("lpep_", "tpep_"))
    clean, report = data.clean_trips(raw)
    assert report.rows_out == 73_846


@pytest.mark.parametrize("column", ["PULocationID", "trip_distance", "lpep_dropoff_datetime"])
def test_missing_required_column_is_named(tlc_mirror, column):
    raw = pd.read_parquet(tlc_mirror / JANUARY).drop(columns=[column])
    with pytest.raises(data.DataError, match=column.replace("lpep_dropoff_datetime", "pickup/drop-off")):
        data.clean_trips(raw)


def test_a_mirror_folder_that_does_not_exist_is_named(cache, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-mirror"
    monkeypatch.setenv("TLC_MIRROR", str(missing))
    with pytest.raises(data.DataError) as error:
        data.trip_file("green", 2021, 1)
    message = str(error.value)
    assert f"TLC_MIRROR={missing}: no such folder" in message and JANUARY in message and "\n" not in message


def test_zone_ids_outside_the_zone_table_are_dropped_and_counted(tlc_mirror):
    raw = pd.read_parquet(tlc_mirror / JANUARY).head(10).copy()
    raw["PULocationID"] = raw["PULocationID"].astype("float64")  # as a file with a missing id holds them
    raw.loc[0, "PULocationID"] = 0
    raw.loc[1, "PULocationID"] = 266
    raw.loc[2, "PULocationID"] = 74.5
    raw.loc[3, "DOLocationID"] = 2**32 + 75
    raw.loc[4, "PULocationID"] = None  # missing: counted as missing, not as outside
    clean, report = data.clean_trips(raw)
    assert report.dropped["zone id outside 1..265"] == 4
    assert report.dropped["missing location, distance or time"] == 1
    assert clean["PULocationID"].between(1, 265).all() and clean["DOLocationID"].between(1, 265).all()
    assert report.rows_out == len(clean) and report.rows_in == 10


@pytest.mark.parametrize("column", ["lpep_pickup_datetime", "trip_distance", "PULocationID"])
def test_a_string_typed_column_is_a_clear_error(tlc_mirror, column):
    raw = pd.read_parquet(tlc_mirror / JANUARY).head(100)
    raw[column] = raw[column].astype(str)
    with pytest.raises(data.DataError, match=f"column {column} holds .*, not (date-times|numbers)"):
        data.clean_trips(raw)


def test_a_file_of_another_taxi_type_is_named_with_both_types(tlc_mirror):
    raw = pd.read_parquet(tlc_mirror / JANUARY).head(100)
    with pytest.raises(data.DataError, match=r"these are green trips \(lpep_.*\), not yellow \(tpep_"):
        data.clean_trips(raw, "yellow")
    assert data.clean_trips(raw, "green")[1].rows_in == 100
