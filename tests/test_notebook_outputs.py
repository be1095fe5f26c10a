"""Committed notebook outputs that nbval compares must come out the same on any machine.

The last digits of a float depend on the CPU (OpenBLAS picks its kernel by CPU features, and
a least-squares fit on another kernel differs in the 8th digit), so a checked output that
prints more digits than a reader needs is a failure waiting for another machine.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_SIGNIFICANT_DIGITS = 6
# A decimal number that is not part of a version or an address (3.11.7, 127.0.0.1).
FLOAT = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?(?![.\w])")
UNCHECKED = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")


def significant_digits(number: str) -> int:
    mantissa = re.split(r"[eE]", number)[0]
    return len(mantissa.replace(".", "").lstrip("0"))


def checked_text(cell: dict) -> str:
    """What nbval compares of a code cell: its streams and textual results."""
    source = "".join(cell["source"])
    tags = cell.get("metadata", {}).get("tags", [])
    if any(marker in source for marker in UNCHECKED) or any(t in ("nbval-ignore-output", "nbval-skip") for t in tags):
        return ""
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        for kind in TEXT_TYPES:
            value = output.get("data", {}).get(kind, "")
            parts.append(
                value if isinstance(value, str) else "".join(value) if isinstance(value, list) else json.dumps(value)
            )
    return "\n".join(parts)


@functools.cache
def repository_text() -> str:
    """Every tracked text file but the notebooks: a number copied from a file is the same everywhere."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    texts = []
    for name in files:
        path = REPO / name
        if path.suffix in (".json", ".py", ".md", ".txt", ".cfg", ".toml") and path.is_file():
            texts.append(path.read_text(errors="ignore"))
    return "\n".join(texts)


def too_precise(text: str, literals: str) -> list[str]:
    return [n for n in FLOAT.findall(text) if significant_digits(n) > MAX_SIGNIFICANT_DIGITS and n not in literals]


def test_the_rule_catches_machine_digits_and_spares_the_rest():
    assert too_precise('"duration": 12.265893038901634', "") == ["12.265893038901634"]
    assert too_precise("RMSE 7.7587, 18.2 minutes, 1.5e-05, 0.000123456", "") == []
    assert too_precise("python 3.11.7 on 127.0.0.1:5000, scikit-learn 1.9.1", "") == []
    assert (
        too_precise('"approximateArrivalTimestamp": 1654161514.132', '"approximateArrivalTimestamp": 1654161514.132')
        == []
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_checked_outputs_show_no_digits_that_rounding_decides(notebook):
    literals = repository_text()
    found = []
    for number, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        if cell["cell_type"] == "code":
            found += [f"cell {number}: {value}" for value in too_precise(checked_text(cell), literals)]
    assert not found, f"{notebook.name} prints more than {MAX_SIGNIFICANT_DIGITS} significant digits: {found}"
