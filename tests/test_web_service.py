"""web-service/ for real: gunicorn on a free loopback port, the client script, and load.

One service (2 workers, the model file written by the training code) serves the module.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ride_duration.compact import CompactModel
from ride_duration.features import MAX_TRIP_DISTANCE
from ride_duration.healthcheck import probe
from ride_duration.local.background import ServiceFailed, serve_in_background
from ride_duration.local.loadgen import run_load
from ride_duration.service import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RIDES

REPO = Path(__file__).resolve().parent.parent
WEB_SERVICE = REPO / "web-service"
WORKERS = 2
# What web-service/test.py sends when given no ride: its answer is checked against the pipeline.
RIDE = runpy.run_path(str(REPO / "web-service" / "test.py"))["RIDE"]


@pytest.fixture(scope="module")
def npz(model_files):
    return model_files[1]


@pytest.fixture(scope="module")
def service(npz, tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "gunicorn.log"
    env = {"MODEL_PATH": str(npz), "WEB_CONCURRENCY": str(WORKERS)}
    with serve_in_background(WEB_SERVICE, env, log_path=log) as running:
        yield running
    assert not running.running()


@pytest.fixture(scope="module")
def validation_rides(trips):
    fields = ["PULocationID", "DOLocationID", "trip_distance"]
    return trips[1][fields].sample(300, random_state=1).to_dict("records")


def post(
    url: str,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str = "application/json",
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = connection or http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if connection is None:
        conn.close()
    return response.status, data


def test_health_names_the_model_file_version(service, npz):
    assert probe(service.health_url) == {"status": "ok", "model_version": CompactModel.load(npz).version}


def test_answers_equal_the_pipelines_own_predictions(service, linear_pipeline, validation_rides):
    expected = linear_pipeline.predict(validation_rides).tolist()
    status, body = post(service.predict_url, json.dumps(validation_rides).encode())
    assert status == 200
    assert [a["duration"] for a in json.loads(body)] == pytest.approx(expected, rel=1e-12)
    for ride, duration in zip(validation_rides[:25], expected):
        status, body = post(service.predict_url, json.dumps(ride).encode())
        assert status == 200 and json.loads(body)["duration"] == pytest.approx(duration, rel=1e-12)


def test_client_script_prints_the_answer(service, npz, linear_pipeline):
    client = [sys.executable, str(WEB_SERVICE / "test.py")]
    expected = linear_pipeline.predict([RIDE])[0]
    out = subprocess.run([*client, service.predict_url, "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["duration"] == pytest.approx(expected, rel=1e-12)
    # Without --json, one line per ride, minutes to one decimal.
    rides = json.dumps([RIDE, RIDE])
    lines = subprocess.run([*client, service.predict_url, "--ride", rides], capture_output=True, text=True, timeout=30)
    assert lines.stdout.splitlines() == [f"{expected:.1f} minutes (model_version {CompactModel.load(npz).version})"] * 2
    # The URL may come from PREDICT_URL instead; a bad ride prints the error and exits 1.
    bad = subprocess.run(
        [*client, "--ride", '{"PULocationID": 10, "DOLocationID": 50}'],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PREDICT_URL": service.predict_url},
    )
    assert bad.returncode == 1
    assert bad.stdout.startswith("HTTP 400: ") and "trip_distance" in bad.stdout


def test_a_chunked_body_over_the_limit_gets_413(service):
    host, port = service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    chunks = (b"x" * 65536 for _ in range(DEFAULT_MAX_BODY_BYTES // 65536 + 2))
    conn.request("POST", "/predict", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert "larger than" in json.loads(response.read())["error"]


def test_model_is_loaded_once_per_worker_not_per_request(service):
    for _ in range(50):
        assert post(service.predict_url, json.dumps(RIDE).encode())[0] == 200
    loads = re.findall(r"worker (\d+) loaded model", service.log_path.read_text())
    assert len(loads) == WORKERS and len(set(loads)) == WORKERS


@pytest.mark.timeout(120)
def test_5000_requests_at_32_connections_without_an_error(service, linear_pipeline, validation_rides):
    bodies = [RIDE, validation_rides[0], validation_rides[1:4]]
    expected = [linear_pipeline.predict([RIDE])[0], *linear_pipeline.predict(validation_rides[:4])]
    expected = [expected[0], expected[1], expected[2:5]]
    result = run_load(
        service.predict_url,
        [json.dumps(b).encode() for b in bodies],
        requests=5000,
        duration=55,
        connections=32,
        timeout=10,
        keep_answers=True,
    )
    assert result.elapsed < 60
    assert (result.sent, result.errors, dict(result.statuses)) == (5000, 0, {200: 5000}), result.error_samples
    for index, (_status, body) in result.answers.items():
        answer, want = json.loads(body), expected[index % 3]
        got = [a["duration"] for a in answer] if isinstance(answer, list) else answer["duration"]
        assert got == pytest.approx(want, rel=1e-12)


# ---- malformed requests --------------------------------------------------------------
def _bad_location():
    return st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=266),
        st.none(),
        st.booleans(),
        st.text(max_size=6),
        st.floats().filter(lambda x: not (x == x and x.is_integer())),
        st.lists(st.integers(1, 265), max_size=2),
    )


def _bad_distance():
    return st.one_of(
        st.floats(max_value=-1e-9),
        st.floats(min_value=MAX_TRIP_DISTANCE, exclude_min=True),
        st.integers(max_value=-1),
        st.integers(min_value=int(MAX_TRIP_DISTANCE) + 1),
        st.just(float("nan")),
        st.none(),
        st.booleans(),
        st.text(max_size=6),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def _ride():
    return st.fixed_dictionaries(
        {
            "PULocationID": st.integers(1, 265),
            "DOLocationID": st.integers(1, 265),
            "trip_distance": st.floats(0, MAX_TRIP_DISTANCE),
        }
    )


@st.composite
def _bad_ride(draw):
    ride = draw(_ride())
    field = draw(st.sampled_from(["PULocationID", "DOLocationID", "trip_distance", "missing"]))
    if field == "missing":
        del ride[draw(st.sampled_from(sorted(ride)))]
    else:
        ride[field] = draw(_bad_distance() if field == "trip_distance" else _bad_location())
    return ride


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _bodies():
    """(body, must be refused): bodies that are wrong by construction, and random ones."""
    refused = st.one_of(
        _bad_ride().map(_dumps),
        st.lists(st.one_of(_ride(), _bad_ride()), min_size=1, max_size=5)
        .filter(
            lambda rides: any(
                set(r) != {"PULocationID", "DOLocationID", "trip_distance"}
                or not isinstance(r.get("trip_distance"), float)
                or not 0 <= r["trip_distance"] <= MAX_TRIP_DISTANCE
                or any(
                    not isinstance(r[k], int) or isinstance(r[k], bool) or not 1 <= r[k] <= 265
                    for k in ("PULocationID", "DOLocationID")
                )
                for r in rides
            )
        )
        .map(_dumps),
        st.sampled_from(
            [
                b"",
                b"[]",
                b"{}",
                b"null",
                b"[" * 5000,
                b'{"PULocationID":',
                b"\xff\xfe\xfd",
                _dumps([RIDE] * (DEFAULT_MAX_RIDES + 1)),
                b" " * (DEFAULT_MAX_BODY_BYTES + 1),
            ]
        ),
    )
    random = st.one_of(st.binary(max_size=300), _json.map(_dumps), st.text(max_size=100).map(str.encode))
    return st.one_of(refused.map(lambda b: (b, True)), random.map(lambda b: (b, False)))


_requests = st.tuples(
    _bodies(),
    st.sampled_from(
        [("POST", "/predict")] * 8
        + [
            ("GET", "/predict"),
            ("PUT", "/predict"),
            ("POST", "/health"),
            ("POST", "/predict/"),
            ("DELETE", "/"),
            ("POST", "/%00"),
        ]
    ),
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/json; charset=latin-1",
        ]
    ),
)


@pytest.mark.timeout(120)
def test_500_malformed_requests_get_no_5xx_and_the_service_stays_healthy(service):
    host, port = service.url.removeprefix("http://").split(":")
    connection = [http.client.HTTPConnection(host, int(port), timeout=10)]
    statuses = []

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(_requests)
    def send(request):
        (body, must_refuse), (method, path), content_type = request
        try:
            status, answer = post(
                service.url + path, body, method=method, content_type=content_type, connection=connection[0]
            )
        except (http.client.HTTPException, OSError):  # the server may close after a refusal
            connection[0].close()
            connection[0] = http.client.HTTPConnection(host, int(port), timeout=10)
            status, answer = post(
                service.url + path, body, method=method, content_type=content_type, connection=connection[0]
            )
        statuses.append(status)
        assert status < 500, (status, answer[:200])
        if status >= 400 and path in ("/predict", "/health"):
            assert "error" in json.loads(answer)
        if must_refuse and (method, path) == ("POST", "/predict"):
            assert 400 <= status < 500, (status, answer[:200])

    send()
    connection[0].close()
    assert len(statuses) == 500
    assert sum(400 <= s < 500 for s in statuses) > 250  # most of them really were refused
    assert probe(service.health_url)["status"] == "ok"


# ---- start and stop ------------------------------------------------------------------
def test_a_missing_model_stops_the_start_with_its_path(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(ServiceFailed, match="no model file at .*nowhere.npz"):
        serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(missing)}, timeout=30)


def test_a_model_file_of_unknown_kind_stops_the_start_not_every_prediction(npz, tmp_path):
    """Such a file once passed start-up and /health, and then every /predict answered 500."""
    import numpy as np

    with np.load(npz) as arrays:
        mystery = {**arrays, "kind": np.array("mystery")}
    path = tmp_path / "mystery.npz"
    np.savez(path, **mystery)
    with pytest.raises(ServiceFailed, match="web-service cannot start: .*mystery") as failure:
        serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(path)}, timeout=30)
    # No traceback from the service's own code. (When both workers fail at once, gunicorn's
    # arbiter may print its own HaltServer traceback while it stops: that one is gunicorn's.)
    frames = re.findall(r'File "([^"]+)"', str(failure.value))
    assert not [f for f in frames if "predict.py" in f or "/ride_duration/" in f], frames


def test_an_unusable_limit_stops_the_start_with_its_name(npz):
    with pytest.raises(
        ServiceFailed, match="Error: MAX_RIDES_PER_REQUEST must be a whole number, got 'lots'"
    ) as failure:
        serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(npz), "MAX_RIDES_PER_REQUEST": "lots"}, timeout=30)
    assert "Traceback" not in str(failure.value)
    with pytest.raises(ServiceFailed, match="Error: REQUEST_READ_TIMEOUT must be at least 1, got 0"):
        serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(npz), "REQUEST_READ_TIMEOUT": "0"}, timeout=30)


def test_a_port_another_server_listens_on_is_refused(service, npz):
    """Workers bind with SO_REUSEPORT; a second service must still not share the first one's port."""
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:ride_duration.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{service.port}",
            "predict:app",
        ],
        cwd=WEB_SERVICE,
        env={**os.environ, "MODEL_PATH": str(npz)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{service.port}: Address already in use" in second.stderr
    assert "Traceback" not in second.stderr
    assert probe(service.health_url)["status"] == "ok"
    # The background helper does not take the first service's answers for the second's.
    with pytest.raises(ServiceFailed, match=f"{service.url} already answers"):
        serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(npz)}, port=service.port, timeout=30)


def test_stopping_leaves_no_process(npz):
    service = serve_in_background(WEB_SERVICE, {"MODEL_PATH": str(npz), "WEB_CONCURRENCY": "2"})
    workers = [int(pid) for pid in re.findall(r"worker (\d+) loaded model", service.log_path.read_text())]
    assert service.running() and len(workers) >= 1
    service.stop()
    assert not service.running()
    for pid in [service.process.pid, *workers]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert probe(service.health_url, timeout=1) is None


def test_demo_prints_a_line_per_ride_and_the_bad_rides_error(npz):
    from ride_duration.local.webservice import SAMPLE_RIDES, demo

    lines = demo(npz)
    assert len(lines) == len(SAMPLE_RIDES) + 1
    assert all(" min  [lin_reg-" in line for line in lines[:-1])
    assert lines[-1].startswith("bad ride -> HTTP 400") and "DOLocationID" in lines[-1]
