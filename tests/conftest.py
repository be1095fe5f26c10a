"""Fixtures shared by the test modules: real data, a trained model, a local AWS endpoint."""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MIRROR = REPO.parent / "shared" / "tlc"
# The TLC files the tests read, and how to download them into the cache.
TEST_MONTHS = ("green_tripdata_2021-01.parquet", "green_tripdata_2021-02.parquet", "taxi_zone_lookup.csv")
FETCH_THEM = "make data"

# Set when pytest loads this file, before any test or notebook runs: the notebooks, executed by
# nbval in the same session, read TLC_MIRROR from the environment too. Nothing fails here, so
# the tests that need no data run without it.
os.environ.setdefault("TLC_MIRROR", str(SHARED_MIRROR))


def _unused_ports(count: int, first: int = 20_000, last: int = 32_000) -> list[int]:
    """Free ports below Linux's ephemeral range (32768 and up), which no connection made
    meanwhile can take."""
    ports = []
    for port in random.Random().sample(range(first, last), last - first):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free ports between {first} and {last}")


# The notebooks start the stand-ins as a learner's session does (standins.ensure). Under test
# they get a folder and ports of their own, so stand-ins the learner left running (or anything
# else on port 5000) neither break the run nor are stopped by it, and every run starts from an
# empty registry. pytest_sessionfinish stops them.
if "STANDINS_DIR" not in os.environ:
    os.environ["STANDINS_DIR"] = tempfile.mkdtemp(prefix="ride-duration-standins-")
    os.environ["MOTO_PORT"], os.environ["MLFLOW_PORT"] = (str(port) for port in _unused_ports(2))
    _OWN_STANDINS = True
else:
    _OWN_STANDINS = False


def pytest_sessionfinish(session, exitstatus):
    if _OWN_STANDINS:
        from ride_duration.local import standins

        standins.down()
        shutil.rmtree(os.environ["STANDINS_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tlc_mirror():
    """A folder holding the real TLC months under their own names, with TLC_MIRROR pointing at it.

    It is $TLC_MIRROR (CI: ../shared/tlc), or else the project's cache (data/, or
    $RIDE_DURATION_DATA) when the months are there. Without them every test that asks for data
    fails with what to do: it does not skip, so that CI never passes without data.
    """
    from ride_duration import config

    mirror, cache = config.tlc_mirror(), config.data_dir()
    for folder in (mirror, cache):
        if folder is not None and all((folder / name).is_file() for name in TEST_MONTHS):
            break
    else:
        pytest.fail(
            f"this test reads real TLC data, and neither TLC_MIRROR={mirror or '(unset)'} nor the cache {cache} "
            f"holds {' and '.join(TEST_MONTHS)}. Point TLC_MIRROR at a folder holding them, or download them "
            f"into the cache once (online): {FETCH_THEM}",
            pytrace=False,
        )
    # Tests that empty the cache (tests/test_data.py) still find the months, through the mirror.
    folder = folder.resolve()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLC_MIRROR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def trips(tlc_mirror):
    """Cleaned green 2021-01 (train) and 2021-02 (validation)."""
    from ride_duration.data import read_trips

    return read_trips("green", 2021, 1)[0], read_trips("green", 2021, 2)[0]


@pytest.fixture(scope="session")
def linear_pipeline(trips):
    from ride_duration.train import fit

    return fit("linear", trips[0])


@pytest.fixture(scope="session")
def small_forest(trips):
    """A forest of 10 shallow trees: the real code path at a tenth of the fit time."""
    from sklearn.ensemble import RandomForestRegressor

    from ride_duration.features import make_pipeline

    forest = RandomForestRegressor(n_estimators=10, max_depth=10, min_samples_leaf=10, random_state=0, n_jobs=-1)
    return make_pipeline(forest).fit(trips[0], trips[0]["duration"].to_numpy())


@pytest.fixture(scope="session")
def model_files(linear_pipeline, tmp_path_factory):
    """models/lin_reg.pkl and .npz written by the training code into a temporary folder."""
    from ride_duration.train import save

    return save(linear_pipeline, tmp_path_factory.mktemp("models"), "lin_reg")


@pytest.fixture(scope="session")
def aws_endpoint():
    """A real moto server on loopback (S3, Kinesis, IAM, Lambda), with the environment set."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(name, value)
    yield endpoint
    patch.undo()
    server.stop()
