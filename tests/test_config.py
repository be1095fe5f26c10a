import pytest

from ride_duration.config import SettingError, atomic_path, env_int


def test_an_unset_or_blank_setting_takes_its_default(monkeypatch):
    monkeypatch.delenv("SOME_LIMIT", raising=False)
    assert env_int("SOME_LIMIT", 7) == 7
    monkeypatch.setenv("SOME_LIMIT", "  ")
    assert env_int("SOME_LIMIT", 7) == 7


def test_a_whole_number_is_read(monkeypatch):
    monkeypatch.setenv("SOME_LIMIT", " 250000 ")
    assert env_int("SOME_LIMIT", 7) == 250000


@pytest.mark.parametrize(
    "raw, message",
    [
        ("abc", "SOME_LIMIT must be a whole number, got 'abc'"),
        ("2.5", "SOME_LIMIT must be a whole number, got '2.5'"),
        ("0", "SOME_LIMIT must be at least 1, got 0"),
        ("-3", "SOME_LIMIT must be at least 1, got -3"),
    ],
)
def test_an_unusable_setting_is_named_in_the_error(monkeypatch, raw, message):
    monkeypatch.setenv("SOME_LIMIT", raw)
    with pytest.raises(SettingError) as error:
        env_int("SOME_LIMIT", 7)
    assert str(error.value) == message


def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "models" / "model.npz"
    with atomic_path(target) as staging:
        staging.write_bytes(b"first")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_bytes() == b"first"

    with pytest.raises(RuntimeError), atomic_path(target) as staging:
        staging.write_bytes(b"half of the sec")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["model.npz"]  # no staging file left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_path_gives_the_mode_open_would(tmp_path, umask, mode):
    import os

    target = tmp_path / "model.npz"
    previous = os.umask(umask)
    try:
        with atomic_path(target) as staging:
            staging.write_bytes(b"model")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == mode
