"""`make site`: the book of the lessons builds offline, with every notebook and picture, and no dead link."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from ride_duration.config import REPO_ROOT
from ride_duration.local import book


class Page(HTMLParser):
    """The ids a page defines and the local links and pictures it uses."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def parsed(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(errors="replace"))
    return page


def is_local(url: str) -> bool:
    return not urlsplit(url).scheme and not url.startswith("//")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "html"
    home = book.build(out)
    assert home.is_file()
    return out


def test_every_notebook_has_a_page_with_its_committed_outputs(site):
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 7
    for notebook in notebooks:
        page = site / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        # Not re-executed: the first printed output of the notebook is on its page as committed.
        cells = json.loads(notebook.read_text())["cells"]
        printed = [
            "".join(o["text"]).strip().splitlines()[0]
            for c in cells
            if c["cell_type"] == "code"
            for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and "".join(o["text"]).strip()
        ]
        if printed:
            html = page.read_text()
            assert any(line.split()[0] in html for line in printed[:3]), f"{notebook.name}: outputs missing"


def test_every_picture_is_in_the_book(site):
    pictures = 0
    for html in site.rglob("*.html"):
        for src in parsed(html).images:
            if is_local(src) and not src.startswith("data:"):
                pictures += 1
                assert (html.parent / unquote(urlsplit(src).path)).is_file(), f"{html.name}: missing picture {src}"
    # The README's five diagrams at least, and the notebooks' plots.
    assert pictures >= 8


def test_no_page_has_a_broken_internal_link(site):
    pages = {html.resolve(): parsed(html) for html in site.rglob("*.html")}
    checked = 0
    for html, page in pages.items():
        for href in page.links:
            if not is_local(href) or href.startswith("mailto:"):
                continue
            url = urlsplit(href)
            target = (html.parent / unquote(url.path)).resolve() if url.path else html
            assert target.exists(), f"{html.name}: link to missing {href}"
            if url.fragment and target.suffix == ".html":
                assert url.fragment in pages[target].ids, f"{html.name}: no #{url.fragment} in {target.name}"
            checked += 1
    assert checked > 50  # the navigation and the pages' own links were all looked at


def test_links_to_folders_and_source_files_are_made_to_work(tmp_path):
    names = set(book.pages())
    text = "[the service](web-service/) and [its code](web-service/predict.py), [home](#data)"
    assert book.rewrite_links(text, "README.md", names, None) == (
        "[the service](web-service/README.md) and its code, [home](#data)"
    )
    linked = book.rewrite_links(text, "README.md", names, "https://example.org/repo/blob/main")
    assert "[its code](https://example.org/repo/blob/main/web-service/predict.py)" in linked
    with pytest.raises(book.BookError, match="notebooks/07-nothing.ipynb"):
        book.rewrite_links("[next](notebooks/07-nothing.ipynb)", "README.md", names, None)
    # From a folder's README, a link up to the repository's README stays a page of the book.
    assert book.rewrite_links("[up](../README.md#performance)", "batch/README.md", names, None) == (
        "[up](../README.md#performance)"
    )
