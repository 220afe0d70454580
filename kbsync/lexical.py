"""The lexical leg of the query path: full-text search over the chunk texts, inside the state database.

SQLite: a content table of chunk rows and two FTS5 indexes over it, kept in step by triggers (FTS5's external
content pattern): English chunks in one with Porter stemming (`porter unicode61 remove_diacritics 2`), every other
locale in one without (`unicode61 remove_diacritics 2`); ranked by `bm25`. PostgreSQL: one table with a `tsvector`
column (GIN index), built with the text search configuration of the chunk's locale (`simple` where PostgreSQL has
none); ranked by `ts_rank_cd`. Replicas share it through PostgreSQL like the rest of the state.

Rows are written and deleted in the engine's write path, right after the Chroma write or delete they mirror. A
question becomes an OR of its words (stop words dropped), each quoted, so no input is read as query syntax.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kbsync.retrieval import LexicalHit

if TYPE_CHECKING:
    from kbsync.records import ProjectIndex
    from kbsync.store import Store
from kbsync.errors import StateError
from kbsync.state import State, db_errors

__all__ = ["LexicalIndex", "LexicalRow", "converge_lexical", "query_terms"]

# Words per question at most: a 10 kB question makes a long OR, and the first words carry the question.
_MAX_TERMS = 48
# Ranking costs ~1.6 us per matching chunk at 3.5k chunks and ~2-3 us at 50k, and common words match a third of a
# collection (50k chunks: 15k matches, ~40 ms).
# SQLite searches the rarest words only, as many as keep the chunks they match under this (the others add little
# to BM25, whose weight of a word falls with the chunks holding it).
_MAX_POSTINGS = 1500
_WORD = re.compile(r"[^\W_]+")
# English function words: they match nearly every chunk and only cost time (BM25 gives them little weight anyway).
_STOP_WORDS = frozenset(
    """a about after all also am an and any are as at be been before being but by can could did do does doing done
    for from get got had has have having he her here hers him his how i if in into is it its just me more most my
    no nor not of off on once only or other our ours out over own same she should so some such than that the their
    theirs them then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours""".split()
)
# Locale language -> PostgreSQL text search configuration (those a stock PostgreSQL 15 ships).
_PG_CONFIGS = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "da": "danish", "nl": "dutch",
    "en": "english", "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "hi": "hindi",
    "hu": "hungarian", "id": "indonesian", "ga": "irish", "it": "italian", "lt": "lithuanian", "ne": "nepali",
    "no": "norwegian", "nb": "norwegian", "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian",
    "es": "spanish", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}  # fmt: skip

LexicalRow = tuple[str, str, Mapping[str, Any]]  # (chunk id, chunk text, chunk metadata)

_sqlite_meta = sa.MetaData()
_sqlite_rows = sa.Table(
    "lexical_chunks",
    _sqlite_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # the FTS5 rowid
    sa.Column("chunk_id", sa.String(128), nullable=False, unique=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("locale", sa.String(35), nullable=False),
    sa.Column("doc_id", sa.String(128), nullable=False),
    sa.Column("stemmed", sa.Integer, nullable=False),  # 1: in lexical_stem (English), 0: in lexical_plain
    sa.Column("scope", sa.Text, nullable=False),  # the project and project+locale tokens (see _scope)
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("heading", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("lexical_chunks_project", "tenant", "project"),
)
_FTS_TABLES = {
    1: ("lexical_stem", "porter unicode61 remove_diacritics 2"),
    0: ("lexical_plain", "unicode61 remove_diacritics 2"),
}

_pg_meta = sa.MetaData()
_pg_rows = sa.Table(
    "lexical_chunks",
    _pg_meta,
    sa.Column("chunk_id", sa.String(128), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("locale", sa.String(35), nullable=False),
    sa.Column("doc_id", sa.String(128), nullable=False),
    sa.Column("config", sa.String(32), nullable=False),  # the text search configuration the row was built with
    sa.Column("tsv", postgresql.TSVECTOR, nullable=False),
    sa.Index("lexical_chunks_project", "tenant", "project"),
    sa.Index("lexical_chunks_tsv", "tsv", postgresql_using="gin"),
)


def query_terms(text: str) -> list[str]:
    """The distinct words of a question, lower-cased, stop words dropped, at most 48."""
    terms: list[str] = []
    for word in _WORD.findall(text.casefold()):
        if word not in _STOP_WORDS and word not in terms:
            terms.append(word)
            if len(terms) == _MAX_TERMS:
                break
    return terms


def _language(locale: str) -> str:
    return re.split(r"[-_]", locale.strip().lower(), maxsplit=1)[0]


def _scope(kind: str, *parts: str) -> str:
    """One token naming a project (`p`) or a project's locale (`l`) in the FTS5 `scope` column, so the filter is
    part of the match instead of a lookup per matching row. Digits after a letter: no tokenizer or stemmer alters
    it, whatever the ids hold."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"{kind}{int(digest[:15], 16)}"


