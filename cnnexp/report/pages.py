"""The report as Markdown and as one self-contained HTML page (figures embedded as base64)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from cnnexp.report.table import COLUMN_NOTES, Table

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}p{max-width:75em}"
    "div.table{overflow-x:auto;max-width:100%}"  # a table too wide scrolls in here, not the page
    "table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}"
    "th{background:#f3f3f3}tbody tr{background:#fff}tbody tr:nth-child(even){background:#f8f8f8}"
    "th:first-child,td:first-child{position:sticky;left:0;background:inherit}"  # run stays
    "td.long{min-width:18em}"  # a block list wraps into a few lines, not one block a line
    "td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}"
    "th.num{text-align:right}p.small{font-size:13px;color:#555;max-width:60em}img{max-width:100%}"
)
LONG = 40  # characters: a text cell this long gets a wider column


@dataclass(frozen=True)
class Page:
    title: str
    notes: list[str]  # paragraphs above the table
    table: Table
    figures: dict[str, str] = field(default_factory=dict)  # file name -> caption


def markdown_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|").replace("\n", " ") for c in cells) + " |"

    rule = ["---:" if numeric else "---" for numeric in table.numeric]
    return "\n".join([line(table.header), "|" + "|".join(rule) + "|", *map(line, table.rows)])


def markdown_page(page: Page) -> str:
    parts = [f"# {page.title}", *page.notes, markdown_table(page.table), COLUMN_NOTES]
    parts += [f"## {caption}\n\n![{caption}]({name})" for name, caption in page.figures.items()]
    return "\n\n".join(parts) + "\n"


def html_cell(tag: str, text: str, numeric: bool, breaks: tuple[str, ...]) -> str:
    """One cell, escaped; a number right-aligned on one line, text free to wrap after each of
    `breaks` (a block list between its blocks, a dotted key after its dots)."""
    escaped = html.escape(text)
    if numeric:
        return f"<{tag} class='num'>{escaped}</{tag}>"
    for mark in breaks:
        escaped = escaped.replace(mark, f"{mark}<wbr>")
    wide = " class='long'" if len(text) > LONG else ""
    return f"<{tag}{wide}>{escaped}</{tag}>"


def html_table(table: Table) -> str:
    """The table in a box of the page's width that scrolls sideways where the table cannot
    wrap narrow enough; numbers right-aligned."""
    head = "".join(
        html_cell("th", h, numeric, (".",))
        for h, numeric in zip(table.header, table.numeric, strict=True)
    )
    rows = "".join(
        "<tr>"
        + "".join(
            html_cell("td", c, numeric, ("},", "],"))
            for c, numeric in zip(row, table.numeric, strict=True)
        )
        + "</tr>\n"
        for row in table.rows
    )
    return (
        f"<div class='table'><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n"
        "</table></div>"
    )


def png_data_uri(png: bytes) -> str:
    """A PNG file's bytes as a data: URI, so a page embeds its images and stands alone."""
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def html_page(page: Page, folder: Path) -> str:
    """The page with each figure read from `folder` and embedded, so the file stands alone."""
    figures = "".join(
        f"<h2>{html.escape(caption)}</h2>\n<img alt='{html.escape(caption)}' "
        f"src='{png_data_uri((folder / name).read_bytes())}'>\n"
        for name, caption in page.figures.items()
    )
    notes = "".join(f"<p>{html.escape(note)}</p>\n" for note in page.notes)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(page.title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>{html.escape(page.title)}</h1>\n{notes}{html_table(page.table)}\n"
        f"<p class='small'>{html.escape(COLUMN_NOTES)}</p>\n{figures}</body></html>\n"
    )
