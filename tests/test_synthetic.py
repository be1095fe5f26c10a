"""The synthetic month: the real schema, the real month's statistics, always labelled."""

from __future__ import annotations

import pandas as pd
import pytest

from ride_duration import synthetic
from ride_duration.data import clean_trips


@pytest.fixture(scope="module")
def real(tlc_mirror):
    return pd.read_parquet(tlc_mirror / "green_tripdata_2021-01.parquet")


@pytest.fixture(scope="module")
def fake(real):
    return synthetic.generate(200_000, seed=7, measured=synthetic.profile(real))


def test_schema_matches_the_real_month(real, fake):
    assert list(fake.columns) == list(real.columns)
    assert fake.dtypes.equals(real.dtypes)
    assert fake.attrs["synthetic"] is True


def test_statistics_match_the_real_month(real, fake):
    real_clean, real_report = clean_trips(real)
    fake_clean, fake_report = clean_trips(fake)
    # Share of rows kept by cleaning within 1 point.
    assert fake_report.rows_out / fake_report.rows_in == pytest.approx(
        real_report.rows_out / real_report.rows_in, abs=0.01
    )
    # Medians and quartiles of distance and duration within 10 %.
    for column in ("trip_distance", "duration"):
        for q in (0.25, 0.5, 0.75):
            assert fake_clean[column].quantile(q) == pytest.approx(real_clean[column].quantile(q), rel=0.10), (
                column,
                q,
            )
    # The 20 busiest pickup zones are mostly the same, with shares within 1 point.
    real_share = real_clean.PULocationID.value_counts(normalize=True)
    fake_share = fake_clean.PULocationID.value_counts(normalize=True)
    assert len(set(real_share.index[:20]) & set(fake_share.index[:20])) >= 17
    for zone in real_share.index[:10]:
        assert fake_share[zone] == pytest.approx(real_share[zone], abs=0.01)


def test_month_and_taxi_type_are_honoured(real):
    yellow = synthetic.generate(1_000, "yellow", 2022, 3, measured=synthetic.profile(real))
    assert "tpep_pickup_datetime" in yellow.columns and "lpep_pickup_datetime" not in yellow.columns
    assert yellow.tpep_pickup_datetime.dt.month.eq(3).all() and yellow.tpep_pickup_datetime.dt.year.eq(2022).all()


def test_written_file_says_it_is_synthetic(fake, tmp_path, tlc_mirror):
    path = synthetic.write(fake.head(1_000), tmp_path / "month.parquet")
    assert synthetic.is_synthetic(path)
    assert not synthetic.is_synthetic(tlc_mirror / "green_tripdata_2021-01.parquet")
    assert "SYNTHETIC" in synthetic.default_path("green", 2021, 1, 10).name


def test_same_seed_same_month(real):
    measured = synthetic.profile(real)
    pd.testing.assert_frame_equal(
        synthetic.generate(5_000, seed=3, measured=measured), synthetic.generate(5_000, seed=3, measured=measured)
    )


def test_cli_writes_a_labelled_month(tmp_path, capsys, tlc_mirror):  # profiles the real January
    target = tmp_path / "synthetic.parquet"
    synthetic.main(
        ["--rows", "2000", "--taxi-type", "yellow", "--year", "2021", "--month", "3", "--output", str(target)]
    )
    assert "SYNTHETIC month: 2,000 rows" in capsys.readouterr().out
    frame = pd.read_parquet(target)
    assert synthetic.is_synthetic(target) and len(frame) == 2_000
    assert frame.tpep_pickup_datetime.dt.month.eq(3).all()
