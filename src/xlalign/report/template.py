"""A tiny document model (headings, text, tables, images) written out as HTML and as Markdown.

The report's content is built once as a list of blocks and rendered twice, so ``report.html``
and ``report.md`` cannot drift apart. Every string from the data is escaped here, at the point
of writing: ``html.escape`` for HTML, and HTML escaping plus Markdown's own specials for
Markdown (Markdown viewers pass raw HTML through).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias


@dataclass(frozen=True)
class Cell:
    """One table cell; ``undefined`` cells are styled apart and carry their reason as ``title``."""

    text: str
    title: str | None = None
    undefined: bool = False


@dataclass(frozen=True)
class Heading:
    """A section heading; ``anchor`` is the HTML id."""

    level: int
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class Para:
    """A paragraph of plain text; ``note`` paragraphs are shown muted."""

    text: str
    note: bool = False


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table with a header row; cells are plain text or :class:`Cell`."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str | Cell]]
    caption: str | None = None


@dataclass(frozen=True)
class Image:
    """A figure: ``png`` is embedded in HTML and linked by relative path in Markdown."""

    png: Path
    alt: str
    caption: str | None = None


@dataclass(frozen=True)
class Details:
    """Blocks folded away in HTML (``<details>``), shown under a bold line in Markdown."""

    summary: str
    blocks: Sequence[Block] = field(default_factory=list)


Block: TypeAlias = Heading | Para | Bullets | Table | Image | Details

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC",
  sans-serif; margin: 0; color: #1d2125; background: #fbfbfc; line-height: 1.45; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; padding-bottom: 0.25rem; border-bottom: 1px solid #d8dce0; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
nav { font-size: 0.9rem; margin-bottom: 1rem; }
nav a { margin-right: 1rem; color: #2458a6; text-decoration: none; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; background: #fff; }
figcaption { font-size: 0.88rem; color: #51585f; margin-top: 0.3rem; }
.note { color: #5b636b; font-size: 0.9rem; }
.summary { background: #fff; border: 1px solid #dde1e5; border-radius: 6px; padding: 0.6rem 1.2rem; }
.tablewrap { overflow-x: auto; margin: 0.6rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; background: #fff; }
th, td { border: 1px solid #dde1e5; padding: 0.2rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f0f2f4; font-weight: 600; }
td.undef { color: #8a5a00; font-style: italic; }
.tcap { font-size: 0.85rem; color: #51585f; margin: 0 0 0.2rem; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; color: #2458a6; }
"""


def _h(s: str) -> str:
    return html.escape(s, quote=True)


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_h(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_h(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        cls = ' class="note"' if block.note else ""
        return f"<p{cls}>{_h(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{_h(item)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        # A <caption> wraps to the table's width; a paragraph above reads better.
        caption = f'<p class="tcap">{_h(block.caption)}</p>' if block.caption else ""
        head = "".join(f"<th>{_h(c)}</th>" for c in block.columns)
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
        return (
            f'<div class="tablewrap">{caption}<table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    if isinstance(block, Image):
        data = base64.b64encode(block.png.read_bytes()).decode("ascii")
        caption = f"<figcaption>{_h(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_h(block.alt)}">'
            f"{caption}</figure>"
        )
    inner = "\n".join(_html_block(b) for b in block.blocks)
    return f"<details><summary>{_h(block.summary)}</summary>\n{inner}\n</details>"


def _html_cell(cell: str | Cell) -> str:
    if isinstance(cell, str):
        return f"<td>{_h(cell)}</td>"
    attrs = ' class="undef"' if cell.undefined else ""
    if cell.title:
        attrs += f' title="{_h(cell.title)}"'
    return f"<td{attrs}>{_h(cell.text)}</td>"


def to_html(
    title: str,
    blocks: Sequence[Block],
    summary: Sequence[str] = (),
    nav: Sequence[tuple[str, str]] = (),
) -> str:
    """Return a self-contained HTML page: inline CSS, images as data URIs, no scripts.

    ``nav`` lists ``(anchor, label)`` links to headings of the page.
    """
    links = "".join(f'<a href="#{_h(a)}">{_h(label)}</a>' for a, label in nav)
    nav_html = f"<nav>{links}</nav>" if links else ""
    summary_html = ""
    if summary:
        items = "".join(f"<li>{_h(line)}</li>" for line in summary)
        summary_html = f'<section id="summary" class="summary"><ul>{items}</ul></section>'
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_h(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_h(title)}</h1>\n{nav_html}\n{summary_html}\n{body}\n</main>\n</body>\n</html>\n"
    )


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_escape(s: str) -> str:
    """Return ``s`` safe as Markdown text: HTML-escaped, specials backslashed, one line."""
    s = html.escape(s, quote=False)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\s*\n\s*", " ", s)


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {md_escape(block.text)}"
    if isinstance(block, Para):
        text = md_escape(block.text)
        return f"*{text}*" if block.note else text
    if isinstance(block, Bullets):
        return "\n".join(f"- {md_escape(item)}" for item in block.items)
    if isinstance(block, Table):
        lines = []
        if block.caption:
            lines += [md_escape(block.caption), ""]
        lines.append("| " + " | ".join(md_escape(c) for c in block.columns) + " |")
        lines.append("|" + "---|" * len(block.columns))
        for row in block.rows:
            cells = [md_escape(c if isinstance(c, str) else c.text) for c in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if isinstance(block, Image):
        # The file name is ours (fig_<safe name>.png), so it needs no escaping as a link target.
        out = f"![{md_escape(block.alt)}]({block.png.name})"
        return f"{out}\n\n*{md_escape(block.caption)}*" if block.caption else out
    inner = "\n\n".join(_md_block(b) for b in block.blocks)
    return f"**{md_escape(block.summary)}**\n\n{inner}"


def to_markdown(title: str, blocks: Sequence[Block], summary: Sequence[str] = ()) -> str:
    """Return the same document as Markdown, images referenced by relative path."""
    parts = [f"# {md_escape(title)}"]
    if summary:
        parts.append("\n".join(f"- {md_escape(line)}" for line in summary))
    parts += [_md_block(b) for b in blocks]
    return "\n\n".join(parts) + "\n"
