"""What the Dockerfiles' COPY and ADD put into an image, with the build context's .dockerignore applied.

Every image builds from the repository root (the Dockerfiles say so), so the context is REPO and
its .dockerignore is the one at the root. The matching follows Docker's rules: a pattern is
relative to the context, `*` and `?` stay within one path segment, `**` spans any number of
them, a pattern that matches a folder excludes everything in it, `!` re-includes, and the last
matching pattern decides.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERIGNORE = REPO / ".dockerignore"


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the repository (Dockerfile, Dockerfile.x, x.Dockerfile), caches and venvs aside."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("data", "output", "mlruns")]
        found += [Path(folder) / f for f in files if re.fullmatch(r"Dockerfile(\..+)?|.+\.Dockerfile", f)]
    return sorted(found)


def ignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _regex(pattern: str) -> re.Pattern:
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        else:
            parts.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return re.compile("".join(parts))


def is_ignored(relative: str, patterns: list[str] | None = None) -> bool:
    """Whether the file or folder at `relative` (POSIX, from the context root) stays out of the context."""
    patterns = ignore_patterns() if patterns is None else patterns
    segments = relative.strip("/").split("/")
    candidates = ["/".join(segments[: n + 1]) for n in range(len(segments))]  # the path and its folders
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths (or globs) of every COPY and ADD that reads the build context."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        arguments = shlex.split(words[1])
        if any(word.startswith("--from=") for word in arguments):
            continue  # another stage's files, not the context's
        sources += [word for word in arguments if not word.startswith("--")][:-1]
    return sources


def context_files(source: str, patterns: list[str] | None = None) -> list[str]:
    """The files a COPY of `source` takes from the context (relative POSIX paths), .dockerignore applied."""
    patterns = ignore_patterns() if patterns is None else patterns
    found = []
    for match in REPO.glob(source.lstrip("/")) if any(c in source for c in "*?[") else [REPO / source]:
        files = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() else [match]
        found += [p.relative_to(REPO).as_posix() for p in files]
    return [f for f in found if not is_ignored(f, patterns)]
