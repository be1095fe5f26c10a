"""Benchmark the prediction web service against its ceiling and the course's naive service.

    python benchmarks/web_service.py [--app-dir web-service] [--env NAME=VALUE] [--url URL]
                                     [--connections 16] [--rounds 5] [--duration 3]
                                     [--loadgen auto|wrk|python] [--gunicorn-arg=--workers=4]
                                     [--slow-clients 50] [--results benchmarks/results.json]

Measures requests/s and p50/p99 latency at N concurrent keep-alive connections, in one run,
for three services, all started on free loopback ports and measured in turns, back to back
(--rounds of --duration seconds each; medians are reported):

  (a) the service: --app-dir's predict:app (default web-service/, the model file
      models/lin_reg.npz), or an already running one given by --url;
  (b) the ceiling: a bare Flask endpoint answering a constant JSON (bare_app.py), on the
      same gunicorn settings as (a) (ride_duration/gunicorn_conf.py, plus --gunicorn-arg);
  (c) the course's style (naive_app.py): gunicorn's defaults (one sync worker), features +
      DictVectorizer + scikit-learn predict per request from a pickled (dv, model) pair,
      made here from models/lin_reg.pkl.

and prints the ratios a/b and a/c, and the server's CPU time per request (which other load on
the machine hardly changes, unlike requests/s). The load generator is wrk (Debian package `wrk`) when
installed, else the package's asyncio client (ride_duration.local.loadgen), which uses more CPU.
Nothing leaves the loopback interface; every run is bounded by --duration.

With --slow-clients N, N more connections to each service send their requests a byte at a
time throughout (half stall in their headers, half in their bodies, each opened again when
the server cuts it off), and the report says how many were cut off and after how long at most.

With --results, the table goes to that file's "web_service" section (with --slow-clients,
"web_service_slow_clients"), from which benchmarks/results.py renders the README's Performance.

To measure web-service-mlflow instead, for example:
    python benchmarks/web_service.py --app-dir web-service-mlflow --env MODEL_URI=models:/ride-duration@production
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ride_duration.config import models_dir  # noqa: E402
from ride_duration.local.background import serve_in_background  # noqa: E402
from ride_duration.local.loadgen import run_load  # noqa: E402

RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}
TARGETS = {"a/b": 0.90, "a/c": 2.5, "p99_ms": 15.0}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%f %%f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Measure:
    name: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us: float = float("nan")  # server CPU time per request, all its processes

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


class SlowClients:
    """`count` connections that send a request one byte every `interval` seconds, in a thread.

    Even ones stall in their headers, odd ones in a body announced as 100 kB. When the server
    closes one (or answers it: then it closes it next), it is opened again, so `count` stay
    open; `cut_off` lists how long each one the server closed had lived, in seconds.
    """

    HEADERS = (
        b"POST /predict HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )

    def __init__(self, address: tuple, count: int = 50, interval: float = 0.2):
        self.address, self.count, self.interval = address, count, interval
        self.cut_off: list[float] = []
        self._open: dict[socket.socket, tuple[int, float, int]] = {}  # -> (kind, opened at, bytes sent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        for kind in range(self.count):
            self._connect(kind % 2)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in list(self._open):
            sock.close()
        self._open.clear()

    def _connect(self, kind: int) -> None:
        sock = socket.create_connection(self.address, timeout=5)
        if kind:  # a body stall: the headers go at once
            sock.sendall(self.HEADERS)
        sock.setblocking(False)
        self._open[sock] = (kind, time.monotonic(), len(self.HEADERS) if kind else 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            readable, _, _ = select.select(list(self._open), [], [], 0)
            for sock in readable:  # closed by the server (b"") or answered (then closed): replace it
                kind, opened, _ = self._open.pop(sock)
                self.cut_off.append(time.monotonic() - opened)
                sock.close()
                self._connect(kind)
            for sock, (kind, opened, sent) in list(self._open.items()):
                byte = self.HEADERS[sent : sent + 1] if sent < len(self.HEADERS) else b" "
                try:
                    sock.send(byte)
                except OSError:
                    continue  # reset by the server: select reports it next round
                self._open[sock] = (kind, opened, sent + 1)


def measure(name: str, url: str, args, group: int | None = None) -> Measure:
    body = json.dumps(RIDE).encode()
    if args.warmup:
        load(url, body, args.warmup, args)
    cpu_before = group_cpu_seconds(group)
    result = Measure(name, *load(url, body, args.duration, args))
    result.cpu_us = (group_cpu_seconds(group) - cpu_before) / max(result.requests, 1) * 1e6
    return result


def group_cpu_seconds(group: int | None) -> float:
    """CPU seconds used so far by the processes of a process group (Linux /proc), else nan.

    Unlike requests/s, CPU per request hardly changes when other work shares the machine.
    """
    if group is None or not Path("/proc/self/stat").exists():
        return float("nan")
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[2]) == group:  # fields after the name: state, ppid, pgrp, ..., utime, stime
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def load(url: str, body: bytes, seconds: float, args) -> tuple[int, float, int, float, float]:
    """(requests answered, seconds, errors, p50 ms, p99 ms) of one bounded run."""
    if args.loadgen == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_SCRIPT % body.decode())
            script.flush()
            out = subprocess.run(
                [
                    "wrk",
                    "-t",
                    str(args.wrk_threads),
                    "-c",
                    str(args.connections),
                    "-d",
                    f"{max(1, round(seconds))}s",
                    "--timeout",
                    "2s",
                    "-s",
                    script.name,
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                check=True,
            ).stdout
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        requests, micros, errors, p50, p99 = line.split()[1:]
        if not int(requests):  # wrk prints 0 latencies when nothing was answered
            p50 = p99 = "nan"
        return int(requests), int(micros) / 1e6, int(errors), float(p50) / 1e3, float(p99) / 1e3
    result = run_load(url, [body], duration=seconds, connections=args.connections, timeout=2.0)
    errors = result.errors + sum(n for status, n in result.statuses.items() if status >= 400)
    return result.answered, result.elapsed, errors, result.percentile(50) * 1e3, result.percentile(99) * 1e3


def naive_pickle(pipeline_path: Path, folder: Path) -> Path:
    """The course's model file: a pickled (DictVectorizer, regressor) pair."""
    pipeline = pickle.loads(pipeline_path.read_bytes())
    path = folder / "naive_dv_model.bin"
    path.write_bytes(pickle.dumps((pipeline.steps[-2][1], pipeline.steps[-1][1])))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, default=REPO / "web-service", help="folder of (a)'s predict.py")
    parser.add_argument("--app", default="predict:app", help="(a)'s gunicorn MODULE:VARIABLE")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for (a)'s process")
    parser.add_argument("--url", help="measure this running service as (a) instead of starting one")
    parser.add_argument("--model", type=Path, default=models_dir() / "lin_reg.npz", help="(a)'s MODEL_PATH")
    parser.add_argument("--pipeline", type=Path, default=models_dir() / "lin_reg.pkl", help="source of (c)'s model")
    parser.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra gunicorn argument for (a) and (b), e.g. --gunicorn-arg=--threads=8",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=3, help="seconds measured per round")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before each measure")
    parser.add_argument("--rounds", type=int, default=5, help="turns taken by each service; medians are kept")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="letters of services not to run, e.g. 'c'")
    parser.add_argument("--slow-clients", type=int, default=0, metavar="N", help="connections trickling requests")
    parser.add_argument("--results", type=Path, default=None, help="write the table to this results file")
    args = parser.parse_args(argv)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    needed = [] if "c" in args.skip else [args.pipeline]
    model_given = args.url or "a" in args.skip or any(item.startswith("MODEL_PATH=") for item in args.env)
    if not model_given and args.app_dir.resolve() == (REPO / "web-service").resolve():
        needed.append(args.model)
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        print(f"missing {', '.join(missing)}: train the model first (make train)", file=sys.stderr)
        return 2
    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("MODEL_PATH", str(args.model.resolve()))
    extra = tuple(args.gunicorn_arg)

    print(
        f"{args.connections} keep-alive connections; {args.rounds} rounds of {args.duration} s per service, "
        f"each after {args.warmup} s of warm-up; load generator: {args.loadgen}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    urls: dict[str, tuple[str, str, int | None]] = {}  # key -> (name, url, process group)
    settings = "as started at --url"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        # All three stay up; idle ones cost nothing, and taking turns in rounds spreads any
        # other load on the machine over all of them alike.
        if "a" not in args.skip:
            if args.url:
                urls["a"] = (f"(a) {args.url}", args.url, None)
            else:
                service = running.enter_context(serve_in_background(args.app_dir, env, app=args.app, args=extra))
                urls["a"] = (f"(a) {args.app_dir.name}/{args.app}", service.predict_url, service.process.pid)
                settings = gunicorn_settings(service.command)
                print(f"gunicorn settings of (a) and (b): {settings}")
        if "b" not in args.skip:
            service = running.enter_context(serve_in_background(REPO / "benchmarks", app="bare_app:app", args=extra))
            urls["b"] = ("(b) bare Flask, constant JSON", service.predict_url, service.process.pid)
        if "c" not in args.skip:
            naive_env = {"NAIVE_MODEL_PATH": str(naive_pickle(args.pipeline, Path(tmp)))}
            service = running.enter_context(
                serve_in_background(REPO / "benchmarks", naive_env, app="naive_app:app", config=None)
            )
            urls["c"] = ("(c) course style, 1 sync worker", service.predict_url, service.process.pid)
        slow = {
            key: running.enter_context(SlowClients(address_of(url), args.slow_clients))
            for key, (_, url, _) in urls.items()
            if args.slow_clients
        }
        rounds = {key: [] for key in urls}
        for _ in range(args.rounds):
            for key, (name, url, group) in urls.items():
                rounds[key].append(measure(name, url, args, group))
    checks, errors = report(rounds)
    slow_line = ""
    if slow:
        per_service = "; ".join(
            f"({key}) {len(clients.cut_off)}, after {max(clients.cut_off, default=float('nan')):.1f} s at most"
            for key, clients in slow.items()
        )
        slow_line = f"slow clients: {args.slow_clients} per service throughout; cut off by each server: {per_service}"
        print(slow_line)
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} (anything near or above the core count "
        f"means other work shared the cores, and requests/s and p99 suffer)"
    )
    if args.results:
        import results as results_file  # benchmarks/, the script's own folder, is on sys.path

        section = "web_service_slow_clients" if slow else "web_service"
        title = f"Web service, with {args.slow_clients} slow clients per service" if slow else "Web service"
        command = "python benchmarks/web_service.py" + (f" --slow-clients {args.slow_clients}" if slow else "")
        markdown = table(rounds, checks, errors, args, settings, slow_line)
        record = {"title": title, "command": command, "markdown": markdown, "checks": checks, "errors": errors}
        results_file.update(args.results, section, record)
    return 0