def _body(text: str) -> str:
    """The chunk text after its `Title > Heading` breadcrumb line (title and heading have their own columns)."""
    first, _, rest = text.partition("\n\n")
    return rest if rest else first


class LexicalIndex:
    """Full-text rows of every project's chunks in the state database (see the module docstring).

    `weights` are the (title, heading, body) column weights of the ranking; `max_postings` bounds the chunks a
    SQLite search ranks (see `_rarest`)."""

    def __init__(
        self,
        state: State,
        *,
        weights: tuple[float, float, float] = (2.0, 1.0, 1.0),
        max_postings: int = _MAX_POSTINGS,
    ) -> None:
        self._db = state.engine
        self._postgres = state.dialect == "postgresql"
        self.weights = weights
        self.max_postings = max_postings
        self._configs: set[str] = set()
        for attempt in range(3):
            try:
                with db_errors("create the lexical index"):
                    self._create()
                break
            except StateError:
                # Replicas starting together race to create the table; the loser sees it on its next try.
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _create(self) -> None:
        if self._postgres:
            _pg_meta.create_all(self._db)
            with self._db.connect() as conn:
                self._configs = {str(r[0]) for r in conn.execute(sa.text("SELECT cfgname FROM pg_ts_config"))}
        else:
            self._create_sqlite()

    def _create_sqlite(self) -> None:
        with self._db.begin() as tx:
            # Tables of the first layout (no scope column) are dropped; the next reconcile writes the rows again.
            old = tx.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'lexical_stem'")).scalar()
            if old is not None and "scope" not in old:
                for table, _ in _FTS_TABLES.values():
                    for trigger in ("insert", "delete"):
                        tx.execute(sa.text(f"DROP TRIGGER IF EXISTS {table}_{trigger}"))
                    tx.execute(sa.text(f"DROP TABLE IF EXISTS {table}_vocab"))
                    tx.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
                tx.execute(sa.text("DROP TABLE IF EXISTS lexical_chunks"))
        _sqlite_meta.create_all(self._db)
        with self._db.begin() as tx:
            for stemmed, (table, tokenizer) in _FTS_TABLES.items():
                tx.execute(
                    sa.text(
                        f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5(scope, title, heading, body, "
                        f"content='lexical_chunks', content_rowid='id', tokenize='{tokenizer}')"
                    )
                )
                tx.execute(sa.text(f"CREATE VIRTUAL TABLE IF NOT EXISTS {table}_vocab USING fts5vocab({table}, 'row')"))
                tx.execute(
                    sa.text(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_insert AFTER INSERT ON lexical_chunks "
                        f"WHEN new.stemmed = {stemmed} BEGIN "
                        f"INSERT INTO {table}(rowid, scope, title, heading, body) "
                        "VALUES (new.id, new.scope, new.title, new.heading, new.body); END"
                    )
                )
                tx.execute(
                    sa.text(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_delete AFTER DELETE ON lexical_chunks "
                        f"WHEN old.stemmed = {stemmed} BEGIN "
                        f"INSERT INTO {table}({table}, rowid, scope, title, heading, body) "
                        "VALUES ('delete', old.id, old.scope, old.title, old.heading, old.body); END"
                    )
                )

    def config_for(self, locale: str) -> str:
        """The PostgreSQL text search configuration of a locale (`simple` where the server has none)."""
        name = _PG_CONFIGS.get(_language(locale), "simple")
        return name if name in self._configs else "simple"

    # -- writes --------------------------------------------------------------------------------------------

    def write(self, tenant: str, project: str, rows: Iterable[LexicalRow]) -> None:
        """Insert or replace the rows of these chunks (the chunks just written to the store)."""
        values = [self._values(tenant, project, chunk_id, text, meta) for chunk_id, text, meta in rows]
        if not values:
            return
        with db_errors("write the lexical index"), self._db.begin() as tx:
            table = _pg_rows if self._postgres else _sqlite_rows
            ids = [v["chunk_id"] for v in values]
            for start in range(0, len(ids), 500):
                tx.execute(sa.delete(table).where(table.c.chunk_id.in_(ids[start : start + 500])))
            if self._postgres:
                tx.execute(
                    sa.text(
                        "INSERT INTO lexical_chunks (chunk_id, tenant, project, locale, doc_id, config, tsv) VALUES "
                        "(:chunk_id, :tenant, :project, :locale, :doc_id, :config, "
                        "setweight(to_tsvector(CAST(CAST(:config AS VARCHAR) AS regconfig), :title), 'A') || "
                        "setweight(to_tsvector(CAST(CAST(:config AS VARCHAR) AS regconfig), :heading), 'B') || "
                        "setweight(to_tsvector(CAST(CAST(:config AS VARCHAR) AS regconfig), :body), 'D'))"
                    ),
                    values,
                )
            else:
                tx.execute(sa.insert(_sqlite_rows), values)

    def _values(self, tenant: str, project: str, chunk_id: str, text: str, meta: Mapping[str, Any]) -> dict[str, Any]:
        locale = str(meta.get("locale", ""))
        values: dict[str, Any] = {
            "chunk_id": chunk_id,
            "tenant": tenant,
            "project": project,
            "locale": locale,
            "doc_id": str(meta.get("doc_id", "")),
            "title": str(meta.get("title", "")),
            "heading": str(meta.get("heading", "")),
            "body": _body(text),
        }
        if self._postgres:
            values["config"] = self.config_for(locale)
        else:
            values["stemmed"] = int(_language(locale) == "en")
            values["scope"] = f"{_scope('p', tenant, project)} {_scope('l', tenant, project, locale)}"
        return values

    def delete(self, tenant: str, project: str, chunk_ids: Sequence[str]) -> None:
        """Delete the rows of these chunks (the chunks just deleted from the store)."""
        if not chunk_ids:
            return
        table = _pg_rows if self._postgres else _sqlite_rows
        ids = list(chunk_ids)
        with db_errors("delete from the lexical index"), self._db.begin() as tx:
            for start in range(0, len(ids), 500):
                tx.execute(
                    sa.delete(table).where(
                        table.c.tenant == tenant,
                        table.c.project == project,
                        table.c.chunk_id.in_(ids[start : start + 500]),
                    )
                )

    # -- reads ---------------------------------------------------------------------------------------------

    def ids(self, tenant: str, project: str) -> set[str]:
        """Every chunk id a project has rows for."""
        table = _pg_rows if self._postgres else _sqlite_rows
        with db_errors("read the lexical index"), self._db.connect() as conn:
            rows = conn.execute(sa.select(table.c.chunk_id).where(table.c.tenant == tenant, table.c.project == project))
            return {str(r[0]) for r in rows}

    def count(self, tenant: str, project: str) -> int:
        table = _pg_rows if self._postgres else _sqlite_rows
        query = (
            sa.select(sa.func.count()).select_from(table).where(table.c.tenant == tenant, table.c.project == project)
        )
        with db_errors("count the lexical index"), self._db.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def search(self, tenant: str, project: str, text: str, *, locale: str | None, limit: int) -> list[LexicalHit]:
        """The best `limit` chunks of a project for a question (of `locale` when given), best first."""
        terms = query_terms(text)
        if not terms:
            return []
        with db_errors("search the lexical index"), self._db.connect() as conn:
            if self._postgres:
                return self._search_postgres(conn, tenant, project, terms, locale, limit)
            return self._search_sqlite(conn, tenant, project, terms, locale, limit)

    def _search_sqlite(
        self, conn: sa.Connection, tenant: str, project: str, terms: list[str], locale: str | None, limit: int
    ) -> list[LexicalHit]:
        stemmed = [1, 0] if locale is None else [int(_language(locale) == "en")]
        title, heading, body = self.weights
        found: list[LexicalHit] = []
        for flag in stemmed:
            table = _FTS_TABLES[flag][0]
            selective = self._rarest(conn, flag, terms)
            if not selective:
                continue
            # Quoted words: none is read as FTS5 syntax. The scope token filters inside the match; chunk ids are
            # read for the best `limit` rows only.
            scope = _scope("p", tenant, project) if locale is None else _scope("l", tenant, project, locale)
            words = " OR ".join(f'"{term}"' for term in selective)
            rows = conn.execute(
                sa.text(
                    f"SELECT c.chunk_id, c.doc_id, f.rank FROM (SELECT rowid AS id, "
                    f"bm25({table}, 0, {title}, {heading}, {body}) AS rank FROM {table} WHERE {table} MATCH :match "
                    "ORDER BY rank LIMIT :limit) AS f JOIN lexical_chunks c ON c.id = f.id ORDER BY f.rank"
                ),
                {"match": f'scope : "{scope}" AND ({words})', "limit": limit},
            )
            found.extend(LexicalHit(str(r.chunk_id), str(r.doc_id), -float(r.rank)) for r in rows)
        found.sort(key=lambda hit: -hit.score)
        return found[:limit]

    def _rarest(self, conn: sa.Connection, flag: int, terms: list[str]) -> list[str]:
        """The terms found in the index, rarest first, as many as match at most `max_postings` chunks together
        (at least one). Each term is tokenized as the index tokenizes (stemmed, diacritics removed) by a probe
        FTS5 table of this connection, then looked up in the index's vocabulary."""
        table, tokenizer = _FTS_TABLES[flag]
        probe = f"{table}_probe"
        conn.execute(sa.text(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{probe} USING fts5(q, tokenize='{tokenizer}')"))
        conn.execute(
            sa.text(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{probe}_v USING fts5vocab(temp, {probe}, 'instance')")
        )
        conn.commit()  # keep the probe tables on this pooled connection; the probe rows below are rolled back
        conn.execute(sa.text(f"DELETE FROM temp.{probe}"))
        conn.execute(
            sa.text(f"INSERT INTO temp.{probe}(rowid, q) VALUES (:n, :term)"),
            [{"n": n, "term": term} for n, term in enumerate(terms)],
        )
        tokens: dict[int, set[str]] = {}
        for row in conn.execute(sa.text(f"SELECT term, doc FROM temp.{probe}_v")):
            tokens.setdefault(int(row.doc), set()).add(str(row.term))
        wanted = sorted({token for found in tokens.values() for token in found})
        postings: dict[str, int] = {}
        if wanted:
            marks = ", ".join(f":t{n}" for n in range(len(wanted)))
            rows = conn.execute(
                sa.text(f"SELECT term, doc FROM {table}_vocab WHERE term IN ({marks})"),
                {f"t{n}": token for n, token in enumerate(wanted)},
            )
            postings = {str(r.term): int(r.doc) for r in rows}
        conn.rollback()
        counted = [(max(postings.get(t, 0) for t in tokens[n]), n) for n in range(len(terms)) if n in tokens]
        chosen: list[str] = []
        total = 0
        for count, n in sorted(c for c in counted if c[0] > 0):
            if chosen and total + count > self.max_postings:
                break
            chosen.append(terms[n])
            total += count
        return chosen

    def _search_postgres(
        self, conn: sa.Connection, tenant: str, project: str, terms: list[str], locale: str | None, limit: int
    ) -> list[LexicalHit]:
        # Each word through plainto_tsquery, so no input is read as tsquery syntax; OR-ed together.
        words = {f"w{n}": term for n, term in enumerate(terms)}
        if locale is not None:
            config = "CAST(CAST(:config AS VARCHAR) AS regconfig)"
            where = "config = :config AND locale = :locale AND "
        else:
            config, where = "CAST(config AS regconfig)", ""  # each row's own configuration (no index: rare)
        query = " || ".join(f"plainto_tsquery({config}, :{name})" for name in words)
        rows = conn.execute(
            sa.text(
                f"SELECT chunk_id, doc_id, ts_rank_cd(tsv, {query}) AS rank FROM lexical_chunks "
                f"WHERE {where}tenant = :tenant AND project = :project AND tsv @@ ({query}) "
                "ORDER BY rank DESC LIMIT :limit"
            ),
            {
                **words,
                "config": self.config_for(locale) if locale is not None else None,
                "locale": locale,
                "tenant": tenant,
                "project": project,
                "limit": limit,
            },
        )
        return [LexicalHit(str(r.chunk_id), str(r.doc_id), float(r.rank)) for r in rows]


def converge_lexical(
    lexical: LexicalIndex, store: Store, tenant: str, project: str, collection: str, index: ProjectIndex
) -> tuple[int, int]:
    """Make a project's lexical rows match what its collection holds (`index`, read back from it): rows of chunks
    the collection lacks are deleted, missing rows written from the chunk texts the store holds. Returns
    (added, removed)."""
    held = {chunk_id for doc in index.docs.values() for chunk_id in doc.chunks}
    rows = lexical.ids(tenant, project)
    extra = sorted(rows - held)
    lexical.delete(tenant, project, extra)
    missing = sorted(held - rows)
    for start in range(0, len(missing), 300):
        hits = store.get(collection, missing[start : start + 300])
        lexical.write(tenant, project, [(hit.id, hit.text, hit.metadata) for hit in hits])
    return len(missing), len(extra)
