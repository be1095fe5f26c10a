"""Send a ride to a running prediction service and print its answer.

    python test.py [URL] [--ride JSON] [--json]

URL [$PREDICT_URL, else http://localhost:9696/predict]. The ride [3.66 miles from zone 130,
Jamaica, to zone 205, Saint Albans, both in Queens] may also be a JSON list of rides. Each
answer is printed as a line, minutes to one decimal; --json prints the service's JSON answer
as it came. Standard library only, so it runs wherever Python does.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://localhost:9696/predict"
RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


def predict(url: str, ride, timeout: float = 10.0) -> tuple[int, object]:
    """POST the ride; the HTTP status and the decoded JSON answer (errors included)."""
    request = urllib.request.Request(
        url, data=json.dumps(ride).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a 4xx answer still carries {"error": ...}
        return exc.code, json.loads(exc.read() or b"null")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("PREDICT_URL", DEFAULT_URL))
    parser.add_argument("--ride", type=json.loads, default=RIDE, help="a ride (or a list of rides) as JSON")
    parser.add_argument("--json", action="store_true", help="print the JSON answer as the service sent it")
    args = parser.parse_args(argv)
    try:
        status, answer = predict(args.url, args.ride)
    except (OSError, ValueError) as exc:
        print(f"no answer from {args.url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    elif status != 200:
        print(f"HTTP {status}: {answer['error'] if isinstance(answer, dict) else answer}")
    else:
        for one in answer if isinstance(answer, list) else [answer]:
            print(f"{one['duration']:.1f} minutes (model_version {one['model_version']})")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
