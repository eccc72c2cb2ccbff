"""The pieces of the self-contained HTML report: images embedded as base64 data URIs, Markdown tables and
paragraphs turned into HTML, one page with inline CSS and no scripts."""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto; max-width: 1400px;
       padding: 0 16px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.0em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.8em; max-height: 420px; }
.cells { display: flex; gap: 16px; align-items: flex-start; overflow-x: auto; }
.cell { flex: 1 1 0; min-width: 320px; border: 1px solid #e5e5e5; padding: 8px; }
.note { color: #666; font-size: 0.85em; }
"""


def esc(text) -> str:
    return html.escape(str(text))


def img(source: Path | bytes, alt: str) -> str:
    """<img> with the PNG embedded (a file path or PNG bytes)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _inline(text: str) -> str:
    out = esc(text)
    while out.count("**") >= 2:
        out = out.replace("**", "<b>", 1).replace("**", "</b>", 1)
    return out


def markdown(text: str) -> str:
    """Markdown tables (| a | b | with a |---| separator), # headings and plain paragraphs -> HTML."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            head, i = _cells(line), i + 2
            body = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            blocks.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>" + rows + "</table>")
            continue
        if line.lstrip().startswith("#"):
            blocks.append(f"<h3>{_inline(line.strip().lstrip('#').strip())}</h3>")
        elif line.strip():
            para = [line.strip()]
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].strip().startswith(("|", "#")):
                i += 1
                para.append(lines[i].strip())
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
        i += 1
    return "\n".join(blocks)


def page(title: str, sections: list[tuple[str, str]], subtitle: str = "") -> str:
    """The whole document: a title, an optional subtitle and (heading, html) sections."""
    body = "\n".join(f"<section><h2>{esc(h)}</h2>\n{content}\n</section>" for h, content in sections if content)
    sub = f'<p class="note">{esc(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head>\n<body><h1>{esc(title)}</h1>{sub}\n{body}\n'
            "</body></html>\n")
