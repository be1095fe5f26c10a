"""The benchmarks' results file, and the README's Performance section rendered from it.

    python benchmarks/results.py render   # README.md's Performance section from benchmarks/results.json
    python benchmarks/results.py check    # exit 1 if README.md's section is not what render makes

benchmarks/results.json holds one section per benchmark: when it ran, on what machine, the
command that reproduces it, and its figures. Each benchmark writes its own section when given
--results (`make bench` gives it): batch.py stores its runs and the issue's targets, and its
table is made here; startup.py, web_service.py and streaming.py store the table they print.
benchmarks/setup.py (`make bench-setup`, about 10 minutes) writes the "setup" section from a
fresh clone.
Standard library only: benchmarks/batch.py's parent process imports this and must stay small.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results.json"
README = REPO / "README.md"
HEADING = "## Performance"
NEXT_HEADING = "\n## "
ORDER = ("setup", "startup", "web_service", "web_service_slow_clients", "web_service_design", "streaming", "batch")
MODEL_NAMES = {"lin_reg": "linear", "random_forest": "random forest"}


# ---- writing ----------------------------------------------------------------------------
def machine() -> str:
    """One line: CPU model, cores, memory, OS and Python."""
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory = f", {memory_gb:.0f} GB RAM"
    except (ValueError, OSError, AttributeError):
        memory = ""
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, Python {python}"


def update(path: Path, section: str, record: dict) -> None:
    """Store a benchmark's record as `section`, stamped with the machine and today's date (UTC)."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[section] = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(), **record}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}")


# ---- rendering --------------------------------------------------------------------------
def render(results: dict) -> str:
    """The README's Performance section, heading included, ending with a blank line."""
    parts = [
        HEADING,
        prose(
            "Every figure of this project lives here; the other pages refer to this section. It is generated "
            "from [`benchmarks/results.json`](benchmarks/results.json) by `python benchmarks/results.py render`, "
            "which `make bench` runs after the benchmarks it reproduces (each measures its baseline in the same "
            "run). Figures move by a tenth or more from run to run on a shared machine."
        ),
    ]
    for name in ORDER:
        if name in results:
            section = results[name]
            body = render_batch(section) if name == "batch" else wrapped(section["markdown"].strip())
            parts.append(
                prose(f"**{section['title']}** (`{section['command']}`, {section['date']}, {section['machine']}):")
            )
            parts.append(body)
    return "\n\n".join(parts) + "\n\n"


def render_batch(section: dict) -> str:
    runs = section["runs"]

    def run(month: str, model: str | None, variant: str) -> dict | None:
        return next((r for r in runs if (r["month"], r["model"], r["variant"]) == (month, model, variant)), None)

    rows = [
        "| month | model | score.py rows/s | course rows/s | x course | I/O floor rows/s | x floor "
        "| peak MB, score.py / course |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for ours in (r for r in runs if r["variant"] == "score.py"):
        course, floor = run(ours["month"], ours["model"], "course"), run(ours["month"], None, "floor")
        name = MODEL_NAMES.get(ours["model"], ours["model"])
        speed = ours["rows_per_second"]
        rows.append(
            f"| {ours['month']}, {ours['file']} ({ours['rows']:,} rows) | {name} | {speed:,.0f} "
            f"| {course['rows_per_second']:,.0f} | {speed / course['rows_per_second']:.1f} "
            f"| {floor['rows_per_second']:,.0f} | {speed / floor['rows_per_second']:.2f} "
            f"| {ours['peak_mb']:,.0f} / {course['peak_mb']:,.0f} |"
        )
    parts = [prose(section["description"]), "\n".join(rows)]
    spark = [r for r in runs if r["variant"] == "spark"]
    if spark:
        parts.append(
            prose(
                "`--engine spark` on `local[2]` against the pandas engine, the same month and models (the JVM is "
                "another process: its memory is not in these peaks; when Spark is worth it: "
                "[`batch/README.md`](batch/README.md#scale)):"
            )
        )
        lines = [
            "| model, synthetic month | pandas engine, s | `--engine spark` on local[2], s |",
            "| --- | ---: | ---: |",
        ]
        for r in spark:
            pandas = run(r["month"], r["model"], "score.py")
            lines.append(
                f"| {MODEL_NAMES.get(r['model'], r['model'])} | {pandas['seconds']:.1f} | {r['seconds']:.1f} |"
            )
        parts.append("\n".join(lines))
    checked = [c for c in section["targets"] if "target" in c]
    if checked:
        parts.append(
            "Targets (issue 14), on this run:\n\n"
            + "\n".join(
                f"- {c['month']} month, {MODEL_NAMES.get(c['model'], c['model'])}: {c['what']} {c['value']:.2f} "
                f"(target {c['target']}: {'met' if c['met'] else '**not met**'})"
                for c in checked
            )
        )
    return "\n\n".join(parts)


def wrapped(markdown: str) -> str:
    """Markdown with its paragraphs and list items wrapped as the README's are; tables kept whole."""
    blocks = []
    for block in markdown.split("\n\n"):
        if block.startswith("|"):
            blocks.append(block)
        elif block.startswith("- "):
            items = ("- " + item for item in block[2:].split("\n- "))
            blocks.append("\n".join(prose(" ".join(item.split()), indent="  ") for item in items))
        else:
            blocks.append(prose(" ".join(block.split())))
    return "\n\n".join(blocks)


def prose(text: str, indent: str = "") -> str:
    """A paragraph wrapped as the README's are."""
    return textwrap.fill(text, width=95, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def readme_with(readme: str, section: str) -> str:
    """The README's text with its Performance section (to the next "## " heading) replaced."""
    start = readme.index(HEADING + "\n")
    end = readme.index(NEXT_HEADING, start + len(HEADING)) + 1
    return readme[:start] + section + readme[end:]


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["render"]
    section = render(json.loads(RESULTS.read_text()))
    readme = README.read_text()
    if command == ["check"]:
        if readme_with(readme, section) != readme:
            print(
                "README.md's Performance section differs from benchmarks/results.json: "
                "run `python benchmarks/results.py render`"
            )
            return 1
        return 0
    if command != ["render"]:
        print(__doc__.split("\n\n")[1])
        return 2
    README.write_text(readme_with(readme, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