NAMES = {
    "a": "(a) `{app_dir}/`, the numpy export",
    "b": "(b) ceiling: a bare Flask endpoint on the same settings",
    "c": "(c) the course's style: 1 sync worker, scikit-learn per request",
}


def table(rounds: dict[str, list[Measure]], checks: list[dict], errors: int, args, settings: str, slow: str) -> str:
    """The README's table of the median rounds, and the ratios against its targets."""
    generator = "wrk" if args.loadgen == "wrk" else "the package's Python load generator"
    lines = [
        f"{generator}, {args.connections} keep-alive connections, {args.rounds} rounds of {args.duration} s, "
        "medians of the rounds.",
        "",
        "| service | requests/s | p50 ms | p99 ms | server CPU per request |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, runs in rounds.items():
        m = median_of(runs)
        name = NAMES[key].format(app_dir=args.app_dir.name)
        if m.requests:
            lines.append(f"| {name} | {m.rps:,.0f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.cpu_us:,.0f} us |")
        else:
            lines.append(f"| {name} | 0: no request answered | | | |")
    lines += ["", f"gunicorn settings of (a) and (b): `{settings}`.", ""]
    for check in checks:
        verdict = f"target {check['op']} {check['target']:g}: {'met' if check['met'] else '**not met**'}"
        if check["value"] == float("inf"):
            other = check["what"].split("/")[1]
            lines.append(f"- {check['what']}: ({other}) answered nothing ({verdict})")
        else:
            lines.append(f"- {check['what']}: {check['value']:.2f} ({verdict}; {check['detail']})")
    lines.append(f"- errors in all rounds: {errors}")
    if slow:
        lines.append(f"- {slow}")
    return "\n".join(lines)


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def median_of(runs: list[Measure]) -> Measure:
    """The round with the median requests/s (its own latencies kept with it)."""
    return sorted(runs, key=lambda m: m.rps)[len(runs) // 2]


def gunicorn_settings(command: list[str]) -> str:
    """The settings a started service runs with, as gunicorn would print them."""
    bind = command.index("--bind")
    out = subprocess.run(
        [*command[:bind], *command[bind + 2 : -1], "--print-config", "x:y"], capture_output=True, text=True, timeout=60
    ).stdout
    values = {name.strip(): value.strip() for name, _, value in (line.partition(" = ") for line in out.splitlines())}
    settings = f"worker_class={values.get('worker_class', '?')} workers={values.get('workers', '?')}"
    if values.get("worker_class") in ("gthread", "sync"):  # what gunicorn's own workers depend on
        settings += f" threads={values.get('threads', '?')} keepalive={values.get('keepalive', '?')}"
    return settings


def report(rounds: dict[str, list[Measure]]) -> tuple[list[dict], int]:
    """Each service's median round, then the ratios: the median over rounds of a/b and a/c
    measured back to back, which other load on the machine disturbs least. Returns the checks
    against TARGETS and the errors of all rounds."""
    results = {key: median_of(runs) for key, runs in rounds.items()}
    print(
        f"{'service (median round)':36} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'server CPU/req':>15}"
    )
    for m in results.values():
        print(f"{m.name:36} {m.rps:8,.0f} {m.p50_ms:7.2f} {m.p99_ms:7.2f} {m.errors:6d} {m.cpu_us:12.0f} us")
    errors = sum(m.errors for runs in rounds.values() for m in runs)
    if "a" not in rounds:
        return [], errors
    checks = []
    for other in ("b", "c"):
        if other in rounds:
            # A service that answered nothing (the course's one sync worker under slow clients) is infinitely behind.
            ratios = sorted(a.rps / o.rps if o.requests else float("inf") for a, o in zip(rounds["a"], rounds[other]))
            cpu = sorted(
                o.cpu_us / a.cpu_us if o.requests else float("inf") for a, o in zip(rounds["a"], rounds[other])
            )
            checks.append(
                (
                    f"a/{other}",
                    ratios[len(ratios) // 2],
                    ">=",
                    TARGETS[f"a/{other}"],
                    f"rounds {', '.join(f'{r:.2f}' for r in ratios)}; from CPU per request {cpu[len(cpu) // 2]:.2f}",
                )
            )
    p99 = sorted(m.p99_ms for m in rounds["a"])
    checks.append(
        ("p99 of (a), ms", p99[len(p99) // 2], "<=", TARGETS["p99_ms"], f"rounds {', '.join(f'{v:.1f}' for v in p99)}")
    )
    verdicts = []
    for label, value, op, target, detail in checks:
        met = value >= target if op == ">=" else value <= target
        print(f"{label:15} {value:6.2f}  target {op} {target:g}: {'met' if met else 'NOT met':8} ({detail})")
        verdicts.append({"what": label, "value": value, "op": op, "target": target, "met": met, "detail": detail})
    print(f"errors in all rounds: {errors}")
    return verdicts, errors


if __name__ == "__main__":
    sys.exit(main())
