"""AWS clients with deadlines: an endpoint that accepts connections and never answers fails in
seconds with botocore's one-line error, not after boto3's default minute per attempt.

AWS_CONNECT_TIMEOUT [3]  seconds to open a connection
AWS_READ_TIMEOUT [5]     seconds to wait for each read of an answer (not the whole transfer)
AWS_MAX_ATTEMPTS [3]     attempts per call, the first included (botocore's "standard" retries)

At the defaults a hung endpoint costs a call at most 3 x (3 + 5) s, 3 x (3 + 1 + 5) s for an
upload, plus 0.15 s of back-off: 24 s, 27 s (`worst_case_seconds`). The same variables are
honoured everywhere the package talks to S3 or Kinesis, and by the S3 client MLflow makes for
itself once `use_deadlines_by_default` has run (ride_duration.models does, before MLflow is used).
"""

from __future__ import annotations

from ride_duration import config

DEFAULT_CONNECT_TIMEOUT = 3
DEFAULT_READ_TIMEOUT = 5
DEFAULT_MAX_ATTEMPTS = 3
# botocore's standard mode sleeps rand(0, 1) * min(scale * 2**i, 20) s before retry i + 1, the
# scale 50 ms for a timeout or a refused connection (1 s for throttling, which is an answer).
TIMEOUT_BACKOFF_SCALE, MAX_BACKOFF = 0.05, 20
# An upload (a body from a file) says "Expect: 100-continue" and botocore waits 1 s for the
# server's go-ahead before it sends the body anyway, then waits for the answer.
EXPECT_CONTINUE_WAIT = 1


def attempts(max_attempts: int | None = None) -> int:
    return max_attempts or config.env_int("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)


def client_config(max_attempts: int | None = None):
    """botocore's Config with this package's deadlines; `max_attempts` overrides the setting."""
    from botocore.config import Config

    return Config(
        connect_timeout=config.env_int("AWS_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
        read_timeout=config.env_int("AWS_READ_TIMEOUT", DEFAULT_READ_TIMEOUT),
        retries={"mode": "standard", "total_max_attempts": attempts(max_attempts)},
    )


def client(service: str, max_attempts: int | None = None, **kwargs):
    """boto3.client(service) with the deadlines above; kwargs go to boto3 (endpoint_url, ...)."""
    import boto3

    return boto3.client(service, config=client_config(max_attempts), **kwargs)


def worst_case_seconds(max_attempts: int | None = None, upload: bool = False) -> float:
    """The longest one call can wait on an endpoint that never answers, at the current settings:
    every attempt waits out both timeouts (and an upload the 100-continue), every back-off its maximum."""
    tries = attempts(max_attempts)
    per_attempt = (
        config.env_int("AWS_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
        + config.env_int("AWS_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)
        + (EXPECT_CONTINUE_WAIT if upload else 0)
    )
    return tries * per_attempt + sum(min(TIMEOUT_BACKOFF_SCALE * 2**retry, MAX_BACKOFF) for retry in range(tries - 1))


def use_deadlines_by_default() -> None:
    """Give the deadlines to every client boto3's default session makes from now on, also to
    clients made with a Config of their own (botocore merges theirs over this default), as
    MLflow's S3 artifact store does. Settings are read again on every call."""
    try:
        import boto3
    except ImportError:  # no boto3, no S3 client to give deadlines to
        return
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    # boto3 has no public setter; its session's botocore session holds the default client config.
    boto3.DEFAULT_SESSION._session.set_default_client_config(client_config())
