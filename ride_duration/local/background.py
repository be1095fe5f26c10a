"""Run a web service under gunicorn in the background, on a free loopback port.

Used by the notebooks, the tests, the demo and the benchmark:

    with serve_in_background("web-service", env={"MODEL_PATH": "models/lin_reg.npz"}) as service:
        requests.post(service.predict_url, json=ride)

or, across notebook cells, `service = serve_in_background(...)` ... `service.stop()`.
gunicorn runs in its own process group, so stopping it leaves no worker behind.

A service ends with the process that started it, however that process ends (a lesson whose
cell fails must not leave gunicorn holding a port):
- normal exit or an uncaught exception: an atexit handler stops every running service;
- SIGTERM (jupyter's second try at shutting a kernel down): a handler asks each gunicorn to
  stop, then lets the signal end the process as it would have;
- SIGKILL (nbval shuts a notebook's kernel down with SIGINT then SIGKILL, and jupyter's last
  resort): no code of ours runs, so on Linux gunicorn's master is started with
  PR_SET_PDEATHSIG: the kernel sends it SIGTERM when its parent dies, and the master stops
  its workers (a worker whose master died stops within a second as well). macOS has no
  pdeathsig, and Linux ties it to the starting thread (so it is set from the main thread
  only): elsewhere only atexit and the SIGTERM handler hold.
The stand-ins (ride_duration.local.standins) are meant to outlive a notebook and do none of this.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ride_duration.healthcheck import probe
from ride_duration.local.processes import group_alive, stop_group

DEFAULT_CONFIG = "python:ride_duration.gunicorn_conf"
START_TIMEOUT = 30.0  # seconds to wait for /health
STOP_TIMEOUT = 15.0  # seconds for a graceful stop before SIGKILL
LOOPBACK = "127.0.0.1"


class ServiceFailed(RuntimeError):
    """gunicorn exited or did not become healthy; the message holds the end of its log."""


_running: dict[int, Service] = {}  # gunicorn master pid -> service started here, not yet stopped


@atexit.register
def _stop_running_services() -> None:
    for service in list(_running.values()):
        if service.started_by == os.getpid():  # not in a forked child: the services are its parent's
            service.stop()


def _signal_services_then_die(signum, frame) -> None:
    """SIGTERM: ask every gunicorn to stop (it stops its workers), then die of the signal."""
    for service in list(_running.values()):
        if service.started_by == os.getpid():
            try:
                os.kill(service.process.pid, signal.SIGTERM)
            except OSError:
                pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _stop_services_on_sigterm() -> None:
    # Only where SIGTERM would kill the process outright: a handler of the host's own is kept.
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _signal_services_then_die)


def _linux_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _linux_prctl()  # looked up here: the child runs as little Python as it can before exec
PR_SET_PDEATHSIG = 1


def _die_with_this_thread():
    """preexec_fn for gunicorn's master: SIGTERM when the thread that started it ends (Linux).

    Linux sends the signal when the parent *thread* ends, so it is asked for only from the main
    thread, which lasts as long as the process."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class Service:
    """A gunicorn process group serving one app on loopback."""

    def __init__(self, command: list[str], env: dict, port: int, log_path: Path, temporary_log: bool = False):
        self.command, self.port, self.log_path = command, port, log_path
        self.temporary_log = temporary_log  # removed by stop()
        self.url = f"http://{LOOPBACK}:{port}"
        self.predict_url, self.health_url = f"{self.url}/predict", f"{self.url}/health"
        self.started_by = os.getpid()
        _stop_services_on_sigterm()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_this_thread(),
            )
        _running[self.process.pid] = self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict:
        """The /health answer, once there is one; raises ServiceFailed on exit or time-out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"gunicorn exited with status {self.process.returncode}:\n{self.log_tail()}")
            health = probe(self.health_url, timeout=1.0)
            if health:
                return health
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise ServiceFailed(f"no answer from {self.health_url} within {timeout:g} s:\n{tail}")

    def running(self) -> bool:
        """Whether any process of the service (master or worker) is still alive."""
        return self.process.poll() is None or group_alive(self.process.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop gracefully (SIGTERM lets requests in flight finish), then kill what is left."""
        stop_group(self.process.pid, timeout, reap=self.process.poll)
        self.process.wait()
        if self.temporary_log:
            self.log_path.unlink(missing_ok=True)
        _running.pop(self.process.pid, None)
        return self.process.returncode

    def log_tail(self, lines: int = 200) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Service {self.url} pid={self.process.pid} {'running' if self.running() else 'stopped'}>"


def serve_in_background(
    app_dir: str | Path,
    env: dict | None = None,
    port: int | None = None,
    *,
    app: str = "predict:app",
    config: str | None = DEFAULT_CONFIG,
    args: tuple[str, ...] = (),
    timeout: float = START_TIMEOUT,
    log_path: str | Path | None = None,
    python: str | None = None,
) -> Service:
    """Start gunicorn serving `app` from `app_dir` on 127.0.0.1 and wait for /health.

    Args:
        app_dir: folder holding the app module (gunicorn --chdir).
        env: environment variables added to this process's own (e.g. MODEL_PATH).
        port: port to listen on [a free one].
        app: gunicorn's MODULE:VARIABLE.
        config: gunicorn --config [the package's settings]; None for gunicorn's defaults.
        args: further gunicorn arguments (they override the config).
        timeout: seconds to wait for /health.
        log_path: file for gunicorn's log [a temporary file].
        python: the interpreter whose gunicorn runs [this one].

    Returns:
        The running Service: use it as a context manager, or call .stop().
    """
    temporary_log = log_path is None
    if temporary_log:
        fd, log_path = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    environment = {**os.environ, **(env or {})}
    if port and probe(f"http://{LOOPBACK}:{port}/health", timeout=1.0):
        # Its answers would pass for the new service's.
        raise ServiceFailed(f"http://{LOOPBACK}:{port} already answers /health: another service holds the port")
    for attempt in range(3):  # a free port can be taken by someone else before gunicorn binds it
        bind_port = port or free_port()
        command = [python or sys.executable, "-m", "gunicorn", "--chdir", str(Path(app_dir).resolve())]
        command += ["--config", config] if config else ["--no-control-socket"]
        command += ["--bind", f"{LOOPBACK}:{bind_port}", *args, app]
        service = Service(command, environment, bind_port, log_path, temporary_log)
        try:
            service.wait_healthy(timeout)
            return service
        except ServiceFailed as exc:  # its message already holds the log's end
            service.stop()
            if port or "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")
