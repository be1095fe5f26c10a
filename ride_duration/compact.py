"""A fitted ride pipeline exported to plain numpy arrays, for serving without scikit-learn.

Importing scikit-learn costs seconds and about 200 MB (measured in the README), more than a
Lambda's cold start can pay and more than a request should. The pipelines here are simple
enough to evaluate directly: ride_duration.features, a DictVectorizer, then a linear model or
a forest of regression trees. `CompactModel.from_pipeline` reads the fitted estimators' own
arrays, so the numbers come from scikit-learn and the predictions match its own (tests
compare them on a whole month, also for other feature definitions).

The features are not re-encoded here: predictions start from `features.feature_columns`, the
definition training uses. The export keeps what DictVectorizer learnt about each of its
columns (`name=value`: the one-hot column of a categorical feature's value; a bare `name`: a
numeric feature), so a categorical value maps to its column, or to none when the model never
saw it, exactly as DictVectorizer does. The file is an uncompressed .npz with no pickled
objects, so loading it runs no code; files of another FORMAT are refused at load.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from ride_duration import features

# The layout of the arrays. 1 (unnumbered) was fixed to PU_DO + trip_distance; 2 holds any features.
FORMAT = 2
KINDS = ("linear", "forest")
COMMON_ARRAYS = ("version", "feature_names", "column_feature", "column_category", "column_is_category")
KIND_ARRAYS = {
    "linear": ("coef", "intercept"),
    "forest": ("feature", "threshold", "left", "right", "value", "roots", "max_depth"),
}
LEAF = -2  # the feature id of a leaf node (scikit-learn uses -2 too)
NO_COLUMN = -1  # a ride's one-hot column for a value the model never saw
NEVER = np.int32(-2)  # a split column no ride has (rides' columns are >= NO_COLUMN)
FOREST_CHUNK = 10_000  # rows walked through the forest at once: bounds memory, keeps trees in cache


class ModelFormatError(ValueError):
    """Arrays this code cannot evaluate: another export format, an unknown kind, other features."""


def file_version(name: str, blob: bytes) -> str:
    """The version of a model stored as a file: its name and a sha256 prefix of its bytes."""
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"


class CompactModel:
    """Predicts ride durations from raw rides with numpy alone."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        _check_format(arrays)
        self.arrays = arrays
        self.kind = str(arrays["kind"])
        self.version = str(arrays["version"])
        # The vectorizer's columns by feature: a categorical feature's {value: one-hot column},
        # a numeric feature's column. Dict order is the order inputs are encoded in.
        self.categories: dict[str, dict[str, int]] = {}
        self.numbers: dict[str, int] = {}
        names = arrays["feature_names"].tolist()
        column_feature, one_hot = arrays["column_feature"], arrays["column_is_category"].astype(bool)
        for feature, name in enumerate(names):
            columns = np.flatnonzero(column_feature == feature)  # whole arrays at once: loading stays fast
            if one_hot[columns].all():
                self.categories[name] = dict(zip(arrays["column_category"][columns].tolist(), columns.tolist()))
            elif len(columns) == 1:
                self.numbers[name] = int(columns[0])
            else:
                raise ModelFormatError(f"the feature {name!r} has both numeric and one-hot columns: not supported")
        self.feature_names = {*self.categories, *self.numbers}
        _check_features(self.feature_names, _defined_feature_names())
        if self.kind == "linear":
            # One zero weight appended: column -1 (NO_COLUMN), a value the model never saw, picks it.
            self._weights = np.append(arrays["coef"], 0.0)
            self._intercept = float(arrays["intercept"])
            self._number_weights = [float(arrays["coef"][column]) for column in self.numbers.values()]
        else:
            feature_index = {name: i for i, name in enumerate(names)}
            self._split_columns, self._thresholds, self._children = _walk_tables(
                arrays, [feature_index[n] for n in self.categories], [feature_index[n] for n in self.numbers]
            )

    # ---- building and storing -------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipeline, version: str) -> CompactModel:
        """Export a fitted features.make_pipeline: ride_features -> DictVectorizer -> regressor."""
        if getattr(pipeline.steps[0][1], "func", None) is not features.ride_features:
            raise TypeError(
                "cannot export this pipeline: its first step must be ride_features (features.make_pipeline)"
            )
        vectorizer, regressor = pipeline.steps[-2][1], pipeline.steps[-1][1]
        arrays = {"format": np.array(FORMAT), "version": np.array(version), **_vectorizer_columns(vectorizer)}
        if hasattr(regressor, "coef_"):
            arrays.update(
                kind=np.array("linear"),
                coef=np.asarray(regressor.coef_, dtype=np.float64),
                intercept=np.array(float(regressor.intercept_)),
            )
        elif hasattr(regressor, "estimators_"):
            arrays.update(kind=np.array("forest"), **_flatten_trees(regressor.estimators_))
        else:
            raise TypeError(f"cannot export a {type(regressor).__name__}: linear models and tree forests only")
        return cls(arrays)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(self.to_bytes())
        return path

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls({name: npz[name] for name in npz.files})

    @classmethod
    def load(cls, path: str | Path) -> CompactModel:
        return cls.from_bytes(Path(path).read_bytes())

    # ---- predicting -----------------------------------------------------------------
    def predict(self, rides) -> np.ndarray:
        """Durations in minutes for a list of ride dicts (validated beforehand) or a DataFrame."""
        one_hot, numbers = self.encode(rides)
        if self.kind == "linear":
            return self._predict_linear(one_hot, numbers)
        rows = len(one_hot[0]) if one_hot else len(numbers[0])
        if not rows:
            return np.empty(0)
        return np.concatenate(
            [
                self._predict_forest(
                    [columns[i : i + FOREST_CHUNK] for columns in one_hot],
                    [values[i : i + FOREST_CHUNK] for values in numbers],
                )
                for i in range(0, rows, FOREST_CHUNK)
            ]
        )

    def encode(self, rides) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """What DictVectorizer would see, column-wise: per categorical feature each ride's one-hot
        column (NO_COLUMN for a value never seen), per numeric feature its values."""
        columns = features.feature_columns(rides)
        _check_features(self.feature_names, set(columns))
        one_hot = [_one_hot_columns(columns[name], index) for name, index in self.categories.items()]
        numbers = [np.asarray(columns[name], dtype=np.float64) for name in self.numbers]
        return one_hot, numbers

    def _predict_linear(self, one_hot: list[np.ndarray], numbers: list[np.ndarray]) -> np.ndarray:
        rows = len(one_hot[0]) if one_hot else len(numbers[0])
        predicted = np.full(rows, self._intercept)
        for columns in one_hot:
            predicted += self._weights[columns]
        for weight, values in zip(self._number_weights, numbers):
            predicted += weight * values
        return predicted

    def _predict_forest(self, one_hot: list[np.ndarray], numbers: list[np.ndarray]) -> np.ndarray:
        a = self.arrays
        # Trees compare float32 inputs (scikit-learn casts X), so round numbers the same way.
        numbers = [values.astype(np.float32).astype(np.float64)[None, :] for values in numbers]
        one_hot = [columns.astype(np.int32)[None, :] for columns in one_hot]
        rows = (one_hot or numbers)[0].shape[1]
        # One row per tree: neighbouring cells walk the same tree, whose nodes stay in cache.
        nodes = np.repeat(a["roots"][:, None], rows, axis=1)
        for _ in range(int(a["max_depth"])):
            # A node tests one input; every other input's table holds a test that never passes.
            go_right = np.zeros(nodes.shape, dtype=bool)
            for split_column, columns in zip(self._split_columns, one_hot):
                go_right |= split_column[nodes] == columns
            for threshold, values in zip(self._thresholds, numbers):
                go_right |= values > threshold[nodes]
            nodes = self._children[(nodes << 1) | go_right]
        return a["value"][nodes].mean(axis=0)


