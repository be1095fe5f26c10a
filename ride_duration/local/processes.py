"""Process groups: the local tooling starts each server in a group of its own
(start_new_session) and stops the group as one, so that no worker outlives its master.

A group's members are read from /proc (Linux); elsewhere stopping still works, by signals alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

KILL_TIMEOUT = 5.0  # seconds for SIGKILL to take effect
PROC = Path("/proc")


class GroupSurvived(RuntimeError):
    """Processes of a group were still alive after SIGKILL."""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # Fields after the command name, which may hold spaces: state ppid pgrp ...
        state, _ppid, pgrp = text.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` lives: from /proc where there is one (a zombie does not
    count), else by signal 0 (where it does, until its parent or init reaps it)."""
    if PROC.is_dir():
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def stop_group(pgid: int, grace: float, reap: Callable[[], object] = lambda: None) -> bool:
    """SIGTERM to every process of group `pgid`, then SIGKILL to what is left after `grace`
    seconds. `reap` collects exited children of the caller (Popen.poll), which would otherwise
    stay zombies. Returns whether the group ended within `grace`; raises GroupSurvived if a
    process outlives SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_TIMEOUT)):
        reap()
        if not group_alive(pgid):
            return True  # before SIGTERM (nothing to stop) or after it (stopped within `grace`)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            reap()
            time.sleep(0.1)
    reap()
    if group_alive(pgid):
        raise GroupSurvived(f"processes {group_members(pgid) or '?'} of group {pgid} survived SIGKILL")
    return False
