"""Markdown normalisation: Chatwoot article markdown (and HTML converted to markdown) into clean blocks.

What a reader of the public page sees is what gets embedded (docs/chatwoot.md §6): raw HTML is not
rendered there, `<!--cw-colwidths-->` comments are layout, image widths are CSS, a bare embed URL on its own line is
a video player. Link and image URLs are dropped from the text (they cost word pieces and carry no meaning for the
model); the document's own URL travels in the chunk metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt

__all__ = ["Block", "clean_inline", "first_h1", "html_to_markdown", "parse_blocks"]

BlockKind = Literal["heading", "paragraph", "list", "table", "code", "quote", "other"]


@dataclass(frozen=True, slots=True)
class Block:
    """One top-level markdown block; `level` is set for headings (1-6)."""

    kind: BlockKind
    text: str
    level: int = 0


# Only block structure is needed: inline parsing (the costly half) is switched off.
_PARSER = MarkdownIt("commonmark").enable("table").disable("inline")

_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_SUPERSCRIPT = re.compile(r"\^([^\s^][^^]*?)\^")
_EMBED_HOSTS = re.compile(
    r"^(https?://)?(www\.)?(youtube\.com/watch|youtu\.be/|(www\.)?loom\.com/share|vimeo\.com/|player\.vimeo\.com/"
    r"|app\.arcade\.software/|demo\.arcade\.software/|[\w.-]*wistia\.(com|net)/|iframe\.mediadelivery\.net/"
    r"|video\.bunnycdn\.com/|codepen\.io/|app\.guidejar\.com/|gist\.github\.com/)",
    re.IGNORECASE,
)
_BARE_URL_LINE = re.compile(r"^\s*<?(https?://\S+?)>?\s*$")


def _embed_marker(url: str) -> str | None:
    if _EMBED_HOSTS.match(url) or url.lower().split("?")[0].endswith(".mp4"):
        return f"[video: {url}]"
    return None


_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def clean_inline(text: str) -> str:
    """Normalise the inline markup of a non-code block: images to alt text, links to their text, no HTML.

    Inline code spans are kept as written (`<body>` in backticks is text, not a tag).
    """
    parts = _CODE_SPAN.split(text)
    # re.split with two groups yields [text, ticks, code, text, ticks, code, ..., text].
    out: list[str] = []
    for index in range(0, len(parts), 3):
        out.append(_clean_markup(parts[index]))
        if index + 2 < len(parts):
            out.append(f"{parts[index + 1]}{parts[index + 2]}{parts[index + 1]}")
    # Images that were alone on a line leave empty lines or empty list items behind.
    lines = [line.rstrip() for line in "".join(out).splitlines()]
    return "\n".join(line for line in lines if line.strip() not in ("", "-", "*", "+")).strip()


def _clean_markup(text: str) -> str:
    text = _HTML_COMMENT.sub("", text)
    text = _IMAGE.sub(lambda m: m.group(1).strip(), text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    return _SUPERSCRIPT.sub(r"\1", text)


def _block_kind(token_type: str) -> BlockKind:
    return {
        "paragraph_open": "paragraph",
        "bullet_list_open": "list",
        "ordered_list_open": "list",
        "table_open": "table",
        "fence": "code",
        "code_block": "code",
        "blockquote_open": "quote",
    }.get(token_type, "other")  # type: ignore[return-value]


def parse_blocks(markdown: str) -> list[Block]:
    """Split markdown into normalised top-level blocks; raw HTML blocks and empty blocks are dropped."""
    markdown = markdown.replace("\r\n", "\n").replace("\r", "\n")
    lines = markdown.split("\n")
    tokens = _PARSER.parse(markdown)
    blocks: list[Block] = []
    for index, token in enumerate(tokens):
        if token.level != 0 or token.nesting == -1 or token.map is None:
            continue
        if token.type == "html_block":
            continue  # not rendered on Chatwoot's public page
        if token.type == "hr":
            continue
        source = "\n".join(lines[token.map[0] : token.map[1]]).strip("\n")
        if token.type == "heading_open":
            inline = tokens[index + 1].content if index + 1 < len(tokens) else ""
            text = clean_inline(inline)
            if text:
                blocks.append(Block("heading", text, int(token.tag[1])))
            continue
        kind = _block_kind(token.type)
        if kind == "code":
            blocks.append(Block("code", source))
            continue
        if kind == "paragraph":
            bare = _BARE_URL_LINE.match(source)
            marker = _embed_marker(bare.group(1)) if bare else None
            if marker:
                blocks.append(Block("paragraph", marker))
                continue
        text = clean_inline(source)
        if text:
            blocks.append(Block(kind, text))
    return blocks


# Help-center chrome that trafilatura's own boilerplate lists miss, pruned through its `prune_xpath` hook before
# extraction: feedback widgets ("Was this helpful?"), consent banners, in-page tables of contents (they repeat the
# headings), "edit this page" links, previous/next pagers, language switchers, skip links. An element that holds an
# h1 or h2 is never pruned: a page *about* cookies or feedback keeps its content. XPath 1.0 (no regex extension):
# tokens are matched in the lowercased id, class and aria-label.
_CHROME_TOKENS = (
    "feedback",
    "helpful",
    "article-vote",
    "article-votes",
    "page-rating",
    "reactions",
    "cookie",
    "consent",
    "gdpr",
    "table-of-contents",
    "toc-",
    "edit-this-page",
    "edit-page",
    "pagination-nav",
    "prev-next",
    "language-switcher",
    "lang-switcher",
    "locale-switcher",
    "skip-link",
    "skip-to-content",
)
_LOWER = "'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'"
_ATTRS = f"translate(concat(' ', @id, ' ', @class, ' ', @aria-label, ' '), {_LOWER})"
_NO_HEADING = "not(.//h1) and not(.//h2)"
_CHROME_XPATH = [
    "//*[self::div or self::section or self::aside or self::form or self::p or self::span or self::nav or self::ul]"
    f"[({' or '.join(f'contains({_ATTRS}, {token!r})' for token in _CHROME_TOKENS)}) and {_NO_HEADING}]",
    # a feedback question with no telling class: a short block that only asks whether the page helped
    "//*[self::p or self::div or self::section or self::span]"
    f"[contains(translate(normalize-space(.), {_LOWER}), 'helpful?') and string-length(normalize-space(.)) < 80"
    f" and {_NO_HEADING}]",
]


# An ATX H1 line. Linear: `[ \t]+` and `(.*)` cannot trade characters (`.*` runs to the line's end at once), so
# nothing backtracks; the closing `#`s are stripped in Python. (The old `^#\s+(.+?)\s*#*\s*$` was cubic on
# "# a", thousands of spaces, "b": one 2.4 KB file took 24 s.)
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.*)$", re.M)


def first_h1(markdown: str) -> str:
    """The text of the first non-empty ATX level-1 heading (`# Title`, closing `#`s dropped), or ""."""
    for match in _ATX_H1.finditer(markdown):
        title = match.group(1).strip()
        without_closing = title.rstrip("#")
        if without_closing != title and (not without_closing or without_closing[-1] in " \t"):
            title = without_closing.rstrip()  # CommonMark: a closing sequence follows a space
        if title:
            return title
    return ""


def html_to_markdown(html: str) -> tuple[str, str]:
    """Main content of an HTML page as markdown, and its title ("" when none), using trafilatura.

    trafilatura finds the main content (navigation, headers, footers, sidebars and most banners fall away) and
    writes headings, lists, tables and code blocks as markdown; `_CHROME_XPATH` prunes the help-center widgets
    its own lists miss.
    """
    import trafilatura

    markdown = trafilatura.extract(
        html,
        output_format="markdown",
        include_tables=True,
        include_links=False,
        include_images=False,
        include_formatting=True,
        favor_recall=True,
        prune_xpath=_CHROME_XPATH,
    )
    metadata = trafilatura.extract_metadata(html, extensive=False)  # the title; no deep search for dates
    title = (metadata.title if metadata and metadata.title else "") or ""
    return markdown or "", title
