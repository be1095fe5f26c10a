"""Execute notebooks in place, top to bottom in a fresh kernel, to refresh their outputs.

    python -m ride_duration.local.notebooks refresh [notebooks/NN-name.ipynb ...]   (default: all)

CI then checks that running them again reproduces what is committed (nbval).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ride_duration.config import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
CELL_TIMEOUT = 900  # seconds; the forest's fit is the longest cell


def lesson_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def refresh(path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    # Stable metadata, so that a refresh changes only what the code changed.
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook.metadata.pop("widgets", None)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    for cell in notebook.cells:  # timings of earlier runs: noise in every diff
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["refresh"])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    for path in args.paths or lesson_notebooks() + sorted(NOTEBOOKS.glob("[!0-9]*.ipynb")):
        print(f"executing {path.name} ...", file=sys.stderr, flush=True)
        refresh(path.resolve())


if __name__ == "__main__":
    main()
