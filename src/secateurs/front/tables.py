"""Tables that read in an 80-column terminal, and the same data as JSON for scripts.

What a table does to fit (issue 19, CLI friction): a column empty in every row is left out; a
column marked `once` that holds one value in every row moves to the caption; labels too long for
the room the other columns leave become short labels explained in a legend below the table
(``IMP (rewind) = IMP (lottery ticket, rewind)``): the caller's own short form when it gives one,
else the label with its words cut to prefixes (``magni. at init [shuf.]``), else a key
(``#1``); a table with more value columns than fit is split into several tables that repeat its
key columns, and its labels keep the room that leaves a few value columns beside them. A cell is
never cut to "…": what still does not fit wraps. `wide` keeps every label and prints the table
at its natural width (as long as its lines need).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

GAP = 2
"""Blank columns between two table columns (the compact style has no vertical rules)."""
MIN_LABEL = 8
"""Labels at most this wide are never replaced by keys: a key would save nothing worth a legend."""
BESIDE = 3
"""A table split over several keeps its labels as wide as leaves this many value columns beside them."""
PREFIXES = (5, 4, 3)
"""Letters a word keeps when `abbreviate` cuts it, longest first."""
_WORD = re.compile(r"[^\W\d_]+")
"""What `abbreviate` may cut: a run of letters (digits, `_` and punctuation stay as they are)."""


@dataclass(frozen=True)
class Column:
    """One column of a `fit` table.

    `right` right-justifies (numbers); `label` lets long values become keys with a legend; `once`
    moves a column holding the same value in every row to the caption ("params 1,234 in every row").
    """

    header: str
    right: bool = False
    label: bool = False
    once: bool = False


def text_width(text: str) -> int:
    """Terminal cells of the widest line of `text`."""
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _widths(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([text_width(c.header), *(text_width(row[i]) for row in rows)]) for i, c in enumerate(columns)]


def natural_width(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> int:
    """The width of the compact table of `rows` when no cell wraps."""
    widths = _widths(columns, rows)
    return sum(widths) + GAP * (len(widths) - 1) if widths else 0


def cut(text: str, width: int) -> str:
    """The first line of `text` in at most `width` cells: cut at a word, ending in "…" when cut."""
    line = text.splitlines()[0] if text else ""
    if cell_len(line) <= width:
        return line
    room = max(width - 1, 1)
    head = line[:room]
    while cell_len(head) > room:
        head = head[:-1]
    words = head.rsplit(" ", 1)[0].rstrip(" ,;:")
    return (words if len(words) >= room // 2 else head.rstrip()) + "…"


def _is_name(word: str) -> bool:
    """An acronym or a name written with inner capitals (ERK, GraSP, SynFlow): never cut."""
    return word[1:] != word[1:].lower()


def abbreviate(label: str, room: int) -> str | None:
    """`label` in at most `room` cells with its words cut to prefixes and a dot, or None.

    Words are cut to 5, then 4, then 3 letters ("structured" -> "struc."), the first word (most
    often the method's name) only when cutting the others is not enough; acronyms and names with
    inner capitals are kept whole, so what is left still reads as the label.
    """
    if cell_len(label) <= room:
        return label
    words = list(_WORD.finditer(label))
    for letters in PREFIXES:
        for first_too in (False, True):

            def cut_word(match: re.Match[str], letters: int = letters, first_too: bool = first_too) -> str:
                word = match.group()
                if (match.start() == words[0].start() and not first_too) or _is_name(word):
                    return word
                return word[:letters] + "." if len(word) > letters + 1 else word

            text = _WORD.sub(cut_word, label)
            if cell_len(text) <= room:
                return text
    return None


def _keep(columns: list[Column], rows: list[list[str]]) -> tuple[list[int], list[str]]:
    """The columns to show (empty ones left out, `once` ones with one value moved to caption parts)."""
    caption: list[str] = []
    kept = []
    for i, column in enumerate(columns):
        values = {row[i] for row in rows}
        if rows and values <= {""}:
            continue
        if column.once and len(rows) > 1 and len(values) == 1:
            caption.append(f"{column.header} {values.pop()}")
            continue
        kept.append(i)
    return kept, caption


def _label_room(columns: list[Column], rows: list[list[str]], i: int, width: int, keys: int) -> int:
    """The cells label column `i` may take: what the other columns leave, or in a table that is
    split over several (`keys` columns repeated), what `BESIDE` of its widest value columns leave."""
    widths = _widths(columns, rows)
    if i < keys:
        beside = sorted(widths[keys:], reverse=True)[:BESIDE]
        others = sum(widths[:keys]) - widths[i] + sum(beside) + GAP * (keys - 1 + len(beside))
    else:
        others = natural_width(columns, rows) - widths[i]
    return max(width - others, MIN_LABEL)


def _short_label(label: str, room: int, short: Mapping[str, str], taken: set[str]) -> str | None:
    """The first of the caller's short form and `abbreviate`'s that fits `room` and names no other row."""
    for candidate in (short.get(label), abbreviate(label, room)):
        if candidate and text_width(candidate) <= room and candidate not in taken:
            return candidate
    return None


def _legend(
    columns: list[Column], rows: list[list[str]], width: int, keys: int, short: Mapping[str, str]
) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Replace labels too long for their room by short labels (or `#n` keys); the (short, label)
    pairs for a legend."""
    if natural_width(columns, rows) <= width:
        return rows, []
    legend: dict[str, str] = {}
    numbered = 0
    rows = [list(row) for row in rows]
    for i, column in enumerate(columns):
        if not column.label:
            continue
        room = _label_room(columns, rows, i, width, keys)
        taken = {row[i] for row in rows if text_width(row[i]) <= room}
        for row in rows:
            label = row[i]
            if text_width(label) <= room:
                continue
            if label not in legend:
                shown = _short_label(label, room, short, taken)
                if shown is None:
                    numbered += 1
                    shown = f"#{numbered}"
                legend[label] = shown
                taken.add(shown)
            row[i] = legend[label]
    return rows, [(key, label) for label, key in legend.items()]


def legend_table(legend: Sequence[tuple[str, str]]) -> Table:
    """`short = full label` lines, the `=` signs aligned; a label too long for the line wraps
    under itself, not under the short labels."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for key, label in legend:
        grid.add_row(Text(key), "=", Text(label))
    return grid


def _chunks(columns: list[Column], rows: list[list[str]], keys: int, width: int) -> list[list[int]]:
    """Column indices of each table: the `keys` leading columns, then as many others as fit."""
    widths = _widths(columns, rows)
    key_width = sum(widths[:keys]) + GAP * keys
    chunks: list[list[int]] = [[]]
    used = key_width
    for i in range(keys, len(columns)):
        need = widths[i] + GAP
        if chunks[-1] and used + need - GAP > width:
            chunks.append([])
            used = key_width
        chunks[-1].append(i)
        used += need
    return [[*range(keys), *chunk] for chunk in chunks]


def _table(
    title: str | None, columns: Sequence[Column], rows: Iterable[Sequence[str]], caption: str | None
) -> Table:
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        title_justify="left",
        caption_justify="left",
    )
    widths = _widths(list(columns), [list(r) for r in rows])
    for column, natural in zip(columns, widths, strict=True):
        # numbers keep their width (they never fold mid-number); text folds rather than "…"
        table.add_column(
            column.header,
            justify="right" if column.right else "left",
            overflow="fold",
            min_width=natural if column.right else None,
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def fit(
    title: str | None,
    columns: Sequence[Column],
    rows: Iterable[Sequence[str]],
    *,
    width: int,
    wide: bool = False,
    keys: int = 0,
    caption: str | None = None,
    short: Mapping[str, str] | None = None,
) -> list[RenderableType]:
    """`rows` (strings, one per column) as tables that fit `width` cells, and their legend.

    `keys` leading columns name a row: when the other columns cannot fit beside them they are
    spread over several tables, each repeating the key columns. `short` gives labels a short form
    to use when they do not fit (else they are abbreviated). With `wide` nothing is shortened.
    """
    columns, rows = list(columns), [list(row) for row in rows]
    shown, once = _keep(columns, rows)
    keys = sum(i < keys for i in shown)
    kept, cells = [columns[i] for i in shown], [[row[i] for i in shown] for row in rows]
    said_once = [", ".join(once) + " in every row"] if once else []
    notes = "; ".join([*said_once, *([caption] if caption else [])])
    if wide or not kept:
        return [_table(title, kept, cells, notes or None)]
    cells, legend = _legend(kept, cells, width, keys, short or {})
    parts = (
        _chunks(kept, cells, keys, width)
        if keys and natural_width(kept, cells) > width
        else [list(range(len(kept)))]
    )
    out: list[RenderableType] = []
    for n, part in enumerate(parts, 1):
        numbered = f"{title} ({n}/{len(parts)})" if title and len(parts) > 1 else title
        if n > 1 and not title:
            out.append(Text(""))  # untitled parts of one table: a blank line between them
        out.append(
            _table(
                numbered,
                [kept[i] for i in part],
                [[row[i] for i in part] for row in cells],
                notes if notes and n == len(parts) else None,
            )
        )
    if legend:
        out.append(legend_table(legend))
    return out


def print_tables(console: Console, renderables: Iterable[RenderableType], *, wide: bool = False) -> None:
    """Print `renderables`; with `wide`, each at its natural width even beyond the terminal's."""
    for renderable in renderables:
        if not wide:
            console.print(renderable)
            continue
        natural = Measurement.get(console, console.options.update(max_width=10**6), renderable).maximum
        if natural <= console.width:
            console.print(renderable)
            continue
        detected = console.__dict__.get("_width")  # None: rich measures the terminal each time
        console.width = natural
        try:
            console.print(renderable, crop=False)
        finally:
            console.__dict__["_width"] = detected


RULE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
"""The line under a markdown table's header."""


def _markdown_cells(line: str, count: int | None = None) -> list[str]:
    cells = [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]
    return cells if count is None else (cells + [""] * count)[:count]


@dataclass(frozen=True)
class MarkdownTable:
    """A table of a markdown text: the heading it is under, its header cells and rows."""

    heading: str
    header: list[str]
    rows: list[list[str]]


def _markdown_blocks(text: str) -> list[list[str] | MarkdownTable]:
    """`text` cut into its prose (lists of lines) and its tables, in order."""
    blocks: list[list[str] | MarkdownTable] = []
    prose: list[str] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("|") and i + 1 < len(lines) and RULE.match(lines[i + 1])):
            if lines[i].startswith("#"):
                heading = lines[i].lstrip("#").strip()
            prose.append(lines[i])
            i += 1
            continue
        if "".join(prose).strip():
            blocks.append(prose)
        prose = []
        header = _markdown_cells(lines[i])
        i += 2
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            rows.append(_markdown_cells(lines[i], len(header)))
            i += 1
        blocks.append(MarkdownTable(heading, header, rows))
    if "".join(prose).strip():
        blocks.append(prose)
    return blocks


