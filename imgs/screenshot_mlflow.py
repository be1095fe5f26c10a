"""Draw imgs/mlflow_run_id.png: a run's Overview page in the MLflow UI, where its Run ID is.

    python imgs/screenshot_mlflow.py [OUTPUT_DIR]        (make screenshots)

Against the stand-ins (started if they are not running) and the run behind
MODEL_NAME@MODEL_ALIAS (trained and registered first if there is none, as `make register`).
The browser is headless Chromium: $CHROMIUM, else chromium-headless-shell or chromium from
PATH, else installed with apt-get when this runs as root on Debian or Ubuntu. Without one,
the script says why and leaves the committed picture (exit code 0).

Unlike the diagrams, the picture is not reproducible: it shows a run id and a date.

Settings (environment variables, defaults in brackets):
    CHROMIUM [chromium-headless-shell, then chromium]   the browser to run
    SCREENSHOT_WAIT_MS [15000]   virtual time the page gets to load its data before the shot
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BROWSERS = ("chromium-headless-shell", "chromium")
APT_PACKAGE = "chromium-headless-shell"
WINDOW = "1280,900"


def find_chromium() -> tuple[str | None, str]:
    """(the browser's path, or None and why not)."""
    if os.environ.get("CHROMIUM"):
        found = shutil.which(os.environ["CHROMIUM"])
        return (found, "") if found else (None, f"CHROMIUM={os.environ['CHROMIUM']} is not an executable")
    for name in BROWSERS:
        if found := shutil.which(name):
            return found, ""
    if not shutil.which("apt-get"):
        return None, f"no {' or '.join(BROWSERS)} on PATH, and no apt-get to install one"
    if os.geteuid() != 0:
        return None, f"no {' or '.join(BROWSERS)} on PATH: install it (sudo apt-get install {APT_PACKAGE})"
    print(f"installing {APT_PACKAGE} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", APT_PACKAGE]):
        if subprocess.run(command, env=env, timeout=600).returncode != 0:
            return None, f"`{' '.join(command)}` failed"
    found = shutil.which(APT_PACKAGE)
    return (found, "") if found else (None, f"{APT_PACKAGE} installed but not on PATH")


def run_page_url() -> str:
    """The Overview page of the registered model's run, on the stand-ins' UI."""
    from ride_duration import registry
    from ride_duration.local import standins

    env = standins.ensure()
    registered = registry.ensure_registered_model()
    return f"{env['MLFLOW_TRACKING_URI']}/#/experiments/{registered.experiment_id}/runs/{registered.run_id}"


def screenshot(browser: str, url: str, output: Path) -> None:
    wait_ms = int(os.environ.get("SCREENSHOT_WAIT_MS", "15000"))
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",  # a throw-away profile: no first-run state, nothing kept
            f"--window-size={WINDOW}",
            f"--virtual-time-budget={wait_ms}",  # the UI is a React app: let its API calls finish
            f"--screenshot={output}",
            url,
        ]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root (containers, CI)
        # subprocess.run kills the browser if it hangs past the timeout.
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not output.is_file():
        raise SystemExit(f"{browser} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else HERE
    browser, why_not = find_chromium()
    if browser is None:
        print(f"screenshots skipped: {why_not}; imgs/mlflow_run_id.png is left as committed")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "mlflow_run_id.png"
    url = run_page_url()
    screenshot(browser, url, output)
    print(f"{output}: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
