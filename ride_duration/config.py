"""Paths and settings, each overridable by an environment variable (defaults in brackets).

RIDE_DURATION_HOME [see below]    where data/, models/ and (batch) output/ live
RIDE_DURATION_DATA [HOME/data]    local cache of TLC files
RIDE_DURATION_MODELS [HOME/models] trained model files
TLC_MIRROR [unset]                a directory holding TLC files under their own names
TLC_BASE_URL [the TLC's CloudFront address]

HOME is, in this order: RIDE_DURATION_HOME; the repository, when the package runs from a
checkout (its parent folder holds a pyproject.toml, as with an editable install); else the
working directory at import. So a folder copied out of the repository, with the package
installed from a wheel, finds models/lin_reg.npz and writes output/ beside where it runs,
never inside site-packages. Only the local tooling (ride_duration.local), which works in a
checkout alone, uses REPO_ROOT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def is_checkout(folder: Path) -> bool:
    """Whether `folder` is a source tree (it holds a pyproject.toml); site-packages never is."""
    return (folder / "pyproject.toml").is_file()


def default_home() -> Path:
    """RIDE_DURATION_HOME, else the checkout the package runs from, else the working directory."""
    if os.environ.get("RIDE_DURATION_HOME"):
        return Path(os.environ["RIDE_DURATION_HOME"])
    return REPO_ROOT if IN_CHECKOUT else Path.cwd()


# Installed from a wheel, the package's parent is site-packages: no place for data or models.
REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CHECKOUT = is_checkout(REPO_ROOT)
HOME = default_home()
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
    The file gets the mode open() would give it (0644 under the usual umask 022), not
    mkstemp's 0600. A killed process may leave the hidden ".<name>.*.part" file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_hidden_beside(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _create_hidden_beside(target: Path) -> Path:
    # O_EXCL makes the name ours (64 random bits: a clash is an error, not a retry); mode
    # 0o666 lets the umask decide, exactly as open() does.
    tmp = target.parent / f".{target.name}.{os.urandom(8).hex()}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp
