"""`secateurs report --html` (issue 23): one self-contained page per store, checked by parsing it and
by loading it in a real headless Chromium (skipped only where no browser binary exists)."""

from __future__ import annotations

import io
import os
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, find_browser
from PIL import Image
from tiny import tiny_recipe
from typer.testing import CliRunner

from secateurs.front.cli import app
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.results import ResultsDB, execute, html_report
from secateurs.results.html_report import figure_files, write_html_report
from secateurs.results.report import write_report

HOSTILE = "<img src=x onerror=alert(1)> \"q\" & 'a' </script><script>alert(2)</script>"
"""A run name that is markup: the page must show it as text and run none of it."""


def stored(sparsity: float, seed: int, prune: dict[str, Any], *, dense: bool = False) -> Any:
    stages: list[dict[str, Any]] = [{"train": {}}]
    stages += [{"evaluate": {"label": "dense", "latency": False}}] if dense else []
    stages += [{"prune": prune}, {"evaluate": {"label": "pruned", "latency": False}}]
    return recipe_from_raw(tiny_recipe(*stages, sparsity=sparsity, seed=seed))


def ticket(seed: int) -> Any:
    level = [
        {"prune": {"allocation": "uniform"}},
        {"reset": {"mode": "rewind", "step": 2}},
        {"train": {}},
        {"evaluate": {"label": "level", "latency": False}},
    ]
    repeat = {"schedule": {"name": "iterative", "rate": 0.2, "levels": 2}, "stages": level}
    raw = tiny_recipe({"train": {}}, {"evaluate": {"label": "dense", "latency": False}}, {"repeat": repeat})
    return recipe_from_raw({**raw, "seed": seed, "sparsity": 0.36})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every section: dense references, a sanity check, a collapsed layer, ticket levels, a hostile name."""
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        for check in ("none", "shuffle"):
            execute(stored(0.5, seed, {"criterion": "snip", "sanity": check}, dense=True), root, name="snip")
        execute(stored(0.5, seed, {"criterion": "random"}, dense=True), root, name=HOSTILE)
        execute(ticket(seed), root, name="imp")
    for sparsity in (0.9, 0.99):
        execute(stored(sparsity, 0, {"allocation": "uniform", "allow_collapse": True}), root, name="uniform")
    return root


@pytest.fixture(scope="module")
def page(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_html_report(root, write_report(root, out))


class Parsed(HTMLParser):
    """The page's elements as (tag, attributes), the ids, and each table body row's links."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.ids: set[str] = set()
        self.rows: list[list[str]] = []  # the hrefs in each <tbody> row of a sortable table
        self.text: list[str] = []
        self._sortable = 0
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self._sortable += "sortable" in a.get("class", "").split()
        elif tag == "tbody" and self._sortable:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "a" and self._in_body and self.rows:
            self.rows[-1].append(a.get("href", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "table" and self._sortable:
            self._sortable -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def finished_hashes(root: Path) -> set[str]:
    with ResultsDB(root / "results.db", create=False) as db:
        return {r.hash for r in db.list_runs(status="finished")}


def test_every_table_row_links_to_a_run_on_the_page(root: Path, page: Path) -> None:
    parsed = Parsed(page.read_text(encoding="utf-8"))
    runs = finished_hashes(root)
    assert len(runs) == 10
    assert {f"run-{h}" for h in runs} <= parsed.ids  # every run has its section
    details = {
        a["id"] for tag, a in parsed.elements if tag == "details" and a.get("id", "").startswith("run-")
    }
    assert details == {f"run-{h}" for h in runs}
    assert len(parsed.rows) >= 10 + 6  # the runs table and at least six summary rows
    for hrefs in parsed.rows:
        targets = [h[1:] for h in hrefs if h.startswith("#run-")]
        assert targets, f"a table row links to no run: {hrefs}"
        assert set(targets) <= parsed.ids
    for section in ("accuracy", "potential", "levels", "sanity", "collapse", "runs"):
        assert section in parsed.ids
    anchors = {
        a["href"][1:] for tag, a in parsed.elements if tag == "a" and a.get("href", "").startswith("#")
    }
    assert anchors <= parsed.ids  # no link on the page points nowhere


def test_the_page_fetches_nothing(page: Path) -> None:
    parsed = Parsed(page.read_text(encoding="utf-8"))
    for tag, attrs in parsed.elements:
        for name in ("src", "href", "action", "data", "poster", "srcset"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:", "file:")), (tag, name, value)
            if name == "src" and name in attrs:
                assert value.startswith("data:image/"), (tag, value)  # figures are embedded
        assert tag != "link", "a <link> element (style sheet, font, icon) would be fetched"
    images = [a for tag, a in parsed.elements if tag == "img"]
    assert len(images) == len(figure_files(page.with_name("report.md"))) >= 4
    assert all(a["src"].startswith("data:image/svg+xml;base64,") for a in images)  # write_report drew SVGs
    policy = next(
        a["content"] for tag, a in parsed.elements if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in policy and "img-src data:" in policy


def copy_report(page: Path, to: Path) -> Path:
    """report.md and its figures, copied from the module's report (drawing them again is slow)."""
    shutil.copytree(page.parent, to, dirs_exist_ok=True)
    return to / "report.md"


def figure_sections(text: str) -> dict[str, str | None]:
    """Each figure (by its alt text) and the id of the <h2> section it is shown in."""
    section, where = None, {}
    for tag, attrs in Parsed(text).elements:
        if tag == "h2":
            section = attrs.get("id")
        elif tag == "img":
            where[attrs["alt"]] = section
    return where


def test_each_figure_sits_in_its_section(root: Path, page: Path, tmp_path: Path) -> None:
    assert figure_sections(page.read_text(encoding="utf-8")) == {
        "accuracy_vs_remaining": "accuracy",
        "sanity_checks": "sanity",
        "layer_sparsity": "collapse",
        "ticket_curves": "levels",
    }
    markdown = copy_report(page, tmp_path)  # a figure the page does not know goes to "Other figures"
    shutil.copy(tmp_path / "layer_sparsity.svg", tmp_path / "new_kind.svg")
    markdown.write_text(
        markdown.read_text(encoding="utf-8") + "![new_kind](new_kind.svg)\n", encoding="utf-8"
    )
    text = write_html_report(root, markdown).read_text(encoding="utf-8")
    assert figure_sections(text)["new_kind"] == "figures"
    assert '<a href="#figures">Other figures</a>' in text


def test_user_text_is_escaped(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert HOSTILE not in text and "<img src=x" not in text
    parsed = Parsed(text)
    assert [tag for tag, _ in parsed.elements].count("script") == 1  # ours, at the end
    assert not any(name.startswith("on") for _, attrs in parsed.elements for name in attrs)
    assert HOSTILE in "".join(parsed.text)  # shown as text, whole


def test_accuracy_cells_sort_by_their_mean(root: Path, page: Path) -> None:
    """A cell's sort key is its mean in percent; the cell under 50 % of the hostile-named method
    links to exactly its two seeds' runs."""
    with ResultsDB(root / "results.db", create=False) as db:
        mine = [r.hash for r in db.list_runs(name=HOSTILE)]
        mean = 100 * statistics.fmean(db.final_metrics(h)["accuracy"] for h in mine)  # type: ignore[misc]
    text = page.read_text(encoding="utf-8")
    cell = text[text.index(f'data-sort="{mean!r}"') :]
    cell = cell[: cell.index("</td>")]
    assert sorted(part.split('"')[0] for part in cell.split('href="#run-')[1:]) == sorted(mine)


NOTES = """## Findings

| method | source |
|---|---|
| <script>alert(3)</script> | [the paper](https://arxiv.org/abs/2009.11094) |

![a figure](http://example.com/x.png) and <https://example.org/a>
"""


def test_notes_are_rendered_without_markup_or_links(root: Path, page: Path, tmp_path: Path) -> None:
    page = write_html_report(root, copy_report(page, tmp_path), notes=NOTES)
    parsed = Parsed(page.read_text(encoding="utf-8"))
    tags = [tag for tag, _ in parsed.elements]
    assert tags.count("script") == 1
    assert ("a", {"href": "#notes"}) in parsed.elements  # listed in the contents
    start = next(i for i, (_, a) in enumerate(parsed.elements) if a.get("id") == "notes")
    assert tags[start : start + 2] == ["h2", "h3"] and "table" in tags[start:]  # heading under the section
    assert not [a for _, a in parsed.elements if a.get("href", "").startswith(("http", "//"))]
    text = "".join(parsed.text)
    assert "<script>alert(3)</script>" in text  # shown, not run
    assert "the paper (https://arxiv.org/abs/2009.11094)" in text
    assert "a figure and https://example.org/a\n" in text


def test_figure_files_prefers_a_fresh_svg(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text(
        "# r\n\n![a](a.png)\n![b](b.png)\n![gone](gone.png)\n", encoding="utf-8"
    )
    for name in ("a.png", "b.svg", "b.png", "a.svg"):  # a.svg is newer than a.png, b.svg older than b.png
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / "b.svg", (1, 1))
    assert figure_files(tmp_path / "report.md") == [tmp_path / "a.svg", tmp_path / "b.png"]


def test_a_failed_render_leaves_the_previous_page(
    root: Path, page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markdown = copy_report(page, tmp_path)
    before = write_html_report(root, markdown).read_bytes()

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(html_report, "render_html", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        write_html_report(root, markdown)
    assert (tmp_path / "report.html").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_report_command_writes_the_page_only_with_html(root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    only = ["--name", "uniform"]  # two runs: fewer figures to draw
    plain = runner.invoke(app, ["report", "--root", str(root), "--out", str(tmp_path / "plain"), *only])
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "plain" / "report.html").exists()
    result = runner.invoke(
        app, ["report", "--root", str(root), "--out", str(tmp_path / "web"), "--html", *only]
    )
    assert result.exit_code == 0, result.output
    assert "HTML report written to" in result.output  # (the path itself may wrap in a narrow terminal)
    text = (tmp_path / "web" / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "2 finished runs" in text and "snip" not in text


# -- in a real browser ----------------------------------------------------------------------------
BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason=f"SECATEURS_CHROMIUM={os.environ['SECATEURS_CHROMIUM']!r} is no browser binary"
    if os.environ.get("SECATEURS_CHROMIUM")
    else "no Chromium or Chrome binary on PATH (Debian: apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser() -> Any:
    assert BROWSER is not None
    with Browser(BROWSER) as b:
        yield b


def non_blank(png: bytes) -> float:
    """The fraction of a screenshot's pixels that are not the page's white background."""
    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return 1 - histogram[255] / sum(histogram)


@needs_browser
def test_page_loads_in_chromium_without_errors_or_requests(browser: Browser, page: Path) -> None:
    load, title = browser.load(page.as_uri(), script="document.title + '|' + document.images.length")
    assert load.console_errors == []
    assert load.external_requests() == []
    assert load.requests and load.requests[0] == page.as_uri()
    assert title == f"secateurs report|{len(figure_files(page.with_name('report.md')))}"
    assert load.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(load.screenshot))
    assert image.size == (1200, 1600)
    assert 0.02 < non_blank(load.screenshot) < 0.9  # text and tables drawn, not a blank or error page


@needs_browser
def test_images_decode_in_chromium(browser: Browser, page: Path) -> None:
    _, sizes = browser.load(
        page.as_uri(),
        script="Promise.all(Array.from(document.images, i => i.decode().then(() => i.naturalWidth)))",
    )
    assert sizes and all(width > 100 for width in sizes)


SORT = """(() => {
  const table = document.querySelector('#runs ~ table');
  const head = Array.from(table.tHead.rows[0].cells).find(c => c.textContent.startsWith('accuracy'));
  const column = head.cellIndex;
  const read = () => Array.from(table.tBodies[0].rows, r => r.cells[column].textContent);
  head.click(); const up = read(); const upState = head.getAttribute('aria-sort');
  head.click(); const down = read();
  return {up, down, upState, downState: head.getAttribute('aria-sort')};
})()"""


@needs_browser
def test_clicking_a_header_sorts_the_table(browser: Browser, page: Path) -> None:
    load, result = browser.load(page.as_uri(), script=SORT)
    assert load.console_errors == []
    up = [float(v) for v in result["up"]]
    assert len(up) == 10 and up == sorted(up) and len(set(up)) > 1
    assert [float(v) for v in result["down"]] == sorted(up, reverse=True)
    assert (result["upState"], result["downState"]) == ("ascending", "descending")


@needs_browser
def test_a_link_to_a_run_opens_its_details(browser: Browser, root: Path, page: Path) -> None:
    run = sorted(finished_hashes(root))[0]
    script = (
        f"[document.getElementById('run-{run}').open, document.querySelectorAll('details.run[open]').length]"
    )
    load, (opened, count) = browser.load(f"{page.as_uri()}#run-{run}", script=script)
    assert load.console_errors == []
    assert opened is True and count == 1


@needs_browser
def test_the_browser_check_sees_requests_and_errors(browser: Browser, tmp_path: Path) -> None:
    """The checks above can fail: a page that fetches, logs an error and breaks its own policy is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<img src='https://example.invalid/x.png'><script>console.error('boom')</script></body></html>",
        encoding="utf-8",
    )
    load, _ = browser.load(bad.as_uri())
    assert load.external_requests() == ["https://example.invalid/x.png"]
    assert "boom" in load.console_errors
    strict = tmp_path / "strict.html"
    policy = f"<meta http-equiv='Content-Security-Policy' content=\"{html_report.CSP}\">"
    strict.write_text(
        f"<!DOCTYPE html><html><head>{policy}</head>"
        "<body><script>document.title = 'ran'</script></body></html>",
        encoding="utf-8",
    )
    load, title = browser.load(strict.as_uri(), script="document.title")
    assert title != "ran"  # a script the policy does not name by hash is refused ...
    assert any("Content Security Policy" in e for e in load.console_errors)  # ... and that is an error
