"""Ask a running web-service-mlflow for one ride's duration and print the answer.

    python test.py [URL]      [http://127.0.0.1:9696/predict]

The ride is web-service/test.py's: 3.66 miles from zone 130, Jamaica, to zone 205, Saint
Albans, both in Queens. Standard library only, so it runs from any Python.
"""

import json
import sys
import urllib.request

RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


def predict(url: str, ride: dict = RIDE) -> dict:
    request = urllib.request.Request(url, data=json.dumps(ride).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


if __name__ == "__main__":
    answer = predict(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9696/predict")
    print(f"{answer['duration']:.1f} minutes (model_version {answer['model_version']})")
