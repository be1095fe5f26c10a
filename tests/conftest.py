"""Fixtures shared by the test modules: real data, a trained model, a local AWS endpoint."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MIRROR = REPO.parent / "shared" / "tlc"


@pytest.fixture(scope="session", autouse=True)
def tlc_mirror():
    """The real TLC months; CI points TLC_MIRROR at ../shared/tlc."""
    mirror = Path(os.environ.setdefault("TLC_MIRROR", str(SHARED_MIRROR)))
    if not (mirror / "green_tripdata_2021-01.parquet").is_file():
        pytest.exit(f"TLC_MIRROR={mirror} lacks green_tripdata_2021-01.parquet: point it at a TLC mirror", 2)
    return mirror


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
    from ride_duration.features import make_pipeline
    from sklearn.ensemble import RandomForestRegressor

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

