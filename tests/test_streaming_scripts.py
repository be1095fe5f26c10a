"""The scripts in streaming/: test.py, test_docker.py (against a stand-in emulator), run_local.py and its loop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from streaming_support import (  # noqa: F401  (fixtures)
    REPO,
    TEST_EVENT,
    compact_linear,
    load_lambda,
    model_npz,
    read_queue,
    unique,
)

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
    for name in ("RIDE_EVENTS_STREAM_NAME", "PREDICTIONS_STREAM_NAME", "DEAD_LETTER_QUEUE"):
        monkeypatch.setenv(name, unique("loop"))
    handler = load_lambda(
        monkeypatch,
        MODEL_LOCATION=model_npz,
        PREDICTIONS_STREAM_NAME=os.environ["PREDICTIONS_STREAM_NAME"],
        DEAD_LETTER_QUEUE=os.environ["DEAD_LETTER_QUEUE"],
    ).lambda_handler
    rides = [{"PULocationID": 1 + i % 265, "DOLocationID": 2, "trip_distance": 1.5} for i in range(250)]
    entries = event_source.ride_entries(rides, list(range(250)))
    entries[100:100] = [{"Data": b"{}", "PartitionKey": "bad"}]
    first = event_source.run_loop(handler, entries, batch_size=50)
    second = event_source.run_loop(handler, event_source.ride_entries(rides[:10], list(range(1000, 1010))))
    assert first.sent == first.read == 251 and first.invocations == 6
    assert len(first.rejected) == first.dead_lettered == 1 and first.written == 250 and first.given_up == []
    # The bad record went to the queue, not back to the mapping: every ride exactly once.
    assert Counter(p["prediction"]["ride_id"] for p in first.predictions) == Counter(range(250))
    (letter,) = read_queue(first.dead_letter_queue)
    assert letter["record"]["partitionKey"] == "bad" and "missing field(s): ride, ride_id" in letter["reason"]
    # A second run reads only its own events and predictions, not the first run's.
    assert sorted(p["prediction"]["ride_id"] for p in second.predictions) == list(range(1000, 1010))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_run_local_streams_and_stops_with_one_line_when_the_stand_in_dies(tmp_path, monkeypatch, tlc_mirror, model_npz):
    """The script on stand-ins of its own: a whole run, then a run whose moto is killed half-way."""
    from ride_duration.local import standins

    monkeypatch.setenv("STANDINS_DIR", str(tmp_path / "standins"))
    monkeypatch.setenv("MOTO_PORT", str(_free_port()))
    for name in ("AWS_ENDPOINT_URL", "RIDE_EVENTS_STREAM_NAME", "PREDICTIONS_STREAM_NAME", "DEAD_LETTER_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    command = [sys.executable, str(REPO / "streaming" / "run_local.py"), "--model", str(model_npz)]
    try:
        whole = subprocess.run(
            [*command, "--rides", "200"], capture_output=True, text=True, timeout=90, cwd=REPO, env=os.environ.copy()
        )
        assert whole.returncode == 0, whole.stderr
        assert "every ride delivered: True; duplicate predictions: 0" in whole.stdout
        assert "200 predictions written, 20 malformed records dead-lettered" in whole.stdout

        env = {**os.environ, **standins.environment()}
        script = subprocess.Popen(
            [*command, "--rides", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        try:
            kinesis = boto3.client("kinesis", endpoint_url=env["AWS_ENDPOINT_URL"])
            _wait_for_predictions_of_this_run(kinesis, before=200, deadline=time.monotonic() + 60)
            moto = int((tmp_path / "standins" / "moto.pid").read_text())
            os.killpg(moto, signal.SIGKILL)  # the stand-in this test's script started, by its id
            out, err = script.communicate(timeout=60)
        finally:
            if script.poll() is None:
                script.kill()
                script.communicate()
    finally:
        standins.down()
    assert script.returncode == 1, out + err
    (line,) = err.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: the loop stopped: ") and "Could not connect to the endpoint URL" in line
    written = int(re.search(r"([\d,]+) predictions written", line).group(1).replace(",", ""))
    assert 0 < written < 5000 and "5,500 events put" in line and "malformed records dead-lettered" in line


def _wait_for_predictions_of_this_run(kinesis, before: int, deadline: float) -> None:
    """Until the predictions stream holds more than the earlier run's: the script is half-way."""
    reader, total = None, 0
    while time.monotonic() < deadline:
        try:
            reader = reader or event_source.ShardReader("ride_predictions", kinesis)
            total += len(reader.read_all(timeout=1))
        except event_source.EventSourceError:
            pass  # not created yet
        if total > before:
            return
        time.sleep(0.2)
    pytest.fail("the script wrote no prediction within a minute")
