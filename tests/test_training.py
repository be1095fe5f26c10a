"""The feature pipeline, the reference results, and the compact export used for serving."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ride_duration.compact import CompactModel
from ride_duration.features import ride_features
from ride_duration.models import ModelNotFound, load_compact
from ride_duration.train import fit, rmse

RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


def test_features_are_the_same_from_dicts_and_from_a_frame(trips):
    valid = trips[1].head(50)
    from_frame = ride_features(valid)
    from_dicts = ride_features(valid[["PULocationID", "DOLocationID", "trip_distance"]].to_dict("records"))
    assert from_frame == from_dicts
    assert ride_features([RIDE]) == [{"PU_DO": "130_205", "trip_distance": 3.66}]


def test_pipeline_takes_raw_ride_dicts(linear_pipeline, trips):
    valid = trips[1].head(200)
    rides = valid[["PULocationID", "DOLocationID", "trip_distance"]].to_dict("records")
    np.testing.assert_array_equal(linear_pipeline.predict(rides), linear_pipeline.predict(valid))
    assert np.isfinite(linear_pipeline.predict([RIDE])).all()


def test_baseline_rmse_is_the_reference_value(linear_pipeline, trips):
    valid = trips[1]
    assert rmse(valid.duration, linear_pipeline.predict(valid)) == pytest.approx(6.7560, abs=1e-3)


LINEAR_FIT = """
import sys, numpy as np
from ride_duration import train
train_df, valid_df = train.read_months("green:2021-01", "green:2021-02")
np.save(sys.argv[1], train.fit("linear", train_df).predict(valid_df))
"""


def has_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " avx2" in cpuinfo.read_text()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not has_avx2(), reason="x86-64 kernels")
def test_the_linear_fit_predicts_the_same_whatever_kernel_openblas_picks(tmp_path, tlc_mirror):
    """What another CPU would do: OpenBLAS picks its kernels by CPU, OPENBLAS_CORETYPE forces one."""
    predictions = []
    for kernel in ("Prescott", "Haswell"):  # SSE3 only, and AVX2: every x86-64 CPU runs the first
        out = tmp_path / f"{kernel}.npy"
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "TLC_MIRROR": str(tlc_mirror)}
        subprocess.run([sys.executable, "-c", LINEAR_FIT, str(out)], env=env, check=True, timeout=300)
        predictions.append(np.load(out))
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=0, atol=1e-9)


def test_lasso_rmse_is_the_reference_value(trips):
    train, valid = trips
    assert rmse(valid.duration, fit("lasso", train).predict(valid)) == pytest.approx(7.6972, abs=1e-3)


def test_the_baseline_gives_the_distance_its_weight(linear_pipeline):
    """Cleaning drops the TLC's distance typos; kept, they take the weight down to 0.00004 min/mile."""
    vectorizer = linear_pipeline.named_steps["dictvectorizer"]
    weight = linear_pipeline.named_steps["linearregression"].coef_[vectorizer.vocabulary_["trip_distance"]]
    assert 0.5 < weight < 3  # minutes per mile: city traffic, not a constant
    # A ride of a zone pair January never saw is then still predicted by its length.
    unseen = {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}
    assert "PU_DO=1_2" not in vectorizer.vocabulary_
    assert linear_pipeline.predict([{**unseen, "trip_distance": 20.0}])[0] - linear_pipeline.predict([unseen])[0] > 10


