"""ride_duration.models.load_model without stand-ins: which branch a spec takes, what a light
spec imports, and what it refuses at load (against real servers: test_mlflow.py; hung
endpoints: test_deadlines.py; pickles: test_pickle_opt_in.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ride_duration import models
from ride_duration.models import ModelNotFound, load_model, spec_from_env


def test_each_spec_takes_its_branch(monkeypatch, tmp_path):
    unnamed = tmp_path / "model"  # any existing file is read as a model file
    unnamed.write_bytes(b"")
    asked = []
    for branch in ("_load_through_tracking_server", "_load_run_from_s3", "_load_model_id_from_s3", "load_compact"):
        monkeypatch.setattr(models, branch, lambda spec, branch=branch: asked.append((branch, str(spec))))
    specs = {
        "models:/ride-duration@production": "_load_through_tracking_server",
        "models:/ride-duration/3": "_load_through_tracking_server",
        "models:/m-" + "a" * 32: "_load_through_tracking_server",
        "runs:/" + "a" * 32 + "/model": "_load_through_tracking_server",
        "m-" + "b" * 32: "_load_model_id_from_s3",
        "c" * 32: "_load_run_from_s3",
        "s3://bucket/some/model.npz": "load_compact",
        "models/nothing.npz": "load_compact",  # a missing file is named by load_compact
        str(unnamed): "load_compact",
    }
    for spec in specs:
        load_model(f"  {spec}\n")
    assert asked == [(branch, spec) for spec, branch in specs.items()]


def test_a_local_model_imports_neither_boto3_nor_mlflow(model_files):
    code = (
        "import sys; from ride_duration.models import load_model; "
        f"model = load_model({str(model_files[1])!r}); "
        "print(model.version, sorted(m for m in ('boto3', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:] == ["[]"]


def test_the_spec_comes_from_one_variable(monkeypatch):
    names = ("MODEL_URI", "RUN_ID", "MODEL_ID")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert spec_from_env(names, default="models:/x@y") == "models:/x@y"
    with pytest.raises(ModelNotFound, match="no model configured: set MODEL_URI or RUN_ID or MODEL_ID"):
        spec_from_env(names)
    monkeypatch.setenv("RUN_ID", " " + "a" * 32 + " ")
    assert spec_from_env(names, default="models:/x@y") == "a" * 32
    monkeypatch.setenv("MODEL_URI", "models:/x@z")
    with pytest.raises(ModelNotFound, match=r"set only one of MODEL_URI, RUN_ID, MODEL_ID \(got MODEL_URI, RUN_ID\)"):
        spec_from_env(names)


def test_a_uri_needs_a_tracking_server_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    monkeypatch.setattr(mlflow, "is_tracking_uri_set", lambda: False)
    with pytest.raises(ModelNotFound, match="needs a tracking server: set MLFLOW_TRACKING_URI"):
        load_model("models:/ride-duration@production")


def tiny_export(kind: str) -> dict:
    """A hand-made export over PU_DO=1_2 (one-hot) and trip_distance: a linear model, or one tree."""
    arrays = {
        "format": np.array(2),
        "version": np.array("tiny"),
        "kind": np.array(kind),
        "feature_names": np.array(["PU_DO", "trip_distance"]),
        "column_feature": np.array([0, 1], dtype=np.int32),
        "column_category": np.array(["1_2", ""]),
        "column_is_category": np.array([True, False]),
    }
    if kind == "linear":
        return {**arrays, "coef": np.array([2.0, 3.0]), "intercept": np.array(1.0)}
    # node 0: PU_DO=1_2 ? leaf 2 : node 1;  node 1: distance > 5 ? leaf 4 : leaf 3
    return {
        **arrays,
        "feature": np.array([0, 1, -2, -2, -2], dtype=np.int32),
        "threshold": np.array([0.5, 5.0, -2.0, -2.0, -2.0]),
        "left": np.array([1, 3, 0, 0, 0], dtype=np.int32),
        "right": np.array([2, 4, 0, 0, 0], dtype=np.int32),
        "value": np.array([0.0, 0.0, 30.0, 10.0, 20.0]),
        "roots": np.array([0], dtype=np.int32),
        "max_depth": np.array(2),
    }


DROP = None  # the array left out of the file
DAMAGES = {
    "unknown kind": ("linear", {"kind": "boosting"}, "unknown model kind 'boosting'"),
    "no kind": ("linear", {"kind": DROP}, "unknown model kind '(none)'"),
    "coefficients missing": ("linear", {"coef": [2.0]}, "1 coefficients for 2 columns"),
    "coefficients as text": ("linear", {"coef": ["2", "3"]}, "coef is a 1-d <U1 array"),
    "a child out of range": ("forest", {"left": [1, 3, 0, 0, 9]}, "a node or root index is out of range"),
    "a split on no column": ("forest", {"feature": [0, 7, -2, -2, -2]}, "splits on a column the export does not have"),
    "values short": ("forest", {"value": [0.0, 30.0]}, "the node arrays differ in length"),
    "no trees": ("forest", {"roots": np.array([], dtype=np.int32)}, "no trees"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_model_this_code_cannot_serve_fails_at_load_not_at_predict(tmp_path, damage):
    """Refused when the service starts, in one line, instead of passing /health and answering 500."""
    kind, changes, message = DAMAGES[damage]
    intact = tmp_path / "intact.npz"
    np.savez(intact, **tiny_export(kind))
    ride = {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 7.0}
    assert load_model(intact).predict([ride]).tolist() == [{"linear": 1 + 2 + 3 * 7.0, "forest": 30.0}[kind]]
    arrays = {**tiny_export(kind), **{name: np.array(value) for name, value in changes.items()}}
    arrays = {name: value for name, value in arrays.items() if changes.get(name, value) is not DROP}
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **arrays)
    with pytest.raises(models.ModelUnreadable) as refused:
        load_model(damaged)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"{damaged} is not a readable model")
