"""Ride-duration prediction service: a model file behind POST /predict.

    gunicorn --config python:ride_duration.gunicorn_conf predict:app    (from this folder)

MODEL_PATH [models/lin_reg.npz of the repo]   the model: a .npz serving export (numpy only),
    a .pkl pipeline (needs scikit-learn) or an s3://bucket/key.npz object (needs boto3).
Workers, threads and port: see ride_duration/gunicorn_conf.py; input limits:
ride_duration/service.py. Each gunicorn worker imports this module, so loads the model
once, before it answers anything.
"""

import os
import sys

from ride_duration.config import SettingError, models_dir
from ride_duration.models import ModelNotFound, load_compact
from ride_duration.service import create_app

MODEL_PATH = os.environ.get("MODEL_PATH", str(models_dir() / "lin_reg.npz"))

try:
    model = load_compact(MODEL_PATH)
    app = create_app(model)
except (ModelNotFound, SettingError) as exc:
    print(f"web-service cannot start: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": it stops instead of retrying forever
print(f"worker {os.getpid()} loaded model {model.version} from {MODEL_PATH}", file=sys.stderr, flush=True)
