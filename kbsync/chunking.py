"""Heading-aware chunking with a word-piece budget counted by the model's own tokenizer.

Each chunk is `Title > Section > Subsection`, a blank line, then section text, and holds at most `max_tokens`
word pieces ([CLS] and [SEP] included), so nothing is silently cut at the model's 256. Small sections are packed
together (a packed section keeps its heading as a markdown heading line); long ones are split on block, then list
item or line, then sentence boundaries; code blocks and tables stay whole when they fit and are split by lines
(fences and table header repeated) when they do not.

The BERT pre-tokenizer splits on whitespace, so the word pieces of texts joined by whitespace add up: pieces are
counted once and summed, and every finished chunk is counted again as a check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kbsync.embedding import TokenCounter
from kbsync.markdown import Block, parse_blocks

__all__ = ["CHUNKER_VERSION", "MAX_CHUNK_BYTES", "Chunk", "Chunker", "chunk_id", "doc_id_of", "split_bytes"]

# Bump when the chunk texts produced for the same input change, so stored documents are re-chunked.
CHUNKER_VERSION = 3  # 2: overlap within a section; 3: a split table repeats a compact header
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]
# The tokenizer counts a word over 100 characters as one [UNK], so a token budget alone lets a 20,000-character
# unbroken string through whole; Chroma Cloud refuses documents of 16 KB and more (kbsync.store). 256 word pieces of
# real text stay far below this, so it only ever cuts such strings.
MAX_CHUNK_BYTES = 8 * 1024
_WORD_OR_SPACE = re.compile(r"\S+|\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d{1,9}[.)])\s")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document: `text` is exactly what is embedded and stored."""

    id: str
    text: str
    heading: str
    index: int
    tokens: int


@dataclass(slots=True)
class _Piece:
    text: str
    tokens: int


@dataclass(slots=True)
class _Section:
    path: tuple[str, ...]
    level: int
    blocks: list[Block]


def chunk_id(doc_id: str, text: str, seen: dict[str, int]) -> str:
    """`<doc_id>#<16 hex of sha256(text)>`, with `-2`, `-3` for repeats of one text inside a document."""
    base = f"{doc_id}#{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


def doc_id_of(chunk_id: str) -> str:
    """The document id a chunk id starts with (the inverse of `chunk_id`: the hash part holds no `#`)."""
    return chunk_id.rsplit("#", 1)[0]