def _one_hot_columns(values, index: dict[str, int]) -> np.ndarray:
    """Each ride's one-hot column for a categorical feature's values, NO_COLUMN where unseen."""
    if isinstance(values, features.Categories):  # each distinct label looked up once
        labels = values.labels.tolist()
        per_label = np.fromiter((index.get(label, NO_COLUMN) for label in labels), dtype=np.int64, count=len(labels))
        return per_label[values.codes]
    values = np.asarray(values).tolist()
    return np.fromiter((index.get(value, NO_COLUMN) for value in values), dtype=np.int64, count=len(values))


def _vectorizer_columns(vectorizer) -> dict[str, np.ndarray]:
    """Which feature each of the fitted DictVectorizer's columns holds, from its vocabulary:
    `name=value` is the one-hot column of a string value, a bare `name` a numeric feature.
    Columns name their feature by its index in feature_names (numpy strings are fixed-width)."""
    width = len(vectorizer.vocabulary_)
    names: dict[str, int] = {}
    features_of, categories, one_hot = [0] * width, [""] * width, [False] * width
    for entry, column in vectorizer.vocabulary_.items():
        name, separator, value = entry.partition(vectorizer.separator)
        features_of[column] = names.setdefault(name, len(names))
        categories[column], one_hot[column] = value, bool(separator)
    return {
        "feature_names": np.array(list(names), dtype=str),
        "column_feature": np.array(features_of, dtype=np.int32),
        "column_category": np.array(categories, dtype=str),
        "column_is_category": np.array(one_hot, dtype=bool),
    }


