"""`secateurs report --html`: one self-contained HTML page per results store.

A report directory's markdown needs its PNGs beside it; the HTML page carries everything itself, so
it can be mailed, attached to an issue or opened offline: the figures are embedded as data URIs
(SVG where the report wrote one, else PNG), the CSS and the few lines of JavaScript (sortable tables,
opening a run's details from a link) are inline, and a Content-Security-Policy forbids the page to
fetch anything at all. Every value that came from a user (run names, configs, data set names) is
escaped. Each table row links to the runs behind it (`#run-<hash>`), and each run's section holds its
configuration and hash.

The tables are the markdown report's own (`report.accuracy_tables`, ... : one builder, two renderings),
and the figures are the files `write_report` drew (`report.report_figures`, saved as PNG and SVG), each
shown beside its table, so the page and report.md never disagree.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secateurs.core.fileio import atomic_write_text
from secateurs.results.db import RunRecord
from secateurs.results.report import (
    SECTION_NOTES,
    Entry,
    RunSummary,
    Table,
    accuracy_tables,
    collapse_tables,
    collect,
    level_groups,
    level_panels,
    open_results,
    potential_tables,
    sanity_tables,
    ticket_tables,
)

HTML_NAME = "report.html"
INLINE_LINKS = 4
"""A cell behind more runs than this lists their links in a collapsed <details>."""


def write_html_report(
    root: str | Path,
    markdown: str | Path,
    *,
    name: str | None = None,
    delta: float = 0.005,
    notes: str = "",
    store: str | None = None,
) -> Path:
    """Write report.html beside `markdown` (the report.md `write_report` just wrote for the same
    runs, from the same `store`): a page that needs nothing else, with its tables, figures, sanity
    checks, layer collapse and every run's configuration; `notes` (markdown, e.g. a benchmark's
    own findings) is its own section, rendered with raw HTML escaped and links shown as text."""
    markdown = Path(markdown)
    with open_results(root, store) as db:
        source = db.where
        runs = collect(db, name=name)
        records = {r.hash: record for r in runs if (record := db.get_run(r.hash)) is not None}
        artifacts = {r.hash: db.artifacts(r.hash) for r in runs}
    page = render_html(
        runs,
        records,
        artifacts,
        figures=figure_files(markdown),
        source=f"{len(runs)} finished runs from {source}" + (f" matching {name}" if name else ""),
        delta=delta,
        notes=notes,
    )
    return atomic_write_text(markdown.with_name(HTML_NAME), page)


_IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)\s]+)\)\s*$")


def figure_files(markdown: Path) -> list[Path]:
    """The figures report.md shows, in its order, each as its SVG where one was written beside it
    (at least as new as the PNG: a stale SVG from an older report is never shown)."""
    found = []
    for line in markdown.read_text(encoding="utf-8").splitlines():
        match = _IMAGE.match(line)
        if match is None:
            continue
        path = markdown.parent / match.group(1)
        svg = path.with_suffix(".svg")
        if path.suffix != ".svg" and svg.is_file() and (not path.is_file() or _newer(svg, path)):
            path = svg
        if path.is_file():
            found.append(path)
    return found


def _newer(a: Path, b: Path) -> bool:
    return a.stat().st_mtime >= b.stat().st_mtime


# -- tables ---------------------------------------------------------------------------------------
def summary_sections(runs: list[RunSummary], delta: float) -> list[tuple[str, str, str, list[Table]]]:
    """(anchor, title, note, tables) of each summary section, built by `report` as report.md's are."""
    panels, _ = level_panels(runs)
    shown = {title: chosen for title, (_, chosen) in level_groups(runs).items()}
    return [
        ("accuracy", "Accuracy", "", accuracy_tables(runs)),
        ("potential", "Prune potential", SECTION_NOTES["potential"], potential_tables(runs, delta)),
        ("levels", "Levels (lottery tickets)", SECTION_NOTES["levels"], ticket_tables(panels, runs=shown)),
        ("sanity", "Sanity checks", SECTION_NOTES["sanity"], sanity_tables(runs)),
        ("collapse", "Layer collapse", SECTION_NOTES["collapse"], collapse_tables(runs)),
        ("figures", "Other figures", "", []),
    ]


def runs_table(runs: list[RunSummary]) -> Table:
    """One row per run, its hash linking to its section."""
    table = Table("every run", ["run", "method", "data set", "model", "sparsity", "seed", "accuracy (%)"])
    for r in sorted(runs, key=lambda r: (r.data, r.model, r.method, r.sparsity, r.seed)):
        accuracy = r.final.get("accuracy", math.nan)
        table.rows.append([
            Entry(r.hash[:12], r.hash, (r.hash,)),
            Entry(r.method, r.method),
            Entry(r.data, r.data),
            Entry(r.model, r.model),
            Entry(f"{100 * r.sparsity:g} %", r.sparsity),
            Entry(str(r.seed), r.seed),
            Entry("—") if math.isnan(accuracy) else Entry(f"{100 * accuracy:.2f}", 100 * accuracy),
        ])  # fmt: skip
    return table


