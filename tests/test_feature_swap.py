"""Another feature definition, swapped in at its one place, serves through the compact export unchanged.

The swap is `features.feature_columns` (and `features.RAW_FIELDS` for a new raw input) and
nothing else: training, the compact model and the validation of incoming rides follow it.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from ride_duration import features
from ride_duration.compact import CompactModel
from ride_duration.features import RawField, category_keys, raw_columns
from ride_duration.models import ModelNotFound, load_compact
from ride_duration.rides import InvalidRide, validate_ride

RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


def separate_zones(rides) -> dict:
    """(a) Pickup and drop-off as two categorical features, plus the distance."""
    ride = raw_columns(rides)
    return {
        "PU": category_keys(ride["PULocationID"]),
        # A plain string array, not features.Categories: the compact model takes both.
        "DO": ride["DOLocationID"].astype(str),
        "trip_distance": ride["trip_distance"],
    }


def with_log_distance(rides) -> dict:
    """(b) The default features plus a numeric one derived from the same raw fields."""
    ride = raw_columns(rides)
    return {
        "PU_DO": category_keys(ride["PULocationID"], ride["DOLocationID"]),
        "trip_distance": ride["trip_distance"],
        "log_distance": np.log1p(ride["trip_distance"]),
    }


def small_forest():
    return RandomForestRegressor(n_estimators=10, max_depth=10, min_samples_leaf=10, random_state=0, n_jobs=-1)


@pytest.mark.parametrize("regressor", [LinearRegression, small_forest], ids=["linear", "forest"])
@pytest.mark.parametrize("definition", [separate_zones, with_log_distance], ids=["PU+DO", "log distance"])
def test_a_swapped_feature_definition_serves_as_scikit_learn_predicts(monkeypatch, trips, definition, regressor):
    monkeypatch.setattr(features, "feature_columns", definition)
    train, valid = trips
    pipeline = features.make_pipeline(regressor()).fit(train, train["duration"].to_numpy())
    compact = CompactModel.from_bytes(CompactModel.from_pipeline(pipeline, version="swapped").to_bytes())
    assert compact.feature_names == set(definition([]))
    expected = pipeline.predict(valid)
    np.testing.assert_allclose(compact.predict(valid), expected, rtol=0, atol=1e-9)
    rides = valid[list(features.RIDE_FIELDS)].to_dict("records")
    np.testing.assert_allclose(compact.predict(rides), expected, rtol=0, atol=1e-9)
    few = features.FEW_RIDES  # a request's few rides take a path of their own
    np.testing.assert_allclose(compact.predict(rides[:few]), expected[:few], rtol=0, atol=1e-9)
    unseen = [{"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0.0}, {**RIDE, "PULocationID": 264}]
    np.testing.assert_allclose(compact.predict(unseen), pipeline.predict(unseen), rtol=0, atol=1e-9)


def test_a_model_fitted_on_other_features_is_refused_at_load(monkeypatch, model_files):
    _, npz = model_files  # fitted on the default features
    monkeypatch.setattr(features, "feature_columns", with_log_distance)
    with pytest.raises(ModelNotFound, match="fitted on the features PU_DO, trip_distance, .* log_distance, .*retrain"):
        load_compact(npz)


def test_a_freshly_trained_model_file_round_trips(model_files, linear_pipeline, trips, monkeypatch):
    pkl, npz = model_files
    valid = trips[1]
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")  # the pipeline just pickled by train.save
    for model in (load_compact(npz), load_compact(pkl)):
        np.testing.assert_allclose(model.predict(valid), linear_pipeline.predict(valid), rtol=0, atol=1e-9)
    with np.load(npz, allow_pickle=False) as arrays:
        assert int(arrays["format"]) == 2 and str(arrays["kind"]) == "linear"


def old_format_arrays(compact: CompactModel) -> dict[str, np.ndarray]:
    """The linear export as the format before feature definitions had (PU_DO + trip_distance only)."""
    a = compact.arrays
    vocabulary = np.where(a["column_is_category"], a["column_category"], "")
    distance = int(np.flatnonzero(a["feature_names"][a["column_feature"]] == "trip_distance")[0])
    return {
        "version": a["version"],
        "kind": a["kind"],
        "vocabulary": vocabulary,
        "distance_feature": np.array(distance),
        "coef": a["coef"],
        "intercept": a["intercept"],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("old format", "older format, fixed to PU_DO and trip_distance: export it again"),
        ("unknown kind", "unknown model kind 'boosting'"),
        ("newer format", "compact export format 3, this code reads 2"),
    ],
)
def test_a_file_this_code_cannot_evaluate_fails_at_load(tmp_path, linear_pipeline, change, message):
    compact = CompactModel.from_pipeline(linear_pipeline, version="v1")
    arrays = {
        "old format": old_format_arrays(compact),
        "unknown kind": {**compact.arrays, "kind": np.array("boosting")},
        "newer format": {**compact.arrays, "format": np.array(3)},
    }[change]
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelNotFound, match=message):
        load_compact(path)


def test_a_raw_field_declared_once_is_validated(monkeypatch):
    passengers = RawField("integer", 0, 9, "a whole number of passengers")
    monkeypatch.setattr(features, "RAW_FIELDS", {**features.RAW_FIELDS, "passenger_count": passengers})
    assert validate_ride({**RIDE, "passenger_count": 2.0}) == {**RIDE, "passenger_count": 2}
    for ride, error in [
        (RIDE, "ride is missing field(s): passenger_count"),
        ({**RIDE, "passenger_count": "two"}, "ride.passenger_count must be a whole number of passengers, got a string"),
        ({**RIDE, "passenger_count": 12}, "ride.passenger_count must be between 0 and 9, got 12"),
    ]:
        with pytest.raises(InvalidRide, match=error.replace("(", r"\(").replace(")", r"\)")):
            validate_ride(ride)


def test_an_unknown_raw_field_kind_fails_where_it_is_declared():
    with pytest.raises(ValueError, match="unknown raw field kind 'text'"):
        RawField("text", 0, 1, "a text")


def test_the_registered_signature_follows_the_declared_raw_fields(monkeypatch):
    from ride_duration.registry import _signature

    def columns():
        return [(column["name"], column["type"]) for column in _signature().inputs.to_dict()]

    assert columns() == [("PULocationID", "long"), ("DOLocationID", "long"), ("trip_distance", "double")]
    passengers = RawField("integer", 0, 9, "a whole number of passengers")
    fare = RawField("number", 0, 1000, "an amount of dollars")
    monkeypatch.setattr(features, "RAW_FIELDS", {**features.RAW_FIELDS, "passenger_count": passengers, "fare": fare})
    assert columns()[3:] == [("passenger_count", "long"), ("fare", "double")]
