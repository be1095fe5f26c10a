"""Batch scoring: ids, predictions, atomic writes, input checks, the CLIs and the backfill."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ride_duration import batch, config, data
from ride_duration.models import ModelNotFound, load_model

REPO = Path(__file__).resolve().parent.parent
SMALL_CHUNK = 20_000  # green 2021-02 (64,572 rows) in four chunks


def load_script(name: str):
    """batch/<name>.py as a module, so its main() can run in this process."""
    spec = importlib.util.spec_from_file_location(f"batch_{name}", REPO / "batch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_npz(model_files):
    return model_files[1]


@pytest.fixture(scope="module")
def february(tlc_mirror):
    return data.trip_file("green", 2021, 2)


@pytest.fixture
def output(tmp_path):
    return tmp_path / "output"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- ids and predictions ----------------------------------------------------------------
def test_rerun_gives_same_ids_and_byte_identical_predictions(model_npz, output, tmp_path):
    first = batch.score_month("green", 2021, 2, model_npz, output, rows=SMALL_CHUNK, progress=False)
    again = batch.score_month("green", 2021, 2, model_npz, tmp_path / "again", progress=False)
    a, b = pd.read_parquet(first.location), pd.read_parquet(again.location)
    assert a["ride_id"].tolist() == b["ride_id"].tolist()
    assert a["ride_id"].is_unique
    # Bit for bit, whatever the chunk size.
    assert np.array_equal(
        a["predicted_duration"].to_numpy().view(np.int64), b["predicted_duration"].to_numpy().view(np.int64)
    )
    pd.testing.assert_frame_equal(a, b)


def test_ride_id_is_the_row_of_the_ride_in_the_tlc_file(model_npz, output, february):
    result = batch.score_month("green", 2021, 2, model_npz, output, progress=False)
    scored = pd.read_parquet(result.location)
    raw = pd.read_parquet(february)
    rows = scored["ride_id"].str.removeprefix("green/2021/02_").astype(int).to_numpy()
    assert scored["ride_id"].str.startswith("green/2021/02_").all()
    assert (raw["lpep_pickup_datetime"].to_numpy()[rows] == scored["pickup_datetime"].to_numpy()).all()
    assert (raw["PULocationID"].to_numpy()[rows] == scored["PULocationID"].to_numpy()).all()
    assert (raw["DOLocationID"].to_numpy()[rows] == scored["DOLocationID"].to_numpy()).all()


def test_output_matches_the_training_pipeline_on_the_named_month(model_npz, linear_pipeline, trips, output):
    result = batch.score_month("green", 2021, 2, model_npz, output, progress=False)
    scored = pd.read_parquet(result.location)
    february = trips[1]
    assert list(scored.columns) == list(batch.OUTPUT_COLUMNS)
    assert len(scored) == len(february) == result.rows_scored
    assert result.rows_read == pq.ParquetFile(data.trip_file("green", 2021, 2)).metadata.num_rows
    np.testing.assert_allclose(scored["predicted_duration"], linear_pipeline.predict(february), rtol=0, atol=1e-9)
    np.testing.assert_allclose(scored["actual_duration"], february["duration"], rtol=0, atol=0)
    np.testing.assert_allclose(scored["diff"], scored["actual_duration"] - scored["predicted_duration"])
    assert result.mean_predicted_duration == pytest.approx(scored["predicted_duration"].mean())
    assert (scored["model_version"] == result.model_version).all()
    assert result.location == batch.output_location(output, "green", 2021, 2, result.model_version)
    assert result.location.endswith(f"taxi_type=green/year=2021/month=02/{result.model_version}.parquet")
    assert result.report.rows_out == len(february)


def test_a_pickled_pipeline_and_its_export_score_alike(model_files, output, tmp_path, monkeypatch):
    pkl, npz = model_files
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")  # the test's own pickle: trusted
    from_pkl = pd.read_parquet(batch.score_month("green", 2021, 2, pkl, output, progress=False).location)
    from_npz = pd.read_parquet(batch.score_month("green", 2021, 2, npz, tmp_path / "npz", progress=False).location)
    np.testing.assert_allclose(from_pkl["predicted_duration"], from_npz["predicted_duration"], rtol=0, atol=1e-12)


def test_forest_predictions_match_scikit_learn(small_forest, trips, output):
    from ride_duration.compact import CompactModel

    model = CompactModel.from_pipeline(small_forest, version="small_forest-test")
    result = batch.score_month("green", 2021, 2, model, output, rows=SMALL_CHUNK, progress=False)
    scored = pd.read_parquet(result.location)
    np.testing.assert_allclose(scored["predicted_duration"], small_forest.predict(trips[1]), rtol=0, atol=1e-9)
    assert Path(result.location).name == "small_forest-test.parquet"


@pytest.mark.parametrize("walk", ["numpy", "scikit-learn"])
def test_batch_forest_is_the_numpy_walk_bit_for_bit_on_every_thread_count(small_forest, trips, monkeypatch, walk):
    from ride_duration.compact import CompactModel

    compact = CompactModel.from_pipeline(small_forest, version="small_forest-test")
    rides = trips[1]
    expected = compact.predict(rides)
    monkeypatch.setattr(batch, "FOREST_SLICE_ROWS", 1_000)  # several slices per chunk
    monkeypatch.setenv("BATCH_FOREST_WALK", walk)
    for count in (1, 3):
        monkeypatch.setenv("BATCH_THREADS", str(count))
        model = batch.compact_model(compact)
        predicted = model.predict(rides)
        assert bool(model._trees) == (walk == "scikit-learn"), "the forest was not walked as BATCH_FOREST_WALK says"
        np.testing.assert_array_equal(predicted, expected)
    np.testing.assert_allclose(predicted, small_forest.predict(rides), rtol=0, atol=1e-9)
    assert len(model.predict(rides.head(0))) == 0


def test_the_month_size_picks_the_forest_walk(small_forest, trips, monkeypatch):
    from ride_duration.compact import CompactModel

    model = batch.compact_model(CompactModel.from_pipeline(small_forest, version="small_forest-test"))
    rides = trips[1].head(3_000)
    small = model.for_month(batch.COMPILED_TREES_FROM_ROWS - 1)
    large = model.for_month(batch.COMPILED_TREES_FROM_ROWS)
    np.testing.assert_array_equal(small.predict(rides), large.predict(rides))
    assert small._trees is None, "a small month imported scikit-learn for its forest"
    assert large._trees, "a large month was not walked by scikit-learn's trees"
    assert model.month_rows is None and model._trees is None, "for_month changed the model it was called on"
    monkeypatch.setenv("BATCH_FOREST_WALK", "scikit-learn")
    small.predict(rides.head(10))
    assert small._trees, "BATCH_FOREST_WALK=scikit-learn did not override the month's size"


def test_a_bad_forest_walk_setting_fails_before_a_row_is_read(model_files, output, monkeypatch):
    monkeypatch.setenv("BATCH_FOREST_WALK", "fastest")
    with pytest.raises(config.SettingError, match="BATCH_FOREST_WALK must be auto, numpy, scikit-learn, got 'fastest'"):
        batch.prepare("green", 2021, 2, model_files[1], output)


def test_batch_forest_falls_back_to_the_numpy_walk_without_scikit_learn(small_forest, trips, monkeypatch):
    from ride_duration.compact import CompactModel

    walk = CompactModel.from_pipeline(small_forest, version="small_forest-test")
    monkeypatch.setitem(sys.modules, "sklearn.tree._tree", None)  # import fails as if not installed
    model = batch.compact_model(walk)
    np.testing.assert_array_equal(model.predict(trips[1].head(2_000)), walk.predict(trips[1].head(2_000)))
    assert model._trees == []


def test_chunks_are_made_one_ahead_of_the_writer_and_stop_with_it():
    import threading

    made = []

    def chunks():
        for i in range(10):
            made.append(i)
            yield i

    ahead = batch._one_ahead(chunks())
    assert next(ahead) == 0
    ahead.close()  # the writer stops (an error, Ctrl-C): so does the thread making chunks
    assert len(made) <= 3
    assert not any(thread.name == "batch-scoring" for thread in threading.enumerate())

    def failing():
        yield 1
        raise data.DataError("chunk 2 is bad")

    with pytest.raises(data.DataError, match="chunk 2 is bad"):
        list(batch._one_ahead(failing()))


# ---- input checks ----------------------------------------------------------------------
def raw_sample(february, rows=5_000) -> pd.DataFrame:
    return pd.read_parquet(february).head(rows)


def test_int32_and_int64_location_ids_score_alike(model_npz, february, tmp_path):
    sample = raw_sample(february)
    scored = {}
    for dtype in ("int32", "int64"):
        source = tmp_path / f"{dtype}.parquet"
        sample.astype({"PULocationID": dtype, "DOLocationID": dtype}).to_parquet(source)
        assert pq.read_schema(source).field("PULocationID").type == getattr(pa, dtype)()
        result = batch.score_month("green", 2021, 2, model_npz, tmp_path / dtype, source=source, progress=False)
        scored[dtype] = pd.read_parquet(result.location)
    assert len(scored["int32"]) > 4_000
    pd.testing.assert_frame_equal(scored["int32"], scored["int64"])
    assert scored["int32"]["PULocationID"].dtype == "int64"


@pytest.mark.parametrize("dropped", ["trip_distance", "DOLocationID", "lpep_dropoff_datetime"])
def test_a_month_missing_a_required_column_fails_clearly(model_npz, february, tmp_path, output, dropped):
    source = tmp_path / "incomplete.parquet"
    raw_sample(february).drop(columns=[dropped]).to_parquet(source)
    with pytest.raises(data.DataError) as error:
        batch.score_month("green", 2021, 2, model_npz, output, source=source, progress=False)
    expected = dropped if dropped != "lpep_dropoff_datetime" else "no pickup/drop-off datetime columns"
    assert expected in str(error.value)
    assert files_under(output) == []


def test_model_specs_are_routed_and_bad_ones_named(model_npz, tmp_path, monkeypatch):
    import types

    assert batch.compact_model(str(model_npz)).version.startswith("lin_reg-")
    with pytest.raises(ModelNotFound, match="no model file at models/nothing.npz"):
        batch.compact_model("models/nothing.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not a model")
    with pytest.raises(ModelNotFound, match="damaged.npz is not a readable model"):
        batch.compact_model(damaged)
    # Every spec goes to ride_duration.models.load_model (replaced here by a recorder, which
    # answers like an MLflow model without a compact export: batch exports it to numpy).
    asked, compact = [], load_model(model_npz)
    mlflow_model = types.SimpleNamespace(version=compact.version, to_compact=lambda: compact)
    monkeypatch.setattr(batch, "load_model", lambda spec: asked.append(spec) or mlflow_model)
    specs = [
        "models:/ride-duration@production",
        "models:/ride-duration/3",
        "runs:/" + "a" * 32 + "/model",
        "m-" + "b" * 32,
        "c" * 32,
    ]
    for spec in specs:
        routed = batch.compact_model(spec)
        assert isinstance(routed, batch.BatchModel) and routed.arrays is compact.arrays
    assert asked == specs
    given = batch.compact_model(compact)
    assert given.arrays is compact.arrays and batch.compact_model(given) is given and len(asked) == len(specs)


# ---- atomic writes ---------------------------------------------------------------------
def fail_on_call(monkeypatch, call: int, exception: BaseException | None = None):
    """Make batch.score_chunk raise on its `call`-th call (1-based)."""
    real, calls = batch.score_chunk, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise exception or RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "score_chunk", failing)
    return calls


def test_a_failure_in_the_middle_chunk_leaves_no_file(model_npz, output, monkeypatch):
    calls = fail_on_call(monkeypatch, call=2)
    with pytest.raises(RuntimeError, match="injected"):
        batch.score_month("green", 2021, 2, model_npz, output, rows=SMALL_CHUNK, progress=False)
    assert len(calls) == 2
    assert files_under(output) == []  # neither the result nor a temporary file


def test_a_failed_rerun_keeps_the_previous_file_whole(model_npz, output, monkeypatch):
    first = batch.score_month("green", 2021, 2, model_npz, output, progress=False)
    before = sha256(first.location)
    fail_on_call(monkeypatch, call=3)
    with pytest.raises(RuntimeError):
        batch.score_month("green", 2021, 2, model_npz, output, rows=SMALL_CHUNK, progress=False)
    assert files_under(output) == [Path(first.location)]
    assert sha256(first.location) == before


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ride_duration import batch

    real = batch.score_chunk
    calls = []

    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two chunks are already in the temporary file
            Path(sys.argv[3]).touch()
            time.sleep(120)
        return real(*args, **kwargs)

    batch.score_chunk = slow
    batch.score_month("green", 2021, 2, sys.argv[1], sys.argv[2], rows=20_000, progress=False)
""")


