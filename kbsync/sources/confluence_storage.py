"""Confluence storage format (XHTML with `ac:` macros and `ri:` resources) to markdown.

Kept: headings, paragraphs with bold/italic/code/links, lists (nested), tables, code and noformat macros (with
their language), info/note/warning/tip/panel macros as quoted text, expand/excerpt/section/column bodies, task
lists, layouts. Dropped, never dumped as tags: images, attachments, emoticons, placeholders and every macro not
named above (toc, jira, gallery, ...).
"""

from __future__ import annotations

import html.entities
import re

from lxml import etree

from kbsync.sources._mdout import fence, quote, table

__all__ = ["StorageFormatError", "storage_to_markdown"]

_AC = "http://atlassian.com/content"
_RI = "http://atlassian.com/resource/identifier"
_WRAP = f'<kbsync-root xmlns:ac="{_AC}" xmlns:ri="{_RI}">%s</kbsync-root>'
_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}

_QUOTE_MACROS = {"info", "note", "warning", "tip", "panel"}
_BODY_MACROS = {"expand", "excerpt", "section", "column", "details", "ui-expand"}
_CODE_MACROS = {"code", "noformat"}
_BLOCK_TAGS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "pre", "blockquote", "hr"}


class StorageFormatError(ValueError):
    """A body that is not well-formed storage XHTML even after entity repair."""


