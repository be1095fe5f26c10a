"""The gunicorn worker of the web services: a request reaches the app only once it is whole.

gunicorn's own workers read a request in the thread that will run it, so a client that sends
its headers and then trickles its body holds that thread (with 1 thread per worker, the
worker) for as long as it likes. Here tornado's HTTP/1.1 server reads every connection on
an event loop, and the app runs only when a request has fully arrived; a slow client then
costs a socket and a buffer, not a worker. gunicorn still runs the processes (workers,
reuse_port, start-up hooks, restarts); ride_duration/gunicorn_conf.py names this class.

Limits, read where the settings are checked (ride_duration/service.py):
- REQUEST_READ_TIMEOUT: a client has that long to send one whole request, headers and body,
  from the moment its connection is ready for it (accepted, or the previous answer sent);
  then the connection is closed. An idle keep-alive connection closes after the same time.
- MAX_REQUEST_BYTES: at most that much of a body (plus one byte) is kept; the rest of a body
  up to service.DISCARD_LIMIT (16 MiB) is read and dropped, and the app answers 413. A body
  announced beyond it gets a 413 at once, and the connection is closed.
- MAX_HEADER_BYTES: longer headers get a 431 and the connection is closed.
Malformed framing (a bad request line or header, bad chunked encoding, a bad Content-Length,
both of Content-Length and Transfer-Encoding, a chunked body beyond 16 MiB) gets a 400 and
the connection is closed. Every one of these answers is JSON, as the app's are. Pipelined
requests are answered in order. Of
gunicorn's settings this worker uses the processes' ones (workers, bind, reuse_port, timeout,
hooks); it writes no access log and ignores threads, keepalive and max_requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
from email.utils import formatdate
from urllib.parse import unquote_to_bytes, urlsplit

from gunicorn.workers.base import Worker
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, UnsatisfiableReadError

from ride_duration.service import DISCARD_LIMIT, max_request_bytes, request_read_timeout

MAX_HEADER_BYTES = 16 << 10  # the request line and headers; tornado rescans them as they arrive
NO_BODY_STATUSES = (204, 304)


def _raw_answer(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


HEADERS_TOO_LARGE = _raw_answer(
    "431 Request Header Fields Too Large", f"the request headers are longer than {MAX_HEADER_BYTES} bytes"
)
CHUNK_LINE_TOO_LONG = _raw_answer("400 Bad Request", "a chunk size line of the chunked request body is too long")
TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # all tornado says of a message it cannot parse


class WholeRequestWorker(Worker):
    """One event loop per worker process: tornado reads requests, the WSGI app answers them."""

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        servers = []
        for listener in self.sockets:
            server = WholeRequestServer(self.wsgi, listener.getsockname())
            listener.setblocking(False)
            server.add_socket(listener.sock)
            servers.append(server)
        while self.alive:  # gunicorn's signal handlers clear `alive`; the master watches notify()
            self.notify()
            for server in servers:
                server.date = formatdate(usegmt=True)
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            await asyncio.sleep(1.0)
        for server in servers:
            server.stop()  # no new connections; answers in flight are already with the kernel


class WholeRequestServer(HTTPServer):
    """tornado's HTTP/1.1 server handing each whole request to a WSGI app, on one listener."""

    def initialize(self, app, address) -> None:
        self.app, self.date = app, formatdate(usegmt=True)
        self.server_name, self.server_port = (address[0], str(address[1])) if isinstance(address, tuple) else ("", "")
        self.max_body_bytes, self.read_timeout = max_request_bytes(), request_read_timeout()
        self.body_limit = max(DISCARD_LIMIT, self.max_body_bytes + 1)
        super().initialize(
            None,  # start_request below makes each request's handler
            idle_connection_timeout=self.read_timeout,  # tornado's time limit for the headers
            max_header_size=MAX_HEADER_BYTES,
            max_body_size=self.body_limit,  # beyond it tornado refuses the request (AnswerBeforeClosing)
        )

    def handle_stream(self, stream: IOStream, address) -> None:
        stream.__class__ = AnswerBeforeClosing  # TCPServer makes plain IOStreams; this one only adds a hook
        stream.reading_body, stream.body_limit = False, self.body_limit
        return super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn) -> WholeRequest:
        # Called when the connection is ready for a request: its time limit starts now.
        return WholeRequest(self, request_conn, server_conn.context, time.monotonic() + self.read_timeout)