def test_a_killed_run_leaves_no_file_and_a_rerun_completes(model_npz, output, tmp_path):
    marker = tmp_path / "mid-write"
    job = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(model_npz), str(output), str(marker)], env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert job.poll() is None, "the scoring run ended before it was killed"
            assert time.monotonic() < deadline, "the scoring run never reached its third chunk"
            time.sleep(0.1)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    final = Path(batch.output_location(output, "green", 2021, 2, load_model(model_npz).version))
    left = files_under(output)
    assert not final.exists()
    # Only the hidden temporary file stays, which parquet readers skip.
    assert len(left) == 1 and left[0].name.startswith(f".{final.name}.") and left[0].suffix == ".part"
    result = batch.score_month("green", 2021, 2, model_npz, output, progress=False)
    assert Path(result.location) == final and len(pd.read_parquet(final)) == result.rows_scored


@pytest.fixture
def bucket(aws_endpoint):
    import boto3

    name = "batch-test-output"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    yield name
    for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def s3_keys(bucket: str) -> list[str]:
    import boto3

    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_s3_output_is_written_whole_or_not_at_all(model_npz, bucket, output, monkeypatch, tmp_path):
    import boto3

    root = f"s3://{bucket}/predictions"
    with monkeypatch.context() as patch:
        fail_on_call(patch, call=2)
        with pytest.raises(RuntimeError):
            batch.score_month("green", 2021, 2, model_npz, root, rows=SMALL_CHUNK, progress=False)
    assert s3_keys(bucket) == []
    result = batch.score_month("green", 2021, 2, model_npz, root, rows=SMALL_CHUNK, progress=False)
    version = result.model_version
    assert s3_keys(bucket) == [f"predictions/taxi_type=green/year=2021/month=02/{version}.parquet"]
    assert batch.exists(result.location)
    downloaded = tmp_path / "downloaded.parquet"
    boto3.client("s3").download_file(bucket, s3_keys(bucket)[0], str(downloaded))
    local = batch.score_month("green", 2021, 2, model_npz, output, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(downloaded), pd.read_parquet(local.location))


