"""The lexical leg (kbsync.lexical) on real SQLite FTS5 and a real PostgreSQL, and in the engine's write path."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa

from kbsync.lexical import LexicalIndex, query_terms
from kbsync.runs import ProjectKey
from kbsync.state import State
from tests.servers.postgres import PostgresServer, require_postgres

KEY = ProjectKey("acme", "alpha")

# Inputs a bot or a user may send; each must give results or an empty list, never an error.
BAD_QUERIES = [
    "the and of to is",
    "?!... --- ***",
    '"unbalanced quote',
    "NEAR(refund money)",
    "refund* -money title:refund",
    "AND OR NOT",
    "col:val ^start",
    "refund " * 1700,  # ~11 kB
    "возврат денег 退款 refund rückerstattung ☃ 🙂",
    "",
]


def meta(doc_id: str, locale: str = "en", title: str = "Refunds", heading: str = "") -> dict[str, object]:
    return {"doc_id": doc_id, "locale": locale, "title": title, "heading": heading}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    require_postgres()
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def lexical(request, tmp_path: Path) -> Iterator[LexicalIndex]:
    if request.param == "sqlite":
        state = State.open_sqlite(tmp_path)
    else:
        state = State.open_postgres(request.getfixturevalue("postgres").url)
        with state.engine.begin() as tx:
            tx.execute(sa.text("DROP TABLE IF EXISTS lexical_chunks CASCADE"))
    yield LexicalIndex(state)
    state.close()


def fill(lexical: LexicalIndex) -> None:
    lexical.write(
        "acme",
        "alpha",
        [
            ("r#1", "Refunds\n\nRefunds are paid back within five working days.", meta("refunds")),
            (
                "r#2",
                "Refunds > Cards\n\nCard payments are configured by the billing admin.",
                meta("refunds", heading="Cards"),
            ),
            ("t#1", "Teams\n\nAgents in a team share the team's conversations.", meta("teams", title="Teams")),
            (
                "f#1",
                "Remboursements\n\nLes remboursements sont versés sous cinq jours.",
                meta("rembours", "fr", "Remb"),
            ),
        ],
    )
    lexical.write("acme", "beta", [("b#1", "Refunds\n\nRefunds of project beta.", meta("beta"))])


def test_rows_are_found_ranked_and_scoped(lexical: LexicalIndex) -> None:
    fill(lexical)
    hits = lexical.search("acme", "alpha", "when are refunds paid", locale="en", limit=10)
    assert [h.chunk_id for h in hits][:1] == ["r#1"] and {h.doc_id for h in hits} == {"refunds"}
    assert all(a.score >= b.score for a, b in pairwise(hits))
    # English is stemmed: "configuring" finds "configured"; other projects and locales are not searched.
    assert [h.chunk_id for h in lexical.search("acme", "alpha", "configuring cards", locale="en", limit=5)] == ["r#2"]
    assert lexical.search("acme", "alpha", "beta", locale="en", limit=5) == []
    assert [h.chunk_id for h in lexical.search("acme", "alpha", "remboursements", locale="fr", limit=5)] == ["f#1"]
    assert lexical.search("acme", "alpha", "remboursements", locale="en", limit=5) == []
    found = lexical.search("acme", "alpha", "refunds remboursements", locale=None, limit=9)
    assert {h.chunk_id for h in found} == {"r#1", "r#2", "f#1"}  # r#2's title says Refunds
    assert lexical.count("acme", "alpha") == 4 and lexical.ids("acme", "beta") == {"b#1"}


def test_rewrites_replace_and_deletes_remove(lexical: LexicalIndex) -> None:
    fill(lexical)
    lexical.write("acme", "alpha", [("t#1", "Teams\n\nSquads replace teams.", meta("teams", title="Teams"))])
    assert lexical.count("acme", "alpha") == 4
    assert [h.chunk_id for h in lexical.search("acme", "alpha", "squads", locale="en", limit=5)] == ["t#1"]
    assert lexical.search("acme", "alpha", "share conversations", locale="en", limit=5) == []
    lexical.delete("acme", "alpha", ["t#1", "r#2", "not-there"])
    assert lexical.ids("acme", "alpha") == {"r#1", "f#1"}
    assert lexical.search("acme", "alpha", "squads", locale="en", limit=5) == []
    assert lexical.ids("acme", "beta") == {"b#1"}


@pytest.mark.parametrize("text", BAD_QUERIES, ids=range(len(BAD_QUERIES)))
def test_any_question_gives_results_or_nothing(lexical: LexicalIndex, text: str) -> None:
    fill(lexical)
    for locale in ("en", "fr", "ru", None):
        hits = lexical.search("acme", "alpha", text, locale=locale, limit=10)
        assert isinstance(hits, list) and len(hits) <= 10
    assert lexical.search("acme", "alpha", "the and of to is", locale="en", limit=10) == []


def test_question_terms_drop_stop_words_and_syntax() -> None:
    assert query_terms('How do I get a "refund" -- NEAR: money*?') == ["refund", "near", "money"]
    assert len(query_terms("word%d " * 500 % tuple(range(500)))) == 48


def test_postgres_configuration_follows_the_locale(postgres: PostgresServer) -> None:
    state = State.open_postgres(postgres.url)
    try:
        lexical = LexicalIndex(state)
        assert lexical.config_for("fr") == "french" and lexical.config_for("pt_BR") == "portuguese"
        assert lexical.config_for("en-US") == "english" and lexical.config_for("cs") == "simple"
        assert lexical.config_for("zz") == "simple"
    finally:
        state.close()


# -- the engine's write path (SQLite state) ---------------------------------------------------------------------


def article(title: str, *sections: str) -> str:
    body = "\n\n".join(f"## Part {n}\n\n{text}" for n, text in enumerate(sections))
    return f"---\ntitle: {title}\nlocale: en\n---\n\n{body}"


def long_sections(word: str) -> list[str]:
    return [
        " ".join(f"Part {i} sentence {j} explains {word} handling for agents." for j in range(12)) for i in range(5)
    ]


def chunk_ids(engine) -> set[str]:
    return {c for d in engine.store.index(KEY.collection).docs.values() for c in d.chunks}


def test_lexical_rows_follow_every_store_write_and_delete(engine, docs_dir: Path) -> None:
    (docs_dir / "a.md").write_text(article("Routing", *long_sections("routing")))
    (docs_dir / "b.md").write_text(article("Billing", "Invoices are sent monthly.", "Refunds take five days."))
    engine.reconcile(KEY)
    assert engine.lexical.ids("acme", "alpha") == chunk_ids(engine) and len(chunk_ids(engine)) >= 4
    sections = long_sections("routing")
    sections[2] = "Zanzibar escalation rules are set per inbox."
    (docs_dir / "a.md").write_text(article("Routing", *sections))
    engine.reconcile(KEY)
    assert engine.lexical.ids("acme", "alpha") == chunk_ids(engine)
    (hit,) = engine.lexical.search("acme", "alpha", "zanzibar", locale="en", limit=5)
    assert hit.doc_id == "files:a.md"
    (docs_dir / "b.md").unlink()
    engine.reconcile(KEY)
    assert engine.lexical.ids("acme", "alpha") == chunk_ids(engine)
    assert engine.lexical.search("acme", "alpha", "invoices", locale="en", limit=5) == []


def test_reconcile_repairs_a_lexical_index_that_disagrees_with_the_store(engine, docs_dir: Path) -> None:
    (docs_dir / "a.md").write_text(article("Routing", *long_sections("routing")))
    engine.reconcile(KEY)
    held = chunk_ids(engine)
    lost = sorted(held)[:2]
    engine.lexical.delete("acme", "alpha", lost)  # as if a write had failed after the store's
    engine.lexical.write("acme", "alpha", [("files:gone.md#1", "Gone\n\nA stale row.", meta("files:gone.md"))])
    report = engine.reconcile(KEY)
    assert report.outcome == "ok" and report.chunks_embedded == 0
    assert engine.lexical.ids("acme", "alpha") == held
    assert any("lexical index repaired: 2 rows added, 1 removed" in w for w in report.warnings)


def test_a_stale_lexical_row_never_becomes_a_result(engine, docs_dir: Path) -> None:
    (docs_dir / "a.md").write_text(article("Routing", *long_sections("routing")))
    engine.reconcile(KEY)
    engine.lexical.write("acme", "alpha", [("files:gone.md#1", "Gone\n\nQuokka quokka.", meta("files:gone.md"))])
    hits = engine.query(KEY, "quokka", k=5, lexical_weight=1.0)
    assert hits and all(h.metadata["doc_id"] == "files:a.md" for h in hits)


@pytest.mark.parametrize("text", BAD_QUERIES[:-1], ids=range(len(BAD_QUERIES) - 1))
def test_engine_query_survives_any_question(engine, docs_dir: Path, text: str) -> None:
    (docs_dir / "a.md").write_text(article("Routing", *long_sections("routing")))
    engine.reconcile(KEY)
    for group in ("doc", "chunk"):
        hits = engine.query(KEY, text, k=5, locale="en", group=group, expand=1)
        assert isinstance(hits, list)


def test_the_lexical_leg_finds_a_word_the_dense_leg_ranks_low(engine, docs_dir: Path) -> None:
    """A rare exact term (an error code) is what BM25 is good at and a small embedding model is not."""
    for n in range(12):
        (docs_dir / f"doc{n}.md").write_text(article(f"Inbox settings {n}", f"Inbox setting number {n} for agents."))
    (docs_dir / "code.md").write_text(article("Widget", "If the widget shows error XK-4471 clear the cache."))
    engine.reconcile(KEY)
    question = "inbox settings error xk 4471"
    dense = [h.metadata["doc_id"] for h in engine.query(KEY, question, k=13, lexical_weight=0.0)]
    hybrid = [h.metadata["doc_id"] for h in engine.query(KEY, question, k=13, lexical_weight=0.5)]
    assert hybrid.index("files:code.md") < dense.index("files:code.md")


def test_tables_of_the_first_layout_are_replaced(tmp_path: Path) -> None:
    """The first SQLite layout had no scope column: its tables are dropped and made again (reconcile refills)."""
    state = State.open_sqlite(tmp_path)
    try:
        with state.engine.begin() as tx:
            tx.execute(sa.text("CREATE TABLE lexical_chunks (id INTEGER PRIMARY KEY, chunk_id TEXT, title TEXT)"))
            tx.execute(
                sa.text(
                    "CREATE VIRTUAL TABLE lexical_stem USING fts5(title, heading, body, content='lexical_chunks', "
                    "content_rowid='id')"
                )
            )
        lexical = LexicalIndex(state)
        fill(lexical)
        assert [h.chunk_id for h in lexical.search("acme", "alpha", "configuring cards", locale="en", limit=5)] == [
            "r#2"
        ]
    finally:
        state.close()
