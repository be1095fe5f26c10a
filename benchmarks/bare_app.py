"""The ceiling: a Flask endpoint that answers a constant JSON, served like the real one."""

from flask import Flask, jsonify

app = Flask(__name__)
ANSWER = {"duration": 12.5, "model_version": "constant"}


@app.post("/predict")
def predict():
    return jsonify(ANSWER)


@app.get("/health")
def health():
    return jsonify(status="ok", model_version="constant")