class Chunker:
    """Splits one document's markdown into chunks of at most `max_tokens` word pieces."""

    def __init__(self, counter: TokenCounter, max_tokens: int, overlap: float = 0.0) -> None:
        if not 32 <= max_tokens <= 256:
            raise ValueError(f"max_tokens must be within 32..256, not {max_tokens}")
        if not 0.0 <= overlap <= 0.5:
            raise ValueError(f"overlap must be within 0..0.5, not {overlap}")
        self.counter = counter
        self.max_tokens = max_tokens
        self.overlap = overlap

    @property
    def fingerprint(self) -> str:
        """Identifies the chunk texts this chunker produces; part of every document hash."""
        return f"chunker-v{CHUNKER_VERSION}:{self.max_tokens}:{self.overlap:g}"

    def split(self, doc_id: str, title: str, markdown: str) -> list[Chunk]:
        """Chunk a document. A document with no body text yields one chunk holding its title."""
        title = " ".join(title.split())
        prefixes: dict[tuple[str, ...], tuple[str, int]] = {}
        bodies = list(self._pack(title, _sections(title, parse_blocks(markdown)), prefixes))
        if not bodies and title:
            bodies.append(((), ""))
        texts: list[tuple[tuple[str, ...], str]] = []
        for path, body in bodies:
            prefix = self._prefix(title, path, prefixes)[0]
            texts.append((path, f"{prefix}\n\n{body}" if body else prefix))
        counts = [n + _SPECIAL_TOKENS for n in self.counter.count_many([text for _, text in texts])]
        chunks: list[Chunk] = []
        seen: dict[str, int] = {}
        for (path, text), count in zip(texts, counts):
            prefix = self._prefix(title, path, prefixes)[0]
            fitted = [(text, count)] if count <= self.max_tokens else self._refit(prefix, text)
            fitted = [fit for piece, tokens in fitted for fit in self._cap_bytes(prefix, piece, tokens)]
            for piece, tokens in fitted:
                chunks.append(Chunk(chunk_id(doc_id, piece, seen), piece, " > ".join(path), len(chunks), tokens))
        return chunks

    # -- packing -------------------------------------------------------------------------------------------

    def _prefix(
        self, title: str, path: tuple[str, ...], cache: dict[tuple[str, ...], tuple[str, int]]
    ) -> tuple[str, int]:
        """The breadcrumb of a section and its word pieces (without [CLS]/[SEP]), cached per document."""
        if path not in cache:
            prefix = " > ".join(part for part in (title, *path) if part)
            # A very long breadcrumb would leave no room for text: keep it within a third of the budget.
            limit = self.max_tokens // 3
            tokens = self.counter.count_many([prefix])[0]
            if tokens > limit:
                prefix = self.counter.split_at_tokens(prefix, limit)[0]
                tokens = self.counter.count_many([prefix])[0]
            cache[path] = (prefix, tokens)
        return cache[path]

    def _pack(
        self, title: str, sections: list[_Section], prefixes: dict[tuple[str, ...], tuple[str, int]]
    ) -> Iterator[tuple[tuple[str, ...], str]]:
        current_path: tuple[str, ...] | None = None
        parts: list[str] = []
        used = 0
        budget = 0
        # One tokenizer call for every block and heading line of the document (per-call overhead dominates).
        heading_lines = [f"{'#' * max(s.level, 2)} {s.path[-1]}" if s.path else "" for s in sections]
        counts = iter(self.counter.count_many([b.text for s in sections for b in s.blocks] + heading_lines))
        block_counts = [[next(counts) for _ in s.blocks] for s in sections]
        heading_counts = list(counts)
        for section, blocks_tokens, heading_line, heading_tokens in zip(
            sections, block_counts, heading_lines, heading_counts
        ):
            section_budget = self.max_tokens - _SPECIAL_TOKENS - self._prefix(title, section.path, prefixes)[1]
            pieces = [
                p
                for block, tokens in zip(section.blocks, blocks_tokens)
                for p in self._pieces(block, tokens, section_budget)
            ]
            if not pieces:
                continue
            # A whole small section joins the open chunk (under its own heading line) when the chunk is
            # less than half full and both fit: short FAQ-style sections make one chunk, not ten tiny ones.
            whole = sum(p.tokens for p in pieces) + heading_tokens
            if current_path is not None and used < budget // 2 and used + whole <= budget:
                parts.append(heading_line)
                parts.extend(p.text for p in pieces)
                used += whole
                continue
            if current_path is not None:
                yield current_path, "\n\n".join(parts)
            current_path, parts, used, budget = section.path, [], 0, section_budget
            # Later chunks of a section start with the tail of the one before. Room for it is kept whether or not a
            # tail is found, so which pieces share a chunk never depends on a tail: an edited piece changes its own
            # chunk and, through the tail, the next one, not the packing of the rest of the section.
            reserve = round(self.overlap * section_budget)
            for piece in pieces:
                if parts and used + piece.tokens > budget:
                    yield current_path, "\n\n".join(parts)
                    own = [] if piece.tokens > section_budget - reserve else self._tail(parts[-1], reserve)
                    parts, used, budget = own, 0, section_budget - reserve
                parts.append(piece.text)
                used += piece.tokens
        if current_path is not None and parts:
            yield current_path, "\n\n".join(parts)

    def _tail(self, text: str, limit: int) -> list[str]:
        """The last whole sentences of a prose piece within `limit` word pieces (none of code or a table)."""
        if limit <= 0 or text.lstrip().startswith(("```", "~~~", "|", "#")):
            return []
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
        kept: list[str] = []
        used = 0
        for sentence, tokens in zip(reversed(sentences), reversed(self.counter.count_many(sentences))):
            if used + tokens > limit:
                break
            kept.insert(0, sentence)
            used += tokens
        return [" ".join(kept)] if kept else []

    def _refit(self, prefix: str, text: str) -> list[tuple[str, int]]:
        """Split a chunk that the summed counts let past the budget (the safety net: real counts decide)."""
        body = text[len(prefix) :].strip()
        room = self.max_tokens - _SPECIAL_TOKENS - self.counter.count_many([prefix])[0]
        pieces = [f"{prefix}\n\n{part}" for part in self.counter.split_at_tokens(body, max(room, 8))]
        return [(piece, self.counter.count(piece)) for piece in pieces]

    def _cap_bytes(self, prefix: str, text: str, tokens: int) -> list[tuple[str, int]]:
        """`text` as it is when it fits MAX_CHUNK_BYTES, else its body cut into pieces that do (each under the
        breadcrumb, itself cut to a quarter of the limit), with their real counts."""
        if len(text.encode("utf-8")) <= MAX_CHUNK_BYTES:
            return [(text, tokens)]
        body = text[len(prefix) :].strip() if text.startswith(prefix) else text
        head = split_bytes(prefix, MAX_CHUNK_BYTES // 4)[0] if prefix else ""
        if not body:
            return [(head, self.counter.count(head))]
        room = MAX_CHUNK_BYTES - len(head.encode("utf-8")) - 2
        pieces = [f"{head}\n\n{part}" if head else part for part in split_bytes(body, room)]
        return [(piece, self.counter.count(piece)) for piece in pieces]

    # -- splitting one block ---------------------------------------------------------------------------------

    def _pieces(self, block: Block, tokens: int, budget: int) -> list[_Piece]:
        if tokens <= budget:
            return [_Piece(block.text, tokens)]
        if block.kind == "code":
            return self._split_fenced(block.text, budget)
        if block.kind == "table":
            return self._split_table(block.text, budget)
        if block.kind == "list":
            return self._group(_list_items(block.text), budget, "\n")
        return self._group(_SENTENCE_END.split(block.text), budget, " ")

    def _group(self, units: list[str], budget: int, joiner: str, header: str = "", footer: str = "") -> list[_Piece]:
        """Greedily pack units into pieces within `budget`; a unit too long on its own is split further."""
        fixed = self.counter.count_many([f"{header} {footer}"])[0] if (header or footer) else 0
        room = max(budget - fixed, 8)
        counts = self.counter.count_many(units)
        pieces: list[_Piece] = []
        parts: list[str] = []
        used = 0

        def flush() -> None:
            nonlocal parts, used
            if parts:
                text = joiner.join(parts)
                wrapped = "\n".join(x for x in (header, text, footer) if x)
                pieces.append(_Piece(wrapped, used + fixed))
            parts, used = [], 0

        for unit, count in zip(units, counts):
            if count > room:
                flush()
                sentences = _SENTENCE_END.split(unit)
                subunits = sentences if len(sentences) > 1 else self.counter.split_at_tokens(unit, room)
                for sub in (
                    self._group(subunits, room, " ")
                    if len(sentences) > 1
                    else [_Piece(s, self.counter.count_many([s])[0]) for s in subunits]
                ):
                    parts, used = [sub.text], sub.tokens
                    flush()
                continue
            if parts and used + count > room:
                flush()
            parts.append(unit)
            used += count
        flush()
        return pieces

    def _split_fenced(self, code: str, budget: int) -> list[_Piece]:
        lines = code.split("\n")
        fence_open, fence_close = "", ""
        if len(lines) >= 2 and lines[0].lstrip().startswith(("```", "~~~")):
            fence_open = lines[0]
            fence_close = lines[-1] if lines[-1].strip().startswith(("```", "~~~")) else fence_open.strip()[:3]
            lines = lines[1:-1] if lines[-1].strip().startswith(("```", "~~~")) else lines[1:]
        return self._group([line for line in lines if line.strip()], budget, "\n", fence_open, fence_close)

    def _split_table(self, table: str, budget: int) -> list[_Piece]:
        """Rows grouped under the table's header. Each dash of the rule row is a word piece of its own, so a padded
        rule (`| ------...` 180 dashes wide in the Helm docs) is repeated as `---` per cell; a header that would
        still take over half the budget is not repeated (it left room for no row: 113 identical chunks)."""
        lines = table.split("\n")
        if len(lines) > 1 and _is_table_rule(lines[1]):
            lines[1] = re.sub(r"-{4,}", "---", lines[1])
        header = "\n".join(lines[:2])
        if self.counter.count(header) > budget // 2:
            return self._group(lines, budget, "\n")
        return self._group(lines[2:], budget, "\n", header)


def _is_table_rule(line: str) -> bool:
    """`| --- | :-: |`, the row under a table's header (checked cell by cell: linear, unlike a nested pattern)."""
    cells = [cell.strip().strip(":") for cell in line.strip().strip("|").split("|")]
    return all(cell and not cell.strip("-") for cell in cells)


def _list_items(text: str) -> list[str]:
    items: list[str] = []
    for line in text.split("\n"):
        if _LIST_ITEM.match(line) or not items:
            items.append(line)
        else:
            items[-1] += "\n" + line
    return items


def _sections(title: str, blocks: list[Block]) -> list[_Section]:
    sections: list[_Section] = [_Section((), 1, [])]
    stack: list[tuple[int, str]] = []
    for position, block in enumerate(blocks):
        if block.kind != "heading":
            sections[-1].blocks.append(block)
            continue
        if position == 0 and block.level == 1 and block.text.casefold() == title.casefold():
            continue  # the body repeats the title as its first H1
        while stack and stack[-1][0] >= block.level:
            stack.pop()
        stack.append((block.level, " ".join(block.text.split())))
        sections.append(_Section(tuple(text for _, text in stack), block.level, []))
    return sections


def split_bytes(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes, cut at whitespace where it can be and inside a word (on a
    character boundary) where a word alone is longer. Linear in the text's length."""
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for match in _WORD_OR_SPACE.finditer(text):
        unit = match.group(0)
        size = len(unit.encode("utf-8"))
        if used + size > limit and current:
            pieces.append("".join(current).strip())
            current, used = [], 0
        if size > limit:
            encoded = unit.encode("utf-8")
            start = 0
            while start < len(encoded):
                end = min(start + limit, len(encoded))
                while end < len(encoded) and end > start + 1 and (encoded[end] & 0xC0) == 0x80:
                    end -= 1  # never between the bytes of one character
                pieces.append(encoded[start:end].decode("utf-8"))
                start = end
            continue
        if current or not unit.isspace():
            current.append(unit)
            used += size
    if current:
        pieces.append("".join(current).strip())
    return [piece for piece in pieces if piece]
