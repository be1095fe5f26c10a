"""A fitted ride pipeline exported to plain numpy arrays, for serving without scikit-learn.

Importing scikit-learn costs seconds and about 200 MB (measured in the README), more than a
Lambda's cold start can pay and more than a request should. The pipelines here are simple
enough to evaluate directly: a DictVectorizer over PU_DO + trip_distance, followed by a
linear model or a forest of regression trees. `CompactModel.from_pipeline` reads the fitted
estimators' own arrays, so the numbers come from scikit-learn and the predictions match its
own (tests compare them on a whole month). The file format is an uncompressed .npz with no
pickled objects, so loading it runs no code.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from ride_duration.features import pu_do

LEAF = -2  # the feature id of a leaf node (scikit-learn uses -2 too)
FOREST_CHUNK = 10_000  # rows walked through the forest at once: bounds memory, keeps trees in cache


def file_version(name: str, blob: bytes) -> str:
    """The version of a model stored as a file: its name and a sha256 prefix of its bytes."""
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"


class CompactModel:
    """Predicts ride durations from PU_DO keys and distances with numpy alone."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.kind = str(arrays["kind"])
        self.version = str(arrays["version"])
        self.index = {key: i for i, key in enumerate(arrays["vocabulary"].tolist())}
        self._distance_feature = int(arrays["distance_feature"])
        if self.kind == "linear":
            # One zero weight appended: column -1, a PU_DO pair the model never saw, picks it.
            self._weights = np.append(arrays["coef"], 0.0)
            self._intercept = float(arrays["intercept"])
            self._distance_weight = float(arrays["coef"][self._distance_feature])
        if self.kind == "forest":
            self._split_column, self._distance_threshold, self._children = _walk_tables(arrays)

    # ---- building and storing -------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipeline, version: str) -> CompactModel:
        """Export a fitted features -> DictVectorizer -> regressor pipeline."""
        vectorizer, regressor = pipeline.steps[-2][1], pipeline.steps[-1][1]
        names = list(vectorizer.feature_names_)
        distance_feature = names.index("trip_distance")
        # Column i of the vectorizer is "PU_DO=<key>"; the distance column keeps no key.
        vocabulary = np.array([n.split("=", 1)[1] if n.startswith("PU_DO=") else "" for n in names])
        arrays = {
            "version": np.array(version),
            "vocabulary": vocabulary,
            "distance_feature": np.array(distance_feature),
        }
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
        """Durations in minutes for a list of ride dicts (validated beforehand)."""
        keys = [pu_do(r["PULocationID"], r["DOLocationID"]) for r in rides]
        distances = np.fromiter((r["trip_distance"] for r in rides), dtype=np.float64, count=len(keys))
        return self.predict_keys(keys, distances)

    def predict_frame(self, frame) -> np.ndarray:
        """Durations for a DataFrame with PULocationID, DOLocationID and trip_distance."""
        keys = (
            frame["PULocationID"].astype("int64").astype(str) + "_" + frame["DOLocationID"].astype("int64").astype(str)
        )
        return self.predict_keys(keys.tolist(), frame["trip_distance"].to_numpy(dtype=np.float64))

    def predict_keys(self, keys: list[str], distances: np.ndarray) -> np.ndarray:
        # An unseen PU_DO pair gets no column, as in DictVectorizer.
        columns = np.fromiter((self.index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        if self.kind == "linear":
            return self._predict_linear(columns, distances)
        return (
            np.concatenate(
                [
                    self._predict_forest(columns[i : i + FOREST_CHUNK], distances[i : i + FOREST_CHUNK])
                    for i in range(0, len(keys), FOREST_CHUNK)
                ]
            )
            if len(keys)
            else np.empty(0)
        )

    def _predict_linear(self, columns: np.ndarray, distances: np.ndarray) -> np.ndarray:
        return self._intercept + self._weights[columns] + self._distance_weight * distances

    def _predict_forest(self, columns: np.ndarray, distances: np.ndarray) -> np.ndarray:
        a = self.arrays
        # Trees compare float32 inputs (scikit-learn casts X), so round distances the same way.
        distances = distances.astype(np.float32).astype(np.float64)[None, :]
        columns = columns.astype(np.int32)[None, :]
        # One row per tree: neighbouring cells walk the same tree, whose nodes stay in cache.
        nodes = np.repeat(a["roots"][:, None], columns.shape[1], axis=1)
        for _ in range(int(a["max_depth"])):
            go_right = (self._split_column[nodes] == columns) | (distances > self._distance_threshold[nodes])
            nodes = self._children[(nodes << 1) | go_right]
        return a["value"][nodes].mean(axis=0)


def _walk_tables(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forest's nodes recast so one step of a walk is two comparisons and a lookup.

    A ride goes right at a node when its PU_DO column is the node's split column, or when
    its distance is above the node's distance threshold. A one-hot cell is 0 or 1, so a
    split on it (scikit-learn: right when cell > threshold) is an equality test, or a fixed
    turn when the threshold lies outside [0, 1). Node i's children sit at 2i (left) and
    2i + 1 (right); a leaf is its own child both ways, so no walk needs to stop early.
    """
    feature, threshold = arrays["feature"], arrays["threshold"]
    is_leaf = feature == LEAF
    on_distance = feature == int(arrays["distance_feature"])
    one_hot = ~is_leaf & ~on_distance
    never = np.int32(LEAF)  # a ride's column is >= -1 (-1: a pair the model never saw)
    split_column = np.where(one_hot & (threshold >= 0) & (threshold < 1), feature, never).astype(np.int32)
    distance_threshold = np.select([on_distance, one_hot & (threshold < 0)], [threshold, -np.inf], np.inf)
    itself = np.arange(len(feature), dtype=np.int32)
    children = np.empty(2 * len(feature), dtype=np.int32)
    children[0::2] = np.where(is_leaf, itself, arrays["left"])
    children[1::2] = np.where(is_leaf, itself, arrays["right"])
    return split_column, distance_threshold, children


def _flatten_trees(trees) -> dict[str, np.ndarray]:
    """All trees' nodes in one set of arrays, child indices made global."""
    features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
    offset, max_depth = 0, 0
    for estimator in trees:
        tree = estimator.tree_
        is_leaf = tree.children_left == -1
        roots.append(offset)
        features.append(np.where(is_leaf, LEAF, tree.feature).astype(np.int32))
        thresholds.append(tree.threshold.astype(np.float64))
        lefts.append(np.where(is_leaf, 0, tree.children_left + offset).astype(np.int32))
        rights.append(np.where(is_leaf, 0, tree.children_right + offset).astype(np.int32))
        values.append(tree.value[:, 0, 0].astype(np.float64))
        offset += tree.node_count
        max_depth = max(max_depth, tree.max_depth)
    return {
        "feature": np.concatenate(features),
        "threshold": np.concatenate(thresholds),
        "left": np.concatenate(lefts),
        "right": np.concatenate(rights),
        "value": np.concatenate(values),
        "roots": np.array(roots, dtype=np.int32),
        "max_depth": np.array(max_depth),
    }
