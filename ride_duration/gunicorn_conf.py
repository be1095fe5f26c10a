"""Gunicorn settings for the prediction services, from environment variables [defaults].

    gunicorn --config python:ride_duration.gunicorn_conf predict:app

HOST [127.0.0.1]            address to listen on, IPv4 or IPv6 (::1); the Dockerfile sets 0.0.0.0
PORT [9696]                 port to listen on
WEB_CONCURRENCY [2]         worker processes, each loading the model once; one per core
REQUEST_READ_TIMEOUT [10]   seconds a client has to send one whole request; then its
                            connection is closed (see ride_duration/service.py)

Why these, in short (the measurements: "Performance" in web-service/README.md):
- The worker class reads each request whole, on an event loop, before the app sees it
  (ride_duration/http_worker.py): a client that trickles its request holds no worker.
  gunicorn's own workers read a request in the thread that then runs it.
- One event loop per worker: Python runs one thread at a time per process, and the app
  takes a fraction of a millisecond per request, so one core gets one process.
- reuse_port: each worker listens on its own socket and the kernel spreads new connections
  over them. On one shared socket, whichever worker woke first often took most of a
  client's connections, and its queue set the p99.
"""

import gc
import os
import socket

from ride_duration.config import SettingError, env_int
from ride_duration.service import max_request_bytes, max_rides_per_request, request_read_timeout


def bind_address(host: str, port: str) -> str:
    """gunicorn's HOST:PORT, an IPv6 address in brackets ([::1]:9696)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


bind = bind_address(os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "9696"))
workers = env_int("WEB_CONCURRENCY", 2)
worker_class = "ride_duration.http_worker.WholeRequestWorker"
reuse_port = True
timeout = 30  # a worker silent this long (an app call stuck) is restarted
graceful_timeout = 5  # on stop, before the master kills a worker (ours stop within 1 s); Docker kills at 10 s
# gunicorn >= 25 opens a control socket under $HOME by default: several services on one
# machine would share its path, and a container's user may have no home.
control_socket_disable = True


def on_starting(server):
    """Checks made once, in the master, before any worker starts; a failure is one line."""
    try:  # read by every worker: a bad value would fail them all, each with its own message
        max_rides_per_request(), max_request_bytes(), request_read_timeout()
    except SettingError as exc:
        raise RuntimeError(str(exc)) from None
    refuse_taken_ports(server.cfg.address)


def when_ready(server):
    # With reuse_port the workers open the sockets, so gunicorn's "Listening at:" line is empty.
    server.log.info("Listening at: %s (a socket per worker)", ", ".join(server.cfg.bind))


def post_worker_init(worker):
    """The app and its model are loaded: keep the garbage collector off them from now on.

    A full collection walks every object a worker holds (Flask, numpy, the model's
    vocabulary), with every request in flight waiting (web-service/README.md measures it).
    Frozen objects are skipped; what requests allocate is collected as before."""
    gc.collect()
    gc.freeze()


def refuse_taken_ports(addresses: list) -> None:
    """With reuse_port a second server on a taken port would not fail: it would quietly take
    a share of the connections (an old service from an earlier lesson, say). A plain bind
    fails on such a port, as it would without reuse_port."""
    for address in addresses:
        if not isinstance(address, tuple):  # a unix socket path: not shared by reuse_port
            continue
        family, kind, proto, _, sockaddr = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's own sockets
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise RuntimeError(f"cannot listen on {bind_text(address)}: {exc.strerror}") from None


def bind_text(address: tuple) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
