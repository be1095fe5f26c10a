"""The ride features, defined once for training and for every way of serving.

A ride is a mapping with the RAW_FIELDS. `feature_columns` turns rides into the model's
features, one column per feature: the pickup/drop-off pair as one categorical feature, PU_DO,
and the distance as a number. Everything else follows from these two definitions:

- training: `ride_features` gives DictVectorizer one dict per ride, built from feature_columns;
- serving: ride_duration.compact evaluates the fitted model on feature_columns, with numpy;
- validation: ride_duration.rides checks an incoming ride's RAW_FIELDS as they declare.

To add a feature, add its column to `feature_columns` (a raw field it needs: to RAW_FIELDS
too) and retrain (`make train`). A string column is categorical (DictVectorizer one-hot
encodes it as `name=value`; use `category_keys` to build one from integer ids), a numeric
column stays a number. Feature names must not contain "=". A model remembers the feature
names it was fitted on and refuses to load where feature_columns builds others.
"""

from __future__ import annotations

import numpy as np

# How each kind of raw field is held once read: rides.py says what each kind accepts.
DTYPES = {"integer": np.int64, "number": np.float64}


class RawField:
    """An input field of a ride: how to read it, and what ride_duration.rides accepts.

    kind: "integer" (a whole number; 130.0 counts as 130) or "number" (any finite number).
    `what` ends the sentence "must be ..." of a type error, `unit` follows a range error's bounds.
    (A plain class, not a dataclass: importing dataclasses would add to every service's start-up.)
    """

    __slots__ = ("kind", "minimum", "maximum", "what", "unit")

    def __init__(self, kind: str, minimum: float, maximum: float, what: str, unit: str = ""):
        if kind not in DTYPES:  # fail at import, not at the first ride
            raise ValueError(f"unknown raw field kind {kind!r}: choose one of {', '.join(DTYPES)}")
        self.kind, self.minimum, self.maximum, self.what, self.unit = kind, minimum, maximum, what, unit

    def __repr__(self) -> str:
        return f"RawField({self.kind!r}, {self.minimum!r}, {self.maximum!r}, {self.what!r}, unit={self.unit!r})"


MIN_LOCATION_ID, MAX_LOCATION_ID = 1, 265  # the TLC's taxi zones
# A ride of at most an hour (the model's range) cannot go further; the TLC's files hold typos
# of thousands of miles, which cleaning drops (a linear model's distance weight depends on it).
MAX_TRIP_DISTANCE = 100.0

RAW_FIELDS = {
    "PULocationID": RawField("integer", MIN_LOCATION_ID, MAX_LOCATION_ID, "an integer zone id"),
    "DOLocationID": RawField("integer", MIN_LOCATION_ID, MAX_LOCATION_ID, "an integer zone id"),
    "trip_distance": RawField("number", 0, MAX_TRIP_DISTANCE, "a number of miles", unit="miles"),
}
RIDE_FIELDS = tuple(RAW_FIELDS)


def feature_columns(rides) -> dict:
    """The model's features for a list of ride dicts or a DataFrame: name -> one value per ride."""
    ride = raw_columns(rides)
    return {
        "PU_DO": category_keys(ride["PULocationID"], ride["DOLocationID"]),
        "trip_distance": ride["trip_distance"],
    }


def ride_features(rides) -> list[dict]:
    """Feature dicts for DictVectorizer, from a list of ride dicts or a DataFrame of rides."""
    columns = feature_columns(rides)
    values = [np.asarray(column).tolist() for column in columns.values()]  # numpy scalars -> str, int, float
    return [dict(zip(columns, row)) for row in zip(*values)]


def make_pipeline(regressor):
    """Feature step + DictVectorizer + regressor: one object that takes raw rides."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.pipeline import make_pipeline as sk_make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return sk_make_pipeline(FunctionTransformer(ride_features), DictVectorizer(), regressor)


# ---- building blocks for feature_columns ------------------------------------------------
def raw_columns(rides) -> dict[str, np.ndarray]:
    """Each of RAW_FIELDS as a numpy column (int64 or float64 by kind), from ride dicts or a DataFrame."""
    if hasattr(rides, "columns"):  # a DataFrame: its columns as they are, without a row-wise pass
        return {name: rides[name].to_numpy(DTYPES[field.kind]) for name, field in RAW_FIELDS.items()}
    rides = rides if isinstance(rides, (list, tuple)) else list(rides)
    return {
        name: np.fromiter((ride[name] for ride in rides), dtype=DTYPES[field.kind], count=len(rides))
        for name, field in RAW_FIELDS.items()
    }


class Categories:
    """A categorical column kept as distinct labels and one code per ride: labels[codes] are its values.

    Rides repeat a few thousand zone pairs, so the strings are made once per pair and the
    compact model looks each label up once, not once per ride.
    """

    __slots__ = ("codes", "labels")

    def __init__(self, codes: np.ndarray, labels: np.ndarray):
        self.codes, self.labels = codes, labels

    def __len__(self) -> int:
        return len(self.codes)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self.labels[self.codes]
        return values if dtype is None else values.astype(dtype)


FEW_RIDES = 100  # up to here plain Python is faster than sorting with numpy


def category_keys(*columns, separator: str = "_") -> Categories:
    """A categorical feature joining integer columns, one key per ride: (130, 205) -> "130_205"."""
    columns = [np.asarray(column, dtype=np.int64) for column in columns]
    rows = len(columns[0])
    if rows <= FEW_RIDES:  # a web request or a Kinesis batch: numpy's per-call costs would dominate
        positions: dict[tuple, int] = {}
        rows_of_ids = zip(*(column.tolist() for column in columns))  # Python ints: str() of them is fast
        codes = [positions.setdefault(combination, len(positions)) for combination in rows_of_ids]
        labels = np.array([separator.join(map(str, combination)) for combination in positions], dtype=object)
        return Categories(np.array(codes, dtype=np.intp), labels)
    # One int64 per combination (mixed radix over each column's range), so np.unique sorts numbers.
    lows = [int(column.min()) for column in columns]
    spans = [int(column.max()) - low + 1 for column, low in zip(columns, lows)]
    if np.prod(spans, dtype=float) < 2.0**62:
        combined = np.zeros(rows, dtype=np.int64)
        for column, low, span in zip(columns, lows, spans):
            combined = combined * span + (column - low)
        _, first, codes = np.unique(combined, return_index=True, return_inverse=True)
    else:  # ranges too wide to combine: compare the rows themselves
        _, first, codes = np.unique(np.stack(columns, axis=1), axis=0, return_index=True, return_inverse=True)
    firsts = zip(*(column[first].tolist() for column in columns))
    labels = np.array([separator.join(map(str, combination)) for combination in firsts], dtype=object)
    return Categories(codes.reshape(-1), labels)
