"""Call the Lambda handler in-process with the course's Kinesis test event; print the result.

    python streaming/test.py

event.json holds one record: ride 130 -> 205, 3.66 miles, ride_id 256 (base64 JSON, as
Kinesis delivers it). Unless configured otherwise this runs with TEST_RUN=True (nothing
is written) and the model in models/lin_reg.npz (`make train`).
"""

import json
import os
from pathlib import Path

from ride_duration.config import models_dir

HERE = Path(__file__).resolve().parent

os.environ.setdefault("TEST_RUN", "True")
if not (os.environ.get("MODEL_LOCATION") or os.environ.get("RUN_ID")):
    os.environ["MODEL_LOCATION"] = str(models_dir() / "lin_reg.npz")

import lambda_function  # noqa: E402  (reads the environment set above)

event = json.loads((HERE / "event.json").read_text())
print(json.dumps(lambda_function.lambda_handler(event, None), indent=2))