def storage_to_markdown(storage: str) -> str:
    """The markdown of one page body in storage format; raises StorageFormatError for a body lxml cannot read."""
    if not storage.strip():
        return ""
    text = _ENTITY.sub(_numeric_entity, storage)
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring((_WRAP % text).encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise StorageFormatError(f"storage body does not parse: {exc}") from None
    if root is None:
        raise StorageFormatError("storage body does not parse")
    blocks = _Converter().blocks(root)
    return "\n\n".join(b for b in blocks if b.strip()).strip() + "\n"


def _numeric_entity(match: re.Match[str]) -> str:
    name = match.group(1)
    if name in _XML_ENTITIES:
        return match.group(0)
    codepoint = html.entities.name2codepoint.get(name)
    return f"&#{codepoint};" if codepoint is not None else ""


def _local(element: etree._Element) -> str:
    """`p`, `ac:structured-macro`, ... (the prefix spelled as Confluence spells it)."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""  # comments, processing instructions
    if tag.startswith(f"{{{_AC}}}"):
        return "ac:" + tag[len(_AC) + 2 :]
    if tag.startswith(f"{{{_RI}}}"):
        return "ri:" + tag[len(_RI) + 2 :]
    return tag.lower()


def _ac(element: etree._Element, name: str) -> str:
    return element.get(f"{{{_AC}}}{name}") or ""


class _Converter:
    """Block-level walk (`blocks`) producing markdown blocks, and inline rendering (`inline`)."""

    def blocks(self, element: etree._Element) -> list[str]:
        """The markdown blocks of `element`'s children; loose inline content becomes paragraphs."""
        out: list[str] = []
        inline: list[str] = [element.text or ""]

        def flush() -> None:
            text = _squash("".join(inline))
            if text:
                out.append(text)
            inline.clear()

        for child in element:
            name = _local(child)
            block = self.block(child, name)
            if block is None:
                inline.append(self.inline(child))
            else:
                flush()
                out.extend(block)
            inline.append(child.tail or "")
        flush()
        return out

    def block(self, element: etree._Element, name: str) -> list[str] | None:
        """Markdown blocks for a block-level element, or None when it is inline."""
        if name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            text = _squash(self.inline_children(element))
            return [f"{'#' * int(name[1])} {text}"] if text else []
        if name in ("p", "div", "ac:layout", "ac:layout-section", "ac:layout-cell", "ac:rich-text-body"):
            return self.blocks(element)
        if name in ("ul", "ol"):
            lines = self.list_lines(element, name == "ol", "")
            return ["\n".join(lines)] if lines else []
        if name == "ac:task-list":
            lines = self.task_lines(element, "")
            return ["\n".join(lines)] if lines else []
        if name == "table":
            rendered = self.table(element)
            return [rendered] if rendered else []
        if name == "pre":
            return [fence("".join(element.itertext()), "")]
        if name == "blockquote":
            return [quote(self.blocks(element))]
        if name == "hr":
            return ["---"]
        if name == "ac:structured-macro" or name == "ac:macro":
            return self.macro(element)
        if name in ("ac:image", "ac:placeholder", "ac:emoticon", "ri:attachment", "ac:parameter"):
            return []
        return None

    def macro(self, element: etree._Element) -> list[str]:
        macro = _ac(element, "name").lower()
        if macro in _CODE_MACROS:
            body = next((c for c in element if _local(c) == "ac:plain-text-body"), None)
            code = "".join(body.itertext()) if body is not None else ""
            language = self.parameter(element, "language") if macro == "code" else ""
            return [fence(code, language)] if code.strip() else []
        body = next((c for c in element if _local(c) == "ac:rich-text-body"), None)
        if macro in _QUOTE_MACROS and body is not None:
            inner = self.blocks(body)
            title = self.parameter(element, "title")
            if title:
                inner.insert(0, f"**{title}**")
            return [quote(inner)] if inner else []
        if macro in _BODY_MACROS and body is not None:
            inner = self.blocks(body)
            title = self.parameter(element, "title")
            return ([f"**{title}**"] if title and inner else []) + inner
        return []  # unknown macros (toc, jira, attachments, gallery...) carry no text worth indexing

    @staticmethod
    def parameter(element: etree._Element, name: str) -> str:
        for child in element:
            if _local(child) == "ac:parameter" and _ac(child, "name") == name:
                return _squash("".join(child.itertext()))
        return ""

    def list_lines(self, element: etree._Element, ordered: bool, indent: str) -> list[str]:
        """Markdown list lines; nested lists are indented to their parent item's text (CommonMark)."""
        lines: list[str] = []
        number = 0
        for item in element:
            if _local(item) != "li":
                continue
            number += 1
            marker = f"{number}." if ordered else "-"
            inner = indent + " " * (len(marker) + 1)
            text_parts: list[str] = [item.text or ""]
            nested: list[str] = []
            for child in item:
                name = _local(child)
                if name in ("ul", "ol"):
                    nested.extend(self.list_lines(child, name == "ol", inner))
                elif name == "ac:task-list":
                    nested.extend(self.task_lines(child, inner))
                elif name in _BLOCK_TAGS or name == "ac:structured-macro":
                    rendered = self.block(child, name) or []
                    text_parts.append(" " + " ".join(r.replace("\n", " ") for r in rendered) + " ")
                else:
                    text_parts.append(self.inline(child))
                text_parts.append(child.tail or "")
            lines.append(f"{indent}{marker} {_squash(''.join(text_parts))}".rstrip())
            lines.extend(nested)
        return lines

    def task_lines(self, element: etree._Element, indent: str) -> list[str]:
        lines: list[str] = []
        for task in element:
            if _local(task) != "ac:task":
                continue
            status = next((c for c in task if _local(c) == "ac:task-status"), None)
            done = status is not None and "".join(status.itertext()).strip() == "complete"
            body = next((c for c in task if _local(c) == "ac:task-body"), None)
            text = _squash(self.inline_children(body)) if body is not None else ""
            lines.append(f"{indent}- [{'x' if done else ' '}] {text}".rstrip())
        return lines

    def table(self, element: etree._Element) -> str:
        rows: list[list[str]] = []
        header = False
        for row in element.iter(tag="tr"):
            cells = [c for c in row if _local(c) in ("td", "th")]
            if not rows:
                header = bool(cells) and all(_local(c) == "th" for c in cells)
            rows.append([_squash(" ".join(self.blocks(c))) for c in cells])
        return table(rows, header=header)

    def inline_children(self, element: etree._Element) -> str:
        parts = [element.text or ""]
        for child in element:
            parts.append(self.inline(child))
            parts.append(child.tail or "")
        return "".join(parts)

    def inline(self, element: etree._Element) -> str:
        """Inline markdown of one element (its tail not included)."""
        name = _local(element)
        if name == "br":
            return "\n"
        if name in ("ac:image", "ac:emoticon", "ac:placeholder", "ri:attachment", "ac:parameter"):
            return ""
        if name in ("ac:structured-macro", "ac:macro"):
            blocks = self.macro(element)
            return " ".join(b.replace("\n", " ") for b in blocks)
        if name == "ac:link":
            body = next((c for c in element if _local(c) in ("ac:plain-text-link-body", "ac:link-body")), None)
            if body is not None:
                return "".join(body.itertext())
            page = next((c for c in element if _local(c) == "ri:page"), None)
            return page.get(f"{{{_RI}}}content-title", "") if page is not None else ""
        if name == "time":
            return element.get("datetime", "")
        text = self.inline_children(element)
        if not text.strip():
            return text
        if name in ("strong", "b"):
            return _wrap(text, "**")
        if name in ("em", "i"):
            return _wrap(text, "*")
        if name in ("code", "kbd"):
            return f"`{text.strip()}`"
        if name in ("s", "del", "strike"):
            return _wrap(text, "~~")
        if name == "a":
            href = element.get("href", "")
            return f"[{_squash(text)}]({href})" if href and not href.startswith("javascript:") else text
        return text


def _wrap(text: str, mark: str) -> str:
    """`**bold**` keeping the spaces outside the marks (markdown ignores `** bold **`)."""
    stripped = text.strip()
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return f"{lead}{mark}{stripped}{mark}{trail}"


def _squash(text: str) -> str:
    """Runs of whitespace become one space; explicit line breaks (<br/>) are kept."""
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)