def markdown(
    text: str, *, width: int, wide: bool = False, short: Mapping[str, str] | None = None
) -> list[RenderableType]:
    """Markdown for the terminal: its tables fitted as `fit` does (the first column names a row,
    `short` as there), the text between them rendered by rich (which would cut a table's cells
    to "…")."""
    from rich.markdown import Markdown

    out: list[RenderableType] = []
    for block in _markdown_blocks(text):
        if not isinstance(block, MarkdownTable):
            out.append(Markdown("\n".join(block)))
            continue
        columns = [Column(h, label=n == 0, right=n > 0) for n, h in enumerate(block.header)]
        out += [*fit(None, columns, block.rows, width=width, wide=wide, keys=1, short=short), Text("")]
    return out


def markdown_tables(text: str) -> list[dict[str, Any]]:
    """The tables of a markdown text as plain data (`--json`): heading, columns, rows of cells."""
    return [
        {"heading": b.heading, "columns": b.header, "rows": b.rows}
        for b in _markdown_blocks(text)
        if isinstance(b, MarkdownTable)
    ]


def plain(value: Any) -> Any:
    """`value` with what JSON cannot hold made plain: NaN and ±inf as null, tuples and sets as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def print_json(console: Console, data: Any) -> None:
    """`data` as indented JSON on the console's file, never wrapped, highlighted or cut."""
    console.out(json.dumps(plain(data), indent=2, ensure_ascii=False), highlight=False)