def _check_format(arrays: dict[str, np.ndarray]) -> None:
    """Refuse at load what predict could not evaluate, with what to do about it."""
    again = "export it again from its pipeline (python -m ride_duration.train writes both)"
    if "format" not in arrays:
        raise ModelFormatError(f"a compact export of an older format, fixed to PU_DO and trip_distance: {again}")
    if int(arrays["format"]) != FORMAT:
        raise ModelFormatError(f"compact export format {int(arrays['format'])}, this code reads {FORMAT}: {again}")
    kind = str(arrays["kind"]) if "kind" in arrays else "(none)"
    if kind not in KINDS:
        raise ModelFormatError(f"unknown model kind {kind!r}: this code evaluates {' and '.join(KINDS)} models")
    missing = [name for name in (*COMMON_ARRAYS, *KIND_ARRAYS[kind]) if name not in arrays]
    if missing:
        raise ModelFormatError(f"a {kind} export without {', '.join(missing)}: {again}")
    problem = _shape_problem(arrays, kind)
    if problem:
        raise ModelFormatError(f"a damaged {kind} export ({problem}): {again}")


# What each array must be for predict to run: a numpy dtype kind per array, and its dimensions.
ARRAY_TYPES = {
    "version": ("U", 0),
    "feature_names": ("U", 1),
    "column_feature": ("iu", 1),
    "column_category": ("U", 1),
    "column_is_category": ("b", 1),
    "coef": ("f", 1),
    "intercept": ("fiu", 0),
    "feature": ("iu", 1),
    "threshold": ("f", 1),
    "left": ("iu", 1),
    "right": ("iu", 1),
    "value": ("f", 1),
    "roots": ("iu", 1),
    "max_depth": ("iu", 0),
}


def _shape_problem(arrays: dict[str, np.ndarray], kind: str) -> str:
    """What in the arrays would make predict fail or index out of range, or "" when nothing:
    a file that loads must serve, not answer every request with an error."""
    for name in (*COMMON_ARRAYS, *KIND_ARRAYS[kind]):
        dtype_kinds, dimensions = ARRAY_TYPES[name]
        if arrays[name].dtype.kind not in dtype_kinds or arrays[name].ndim != dimensions:
            return f"{name} is a {arrays[name].ndim}-d {arrays[name].dtype} array"
    width = len(arrays["column_feature"])
    if width == 0 or len(arrays["column_category"]) != width or len(arrays["column_is_category"]) != width:
        return "the column arrays differ in length, or are empty"
    if not _within(arrays["column_feature"], len(arrays["feature_names"])):
        return "a column names a feature that is not in feature_names"
    if kind == "linear":
        return "" if len(arrays["coef"]) == width else f"{len(arrays['coef'])} coefficients for {width} columns"
    nodes = len(arrays["feature"])
    if any(len(arrays[name]) != nodes for name in ("threshold", "left", "right", "value")) or not nodes:
        return "the node arrays differ in length, or are empty"
    split = arrays["feature"][arrays["feature"] != LEAF]
    if not _within(split, width):
        return "a node splits on a column the export does not have"
    if not (_within(arrays["left"], nodes) and _within(arrays["right"], nodes) and _within(arrays["roots"], nodes)):
        return "a node or root index is out of range"
    if not len(arrays["roots"]) or int(arrays["max_depth"]) < 0:
        return "no trees, or a negative depth"
    return ""