@pytest.mark.parametrize("pipeline_fixture", ["linear_pipeline", "small_forest"])
def test_compact_export_predicts_what_the_pipeline_predicts(request, pipeline_fixture, trips):
    pipeline = request.getfixturevalue(pipeline_fixture)
    valid = trips[1]
    compact = CompactModel.from_bytes(CompactModel.from_pipeline(pipeline, version="v1").to_bytes())
    np.testing.assert_allclose(compact.predict(valid), pipeline.predict(valid), rtol=0, atol=1e-9)
    unseen = [{"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0.0}, RIDE]
    np.testing.assert_allclose(compact.predict(unseen), pipeline.predict(unseen), rtol=0, atol=1e-9)
    assert compact.version == "v1"


@pytest.mark.parametrize("one_hot_threshold", [0.5, -0.5, 1.5])
def test_forest_walk_follows_scikit_learns_rule_at_every_split(one_hot_threshold):
    """x > threshold goes right, x being 0/1 for a PU_DO column: also for thresholds a fit never makes."""
    # node 0: PU_DO=1_2 > t ? 2 : 1;  node 1: distance > 5 ? 4 : 3;  nodes 2, 3, 4: leaves
    feature = np.array([0, 1, -2, -2, -2], dtype=np.int32)
    threshold = np.array([one_hot_threshold, 5.0, -2.0, -2.0, -2.0])
    left, right = np.array([1, 3, 0, 0, 0], dtype=np.int32), np.array([2, 4, 0, 0, 0], dtype=np.int32)
    value = np.array([0.0, 0.0, 30.0, 10.0, 20.0])
    compact = CompactModel(
        {
            "format": np.array(2),
            "version": np.array("hand-made"),
            "kind": np.array("forest"),
            # column 0: PU_DO=1_2 (one-hot), column 1: trip_distance
            "feature_names": np.array(["PU_DO", "trip_distance"]),
            "column_feature": np.array([0, 1]),
            "column_category": np.array(["1_2", ""]),
            "column_is_category": np.array([True, False]),
            "feature": feature,
            "threshold": threshold,
            "left": left,
            "right": right,
            "value": value,
            "roots": np.array([0], dtype=np.int32),
            "max_depth": np.array(2),
        }
    )

    def walk(ride):
        cells = [float((ride["PULocationID"], ride["DOLocationID"]) == (1, 2)), ride["trip_distance"]]
        node = 0
        while feature[node] != -2:
            node = right[node] if cells[feature[node]] > threshold[node] else left[node]
        return value[node]

    rides = [
        {"PULocationID": pu, "DOLocationID": do, "trip_distance": d}
        for pu, do in [(1, 2), (2, 1), (7, 7)]
        for d in (0.5, 5.0, 5.000001, 40.0)
    ]
    np.testing.assert_array_equal(compact.predict(rides), [walk(r) for r in rides])


def test_saved_model_files_load_with_one_version(model_files, monkeypatch):
    pkl, npz = model_files
    monkeypatch.setenv("ALLOW_UNSAFE_PICKLE", "1")  # our own file: tests/test_pickle_opt_in.py is the default
    from_npz, from_pkl = load_compact(npz), load_compact(pkl)
    assert from_npz.version == from_pkl.version and from_npz.version.startswith("lin_reg-")
    np.testing.assert_array_equal(from_npz.predict([RIDE]), from_pkl.predict([RIDE]))


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="no model file"):
        load_compact(tmp_path / "nothing.npz")


def test_training_cli_writes_both_files(tmp_path, capsys, tlc_mirror):
    from ride_duration.train import main

    main(["--output", str(tmp_path)])
    out = capsys.readouterr().out
    printed = re.search(r"validation RMSE (\d+\.\d{4}) on 61,895 rides", out)
    assert printed and float(printed[1]) == pytest.approx(6.7560, abs=1e-3), out
    assert (tmp_path / "lin_reg.pkl").is_file() and (tmp_path / "lin_reg.npz").is_file()


def test_train_fits_on_given_data_with_overridden_settings(trips):
    """The one fitting step, as ride_duration.registry calls it: rows given, settings overridden."""
    from ride_duration.train import FOREST_PARAMS, train

    small = trips[0].head(2000), trips[1].head(500)
    result = train("forest", data=small, params={"n_estimators": 3, "max_depth": 4})
    assert result.params == {**FOREST_PARAMS, "n_estimators": 3, "max_depth": 4}
    forest = result.pipeline.steps[-1][1]
    assert (len(forest.estimators_), forest.max_depth, forest.min_samples_leaf) == (3, 4, 10)
    assert (result.train_rows, result.valid_rows) == (2000, 500)
    assert result.rmse == pytest.approx(rmse(small[1].duration, result.pipeline.predict(small[1])))
