"""`make lab` serves the repository, so every notebook's picture (../imgs/...) reaches the browser.

The test runs the real target (stand-ins included) on a free port with a random token, fetches each
notebook's first picture through the server as JupyterLab's page would, then stops the server.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from ride_duration.local import processes

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
STARTUP_SECONDS = 120  # the stand-ins take ~15 s, the server a few more
HTTP_TIMEOUT = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str, token: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One GET that does not follow redirects, so the server's own answer can be checked."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Authorization": f"token {token}"})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _first_picture(notebook: Path) -> str:
    first_cell = json.loads(notebook.read_text())["cells"][0]
    found = MARKDOWN_IMAGE.search("".join(first_cell["source"]))
    assert first_cell["cell_type"] == "markdown" and found, f"{notebook.name}: no picture in the first cell"
    return found.group(1)


def _wait_until_serving(lab: subprocess.Popen, port: int, token: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            pytest.fail(f"make lab exited with {lab.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(port, "/api/status", token)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"make lab did not serve on port {port} within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def _stop_group(lab: subprocess.Popen) -> None:
    """SIGTERM to make and jupyter (one process group: start_new_session), SIGKILL to what is left after 10 s."""
    processes.stop_group(lab.pid, 10, reap=lab.poll)
    lab.wait(timeout=10)


@pytest.mark.timeout(240)
def test_make_lab_serves_every_notebooks_picture(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    assert NOTEBOOKS, "no notebook in notebooks/"
    port, token = _free_port(), secrets.token_hex(16)
    flags = f"--no-browser --ServerApp.ip=127.0.0.1 --port={port} --ServerApp.port_retries=0"
    flags += f" --IdentityProvider.token={token}"
    if os.geteuid() == 0:
        flags += " --allow-root"  # CI and containers run as root; Jupyter refuses it otherwise
    log = tmp_path / "make-lab.log"
    # The server's info file goes to a temporary runtime directory, not the user's.
    environment = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}

    with log.open("wb") as output:
        lab = subprocess.Popen(
            ["make", "lab", f"LAB_FLAGS={flags}"],
            cwd=REPO,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_serving(lab, port, token, log)

        for notebook in NOTEBOOKS:
            picture = _first_picture(notebook)
            # What the browser asks for: the reference resolved against the notebook's own URL.
            url = urljoin(f"/files/notebooks/{notebook.name}", picture)
            assert url.startswith("/files/"), f"{notebook.name}: {picture} lies outside Jupyter's root"
            status, headers, body = _get(port, url, token)
            assert status == 200, f"{notebook.name}: GET {url} answered {status}"
            assert headers.get_content_type() == "image/png", f"{notebook.name}: {url} is {headers['Content-Type']}"
            assert body == (REPO / url.removeprefix("/files/")).read_bytes(), f"{notebook.name}: {url} differs"

        # JupyterLab opens on the notebooks folder: / redirects there.
        status, headers, _ = _get(port, "/", token)
        assert status in (301, 302, 303, 307), f"GET / answered {status}"
        assert urlsplit(headers["Location"]).path == "/lab/tree/notebooks", headers["Location"]
        status, _, page = _get(port, "/lab/tree/notebooks", token)
        assert status == 200 and b'"treePath": "notebooks"' in page
    finally:
        _stop_group(lab)

    assert not _answers(port), f"the server still answers on port {port} after make lab was stopped"
