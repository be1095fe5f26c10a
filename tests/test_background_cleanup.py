"""A service from serve_in_background ends with the process that started it, however that ends.

The lesson case first: a notebook starts the web service, a later cell fails, and nbval shuts the
kernel down (SIGINT, then SIGKILL to its process group). Then a plain Python process that
returns, raises, or is killed with SIGTERM or SIGKILL. Each time no process of gunicorn's group
may be left and its port must refuse connections. Linux only: processes are read from /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from ride_duration.local.processes import group_members

REPO = Path(__file__).resolve().parent.parent
WEB_SERVICE = REPO / "web-service"
# gunicorn_conf's graceful_timeout is 5 s; an idle service stops in well under a second.
GONE_WITHIN = 10.0
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

START_SERVICE = """\
import json
from ride_duration.local import background
from ride_duration.local.processes import group_members

service = background.serve_in_background({web_service!r}, env={{"MODEL_PATH": {model!r}}})
started = {{"pid": service.process.pid, "port": service.port, "group": group_members(service.process.pid)}}
"""


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def assert_service_gone(started: dict) -> float:
    """Wait for gunicorn's master and workers to end; the seconds it took."""
    assert started["pid"] in started["group"] and len(started["group"]) >= 2  # master and worker(s)
    began = time.monotonic()
    while group_members(started["pid"]) and time.monotonic() - began < GONE_WITHIN:
        time.sleep(0.05)
    left = group_members(started["pid"])
    if left:  # not to leave them to the rest of the session
        os.killpg(started["pid"], signal.SIGKILL)
    assert left == [], f"gunicorn processes {left} outlived the process that started them"
    assert not accepts_connections(started["port"])
    return time.monotonic() - began


def failing_lesson(tmp_path: Path, model: Path) -> Path:
    """A notebook that starts the web service, records it, then fails in its next cell."""
    info = tmp_path / "started.json"
    start = START_SERVICE.format(web_service=str(WEB_SERVICE), model=str(model))
    start += f"with open({str(info)!r}, 'w') as f:\n    json.dump(started, f)\n"
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(start), nbformat.v4.new_code_cell("raise RuntimeError('the lesson fails')")]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "failing_lesson.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_failing_lesson_under_nbval_leaves_no_service(tmp_path, model_files):
    notebook = failing_lesson(tmp_path, model_files[1])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the notebook's own rootdir: no conftest of the repo's
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env", notebook.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "the lesson fails" in run.stdout, run.stdout + run.stderr
    started = json.loads((tmp_path / "started.json").read_text())
    print(f"gone {assert_service_gone(started):.2f} s after nbval killed the kernel")


def test_a_failing_lesson_under_nbclient_leaves_no_service(tmp_path, model_files):
    """nbclient (papermill, `jupyter nbconvert --execute`) asks the kernel to shut down instead."""
    import nbclient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(failing_lesson(tmp_path, model_files[1]), as_version=4)
    with pytest.raises(CellExecutionError, match="the lesson fails"):
        nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120).execute()
    started = json.loads((tmp_path / "started.json").read_text())
    print(f"gone {assert_service_gone(started):.2f} s after the kernel shut down")


PARENT = """\
import sys, time
from ride_duration.local import background

if sys.argv[1] == "no-pdeathsig":  # as on macOS: only the atexit and SIGTERM handlers are left
    background._prctl = None
{start}
print(json.dumps(started), flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the script fails")
if sys.argv[1] != "return":
    time.sleep(600)  # until the test's signal
"""


@pytest.mark.parametrize(
    "ending, signum",
    [
        ("return", None),
        ("raise", None),
        ("wait", signal.SIGTERM),
        ("no-pdeathsig", signal.SIGTERM),
        ("wait", signal.SIGKILL),
    ],
    ids=["returns", "raises", "SIGTERM", "SIGTERM-without-pdeathsig", "SIGKILL"],
)
def test_the_service_ends_with_the_process_that_started_it(tmp_path, model_files, ending, signum):
    start = START_SERVICE.format(web_service=str(WEB_SERVICE), model=str(model_files[1]))
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(start=start))
    parent = subprocess.Popen(
        [sys.executable, str(script), ending], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        started = json.loads(parent.stdout.readline() or "null")
        assert started, parent.stderr.read()
        if signum is not None:
            parent.send_signal(signum)
        parent.wait(timeout=60)
    finally:
        parent.kill()
        parent.wait()
    assert parent.returncode == {"return": 0, "raise": 1}.get(ending, -(signum or 0)), parent.stderr.read()
    print(f"gone {assert_service_gone(started):.2f} s after the parent ended")


def test_a_service_started_from_another_thread_is_not_tied_to_it(model_files):
    """Linux's parent-death signal follows the starting thread: only the main thread asks for it."""
    import threading

    from ride_duration.local.background import serve_in_background

    services = []
    starter = threading.Thread(
        target=lambda: services.append(serve_in_background(WEB_SERVICE, env={"MODEL_PATH": str(model_files[1])}))
    )
    starter.start()
    starter.join()
    with services[0] as service:
        time.sleep(0.5)  # a signal sent when the thread ended would have stopped it by now
        assert service.process.poll() is None and accepts_connections(service.port)
    assert not service.running()


def test_the_sigterm_handler_is_installed_only_over_the_default():
    """A program that handles SIGTERM itself keeps its handler."""
    code = textwrap.dedent(
        """
        import signal
        from ride_duration.local import background
        own = lambda signum, frame: None
        signal.signal(signal.SIGTERM, own)
        background._stop_services_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is own
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        background._stop_services_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is background._signal_services_then_die
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
