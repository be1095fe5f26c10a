"""Batch scoring under bad input and stops: one month fails, not the run, and nothing is left behind.

Each test scores a 20,000-row slice of green 2021-02 (the real schema and rows), so the
whole file runs in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_batch import REPO, files_under, load_script

from ride_duration import batch

SLICE_ROWS = 20_000
MONTH = ["--taxi-type", "green", "--year", "2021", "--month", "2"]


@pytest.fixture(scope="module")
def model_npz(model_files):
    return model_files[1]


@pytest.fixture(scope="module")
def raw_slice(tlc_mirror) -> pa.Table:
    """The first 20,000 raw rows of green 2021-02."""
    return pq.read_table(tlc_mirror / "green_tripdata_2021-02.parquet").slice(0, SLICE_ROWS)


def write_month(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="gzip")  # as the TLC's files: gzip pages, each with a CRC
    return path


def write_corrupt_month(table: pa.Table, path: Path) -> Path:
    """The month with a valid footer and 64 overwritten bytes in the middle of trip_distance's pages."""
    write_month(table, path)
    chunk = next(
        c
        for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(table.num_columns))
        if c.path_in_schema == "trip_distance"
    )
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    with open(path, "r+b") as file:
        file.seek(middle)
        file.write(b"\xff" * 64)
    assert pq.ParquetFile(path).metadata.num_rows == table.num_rows  # the footer still reads
    return path


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


def as_strings(table: pa.Table, name: str) -> pa.Table:
    return with_column(table, name, table.column(name).cast(pa.string()))