def test_a_missing_bucket_is_one_clear_error(model_npz, aws_endpoint):
    with pytest.raises(batch.BatchError, match="no-such-bucket.*NoSuchBucket"):
        batch.score_month("green", 2021, 2, model_npz, "s3://no-such-bucket/out", progress=False)


# ---- the score.py CLI ------------------------------------------------------------------
def run_score(*args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "batch" / "score.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_scores_exactly_the_month_named(model_npz, output, trips):
    done = run_score("--taxi-type", "green", "--year", 2021, "--month", 2, "--model", model_npz, "--output", output)
    assert done.returncode == 0, done.stderr
    written = files_under(output)
    assert len(written) == 1 and "year=2021/month=02" in str(written[0])
    scored = pd.read_parquet(written[0])
    assert len(scored) == len(trips[1]) and scored["ride_id"].str.startswith("green/2021/02_").all()
    assert str(written[0]) in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def assert_one_line_error(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("score.py: error: "), err
    for word in words:
        assert word in err


def test_cli_errors_are_one_line_with_a_nonzero_exit(model_npz, output, tmp_path, monkeypatch, capsys):
    score = load_script("score")
    month = ["--year", "2021", "--month", "2", "--output", str(output)]

    assert_one_line_error(
        capsys, score.main(["--taxi-type", "blue", *month, "--model", str(model_npz)]), "'blue'", "green or yellow"
    )
    assert_one_line_error(
        capsys,
        score.main(["--taxi-type", "green", *month, "--model", "models/nope.npz"]),
        "no model file at models/nope.npz",
    )
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"\x00" * 10)
    assert_one_line_error(
        capsys, score.main(["--taxi-type", "green", *month, "--model", str(damaged)]), "is not a readable model"
    )
    assert_one_line_error(
        capsys,
        score.main(["--taxi-type", "green", "--year", "2021", "--month", "13", "--model", str(model_npz)]),
        "month must be 1..12",
    )
    assert_one_line_error(
        capsys,
        score.main(
            ["--taxi-type", "green", *month, "--model", str(model_npz), "--input", str(tmp_path / "nothing.parquet")]
        ),
        "no trip file at",
        "nothing.parquet",
    )
    monkeypatch.setenv("BATCH_CHUNK_ROWS", "many")
    assert_one_line_error(
        capsys,
        score.main(["--taxi-type", "green", *month, "--model", str(model_npz)]),
        "BATCH_CHUNK_ROWS must be a whole number, got 'many'",
    )
    monkeypatch.delenv("BATCH_CHUNK_ROWS")
    # A month that is neither cached, mirrored nor downloadable (the server refuses at once).
    monkeypatch.setenv("RIDE_DURATION_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")
    assert_one_line_error(
        capsys,
        score.main(["--taxi-type", "green", "--year", "2021", "--month", "3", "--model", str(model_npz)]),
        "green_tripdata_2021-03.parquet",
    )
    assert files_under(output) == []


def test_cli_exit_code_and_no_traceback_in_a_real_process(tmp_path, output, tlc_mirror):  # the month is read first
    done = run_score(
        "--taxi-type", "green", "--year", 2021, "--month", 2, "--model", tmp_path / "none.npz", "--output", output
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "none.npz" in done.stderr


# ---- backfill --------------------------------------------------------------------------
def month_files(output: Path) -> dict[str, tuple[int, int]]:
    """month=MM -> (inode, mtime) of its file: a rewritten file gets a new inode (os.replace)."""
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(output)}


def test_backfill_skips_written_months_unless_forced(model_npz, output):
    lines = []
    first = batch.backfill("green", (2021, 1), (2021, 2), model_npz, output, progress=False, log=lines.append)
    assert list(first) == [(2021, 1), (2021, 2)]
    assert not any(r.skipped for r in first.values())
    written = month_files(output)
    assert set(written) == {"month=01", "month=02"}

    again = batch.backfill("green", (2021, 1), (2021, 2), model_npz, output, progress=False, log=lines.append)
    assert all(r.skipped for r in again.values())
    assert month_files(output) == written
    assert sum("skipped" in line for line in lines) == 2

    forced = batch.backfill(
        "green", (2021, 1), (2021, 2), model_npz, output, force=True, progress=False, log=lines.append
    )
    assert not any(r.skipped for r in forced.values())
    rewritten = month_files(output)
    assert all(rewritten[m][0] != written[m][0] for m in written)


def test_an_interrupted_backfill_resumes_where_it_stopped(model_npz, output, monkeypatch):
    chunks_per_month = 1  # default chunk size: one chunk per green month
    with monkeypatch.context() as patch:
        calls = fail_on_call(patch, call=chunks_per_month + 1, exception=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            batch.backfill("green", (2021, 1), (2021, 2), model_npz, output, progress=False, log=lambda _: None)
    assert len(calls) == 2
    done = month_files(output)
    assert set(done) == {"month=01"}  # February was cut off and left nothing

    lines = []
    resumed = batch.backfill("green", (2021, 1), (2021, 2), model_npz, output, progress=False, log=lines.append)
    assert resumed[2021, 1].skipped and not resumed[2021, 2].skipped
    assert month_files(output)["month=01"] == done["month=01"]
    assert set(month_files(output)) == {"month=01", "month=02"}


def test_backfill_cli_reports_failed_months_and_does_the_rest(model_npz, output, tmp_path, monkeypatch, capsys):
    backfill = load_script("backfill")
    monkeypatch.setenv("RIDE_DURATION_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TLC_BASE_URL", "http://127.0.0.1:9")  # 2021-03 is not mirrored: it fails
    model_and_output = ["--model", str(model_npz), "--output", str(output)]
    code = backfill.main([*"--from 2021-02 --to 2021-03 --taxi-type green".split(), *model_and_output])
    out, err = capsys.readouterr()
    assert code == 1
    assert "green 2021-02 scored" in out and "green 2021-03 failed" in out
    assert "2 month(s): 1 scored, 0 already written, 1 failed" in err
    assert "  2021-03: " in err and "green_tripdata_2021-03.parquet" in err
    assert set(month_files(output)) == {"month=02"}
    assert backfill.main([*"--from 2021-02 --to 2021-01 --taxi-type green".split(), *model_and_output]) == 1
    assert "range is empty" in capsys.readouterr().err


def test_months_cross_the_year():
    assert batch.months((2020, 11), (2021, 2)) == [(2020, 11), (2020, 12), (2021, 1), (2021, 2)]
    assert batch.parse_year_month("2021-3") == (2021, 3)
    with pytest.raises(batch.BatchError):
        batch.parse_year_month("2021-13")


def test_scoring_an_npz_model_imports_neither_sklearn_nor_mlflow(model_npz, output):
    code = (
        "import sys; from ride_duration import batch; "
        "batch.score_month('green', 2021, 2, sys.argv[1], sys.argv[2], progress=False); "
        "print(sorted(m for m in ('sklearn', 'mlflow', 'pyspark') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_npz), str(output)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_batch_requirements_are_pinned_as_in_the_lock():
    def pins(path: Path) -> dict[str, str]:
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return dict(line.split("==", 1) for line in lines if "==" in line)

    wanted, locked = pins(REPO / "batch" / "requirements.txt"), pins(REPO / "requirements.lock")
    assert {"numpy", "pandas", "pyarrow", "boto3", "tqdm"} <= set(wanted)
    assert {name: locked.get(name) for name in wanted} == wanted


def test_a_model_from_s3_or_a_bare_run_id_scores_like_the_local_file(model_npz, bucket, output, tmp_path, monkeypatch):
    import boto3

    run_id = "0123456789abcdef0123456789abcdef"
    s3 = boto3.client("s3")
    # Where an MLflow run keeps its compact export: <experiment>/<run id>/artifacts/compact/model.npz
    s3.upload_file(str(model_npz), bucket, f"7/{run_id}/artifacts/compact/model.npz")
    monkeypatch.setenv("MODEL_BUCKET", bucket)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "7")
    local = pd.read_parquet(batch.score_month("green", 2021, 2, model_npz, output, progress=False).location)
    for spec in (f"s3://{bucket}/7/{run_id}/artifacts/compact/model.npz", run_id):
        result = batch.score_month("green", 2021, 2, spec, tmp_path / spec[-8:], progress=False)
        pd.testing.assert_frame_equal(pd.read_parquet(result.location), local)
    with pytest.raises(ModelNotFound, match="no run f+"):
        load_model("f" * 32)


def test_progress_shows_on_a_terminal_only(model_npz, output, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        batch.score_month("green", 2021, 2, model_npz, output, rows=SMALL_CHUNK, progress=None)
        assert ("green 2021-02: 100%" in stream.getvalue()) is shown, stream.getvalue()


def test_an_unwritable_output_is_one_clear_error(model_npz, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(batch.BatchError, match="cannot write"):
        batch.score_month("green", 2021, 2, model_npz, blocker / "output", progress=False)
