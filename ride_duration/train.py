"""Train the ride-duration pipelines and write the model files the services load.

    python -m ride_duration.train [--model linear|lasso|forest] [--train green:2021-01]
                                  [--valid green:2021-02] [--output models/]

writes <output>/<name>.pkl (the scikit-learn pipeline) and <name>.npz (its compact serving
export, see ride_duration.compact) and prints the validation RMSE. The services load the .npz;
the .pkl is for scikit-learn itself, and ride_duration.models loads it only with
ALLOW_UNSAFE_PICKLE=1 (unpickling runs whatever code a file holds).

`train` is the one fitting step: ride_duration.registry calls it too before logging to MLflow.
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Lasso, LinearRegression

from ride_duration import config
from ride_duration.compact import CompactModel, file_version
from ride_duration.features import make_pipeline

TARGET = "duration"
# The forest's settings, chosen in the course this project grew from; the slowest fit of the lessons.
FOREST_PARAMS = {"max_depth": 20, "n_estimators": 100, "min_samples_leaf": 10, "random_state": 0}
# On the sparse one-hot matrix LinearRegression runs lsqr, which stops at `tol`. At its default
# (1e-6) a prediction moves by up to 0.005 minutes from one CPU to another (OpenBLAS picks its
# kernels by CPU); at 1e-14 lsqr converges, in the same time, and they agree to 1e-9.
LINEAR_PARAMS = {"tol": 1e-14}


def model_params(kind: str, overrides: dict | None = None) -> dict:
    """The regressor's settings for `kind`: this module's defaults, then `overrides`."""
    defaults = {"linear": LINEAR_PARAMS, "lasso": {"alpha": 0.01}, "forest": FOREST_PARAMS}
    if kind not in defaults:
        raise ValueError(f"unknown model kind {kind!r}: choose one of {', '.join(defaults)}")
    return {**defaults[kind], **(overrides or {})}


def regressor(kind: str, params: dict | None = None):
    """An unfitted regressor of `kind` with model_params(kind, params)."""
    # n_jobs is how to fit (every core), not what is fitted: not among the logged settings.
    makers = {"linear": LinearRegression, "lasso": Int32Lasso, "forest": partial(RandomForestRegressor, n_jobs=-1)}
    return makers[kind](**model_params(kind, params))


class Int32Lasso(Lasso):
    """Lasso whose solver gets int32 sparse indices: DictVectorizer may emit int64 ones."""

    def fit(self, X, y, **kwargs):
        X = X.tocsr(copy=True)
        X.indices, X.indptr = X.indices.astype(np.int32), X.indptr.astype(np.int32)
        return super().fit(X, y, **kwargs)


def fit(kind: str, train_df, params: dict | None = None):
    pipeline = make_pipeline(regressor(kind, params))
    return pipeline.fit(train_df, train_df[TARGET].to_numpy())


def rmse(y_true, y_pred) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))


@dataclass
class TrainingResult:
    pipeline: object
    rmse: float
    fit_seconds: float
    train_rows: int
    valid_rows: int
    params: dict  # the regressor's settings (model_params), as an MLflow run logs them


def parse_month(text: str) -> tuple[str, int, int]:
    """'green:2021-01' -> ('green', 2021, 1)."""
    taxi_type, _, year_month = text.partition(":")
    year, _, month = year_month.partition("-")
    return taxi_type, int(year), int(month)


def read_months(train_month: str, valid_month: str) -> tuple:
    """The cleaned rides of the month to fit on and of the month to validate on."""
    from ride_duration.data import read_trips

    return read_trips(*parse_month(train_month))[0], read_trips(*parse_month(valid_month))[0]


def train(
    kind: str = "linear",
    train_month: str = "green:2021-01",
    valid_month: str = "green:2021-02",
    *,
    data: tuple | None = None,
    params: dict | None = None,
) -> TrainingResult:
    """Fit a `kind` pipeline on the first month and score it on the second.

    data: (train_df, valid_df) already read, instead of the months; params: overrides of the
    regressor's settings (model_params).
    """
    train_df, valid_df = data if data is not None else read_months(train_month, valid_month)
    started = time.perf_counter()
    pipeline = fit(kind, train_df, params)
    fit_seconds = time.perf_counter() - started
    score = rmse(valid_df[TARGET], pipeline.predict(valid_df))
    return TrainingResult(pipeline, score, fit_seconds, len(train_df), len(valid_df), model_params(kind, params))


def save(pipeline, directory: Path, name: str) -> tuple[Path, Path]:
    """Write the pipeline (.pkl) and its compact export (.npz), each atomically.

    The compact model's version is the pipeline file's sha256 prefix, so a service can say
    exactly which model answered.
    """
    blob = pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL)
    compact = CompactModel.from_pipeline(pipeline, version=file_version(name, blob))
    pkl, npz = directory / f"{name}.pkl", directory / f"{name}.npz"
    for path, content in ((pkl, blob), (npz, compact.to_bytes())):
        with config.atomic_path(path) as tmp:
            tmp.write_bytes(content)
    return pkl, npz


MODEL_NAMES = {"linear": "lin_reg", "lasso": "lasso", "forest": "random_forest"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODEL_NAMES), default="linear")
    parser.add_argument("--train", default="green:2021-01", help="taxi_type:YYYY-MM to fit on")
    parser.add_argument("--valid", default="green:2021-02", help="taxi_type:YYYY-MM to validate on")
    parser.add_argument("--output", type=Path, default=None, help="directory for the model files [models/]")
    args = parser.parse_args(argv)
    result = train(args.model, args.train, args.valid)
    pkl, npz = save(result.pipeline, args.output or config.models_dir(), MODEL_NAMES[args.model])
    print(
        f"{args.model}: validation RMSE {result.rmse:.4f} on {result.valid_rows:,} rides "
        f"({result.train_rows:,} to fit, {result.fit_seconds:.1f} s)"
    )
    print(f"model: {pkl}\nserving export: {npz}")


if __name__ == "__main__":
    main()
