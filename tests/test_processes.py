"""Stopping a process group: SIGTERM first, SIGKILL for what is left, nothing survives."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ride_duration.local import processes

# A leader and a child of its own, which (when asked) ignore SIGTERM.
GROUP = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\\n"
    "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "time.sleep(600)", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(600)
"""


def start_group(kind: str) -> tuple[subprocess.Popen, int]:
    leader = subprocess.Popen(
        [sys.executable, "-c", GROUP, kind], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = int(leader.stdout.readline())
    deadline = time.monotonic() + 10
    while len(processes.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(processes.group_members(leader.pid)) == sorted([leader.pid, child])
    return leader, child


@pytest.mark.parametrize("kind, graceful", [("polite", True), ("stubborn", False)])
def test_stop_group_ends_every_member_and_says_whether_it_took_sigkill(kind, graceful):
    leader, _child = start_group(kind)
    started = time.monotonic()
    assert processes.stop_group(leader.pid, grace=1.0, reap=leader.poll) is graceful
    assert processes.group_members(leader.pid) == [] and not processes.group_alive(leader.pid)
    assert leader.wait(timeout=5) is not None
    assert time.monotonic() - started < (1.0 if graceful else 1.0 + processes.KILL_TIMEOUT)


def test_stopping_a_group_that_has_ended_is_a_no_op():
    leader, _child = start_group("polite")
    processes.stop_group(leader.pid, grace=5.0, reap=leader.poll)
    started = time.monotonic()
    assert processes.stop_group(leader.pid, grace=5.0, reap=leader.poll) is True
    assert time.monotonic() - started < 1.0
