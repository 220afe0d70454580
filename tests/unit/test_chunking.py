"""Chunking (README "Collections"): budget counted with the model's tokenizer, breadcrumbs, tables, code, other
scripts."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from kbsync.chunking import Chunker
from kbsync.embedding import TokenCounter
from kbsync.markdown import parse_blocks

SHARED = Path(__file__).resolve().parents[3] / "shared"


@pytest.fixture(scope="module")
def counter(model_dir: Path) -> TokenCounter:
    return TokenCounter(model_dir)


def test_counter_is_not_truncated_at_128_or_256(counter: TokenCounter) -> None:
    """The shipped tokenizer.json truncates to 128: a long text must count its real length."""
    text = " ".join(["knowledge"] * 400)
    assert counter.count(text) == 402  # 400 words + [CLS] + [SEP]


@pytest.mark.parametrize("budget", [64, 128, 192, 256])
def test_every_corpus_chunk_fits_the_budget(counter: TokenCounter, budget: int) -> None:
    """If broken, text past 256 word pieces would be silently dropped from the embedding."""
    chunker = Chunker(counter, budget)
    articles = json.loads((SHARED / "corpus" / "kanboard-docs.json").read_text())["articles"][::3]
    for article in articles:
        for chunk in chunker.split(f"t:{article['id']}", article["title"], article["content"]):
            assert chunk.tokens == counter.count(chunk.text) <= budget, chunk.text[:200]


def test_breadcrumb_prefix_and_heading(counter: TokenCounter) -> None:
    body = (
        "# Reset your password\n\nIntro text.\n\n## Email\n\n"
        + "Email words here. " * 60
        + "\n\n### Link expired\n\n"
        + ("The link is valid for one hour. " * 30)
    )
    chunks = Chunker(counter, 128).split("d", "Reset your password", body)
    assert chunks[0].text.startswith("Reset your password\n\n")
    assert "# Reset your password" not in chunks[0].text  # the body's H1 repeats the title
    expired = [c for c in chunks if c.heading == "Email > Link expired"]
    assert expired and all(c.text.startswith("Reset your password > Email > Link expired\n\n") for c in expired)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_small_sections_are_packed_together(counter: TokenCounter) -> None:
    body = "\n\n".join(f"## Question {i}\n\nShort answer {i}." for i in range(6))
    chunks = Chunker(counter, 192).split("d", "FAQ", body)
    assert len(chunks) == 1
    assert "## Question 3" in chunks[0].text and "Short answer 5." in chunks[0].text


def test_table_kept_whole_when_it_fits_and_split_with_its_header_when_not(counter: TokenCounter) -> None:
    header = "| Plan | Agents | Price |\n|---|---|---|"
    small = header + "\n" + "\n".join(f"| P{i} | {i} | {i * 10} |" for i in range(5))
    chunks = Chunker(counter, 192).split("d", "Plans", f"Intro.\n\n{small}\n\nOutro.")
    assert len(chunks) == 1 and small in chunks[0].text

    big = header + "\n" + "\n".join(f"| Plan number {i} | {i} agents | {i * 10} dollars |" for i in range(60))
    chunks = Chunker(counter, 128).split("d", "Plans", big)
    assert len(chunks) > 1
    for chunk in chunks:
        assert "| Plan | Agents | Price |\n|---|---|---|" in chunk.text
        assert chunk.tokens <= 128


def test_code_block_kept_whole_or_split_inside_fences(counter: TokenCounter) -> None:
    code = "```bash\n" + "\n".join(f"echo step {i}" for i in range(5)) + "\n```"
    chunks = Chunker(counter, 192).split("d", "Install", f"Run this:\n\n{code}")
    assert code in chunks[0].text

    long_code = "```python\n" + "\n".join(f"value_{i} = compute({i}, option='x')" for i in range(80)) + "\n```"
    chunks = Chunker(counter, 128).split("d", "Script", long_code)
    assert len(chunks) > 1
    for chunk in chunks:
        body = chunk.text.split("\n\n", 1)[1]
        assert body.startswith("```python\n") and body.endswith("```")


def test_long_paragraph_splits_on_sentences(counter: TokenCounter) -> None:
    paragraph = " ".join(f"Sentence number {i} explains one more detail of the setup." for i in range(60))
    chunks = Chunker(counter, 96).split("d", "Setup", paragraph)
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk.text.rstrip().endswith("setup.")


def test_non_english_text(counter: TokenCounter) -> None:
    russian = "## Установка\n\n" + "Чтобы установить приложение, откройте настройки и выберите раздел. " * 40
    chunks = Chunker(counter, 128).split("d", "Руководство", russian)
    assert len(chunks) > 1
    assert all(c.tokens <= 128 and c.text.startswith("Руководство > Установка") for c in chunks)
    chinese = "这是一个很长的句子，用来测试中文文本的分块。" * 60
    assert all(c.tokens <= 128 for c in Chunker(counter, 128).split("d", "中文", chinese))


def test_same_text_same_id_and_repeats_numbered(counter: TokenCounter) -> None:
    chunker = Chunker(counter, 64)
    body = "## A\n\n" + "Same words again. " * 40 + "\n\n## A\n\n" + "Same words again. " * 40
    first = chunker.split("files:a.md", "T", body)
    assert [c.id for c in first] == [c.id for c in chunker.split("files:a.md", "T", body)]
    assert len({c.id for c in first}) == len(first)
    assert any(c.id.endswith("-2") for c in first)
    assert all(c.id.startswith("files:a.md#") for c in first)


def test_empty_body_yields_the_title(counter: TokenCounter) -> None:
    chunks = Chunker(counter, 128).split("d", "Only a title", "")
    assert [c.text for c in chunks] == ["Only a title"]


def test_chatwoot_markdown_is_normalised() -> None:
    markdown = (
        "<!--cw-colwidths:120,80-->\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "Click ![Reset dialog](https://chat.acme.com/blob/reset.png?cw_image_width=480px) then "
        '[open settings](https://chat.acme.com/app/settings "Settings") and see ^1^.\n\n'
        "https://www.youtube.com/watch?v=abc123XYZ\n\n"
        '<div class="note">raw html block</div>\n\n'
        "Keep `<body>` in code and <b>bold</b> text.\n"
    )
    texts = [b.text for b in parse_blocks(markdown)]
    joined = "\n".join(texts)
    assert "cw-colwidths" not in joined and "cw_image_width" not in joined and "https://chat.acme.com" not in joined
    assert "Click Reset dialog then open settings and see 1." in texts
    assert "[video: https://www.youtube.com/watch?v=abc123XYZ]" in texts
    assert "raw html block" not in joined
    assert "Keep `<body>` in code and bold text." in texts
    assert "| a | b |" in joined


def prose_section(paragraphs: int = 8, edit: str = "") -> str:
    body = []
    for p in range(paragraphs):
        text = " ".join(f"Paragraph {p} sentence {s} tells agents how routing rule {p}.{s} works." for s in range(4))
        body.append(edit + " " + text if edit and p == paragraphs // 2 else text)
    return "## Routing\n\n" + "\n\n".join(body) + "\n\n## Other\n\n" + "Another section entirely. " * 30


@pytest.mark.parametrize("budget", [64, 128, 192, 256])
def test_overlapping_chunks_fit_the_budget(counter: TokenCounter, budget: int) -> None:
    chunker = Chunker(counter, budget, overlap=0.2)
    articles = json.loads((SHARED / "corpus" / "chatwoot-docs.json").read_text())["articles"][::4]
    for article in articles:
        for chunk in chunker.split(f"t:{article['id']}", article["title"], article["content"]):
            assert chunk.tokens == counter.count(chunk.text) <= budget, chunk.text[:200]


def test_a_chunk_repeats_the_last_sentences_of_the_previous_one_in_its_section(counter: TokenCounter) -> None:
    plain = Chunker(counter, 128).split("d", "Guide", prose_section())
    chunks = Chunker(counter, 128, overlap=0.2).split("d", "Guide", prose_section())
    routing = [c for c in chunks if c.heading == "Routing"]
    assert len(routing) >= 3
    reserve = round(0.2 * (128 - 2 - counter.count_many(["Guide > Routing"])[0]))
    for before, after in pairwise(routing):
        body = after.text.split("\n\n", 2)
        tail = body[1]
        assert before.text.endswith(tail) and counter.count_many([tail])[0] <= reserve
        assert tail.endswith(".") and tail[0].isupper()  # whole sentences
    other = [c for c in chunks if c.heading == "Other"]
    assert other and not any(r.text.split("\n\n")[-1] in other[0].text for r in routing)  # not across sections
    assert len(chunks) >= len(plain)


def test_a_paragraph_edit_changes_at_most_three_chunks(counter: TokenCounter) -> None:
    """The README's promise: a one-paragraph edit re-embeds at most 3 chunks of its article (chunk ids come from
    their texts, so a changed id is a re-embedded chunk)."""
    chunker = Chunker(counter, 128, overlap=0.2)
    before = {c.id for c in chunker.split("d", "Guide", prose_section(12))}
    for edit in ("Supervisors can now reassign conversations in bulk.", "Note:", "A much longer note. " * 5):
        after = {c.id for c in chunker.split("d", "Guide", prose_section(12, edit))}
        assert len(before) >= 8 and 1 <= len(after - before) <= 3, edit


def test_a_split_table_with_a_padded_rule_row_keeps_every_row_once(counter: TokenCounter) -> None:
    """The Helm chart page's tables pad their rule row to 180 dashes, one word piece each: the header repeated
    into every piece left room for no row, so one table became 113 identical header-only chunks (identical vectors
    that no query with k <= 100 returns all of) and its rows were scattered in 8-word-piece fragments."""
    names = ["Name".ljust(40), "Type".ljust(70), "Default Value".ljust(60)]
    rule = "| " + " | ".join("-" * len(n) for n in names) + " |"
    rows = [f'| `env.VARIABLE_{i}` | Sets option number {i} of the install. | `"value-{i}"` |' for i in range(40)]
    table = "\n".join(["| " + " | ".join(names) + " |", rule, *rows])
    chunks = Chunker(counter, 192).split("d", "Deploy with Helm", f"## Environment Variables\n\n{table}")
    texts = [c.text for c in chunks]
    assert len(set(texts)) == len(texts), "identical chunks"
    for i in range(40):
        assert sum(f"`env.VARIABLE_{i}` | Sets option number {i} of the install." in t for t in texts) == 1, i
    assert all(c.tokens <= 192 for c in chunks)
    assert all("| Name" in t and "| --- | --- | --- |" in t for t in texts)