class AnswerBeforeClosing(IOStream):
    """tornado closes a connection whose headers (or a chunk's size line) outgrow its limit
    without a word, and answers a message it cannot parse with a bare 400; this stream answers
    both in JSON. close_fd is IOStream's hook for subclasses."""

    reading_body: bool
    body_limit: int  # the most of a body that is read at all (tornado's max_body_size)
    body_over_limit = False  # the request's Content-Length is beyond it: tornado refuses it next

    def write(self, data, *args, **kwargs):
        if data == TORNADO_BAD_REQUEST:
            if self.body_over_limit:
                data = _raw_answer("413 Content Too Large", f"the request body is longer than {self.body_limit} bytes")
            else:
                data = _raw_answer(
                    "400 Bad Request",
                    "the request cannot be parsed: its request line, a header, Content-Length, Transfer-Encoding "
                    f"or chunked body is malformed, or its chunked body is over {self.body_limit} bytes",
                )
        return super().write(data, *args, **kwargs)

    def close_fd(self) -> None:
        if isinstance(self.error, UnsatisfiableReadError) and not self.writing():
            with contextlib.suppress(OSError):
                self.socket.send(CHUNK_LINE_TOO_LONG if self.reading_body else HEADERS_TOO_LARGE)
        super().close_fd()


class WholeRequest(httputil.HTTPMessageDelegate):
    """One request: its headers, then its body (kept up to the limit), then the app's answer."""

    __slots__ = ("server", "connection", "context", "deadline", "start_line", "headers", "chunks", "size")

    def __init__(self, server: WholeRequestServer, connection, context, deadline: float):
        self.server, self.connection, self.context, self.deadline = server, connection, context, deadline
        self.chunks, self.size = [], 0

    def headers_received(self, start_line, headers) -> None:
        self.start_line, self.headers = start_line, headers
        # What is left of the request's time limit, for the body (tornado counts it from now).
        self.connection.set_body_timeout(max(self.deadline - time.monotonic(), 0.001))
        stream = self.connection.stream
        stream.reading_body = True
        declared = headers.get("Content-Length", "")
        stream.body_over_limit = declared.isdigit() and int(declared) > stream.body_limit

    def data_received(self, chunk: bytes) -> None:
        kept = self.server.max_body_bytes + 1 - self.size  # one byte more than allowed tells the app it is over
        if kept > 0:
            self.chunks.append(chunk[:kept])
        self.size += len(chunk)

    def finish(self) -> None:
        self.connection.stream.reading_body = False
        chunks: list[bytes] = []
        started: list = []

        def start_response(status: str, headers: list, exc_info=None):
            started[:] = (status, headers)
            return chunks.append

        result = self.server.app(self.environ(), start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, app_headers = started
        code, _, reason = status.partition(" ")
        headers = httputil.HTTPHeaders()
        for name, value in app_headers:
            headers.add(name, value)
        if "Date" not in headers:
            headers["Date"] = self.server.date
        body = b"".join(chunks)
        if "Content-Length" not in headers and int(code) not in NO_BODY_STATUSES:
            headers["Content-Length"] = str(len(body))
        self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", int(code), reason), headers, body)
        self.connection.finish()

    def environ(self) -> dict:
        """The WSGI environment of the request; its body is whole, so CONTENT_LENGTH is its size."""
        start, server = self.start_line, self.server
        target = start.path
        if not target.startswith("/"):  # the absolute form, http://host/path, which proxies send
            parts = urlsplit(target)
            target = f"{parts.path or '/'}?{parts.query}"
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": start.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path.encode("latin-1")).decode("latin-1") if "%" in path else path,
            "QUERY_STRING": query,
            "SERVER_NAME": server.server_name,
            "SERVER_PORT": server.server_port,
            "SERVER_PROTOCOL": start.version,
            "REMOTE_ADDR": self.context.remote_ip,
            "CONTENT_LENGTH": str(self.size),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b"".join(self.chunks)),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ[key] = value
            elif key not in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):  # the body is de-chunked and measured
                environ[f"HTTP_{key}"] = value
        return environ

    def on_connection_close(self) -> None:
        """The client left or ran out of time before its request was whole: nothing to answer."""
