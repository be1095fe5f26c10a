"""Ask a running service's /health; exit status 0 when it answers 200 (Docker's HEALTHCHECK).

    python -m ride_duration.healthcheck [URL]    [http://127.0.0.1:$PORT/health, PORT 9696;
                                                  http://[::1]:$PORT/health when HOST is IPv6]

Standard library only: the slim image has no curl.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def default_url() -> str:
    # The service's own loopback: a service bound to an IPv6 address (HOST=::1 or ::) answers there.
    loopback = "[::1]" if ":" in os.environ.get("HOST", "") else "127.0.0.1"
    return f"http://{loopback}:{os.environ.get('PORT', '9696')}/health"


def probe(url: str, timeout: float = 2.0) -> dict | None:
    """The /health answer as a dict, or None while the service does not answer 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError):  # refused, reset, timed out, HTTP error, not JSON
        return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    health = probe(argv[0] if argv else default_url())
    print(json.dumps(health) if health else "unhealthy")
    return 0 if health else 1


if __name__ == "__main__":
    sys.exit(main())
