"""The scripts in streaming/: test.py, test_docker.py (against a stand-in emulator), run_loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from streaming_support import REPO, TEST_EVENT, compact_linear, load_lambda, model_npz, unique  # noqa: F401

from ride_duration.local import event_source

INVOCATIONS = "/2015-03-31/functions/function/invocations"


def run_script(name, **env):
    return subprocess.run(
        [sys.executable, str(REPO / "streaming" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO,
    )


def test_test_script_prints_the_course_ride_prediction(model_npz, compact_linear):
    result = run_script("test.py", MODEL_LOCATION=str(model_npz))
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)["predictions"]
    expected = compact_linear.predict([{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}])[0]
    assert prediction["prediction"] == {"ride_duration": pytest.approx(expected, abs=1e-12), "ride_id": 256}


def test_test_docker_posts_the_event_to_the_emulator_url(monkeypatch, model_npz):
    """A loopback server in the place of the base image's runtime interface emulator."""
    handler = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, TEST_RUN="True").lambda_handler
    received = []

    class Emulator(BaseHTTPRequestHandler):
        def do_POST(self):
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, event))
            body = json.dumps(handler(event, None)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Emulator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_script("test_docker.py", LAMBDA_URL=f"http://127.0.0.1:{server.server_port}{INVOCATIONS}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert received == [(INVOCATIONS, json.loads(TEST_EVENT.read_text()))]
    assert json.loads(result.stdout)["predictions"][0]["prediction"]["ride_id"] == 256


def test_run_loop_puts_drives_and_reads_back(monkeypatch, aws_endpoint, model_npz):
    monkeypatch.setenv("RIDE_EVENTS_STREAM_NAME", unique("loop-events"))
    monkeypatch.setenv("PREDICTIONS_STREAM_NAME", unique("loop-predictions"))
    # reject: the bad record must not make the mapping re-deliver (and re-predict) the rides behind it.
    handler = load_lambda(monkeypatch, MODEL_LOCATION=model_npz, MALFORMED_RECORDS="reject").lambda_handler
    rides = [{"PULocationID": 1 + i % 265, "DOLocationID": 2, "trip_distance": 1.5} for i in range(250)]
    entries = event_source.ride_entries(rides, list(range(250)))
    entries[100:100] = [{"Data": b"{}", "PartitionKey": "bad"}]
    first = event_source.run_loop(handler, entries, batch_size=50)
    second = event_source.run_loop(handler, event_source.ride_entries(rides[:10], list(range(1000, 1010))))
    assert first.sent == 251 and first.invocations == 6 and len(first.rejected) == 1
    assert Counter(p["prediction"]["ride_id"] for p in first.predictions) == Counter(range(250))
    # A second run reads only its own events and predictions, not the first run's.
    assert sorted(p["prediction"]["ride_id"] for p in second.predictions) == list(range(1000, 1010))