def _within(indices: np.ndarray, size: int) -> bool:
    return bool(len(indices) == 0 or (indices.min() >= 0 and indices.max() < size))


def _defined_feature_names() -> set[str] | None:
    """The names features.feature_columns builds, or None if it cannot run on zero rides."""
    try:
        return set(features.feature_columns([]))
    except Exception:  # noqa: BLE001 - then the first prediction checks the names instead
        return None


def _check_features(fitted: set[str], built: set[str] | None) -> None:
    if built is not None and fitted != built:
        raise ModelFormatError(
            f"the model was fitted on the features {', '.join(sorted(fitted))}, but ride_duration.features "
            f"now builds {', '.join(sorted(built))}: retrain it (make train)"
        )


def _walk_tables(
    arrays: dict[str, np.ndarray], categorical: list[int], numeric: list[int]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The forest's nodes recast so one step of a walk is one comparison per input and a lookup.

    A ride goes right at a node when, for the categorical feature the node splits on, the
    ride's one-hot column is the node's split column, or when the numeric feature it splits on
    is above its threshold. A one-hot cell is 0 or 1, so a split on it (scikit-learn: right
    when cell > threshold) is an equality test, or a fixed turn when the threshold lies outside
    [0, 1): both children are then the same node. Every other input's table holds a test that
    never passes (NEVER, +inf). Node i's children sit at 2i (left) and 2i + 1 (right); a leaf
    is its own child both ways, so no walk needs to stop early.
    """
    feature, threshold = arrays["feature"], arrays["threshold"]
    is_leaf = feature == LEAF
    column = np.where(is_leaf, 0, feature)  # leaves index column 0, then are masked out
    node_feature = arrays["column_feature"][column]  # which feature (index in feature_names) a node tests
    on_category = ~is_leaf & arrays["column_is_category"][column]
    on_number = ~is_leaf & ~on_category
    equality = on_category & (threshold >= 0) & (threshold < 1)
    split_columns = [np.where(equality & (node_feature == f), feature, NEVER).astype(np.int32) for f in categorical]
    thresholds = [np.where(on_number & (node_feature == f), threshold, np.inf) for f in numeric]
    itself = np.arange(len(feature), dtype=np.int32)
    left = np.where(is_leaf, itself, arrays["left"])
    right = np.where(is_leaf, itself, arrays["right"])
    always_right, always_left = on_category & (threshold < 0), on_category & (threshold >= 1)
    children = np.empty(2 * len(feature), dtype=np.int32)
    children[0::2] = np.where(always_right, right, left)
    children[1::2] = np.where(always_left, left, right)
    return split_columns, thresholds, children


def _flatten_trees(trees) -> dict[str, np.ndarray]:
    """All trees' nodes in one set of arrays, child indices made global."""
    node_features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
    offset, max_depth = 0, 0
    for estimator in trees:
        tree = estimator.tree_
        is_leaf = tree.children_left == -1
        roots.append(offset)
        node_features.append(np.where(is_leaf, LEAF, tree.feature).astype(np.int32))
        thresholds.append(tree.threshold.astype(np.float64))
        lefts.append(np.where(is_leaf, 0, tree.children_left + offset).astype(np.int32))
        rights.append(np.where(is_leaf, 0, tree.children_right + offset).astype(np.int32))
        values.append(tree.value[:, 0, 0].astype(np.float64))
        offset += tree.node_count
        max_depth = max(max_depth, tree.max_depth)
    return {
        "feature": np.concatenate(node_features),
        "threshold": np.concatenate(thresholds),
        "left": np.concatenate(lefts),
        "right": np.concatenate(rights),
        "value": np.concatenate(values),
        "roots": np.array(roots, dtype=np.int32),
        "max_depth": np.array(max_depth),
    }