def run_cli(capsys, *args) -> tuple[int, str]:
    code = load_script("score").main(list(map(str, args)))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("score.py: error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err


# ---- unreadable and mistyped input: exit 1, one line naming the file and the problem ----------
def test_corrupt_data_pages_are_one_line_naming_the_file(raw_slice, model_npz, tmp_path, capsys):
    source = write_corrupt_month(raw_slice, tmp_path / "corrupt.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "out")
    assert_one_line_error(code, err, str(source), "cannot be read from row 0 on")
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(
    "column, kind", [("lpep_pickup_datetime", "date-times"), ("trip_distance", "numbers"), ("DOLocationID", "numbers")]
)
def test_a_string_typed_column_is_named_before_anything_is_read(raw_slice, model_npz, tmp_path, capsys, column, kind):
    source = write_month(as_strings(raw_slice, column), tmp_path / "strings.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "out")
    assert_one_line_error(code, err, str(source), f"column {column} holds", f"not {kind}")
    assert files_under(tmp_path / "out") == []


def test_a_missing_column_names_the_file_and_the_column(raw_slice, model_npz, tmp_path, capsys):
    source = write_month(raw_slice.drop_columns(["PULocationID"]), tmp_path / "no-zone.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "out")
    assert_one_line_error(code, err, str(source), "lacks required column(s): PULocationID")


def test_a_yellow_file_is_not_scored_as_green(raw_slice, model_npz, tmp_path, capsys):
    yellow = raw_slice.rename_columns([c.replace("lpep_", "tpep_") for c in raw_slice.column_names])
    source = write_month(yellow, tmp_path / "yellow.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "out")
    assert_one_line_error(code, err, str(source), "these are yellow trips (tpep_pickup_datetime", "not green (lpep_")
    assert files_under(tmp_path / "out") == []
    # Named as what it is, the same file scores, under yellow ids and the yellow partition.
    result = batch.score_month("yellow", 2021, 2, model_npz, tmp_path / "out", source=source, progress=False)
    scored = pd.read_parquet(result.location)
    assert "taxi_type=yellow" in result.location and scored["ride_id"].str.startswith("yellow/2021/02_").all()
    assert len(scored) == result.rows_scored > 0.9 * SLICE_ROWS


def test_a_month_with_no_usable_ride_is_an_error_and_writes_nothing(raw_slice, model_npz, tmp_path, capsys):
    instant = with_column(
        raw_slice, "lpep_dropoff_datetime", raw_slice.column("lpep_pickup_datetime")
    )  # 0-minute rides
    source = write_month(instant, tmp_path / "instant.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "out")
    assert_one_line_error(code, err, str(source), "holds no usable ride for green 2021-02", "20,000 shorter than 1 min")
    assert files_under(tmp_path / "out") == []


# ---- zone ids outside the zone table ----------------------------------------------------------
def test_the_zone_range_is_the_tlc_zone_table(tlc_mirror):
    from ride_duration.features import MAX_LOCATION_ID, MIN_LOCATION_ID

    zones = pd.read_csv(tlc_mirror / "taxi_zone_lookup.csv")
    assert sorted(zones["LocationID"]) == list(range(MIN_LOCATION_ID, MAX_LOCATION_ID + 1))


def test_an_id_outside_the_zone_table_is_dropped_and_changes_no_other_prediction(
    raw_slice, model_npz, linear_pipeline, tmp_path
):
    ride = raw_slice.slice(0, 1).to_pandas()
    ride["lpep_dropoff_datetime"] = ride["lpep_pickup_datetime"] + pd.Timedelta(minutes=9)
    ride[["PULocationID", "DOLocationID", "trip_distance"]] = [74, 75, 1.2]
    far = ride.assign(PULocationID=73, DOLocationID=2**32 + 75)
    scored = {}
    for name, rides in (("alone", ride), ("beside", pd.concat([ride, far], ignore_index=True))):
        source = tmp_path / f"{name}.parquet"
        rides.to_parquet(source)
        result = batch.score_month("green", 2021, 2, model_npz, tmp_path / name, source=source, progress=False)
        scored[name] = pd.read_parquet(result.location)
        assert result.report.dropped["zone id outside 1..265"] == len(rides) - 1
    assert len(scored["beside"]) == 1
    assert scored["beside"]["predicted_duration"].item() == scored["alone"]["predicted_duration"].item()
    expected = linear_pipeline.predict(ride.assign(duration=9.0))[0]
    assert scored["alone"]["predicted_duration"].item() == pytest.approx(expected, abs=1e-9)


# ---- a backfill goes on past a failed month ---------------------------------------------------
def month_name(year: int, month: int) -> str:
    return f"green_tripdata_{year:04d}-{month:02d}.parquet"


BAD_MONTHS = {
    "corrupt pages": (write_corrupt_month, "cannot be read from row 0 on"),
    "a string-typed distance": (lambda t, p: write_month(as_strings(t, "trip_distance"), p), "not numbers"),
    "no usable ride": (
        lambda t, p: write_month(with_column(t, "lpep_dropoff_datetime", t.column("lpep_pickup_datetime")), p),
        "holds no usable ride",
    ),
    "a file missing from the mirror": (lambda t, p: None, "green_tripdata_2020-11.parquet"),
}


@pytest.mark.parametrize("defect", list(BAD_MONTHS))
def test_backfill_writes_the_good_months_around_a_bad_one(raw_slice, model_npz, tmp_path, monkeypatch, capsys, defect):
    """Three months (months without a published checksum, made of the real slice), the middle one bad."""
    mirror, output = tmp_path / "mirror", tmp_path / "output"
    write_month(raw_slice, mirror / month_name(2020, 10))
    write_month(raw_slice, mirror / month_name(2020, 12))
    make_bad, reason = BAD_MONTHS[defect]
    make_bad(raw_slice, mirror / month_name(2020, 11))
    monkeypatch.setenv("TLC_MIRROR", str(mirror))
    monkeypatch.setenv("RIDE_DURATION_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")  # nothing is downloaded

    backfill = load_script("backfill")
    code = backfill.main(["--from", "2020-10", "--to", "2020-12", "--taxi-type", "green", "--model", str(model_npz),
                          "--output", str(output)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert [p.parent.name for p in files_under(output)] == ["month=10", "month=12"]
    assert "green 2020-10 scored" in out and "green 2020-12 scored" in out and "green 2020-11 failed" in out
    summary = err.splitlines()
    assert summary[0] == "backfill.py: 3 month(s): 2 scored, 0 already written, 1 failed", err
    assert summary[1].startswith("  2020-11: ") and reason in summary[1] and len(summary) == 2
    assert "Traceback" not in err


def test_backfill_goes_on_past_an_unexpected_error(raw_slice, model_npz, tmp_path, monkeypatch):
    """Not only the expected errors: a month failing in any way leaves the others to run."""
    sources = {m: write_month(raw_slice, tmp_path / f"{m}.parquet") for m in (1, 2, 3)}
    real_score_month = batch.score_month

    def score_month(taxi_type, year, month, *args, **kwargs):
        if month == 2:
            raise MemoryError("injected")
        return real_score_month(taxi_type, year, month, *args, source=sources[month], **kwargs)

    monkeypatch.setattr(batch, "score_month", score_month)
    lines = []
    outcome = batch.backfill(
        "green", (2021, 1), (2021, 3), model_npz, tmp_path / "out", progress=False, log=lines.append
    )
    assert isinstance(outcome[2021, 2], MemoryError)
    assert not outcome[2021, 1].skipped and not outcome[2021, 3].skipped
    assert [p.parent.name for p in files_under(tmp_path / "out")] == ["month=01", "month=03"]
    assert "green 2021-02 failed: MemoryError: injected" in lines
    assert batch.backfill_summary(outcome).splitlines()[1] == "  2021-02: MemoryError: injected"


# ---- files: their mode, and the CLI writes what score_month writes -----------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_the_output_file_has_the_mode_the_umask_gives(raw_slice, model_npz, tmp_path, umask, mode):
    source = write_month(raw_slice, tmp_path / "month.parquet")
    previous = os.umask(umask)
    try:
        result = batch.score_month("green", 2021, 2, model_npz, tmp_path / "out", source=source, progress=False)
    finally:
        os.umask(previous)
    assert Path(result.location).stat().st_mode & 0o777 == mode


def test_the_cli_writes_byte_for_byte_what_score_month_writes(raw_slice, model_npz, tmp_path, capsys):
    """score.py shows the steps that batch.score_month runs for the backfill and the notebooks."""
    source = write_month(raw_slice, tmp_path / "month.parquet")
    code, err = run_cli(capsys, *MONTH, "--model", model_npz, "--input", source, "--output", tmp_path / "cli")
    assert code == 0, err
    library = batch.score_month("green", 2021, 2, model_npz, tmp_path / "library", source=source, progress=False)
    (cli_file,) = files_under(tmp_path / "cli")
    assert (
        hashlib.sha256(cli_file.read_bytes()).digest() == hashlib.sha256(Path(library.location).read_bytes()).digest()
    )


# ---- an S3 upload that is stopped leaves no multipart upload and no temporary file -------------
STOPPED_UPLOAD = textwrap.dedent("""
    import functools, runpy, sys, time
    from pathlib import Path
    from boto3.s3.transfer import TransferConfig
    from ride_duration import aws

    marker, score_py, *argv = sys.argv[1:]
    real_client = aws.client

    def stalled_part(**kwargs):
        Path(marker).touch()
        time.sleep(2)  # the part is in flight when the signal comes

    def client(service, **kwargs):
        made = real_client(service, **kwargs)
        if service == "s3":  # multipart even for a small file, and its first part slow
            made.meta.events.register("before-send.s3.UploadPart", stalled_part)
            made.upload_file = functools.partial(made.upload_file, Config=TransferConfig(multipart_threshold=1))
        return made

    aws.client = client
    sys.argv = [score_py, *argv]
    runpy.run_path(score_py, run_name="__main__")
""")


@pytest.fixture
def bucket(aws_endpoint):
    import boto3

    name = "batch-hardening-output"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    yield name
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def test_sigterm_during_an_s3_upload_aborts_it_and_removes_the_local_file(raw_slice, model_npz, bucket, tmp_path):
    import boto3

    source = write_month(raw_slice, tmp_path / "month.parquet")
    marker, scratch = tmp_path / "uploading", tmp_path / "scratch"
    scratch.mkdir()
    args = [*MONTH, "--model", model_npz, "--input", source, "--output", f"s3://{bucket}/predictions"]
    job = subprocess.Popen(
        [sys.executable, "-c", STOPPED_UPLOAD, str(marker), str(REPO / "batch" / "score.py"), *map(str, args)],
        env={**os.environ, "TMPDIR": str(scratch)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert job.poll() is None, job.stderr.read()
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        assert [p.name for p in scratch.iterdir()] != []  # the local file being uploaded
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, err
    assert err.strip().splitlines()[-1] == "score.py: stopped; nothing was written" and "Traceback" not in err
    s3 = boto3.client("s3")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert list(scratch.iterdir()) == []


def test_a_failed_multipart_upload_is_aborted(raw_slice, model_npz, bucket, tmp_path, monkeypatch):
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import EndpointConnectionError

    def lost_part(**kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    real_client = batch.aws.client

    def client(service, **kwargs):
        made = real_client(service, **kwargs)
        made.meta.events.register("before-send.s3.UploadPart", lost_part)
        made.upload_file = functools.partial(made.upload_file, Config=TransferConfig(multipart_threshold=1))
        return made

    monkeypatch.setattr(batch.aws, "client", client)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))  # where the upload is staged
    source = write_month(raw_slice, tmp_path / "month.parquet")
    with pytest.raises(batch.BatchError, match=f"cannot write s3://{bucket}/predictions/.*Could not connect"):
        batch.score_month("green", 2021, 2, model_npz, f"s3://{bucket}/predictions", source=source, progress=False)
    import boto3

    s3 = boto3.client("s3")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list((tmp_path / "scratch").iterdir()) == []
