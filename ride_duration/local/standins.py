"""Local stand-ins for AWS and MLflow, started, checked and stopped with one command.

    python -m ride_duration.local.standins up [--no-mlflow] | down | status | env

`up` starts moto's server (S3, Kinesis, IAM and Lambda on one loopback port) and an MLflow
tracking server (sqlite backend store, default artifact root on the stand-in S3), waits until
both answer, creates the model bucket and writes the environment a shell or a notebook needs
to <STANDINS_DIR>/env (`source .standins/env`, or `eval "$(python -m ride_duration.local.standins env)"`).
It is safe to call twice: what already runs is reused. `down` stops each server's whole
process group and checks that no process of it is left.

Settings (environment variables, defaults in brackets):
    STANDINS_HOST [127.0.0.1]      the loopback address both servers listen on
    MOTO_PORT [5001]               moto's server (every AWS service on one port)
    MLFLOW_PORT [5000]             the MLflow tracking server and its UI
    MODEL_BUCKET [ride-duration-models]   the bucket holding MLflow's artifacts
    STANDINS_DIR [<repo>/.standins]       pid files, logs, mlflow.db and the env file

One lifetime for both: moto keeps its state in memory, so a restarted moto has no buckets and
no artifacts. A registry that outlived it would point at models that no longer exist, so
whenever `up` has to start moto afresh it also stops the tracking server and starts it on an
empty mlflow.db. A tracking server may be stopped alone (`stop_mlflow()`) and started again
by `up`: it keeps its database while moto runs.

Real AWS: nothing here is needed. Leave AWS_ENDPOINT_URL and MLFLOW_S3_ENDPOINT_URL unset,
give real credentials the usual way (profile, role), set MODEL_BUCKET to a bucket you own and
MLFLOW_TRACKING_URI to your tracking server (started with `--default-artifact-root
s3://<your bucket>/`): ride_duration.registry and the loaders then talk to AWS with the same
code. The dummy credentials `test`/`test` below are for the stand-in only.

Linux only: process groups are inspected through /proc (ride_duration.local.processes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ride_duration.config import REPO_ROOT, SettingError, env_int, model_bucket
from ride_duration.local.processes import GroupSurvived, group_members, stop_group

MOTO_START_TIMEOUT = 30.0
# The tracking server takes 10-30 s to answer on two busy cores.
MLFLOW_START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
SERVICES = ("mlflow", "moto")


class StandinError(RuntimeError):
    """A stand-in cannot be started or stopped; the message says why and where the log is."""


@dataclass(frozen=True)
class Settings:
    host: str
    moto_port: int
    mlflow_port: int
    bucket: str
    directory: Path

    @property
    def moto_url(self) -> str:
        return f"http://{self.host}:{self.moto_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_db(self) -> Path:
        return self.directory / "mlflow.db"

    @property
    def env_file(self) -> Path:
        return self.directory / "env"

    def pid_file(self, service: str) -> Path:
        return self.directory / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.directory / f"{service}.log"


def settings() -> Settings:
    """The current settings, read from the environment at each call (tests change them)."""
    return Settings(
        host=os.environ.get("STANDINS_HOST", "127.0.0.1"),
        moto_port=env_int("MOTO_PORT", 5001),
        mlflow_port=env_int("MLFLOW_PORT", 5000),
        bucket=model_bucket(),
        directory=Path(os.environ.get("STANDINS_DIR", REPO_ROOT / ".standins")),
    )


def environment(s: Settings | None = None) -> dict[str, str]:
    """The variables that point boto3, MLflow and this package at the stand-ins."""
    s = s or settings()
    return {
        "AWS_ENDPOINT_URL": s.moto_url,
        "MLFLOW_S3_ENDPOINT_URL": s.moto_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": s.mlflow_url,
        "MODEL_BUCKET": s.bucket,
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


# ---- the public commands ----------------------------------------------------------------
def up(with_mlflow: bool = True) -> dict[str, str]:
    """Start what is not running yet, wait until it answers, and return the environment.

    Idempotent. When moto has to be started, the tracking server is restarted on a fresh
    mlflow.db (see the module docstring: both share one lifetime).
    """
    s = settings()
    s.directory.mkdir(parents=True, exist_ok=True)
    env = environment(s)
    with _locked(s):
        if not _running(s, "moto"):
            _stop(s, "mlflow")  # its registry describes the old moto's objects
            s.mlflow_db.unlink(missing_ok=True)
            _stop(s, "moto")  # a leftover that no longer answers
            _refuse_foreign(s, "moto", s.moto_url)
            _start(
                s,
                "moto",
                [sys.executable, "-m", "moto.server", "-H", s.host, "-p", str(s.moto_port)],
                env,
                lambda: _moto_answers(s),
                MOTO_START_TIMEOUT,
            )
        _create_bucket(s)
        if with_mlflow and not _running(s, "mlflow"):
            _stop(s, "mlflow")
            _refuse_foreign(s, "mlflow", s.mlflow_url)
            # The job runner costs memory and start-up time, and nothing here uses it.
            _start(
                s,
                "mlflow",
                mlflow_server_command(s),
                {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                lambda: _mlflow_answers(s),
                MLFLOW_START_TIMEOUT,
            )
        s.env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    return env


def mlflow_server_command(s: Settings) -> list[str]:
    """The tracking server the stand-ins run: sqlite for the registry, artifacts straight on S3."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{s.mlflow_db}",
        "--default-artifact-root",
        f"s3://{s.bucket}/",
        "--no-serve-artifacts",  # clients read and write S3 themselves
        "--host",
        s.host,
        "--port",
        str(s.mlflow_port),
        "--workers",
        "1",
    ]


