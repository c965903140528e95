"""A tiny document model rendered to Markdown (images saved as files) and self-contained HTML (images inline).

Blocks: headings, paragraphs, bullet lists, tables, single images and rows of captioned images. The HTML has
inline CSS and ``data:image/png;base64`` images only: it opens offline, with no external files or scripts.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from mtkd.utils.atomic import write_bytes


@dataclass
class Image:
    """A PNG with a file name (used by the Markdown output) and a caption."""

    name: str
    png: bytes
    caption: str = ""


@dataclass
class Document:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def image(self, img: Image) -> None:
        self.blocks.append(("img", [img]))

    def image_row(self, imgs: list[Image]) -> None:
        self.blocks.append(("img", imgs))

    def images(self) -> list[Image]:
        return [im for b in self.blocks if b[0] == "img" for im in b[1]]


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.delta{color:#666;font-size:12px}.warn{color:#b00000}
.row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0 0 .8em 0}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555;text-align:center}
code{background:#f5f5f5;padding:0 3px}
"""


def _inline_md_to_html(text: str) -> str:
    """Escape, then render `code` and **bold** (the only inline Markdown the report uses)."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def _cell_html(text: str) -> str:
    """A table cell; a trailing ``(delta)`` is set in a muted span, a trailing ``(unreliable [n])`` or
    ``(not comparable [n])`` flag in a warning one."""
    m = re.fullmatch(r"(.*) \(((?:[+-]|≈|unreliable|not comparable)[^()]*)\)", text)
    if not m:
        return _inline_md_to_html(text)
    cls = "delta warn" if m.group(2).startswith(("unreliable", "not comparable")) else "delta"
    return f'{_inline_md_to_html(m.group(1))} <span class="{cls}">({html.escape(m.group(2))})</span>'


def to_html(doc: Document) -> str:
    """Self-contained HTML (inline CSS, base64 PNGs, no scripts, no links)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md_to_html(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_md_to_html(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            figs = []
            for im in b[1]:
                data = base64.b64encode(im.png).decode("ascii")
                cap = f"<figcaption>{html.escape(im.caption)}</figcaption>" if im.caption else ""
                figs.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(im.caption or im.name)}">{cap}</figure>'
                )
            out.append('<div class="row">' + "".join(figs) + "</div>")
    out.append("</body></html>")
    return "\n".join(out)


def _md_escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, image_dir: Path, rel: str = "") -> str:
    """Markdown; every image is written (atomically) to ``image_dir/<name>`` and referenced as ``rel + name``."""
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out += ["#" * b[1] + " " + b[2], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "ul":
            out += [f"- {i}" for i in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_escape_cell(h) for h in b[1]) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(b[1]) - 1)) + "|")
            out += ["| " + " | ".join(_md_escape_cell(c) for c in r) + " |" for r in b[2]]
            out.append("")
        elif kind == "img":
            for im in b[1]:
                write_bytes(image_dir / im.name, im.png, what="report image")
            if len(b[1]) == 1:
                out += [f"![{b[1][0].caption or b[1][0].name}]({rel}{b[1][0].name})", ""]
            else:  # a row of images as a one-row table so they sit side by side
                out.append("| " + " | ".join(_md_escape_cell(im.caption) for im in b[1]) + " |")
                out.append("|" + "|".join([":-:"] * len(b[1])) + "|")
                out.append("| " + " | ".join(f"![{im.caption}]({rel}{im.name})" for im in b[1]) + " |")
                out.append("")
    return "\n".join(out)
