"""The ride features, defined once for training and for every way of serving.

A ride is a mapping with PULocationID, DOLocationID and trip_distance. The model sees the
pickup/drop-off pair as one categorical feature, PU_DO, and the distance as a number.
"""

from __future__ import annotations

RIDE_FIELDS = ("PULocationID", "DOLocationID", "trip_distance")


def pu_do(pickup, dropoff) -> str:
    return f"{int(pickup)}_{int(dropoff)}"


def ride_features(rides) -> list[dict]:
    """Feature dicts for DictVectorizer, from a list of ride dicts or a DataFrame of rides."""
    if hasattr(rides, "columns"):  # a DataFrame: build the keys column-wise, much faster
        keys = (
            rides["PULocationID"].astype("int64").astype(str) + "_" + rides["DOLocationID"].astype("int64").astype(str)
        )
        distances = rides["trip_distance"].astype("float64")
        return [{"PU_DO": k, "trip_distance": d} for k, d in zip(keys.tolist(), distances.tolist())]
    return [
        {"PU_DO": pu_do(r["PULocationID"], r["DOLocationID"]), "trip_distance": float(r["trip_distance"])}
        for r in rides
    ]


def make_pipeline(regressor):
    """Feature step + DictVectorizer + regressor: one object that takes raw rides."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import make_pipeline as sk_make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return sk_make_pipeline(FunctionTransformer(ride_features), DictVectorizer(), regressor)