def ensure(with_mlflow: bool = True) -> dict[str, str]:
    """`up()`, then the environment applied to this process: what notebooks and demos call."""
    env = up(with_mlflow)
    os.environ.update(env)
    return env


def down() -> None:
    """Stop both servers (whole process groups) and check that none of their processes is left."""
    s = settings()
    if not s.directory.is_dir():
        return
    with _locked(s):
        for service in SERVICES:
            _stop(s, service)
        s.env_file.unlink(missing_ok=True)


def stop_mlflow() -> None:
    """Stop the tracking server alone: models stay readable from S3 while moto runs."""
    s = settings()
    if not s.directory.is_dir():
        return
    with _locked(s):
        _stop(s, "mlflow")


def status() -> dict:
    """What runs and where: {service: {"url", "pid", "running"}} plus the bucket and folder."""
    s = settings()
    answers = {"moto": _moto_answers, "mlflow": _mlflow_answers}
    report = {}
    for service, url in (("moto", s.moto_url), ("mlflow", s.mlflow_url)):
        pid = _read_pid(s, service)
        report[service] = {"url": url, "pid": pid, "running": bool(pid and group_members(pid) and answers[service](s))}
    report.update(bucket=s.bucket, directory=str(s.directory))
    return report


# ---- processes ---------------------------------------------------------------------------
_children: dict[int, subprocess.Popen] = {}  # started by this process, reaped on stop


def _start(s: Settings, service: str, command: list[str], env: dict[str, str], answers, timeout: float) -> None:
    log = s.log_file(service)
    env = {**os.environ, **env}
    # Let the servers cache their bytecode: importing MLflow's server took 26 s here without
    # the cache and 10 s with it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=s.directory,
            env=env,
            start_new_session=True,  # its own process group, pgid == pid
        )
    _children[process.pid] = process
    s.pid_file(service).write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while not answers():
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {process.returncode}"
                if process.returncode is not None
                else f"did not answer within {timeout:.0f} s"
            )
            _stop(s, service)
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise StandinError(f"{service} {reason}; its log {log} ends with:\n" + "\n".join(tail))
        time.sleep(0.25)


def _stop(s: Settings, service: str) -> None:
    pid = _read_pid(s, service)
    if pid is None:
        return
    try:
        stop_group(pid, STOP_TIMEOUT, reap=lambda: _reap(pid))
    except GroupSurvived as exc:
        raise StandinError(f"{service}: {exc}") from None
    s.pid_file(service).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    process = _children.get(pid)
    if process is not None and process.poll() is not None:
        del _children[pid]


def _read_pid(s: Settings, service: str) -> int | None:
    try:
        return int(s.pid_file(service).read_text())
    except (OSError, ValueError):
        return None


def _running(s: Settings, service: str, patience: float = 10.0) -> bool:
    """Whether our recorded server is alive and answers. A live one gets `patience` seconds to
    answer: on a busy machine a slow answer must not get moto restarted (and its data lost)."""
    pid = _read_pid(s, service)
    if not (pid and group_members(pid)):
        return False
    answers = _moto_answers if service == "moto" else _mlflow_answers
    deadline = time.monotonic() + patience
    while not answers(s):
        if time.monotonic() > deadline or not group_members(pid):
            return False
        time.sleep(0.5)
    return True


def _refuse_foreign(s: Settings, service: str, url: str) -> None:
    """Something else answers on our port: reusing it would break the one-lifetime rule."""
    if _get(url + ("/health" if service == "mlflow" else "/moto-api/")) is not None:
        raise StandinError(
            f"{url} already answers but was not started from {s.directory}: stop that process, "
            f"or choose another port ({'MLFLOW_PORT' if service == 'mlflow' else 'MOTO_PORT'})"
        )


@contextlib.contextmanager
def _locked(s: Settings):
    """One `up`/`down` at a time per STANDINS_DIR (notebooks and the CLI may race)."""
    import fcntl

    s.directory.mkdir(parents=True, exist_ok=True)
    with open(s.directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---- health checks -----------------------------------------------------------------------
def _get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def _moto_answers(s: Settings) -> bool:
    # moto's own dashboard API: only moto answers it, a stranger on the port does not.
    return _get(f"{s.moto_url}/moto-api/") is not None


def _mlflow_answers(s: Settings) -> bool:
    return _get(f"{s.mlflow_url}/health") == b"OK"


def _create_bucket(s: Settings) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=s.moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    try:
        client.create_bucket(Bucket=s.bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


# ---- command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ride_duration.local.standins", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--no-mlflow", action="store_true", help="up: start moto only")
    args = parser.parse_args(argv)
    try:
        s = settings()
        if args.command == "up":
            started = time.perf_counter()
            up(with_mlflow=not args.no_mlflow)
            print(
                f"stand-ins up in {time.perf_counter() - started:.1f} s: S3/Kinesis/IAM/Lambda at {s.moto_url}"
                + ("" if args.no_mlflow else f", MLflow at {s.mlflow_url}")
                + f", bucket {s.bucket}\nenvironment: source {s.env_file}"
            )
        elif args.command == "down":
            down()
            print("stand-ins stopped")
        elif args.command == "status":
            for service, info in status().items():
                if isinstance(info, dict):
                    state = f"running, pid {info['pid']}" if info["running"] else "not running"
                    print(f"{service:7} {info['url']:28} {state}")
                else:
                    print(f"{service:7} {info}")
        else:
            print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in environment(s).items()), end="")
    except (StandinError, SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
