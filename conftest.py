"""Session hooks for every test path, the notebooks included (pytest always loads this file)."""

from __future__ import annotations


def pytest_sessionstart(session):
    from ride_duration.local import standins

    session.config.standins_were_up = any(standins.status()[s]["running"] for s in standins.SERVICES)


def pytest_sessionfinish(session):
    """Notebooks start the stand-ins when they need them; stop them unless they were up before."""
    from ride_duration.local import standins

    if not getattr(session.config, "standins_were_up", True):
        standins.down()
