"""Notion blocks to markdown.

A block is the API's block object; its children, when fetched, are under the extra key `"children"` (a list of
blocks). Kept: headings (toggleable ones with their children), paragraphs with bold/italic/strikethrough/code/
links, bulleted/numbered/to-do lists with nested children, code with its language, quotes, callouts, toggles
(their children kept), tables, dividers, columns and synced blocks (their content). Dropped: images, files, PDFs,
video, audio, embeds, bookmarks, link previews, child pages and databases (documents of their own), and unknown
types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kbsync.sources._mdout import fence, quote, table

__all__ = ["CONTAINER_TYPES", "blocks_to_markdown", "plain_text", "rich_text_to_markdown"]

Block = Mapping[str, Any]

_TEXT_TYPES = {"paragraph", "heading_1", "heading_2", "heading_3", "quote", "callout", "toggle"}
_LIST_TYPES = {"bulleted_list_item", "numbered_list_item", "to_do"}
# Blocks whose children are content of the same page (never another page).
CONTAINER_TYPES = {"column_list", "column", "synced_block", "template"}
_DROPPED = {
    "image",
    "file",
    "pdf",
    "video",
    "audio",
    "embed",
    "bookmark",
    "link_preview",
    "child_page",
    "child_database",
    "breadcrumb",
    "table_of_contents",
    "unsupported",
    "link_to_page",
}


def plain_text(rich_text: Iterable[Mapping[str, Any]] | None) -> str:
    """The text of a rich_text array, without formatting."""
    return "".join(str(part.get("plain_text") or "") for part in rich_text or [])


def rich_text_to_markdown(rich_text: Iterable[Mapping[str, Any]] | None) -> str:
    """A rich_text array as inline markdown: bold, italic, strikethrough, code, links."""
    out: list[str] = []
    for part in rich_text or []:
        text = str(part.get("plain_text") or "")
        if not text:
            continue
        annotations = part.get("annotations") or {}
        core = text.strip()
        if core:
            if annotations.get("code"):
                core = f"`{core}`"
            if annotations.get("bold"):
                core = f"**{core}**"
            if annotations.get("italic"):
                core = f"*{core}*"
            if annotations.get("strikethrough"):
                core = f"~~{core}~~"
            href = part.get("href")
            if isinstance(href, str) and href and not href.startswith("javascript:"):
                core = f"[{core}]({href})"
        lead = text[: len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()) :] if text.strip() else ""
        out.append(f"{lead}{core}{trail}")
    return "".join(out)


def blocks_to_markdown(blocks: Iterable[Block]) -> str:
    """The markdown of a page's blocks (children attached under `"children"`)."""
    rendered = "\n\n".join(b for b in _blocks(list(blocks), "") if b.strip())
    return rendered.strip() + "\n" if rendered.strip() else ""


def _blocks(blocks: list[Block], indent: str) -> list[str]:
    """Markdown blocks; `indent` is the parent list item's text column (nested content lines up with it)."""
    out: list[str] = []
    list_run: list[str] = []
    number = 0
    run_kind = ""
    for block in blocks:
        kind = str(block.get("type") or "")
        if kind in _LIST_TYPES:
            if list_run and kind != run_kind:  # a bulleted list after a numbered one is another list
                out.append("\n".join(list_run))
                list_run = []
            run_kind = kind
            number = number + 1 if kind == "numbered_list_item" else 0
            list_run.extend(_list_item(block, kind, number, indent))
            continue
        if list_run:
            out.append("\n".join(list_run))
            list_run = []
        number = 0
        out.extend(_indent(b, indent) for b in _block(block, kind))
    if list_run:
        out.append("\n".join(list_run))
    return out


def _children(block: Block) -> list[Block]:
    children = block.get("children")
    return list(children) if isinstance(children, list) else []


def _body(block: Block, kind: str) -> Mapping[str, Any]:
    body = block.get(kind)
    return body if isinstance(body, Mapping) else {}


def _block(block: Block, kind: str) -> list[str]:
    body = _body(block, kind)
    text = rich_text_to_markdown(body.get("rich_text"))
    if kind in _DROPPED:
        return []
    if kind.startswith("heading_") and kind[-1] in "123":
        heading = [f"{'#' * int(kind[-1])} {text.strip()}"] if text.strip() else []
        return heading + _blocks(_children(block), "")
    if kind == "paragraph":
        return ([text.strip()] if text.strip() else []) + _blocks(_children(block), "")
    if kind == "toggle":
        return ([f"**{text.strip()}**"] if text.strip() else []) + _blocks(_children(block), "")
    if kind in ("quote", "callout"):
        icon = body.get("icon") if kind == "callout" else None
        emoji = str(icon.get("emoji") or "") if isinstance(icon, Mapping) and icon.get("type") == "emoji" else ""
        first = f"{emoji} {text.strip()}".strip()
        inner = ([first] if first else []) + _blocks(_children(block), "")
        return [quote(inner)] if inner else []
    if kind == "code":
        code = "".join(str(p.get("plain_text") or "") for p in body.get("rich_text") or [])
        language = str(body.get("language") or "")
        return [fence(code, "" if language == "plain text" else language)] if code.strip() else []
    if kind == "divider":
        return ["---"]
    if kind == "table":
        rendered = _table(block, body)
        return [rendered] if rendered else []
    if kind == "equation":
        expression = str(body.get("expression") or "")
        return [f"$${expression}$$"] if expression else []
    if kind in CONTAINER_TYPES:
        return _blocks(_children(block), "")
    return []  # unknown block types


def _list_item(block: Block, kind: str, number: int, indent: str) -> list[str]:
    body = _body(block, kind)
    text = rich_text_to_markdown(body.get("rich_text")).strip().replace("\n", " ")
    if kind == "numbered_list_item":
        marker, width = f"{number}.", len(f"{number}.") + 1
    elif kind == "to_do":
        marker, width = f"- [{'x' if body.get('checked') else ' '}]", 2
    else:
        marker, width = "-", 2
    lines = [f"{indent}{marker} {text}".rstrip()]
    lines.extend(_blocks(_children(block), indent + " " * width))  # nested content lines up with the text
    return lines


def _indent(text: str, pad: str) -> str:
    return "\n".join(f"{pad}{line}" if line else line for line in text.split("\n")) if pad else text


def _table(block: Block, body: Mapping[str, Any]) -> str:
    rows = [
        [rich_text_to_markdown(cell).strip() for cell in _body(row, "table_row").get("cells") or []]
        for row in _children(block)
        if row.get("type") == "table_row"
    ]
    width = int(body.get("table_width") or 0)
    rows = [row + [""] * (width - len(row)) for row in rows]
    return table(rows, header=bool(body.get("has_column_header")))
