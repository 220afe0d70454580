"""Markdown writing shared by the converters of API sources (Confluence storage, Notion blocks): fenced code,
quotes, tables. What they read differs; what they write is one markdown."""

from __future__ import annotations

__all__ = ["fence", "quote", "table"]


def fence(code: str, language: str) -> str:
    """A fenced code block, its fence longer than any run of backticks inside."""
    code = code.strip("\n")
    marks = "```"
    while marks in code:
        marks += "`"
    return f"{marks}{language}\n{code}\n{marks}"


def quote(blocks: list[str]) -> str:
    """Markdown blocks as one block quote (blank quoted lines between them)."""
    return "\n>\n".join("\n".join(f"> {line}" if line else ">" for line in b.split("\n")) for b in blocks if b)


def table(rows: list[list[str]], *, header: bool) -> str:
    """A pipe table of cell texts (flattened to one line, pipes escaped); without `header` the first row is data
    under an empty header (markdown tables need one). "" for no rows."""
    rows = [[" ".join(cell.split()).replace("|", "\\|") for cell in row] for row in rows if row]
    if not rows:
        return ""
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]
    head, body = (rows[0], rows[1:]) if header else ([""] * width, rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * width]
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return "\n".join(lines)
