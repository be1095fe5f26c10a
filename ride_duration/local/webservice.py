"""Demo of the web service: serve the trained model, ask it a few rides, stop it.

    python -m ride_duration.local.webservice [MODEL_PATH]    [models/lin_reg.npz]

Prints one short line per ride, and one for a bad ride (the service's 400 and its error).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ride_duration.config import REPO_ROOT, models_dir
from ride_duration.local.background import serve_in_background
from ride_duration.models import ModelNotFound

WEB_SERVICE = REPO_ROOT / "web-service"
SAMPLE_RIDES = [
    {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    {"PULocationID": 166, "DOLocationID": 132, "trip_distance": 17.5},  # Morningside Heights to JFK
    {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 0.9},
]
BAD_RIDE = {"PULocationID": 130, "DOLocationID": 300, "trip_distance": 3.66}


def post(url: str, payload) -> tuple[int, object]:
    """The status and decoded JSON answer of a POST, error answers included."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def demo(model_path: str | Path | None = None, rides: list[dict] = SAMPLE_RIDES) -> list[str]:
    """Start web-service/ on a free loopback port, send the rides and a bad one, stop it."""
    model_path = Path(model_path or models_dir() / "lin_reg.npz")
    if not model_path.is_file():
        raise ModelNotFound(f"no model file at {model_path}: train one with `make train`")
    lines = []
    with serve_in_background(WEB_SERVICE, env={"MODEL_PATH": str(model_path.resolve())}) as service:
        for ride in rides:
            status, answer = post(service.predict_url, ride)
            lines.append(
                f"{ride['PULocationID']:>3} -> {ride['DOLocationID']:<3} {ride['trip_distance']:5.2f} mi: "
                f"{answer['duration']:5.1f} min  [{answer['model_version']}]"
                if status == 200
                else f"{ride}: HTTP {status} {answer}"
            )
        status, answer = post(service.predict_url, BAD_RIDE)
        lines.append(f"bad ride -> HTTP {status}: {answer['error']}")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("\n".join(demo(argv[0] if argv else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
