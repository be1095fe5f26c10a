"""Build the lessons as a static HTML book: the README, the folders' READMEs and the executed
notebooks with their committed outputs (nothing is re-executed), offline.

    python -m ride_duration.local.book [--out site/]          (make site)

Sphinx with myst-nb and sphinx-book-theme: pure PyPI packages that need no network at build
time (Jupyter Book 2 and MyST fetch their theme from the web). The pages are copied into a
staging folder first, where links are made to work on a site: a link to a folder becomes a
link to its README, and a link to a source file (predict.py, a Dockerfile) points to
BOOK_SOURCE_URL/<path> when that is set (the CI workflow sets the repository's GitHub URL),
else it is kept as plain text. Warnings are errors, so a broken cross-reference fails the build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ride_duration.config import REPO_ROOT

# The pages, in the order of the navigation: the home page, the lessons, the folders, the guides.
HOME_PAGE = "README.md"
GUIDES = ["ARCHITECTURE.md", "CONTRIBUTING.md"]
FOLDERS = ["web-service", "web-service-mlflow", "streaming", "batch"]
NOTEBOOKS = "notebooks"
IMAGES = "imgs"
# A markdown link or image: [text](target) or ![alt](target); the target has no spaces.
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
CONF = """
project = "ride-duration deployment"
extensions = ["myst_nb"]
root_doc = "README"
nb_execution_mode = "off"  # the committed outputs, as CI proved them
html_theme = "sphinx_book_theme"
html_title = "ride-duration deployment"
myst_heading_anchors = 3  # README's "#performance" style links
exclude_patterns = ["_build"]
suppress_warnings = ["misc.highlighting_failure"]  # a cron fence has no Pygments lexer
"""


class BookError(Exception):
    """A page cannot be made into the book (a link to a file that does not exist)."""


def pages(root: Path = REPO_ROOT) -> list[str]:
    """Every page of the book, as a path relative to the repository."""
    notebooks = sorted(p.relative_to(root).as_posix() for p in (root / NOTEBOOKS).glob("*.ipynb"))
    return [HOME_PAGE, *notebooks, *(f"{folder}/README.md" for folder in FOLDERS), *GUIDES]


def rewrite_links(text: str, page: str, book: set[str], source_url: str | None, root: Path = REPO_ROOT) -> str:
    """Links of `page` (a repository path) that work on the site; see the module's docstring."""
    here = Path(page).parent

    def fix(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):  # a URL, or an anchor on this page
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(here / path).replace(os.sep, "/")
        if (root / resolved).is_dir() and f"{resolved.rstrip('/')}/README.md" in book:
            return f"{bang}[{label}]({path.rstrip('/')}/README.md{'#' + anchor if anchor else ''})"
        if not (root / resolved).exists():
            raise BookError(f"{page} links to {target}, which is not in the repository")
        if resolved in book or resolved.startswith(f"{IMAGES}/") or bang:
            return match.group(0)
        if source_url:  # a source file: shown where the code lives
            return f"{bang}[{label}]({source_url.rstrip('/')}/{resolved})"
        return label

    return LINK.sub(fix, text)


def stage(folder: Path, source_url: str | None, root: Path = REPO_ROOT) -> list[str]:
    """Copy the pages and the pictures into `folder`, links rewritten, with Sphinx's conf.py."""
    book = pages(root)
    names = set(book)
    for page in book:
        target = folder / page
        target.parent.mkdir(parents=True, exist_ok=True)
        if page.endswith(".ipynb"):
            notebook = json.loads((root / page).read_text())
            for cell in notebook["cells"]:
                if cell["cell_type"] == "markdown":
                    text = rewrite_links("".join(cell["source"]), page, names, source_url, root)
                    cell["source"] = text.splitlines(keepends=True)
            target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False))
        else:
            target.write_text(rewrite_links((root / page).read_text(), page, names, source_url, root))
    shutil.copytree(root / IMAGES, folder / IMAGES, ignore=shutil.ignore_patterns("*.py"))
    toctree = "\n".join(p.removesuffix(".md").removesuffix(".ipynb") for p in book[1:])
    readme = folder / HOME_PAGE
    readme.write_text(readme.read_text() + f"\n\n```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{toctree}\n```\n")
    (folder / "conf.py").write_text(CONF)
    return book


def build(out: Path, source_url: str | None = None) -> Path:
    """Build the book into `out` (replaced); the path of its home page."""
    with tempfile.TemporaryDirectory(prefix="book-") as staging:
        stage(Path(staging), source_url)
        built = Path(staging) / "_build"
        command = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html", staging, str(built)]
        subprocess.run(command, check=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(built, out, ignore=shutil.ignore_patterns(".doctrees", ".buildinfo"))
    return out / "README.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "site", help="where the HTML goes [site/]")
    args = parser.parse_args(argv)
    try:
        home = build(args.out, os.environ.get("BOOK_SOURCE_URL") or None)
    except BookError as exc:
        print(f"book: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"book: sphinx-build failed (exit {exc.returncode}): see its messages above", file=sys.stderr)
        return 1
    print(f"book: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
