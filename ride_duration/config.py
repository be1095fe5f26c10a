"""Paths and settings, each overridable by an environment variable (defaults in brackets).

RIDE_DURATION_HOME [repo root]    where data/ and models/ live
RIDE_DURATION_DATA [HOME/data]    local cache of TLC files
RIDE_DURATION_MODELS [HOME/models] trained model files
TLC_MIRROR [unset]                a directory holding TLC files under their own names
TLC_BASE_URL [the TLC's CloudFront address]
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("RIDE_DURATION_HOME", REPO_ROOT))
DEFAULT_TLC_BASE_URL = "https://d37ci6vzurychx.cloudfront.net"
TAXI_TYPES = ("green", "yellow", "fhv", "fhvhv")


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot use."""


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """The integer setting `name`, or `default` when unset; a clear error when unusable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    return value


def data_dir() -> Path:
    return Path(os.environ.get("RIDE_DURATION_DATA", HOME / "data"))


def models_dir() -> Path:
    return Path(os.environ.get("RIDE_DURATION_MODELS", HOME / "models"))


def model_bucket() -> str:
    """MODEL_BUCKET [ride-duration-models]: MLflow's artifacts and the models' serving exports."""
    return os.environ.get("MODEL_BUCKET", "ride-duration-models")


def tlc_mirror() -> Path | None:
    mirror = os.environ.get("TLC_MIRROR")
    return Path(mirror) if mirror else None


def tlc_base_url() -> str:
    return os.environ.get("TLC_BASE_URL", DEFAULT_TLC_BASE_URL).rstrip("/")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A hidden temporary path beside `target`, renamed over it when the block succeeds and
    removed when it fails: readers see no file, or the old one, or the whole new one.
    A killed process may leave the hidden ".<name>.*.part" file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
