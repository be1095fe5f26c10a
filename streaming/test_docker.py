"""Post the Kinesis test event to the function running in its container.

    docker run -it --rm -p 8080:8080 -e TEST_RUN=True -e MODEL_LOCATION=... ride-duration-stream:v1
    python streaming/test_docker.py

The Lambda base image's runtime interface emulator serves the function at the URL below
(override with LAMBDA_URL).
"""

import json
import os
import urllib.request
from pathlib import Path

URL = os.environ.get("LAMBDA_URL", "http://localhost:8080/2015-03-31/functions/function/invocations")

event = (Path(__file__).resolve().parent / "event.json").read_bytes()
request = urllib.request.Request(URL, data=event, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=60) as response:
    print(json.dumps(json.load(response), indent=2))
