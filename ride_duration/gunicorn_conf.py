"""Gunicorn settings for the prediction services, from environment variables [defaults].

    gunicorn --config python:ride_duration.gunicorn_conf predict:app

HOST [127.0.0.1]        address to listen on; the Dockerfile sets 0.0.0.0
PORT [9696]             port to listen on
WEB_CONCURRENCY [2]     worker processes, each loading the model once; one per core
WEB_THREADS [4]         threads per worker (gthread worker class)

Why gthread: it keeps client connections alive (the sync worker closes each one after its
answer, so every request pays a new TCP connection) while a request's work, about 0.1 ms
of Python, stays on one thread. Measured on 2 cores (benchmarks/web_service.py, see
web-service/README.md), it served the most requests per second at 16 connections.
"""
import os

from ride_duration.config import env_int

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '9696')}"
workers = env_int("WEB_CONCURRENCY", 2)
worker_class = "gthread"
threads = env_int("WEB_THREADS", 4)
keepalive = 5  # seconds an idle client connection stays open
timeout = 30  # a worker silent this long is restarted
# On stop, time given to requests in flight (they take milliseconds). gunicorn's gthread
# worker also waits this long when a client holds an idle keep-alive connection; Docker
# sends SIGKILL 10 s after SIGTERM.
graceful_timeout = 5
# gunicorn >= 25 opens a control socket under $HOME by default: several services on one
# machine would share its path, and a container's user may have no home.
control_socket_disable = True
