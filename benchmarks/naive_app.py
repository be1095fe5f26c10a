"""The baseline: a service in the style of the original course's web-service/predict.py.

A pickled (DictVectorizer, model) pair, the features rebuilt per request, scikit-learn's
transform + predict per request, no input checks; served by gunicorn's defaults
(one sync worker), as in the course's Dockerfile. NAIVE_MODEL_PATH names the pickle.
"""

import os
import pickle

from flask import Flask, jsonify, request

with open(os.environ["NAIVE_MODEL_PATH"], "rb") as f_in:
    (dv, model) = pickle.load(f_in)


def prepare_features(ride):
    features = {}
    features["PU_DO"] = f"{ride['PULocationID']}_{ride['DOLocationID']}"
    features["trip_distance"] = ride["trip_distance"]
    return features


def predict(features):
    X = dv.transform(features)
    preds = model.predict(X)
    return float(preds[0])


app = Flask("duration-prediction")


@app.route("/predict", methods=["POST"])
def predict_endpoint():
    ride = request.get_json()
    features = prepare_features(ride)
    pred = predict(features)
    return jsonify({"duration": pred, "model_version": "naive"})


@app.route("/health", methods=["GET"])
def health():
    return jsonify(status="ok")