# -- HTML -----------------------------------------------------------------------------------------
def esc(text: object) -> str:
    """Text or an attribute value made safe for HTML (quotes included)."""
    return html.escape(str(text), quote=True)


def run_anchor(run: str) -> str:
    return f"run-{run}"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;text-align:right;vertical-align:top}
th:first-child,td:first-child,.text{text-align:left}
td:not(.text){white-space:nowrap}
thead th{background:#f0f3f7;cursor:pointer;user-select:none;white-space:nowrap}
thead th[aria-sort=ascending]::after{content:" \\25B2"}
thead th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}tbody tr:target,details:target{outline:2px solid #e69f00}
.runs{display:block;font-size:.8em}.runs a{margin-right:.3em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
details.run{border:1px solid #d0d0d0;border-radius:4px;padding:.3em .7em;margin:.4em 0}
details.run summary{cursor:pointer}pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.85em}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
p.note{color:#444;max-width:60em}
"""

SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, column) {
      th.tabIndex = 0;
      function sort() {
        var up = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
          return [key(row.cells[column]), i, row];
        });
        rows.sort(function (a, b) {
          var c = compare(a[0], b[0]);
          if (c !== 0 && a[0] !== null && b[0] !== null && !up) c = -c;
          return c !== 0 ? c : a[1] - b[1];
        });
        rows.forEach(function (r) { body.appendChild(r[2]); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
    });
  });
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; base-uri 'none'; form-action 'none'"
)
"""The page may load nothing: only data: images, and only its own style and script (by hash)."""


def render_html(
    runs: list[RunSummary],
    records: Mapping[str, RunRecord],
    artifacts: Mapping[str, Mapping[str, str]],
    *,
    figures: Sequence[Path] = (),
    source: str = "",
    delta: float = 0.005,
    notes: str = "",
) -> str:
    """The page for `runs`: every table row links to runs whose sections (#run-<hash>) it holds."""
    known = {r.hash for r in runs}
    sections = summary_sections(runs, delta)
    placed: dict[str, list[Path]] = defaultdict(list)
    for path in figures:
        placed[FIGURE_SECTIONS.get(path.stem, "figures")].append(path)
    shown = [(key, title) for key, title, _, tables in sections if tables or placed[key]]
    shown += [("notes", "Notes")] if notes.strip() else []
    body = [
        "<h1>secateurs report</h1>",
        f"<p>{esc(source)}.</p>",
        "<nav>"
        + " · ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in [*shown, ("runs", "Runs")])
        + "</nav>",
    ]
    for key, title, note, tables in sections:
        if tables or placed[key]:
            body.append(f'<h2 id="{key}">{esc(title)}</h2>')
            body += [f'<p class="note">{esc(note)}</p>'] if note else []
            body += [_table(t, known) for t in tables]
            body += [_figure(path) for path in placed[key]]
    if notes.strip():
        body += ['<h2 id="notes">Notes</h2>', markdown_html(notes)]
    body += ['<h2 id="runs">Runs</h2>', f'<p class="note">{esc(RUNS_NOTE)}</p>']
    body.append(_table(runs_table(runs), known, row_ids=True))
    body += [_run_section(r, records.get(r.hash), artifacts.get(r.hash, {})) for r in runs]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>secateurs report</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        *body,
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])  # fmt: skip


FIGURE_SECTIONS = {
    "accuracy_vs_remaining": "accuracy",
    "excess_error": "potential",
    "ticket_curves": "levels",
    "sanity_checks": "sanity",
    "layer_sparsity": "collapse",
}
"""The section each of `report.report_figures`' figures is shown in, by file stem (others: their own)."""

RUNS_NOTE = (
    "Each run is named by the hash of its configuration; open one for its configuration, final "
    "metrics and files."
)


TEXT = ' class="text"'
"""The class of a cell (and its column's header) that holds names, not numbers."""


def _table(table: Table, known: set[str], *, row_ids: bool = False) -> str:
    text = [
        any(isinstance(row[i].sort, str) for row in table.rows if i < len(row))
        for i in range(len(table.headers))
    ]
    head = "".join(
        f'<th scope="col"{TEXT if is_text else ""}>{esc(h)}</th>'
        for h, is_text in zip(table.headers, text, strict=True)
    )
    rows = []
    for row in table.rows:
        attr = f' id="row-{esc(row[0].runs[0])}"' if row_ids and row[0].runs else ""
        rows.append(
            f"<tr{attr}>"
            + "".join(_cell(entry, known, i == 0 and row_ids) for i, entry in enumerate(row))
            + "</tr>"
        )
    return (
        f"<h3>{esc(table.title)}</h3>\n"
        f'<table class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def _cell(entry: Entry, known: set[str], as_link: bool) -> str:
    sort = "" if entry.sort is None else esc(_sort_key(entry.sort))
    kind = TEXT if isinstance(entry.sort, str) else ""  # names read left-aligned, numbers right
    runs = [h for h in entry.runs if h in known]
    if as_link and len(runs) == 1:
        link = f'<a href="#{esc(run_anchor(runs[0]))}"><code>{esc(entry.text)}</code></a>'
        return f'<td data-sort="{sort}"{kind}>{link}</td>'
    return f'<td data-sort="{sort}"{kind}>{esc(entry.text)}{_links(runs)}</td>'


def _sort_key(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return "1e308" if math.isinf(value) and value > 0 else repr(float(value))


def _links(runs: list[str]) -> str:
    if not runs:
        return ""
    links = " ".join(f'<a href="#{esc(run_anchor(h))}" title="run {esc(h)}">{esc(h[:7])}</a>' for h in runs)
    if len(runs) <= INLINE_LINKS:
        return f'<span class="runs">{links}</span>'
    return f'<details class="runs"><summary>{len(runs)} runs</summary>{links}</details>'


def markdown_html(text: str) -> str:
    """Markdown as HTML that can neither run nor fetch anything: raw HTML is escaped, a link is its
    text followed by its address in parentheses, an image its alt text; headings start at <h3>, under
    the section's own <h2>."""
    from markdown_it import MarkdownIt  # rich's own markdown parser, so no new dependency

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("link_close", _link_close)
    md.add_render_rule("image", lambda self, tokens, idx, options, env: esc(tokens[idx].content))
    md.add_render_rule("heading_open", lambda self, tokens, idx, options, env: f"<h{_level(tokens[idx])}>")
    md.add_render_rule("heading_close", lambda self, tokens, idx, options, env: f"</h{_level(tokens[idx])}>")
    return md.render(text, {})


def _link_open(self: Any, tokens: Any, idx: int, options: Any, env: dict[str, Any]) -> str:
    env.setdefault("links", []).append(str(tokens[idx].attrGet("href") or ""))
    return ""


def _link_close(self: Any, tokens: Any, idx: int, options: Any, env: dict[str, Any]) -> str:
    href = env["links"].pop()
    shown = idx > 0 and tokens[idx - 1].content == href  # an autolink already shows its address
    return "" if not href or shown else f" ({esc(href)})"


def _level(token: Any) -> int:
    return max(3, min(6, int(token.tag[1]) + 1))


def _figure(path: Path) -> str:
    kind = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:{kind};base64,{data}" alt="{esc(path.stem)}">'
        f"<figcaption>{esc(path.stem)}</figcaption></figure>"
    )


def _run_section(r: RunSummary, record: RunRecord | None, artifacts: Mapping[str, str]) -> str:
    facts = [
        ("hash", r.hash),
        ("method", r.method),
        ("sanity check", r.check or "none"),
        ("data set", r.data),
        ("model", r.model),
        ("target sparsity", f"{100 * r.sparsity:g} %"),
        ("seed", str(r.seed)),
    ]
    if record is not None:
        facts += [
            ("name", record.name),
            ("created", record.created),
            ("finished", record.finished or "—"),
            ("secateurs version", record.version or "—"),
            ("git revision", record.git_revision or "—"),
        ]
    facts += [(f"file: {k}", v) for k, v in sorted(artifacts.items())]
    rows = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in facts)
    metrics = "".join(
        f'<tr><th scope="row">{esc(k)}</th><td>{esc(_number(v))}</td></tr>'
        for k, v in sorted(r.final.items())
    )
    config = json.dumps(record.config if record is not None else {}, indent=2, sort_keys=True, default=str)
    return (
        f'<details class="run" id="{esc(run_anchor(r.hash))}"><summary><code>{esc(r.hash[:12])}</code> '
        f"{esc(r.method)} · {esc(r.data)} · {esc(r.model)} · {esc(f'{100 * r.sparsity:g}')} % · seed {r.seed}"
        f'</summary><p><a href="#row-{esc(r.hash)}">in the runs table</a></p>'
        f"<table><tbody>{rows}</tbody></table>"
        f"<h4>final metrics</h4><table><tbody>{metrics}</tbody></table>"
        f"<h4>configuration</h4><pre><code>{esc(config)}</code></pre></details>"
    )


def _number(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
