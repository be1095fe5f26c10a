"""The Spark engine scores a month exactly as the pandas engine does (local[2], small JVM)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ride_duration import batch

pytest.importorskip("pyspark")
try:
    batch.java_for_spark()
except batch.BatchError as missing:  # the one prerequisite the project cannot install
    pytest.skip(str(missing), allow_module_level=True)


@pytest.fixture(scope="session")
def spark():
    """One small local session for the whole test session."""
    session = batch.spark_session()
    yield session
    session.stop()


@pytest.mark.timeout(240)
def test_spark_output_equals_the_pandas_engine(spark, model_files, tmp_path):
    model = batch.compact_model(model_files[1])
    on_pandas = batch.score_month("green", 2021, 2, model, tmp_path / "pandas", progress=False)
    on_spark = batch.score_month("green", 2021, 2, model, tmp_path / "spark", engine="spark", spark=spark)

    assert on_spark.location.endswith(on_pandas.location.removeprefix(str(tmp_path / "pandas")))
    assert pq.read_schema(on_spark.location) == pq.read_schema(on_pandas.location)
    expected, got = pd.read_parquet(on_pandas.location), pd.read_parquet(on_spark.location)
    assert len(got) == len(expected) == on_spark.rows_scored
    # Same rows, same ids, same order, same predictions to the bit.
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert on_spark.mean_predicted_duration == pytest.approx(on_pandas.mean_predicted_duration)
    # The staging directory is gone: only the result is under the output root.
    assert [p for p in (tmp_path / "spark").rglob("*") if p.is_file()] == [Path(on_spark.location)]
