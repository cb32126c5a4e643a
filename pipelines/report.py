"""A report as a list of blocks (headings, paragraphs, tables, plots), rendered to Markdown and HTML.

Whoever computes a report (the compare stage) builds the blocks and never writes markup; this
module only renders them. Markdown is written here directly (a few lines per block kind); HTML
comes from the Jinja2 template `pipelines/templates/report.html.j2`, with autoescaping on, so the
page layout and style live in one template instead of Python f-strings. The HTML is
self-contained: plots are inlined as base64 PNGs and nothing is loaded from outside, so the file
can be mailed or opened offline.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

TEMPLATE = "report.html.j2"
MISSING = "—"


@dataclass
class Table:
    """A table rendered to both Markdown and HTML; `bold` holds (row, col) cells to emphasise.

    `groups` is a rendering hint for HTML only: (label, column indices) in the order the page shows
    them, under a header row naming each group. Markdown keeps the columns in their given order.
    `baseline_rows` are row indices drawn as the reference (majority-class) row.
    """

    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    groups: list[tuple[str, list[int]]] = field(default_factory=list)
    baseline_rows: set[int] = field(default_factory=set)


@dataclass
class Images:
    """Plots of one arch: (title, path relative to the report, absolute source or None)."""

    items: list[tuple[str, str, Path | None]]
    wide: frozenset[str] = frozenset()  # titles of plots shown at full page width (many panels)


Block = tuple[str, Any]  # ("h1"|"h2"|"h3"|"p", text) | ("table", Table) | ("images", Images)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "arch"


# ----------------------------------------------------------------------------- Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + body)
        elif kind == "p":
            out.append(body)
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in body.headers) + " |")
            out.append("|" + "|".join("---" for _ in body.headers) + "|")
            for i, row in enumerate(body.rows):
                cells = [
                    f"**{_md_cell(c)}**" if (i, j) in body.bold and c != MISSING else _md_cell(c)
                    for j, c in enumerate(row)
                ]
                out.append("| " + " | ".join(cells) + " |")
        elif kind == "images":
            for title, rel, src in body.items:
                out.append(f"**{title}**\n\n" + (f"![{title}]({rel})" if src else "_not produced_") + "\n")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML
def inline(text: str) -> Markup:
    """Escape, then turn the Markdown **bold** and `code` the paragraphs use into HTML."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", escaped))


def _html_table(table: Table) -> dict[str, Any]:
    """Columns in display order (groups first, in their order, then any column no group names)."""
    order = [j for _, cols in table.groups for j in cols]
    order += [j for j in range(len(table.headers)) if j not in order]
    groups = [(label, len(cols)) for label, cols in table.groups]
    rest = len(table.headers) - sum(n for _, n in groups)
    if groups and rest:
        groups.append(("", rest))
    return {
        "headers": [table.headers[j] for j in order],
        "groups": groups,
        "rows": [{"baseline": i in table.baseline_rows,
                  "cells": [(row[j], (i, j) in table.bold and row[j] != MISSING) for j in order]}
                 for i, row in enumerate(table.rows)],
    }


def _html_images(images: Images) -> list[dict[str, Any]]:
    return [{"title": title, "wide": title in images.wide,
             "data": base64.b64encode(src.read_bytes()).decode("ascii") if src is not None else None}
            for title, _, src in images.items]


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipelines", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["inline"] = inline
    env.filters["slug"] = lambda text: slug(str(text).lower())
    return env


def render_html(blocks: Sequence[Block], title: str) -> str:
    """The page: blocks in order, with a contents line linking every second-level heading."""
    view = []
    for kind, body in blocks:
        if kind == "table":
            view.append((kind, _html_table(body)))
        elif kind == "images":
            view.append((kind, _html_images(body)))
        else:
            view.append((kind, body))
    contents = [body for kind, body in blocks if kind == "h2"]
    page = _environment().get_template(TEMPLATE).render(title=title, blocks=view, contents=contents)
    return page.rstrip("\n") + "\n"
