"""Durable state: run records, poll watermarks, web page validators, project locales and project leases.

SQLAlchemy Core, one schema and one code path for both dialects: SQLite under `state_dir` (one process, the
default; a lock file refuses a second) or PostgreSQL (`state.url`, shared by every replica). All SQL of the state
lives here (the webhook queue's in `queue.py`). The schema is versioned and created at start.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from kbsync.errors import StateError, StateLocked
from kbsync.locking import FileLock, lock_holder

if TYPE_CHECKING:
    from pydantic import SecretStr

    from kbsync.settings import Settings

__all__ = ["STATE_LOCK", "PageCacheTable", "RunRecord", "State", "Watermark", "db_errors", "metadata"]

# Held by the one process using SQLite state under state_dir (a running daemon, or one CLI command).
STATE_LOCK = "state.lock"

SCHEMA_VERSION = 1

metadata = sa.MetaData()

schema_info = sa.Table(
    "kbsync_schema",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # reconcile | poll | refresh
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("outcome", sa.String(16)),  # ok | partial | failed | interrupted | abandoned; NULL while running
    sa.Column("counts", sa.Text),  # JSON of the RunReport counters
    sa.Column("error", sa.Text),
    sa.Column("owner", sa.String(200)),  # the process (host:pid) that ran it
    sa.Index("runs_project_kind", "tenant", "project", "kind", "id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),  # "project:<tenant>/<project>", "embedded-store"
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(512), primary_key=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),  # newest source `updated_at` applied
    sa.Column("total", sa.BigInteger),  # the source's own count of everything it holds (Chatwoot all_articles_count)
    sa.Column("recorded_at", sa.Float, nullable=False),
)


web_pages = sa.Table(
    "web_pages",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(512), primary_key=True),
    sa.Column("url", sa.String(2048), primary_key=True),  # the normalized URL
    sa.Column("doc_id", sa.String(128), nullable=False),
    sa.Column("validators", sa.Text, nullable=False),  # JSON: etag, last_modified, lastmod, title
    sa.Index("web_pages_doc", "tenant", "project", "source", "doc_id"),
)


project_locales = sa.Table(
    "project_locales",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("locale", sa.String(64), primary_key=True),
)


project_counts = sa.Table(
    "project_counts",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("docs", sa.Integer, nullable=False),
    sa.Column("chunks", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Watermark:
    updated_at: int
    total: int | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    tenant: str
    project: str
    kind: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    counts: dict[str, Any]
    error: str | None
    owner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def db_errors(action: str) -> Iterator[None]:
    """The one place where SQLAlchemy's errors become kbsync's: any database error in the block is raised as
    StateError("cannot <action>: ..."), as store.py maps Chroma's. Also a decorator (`@db_errors("read runs")`)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"cannot {action}: {exc}") from exc


def delete_in_batches(
    engine: sa.Engine, table: sa.Table, key: Sequence[sa.Column[Any]], conditions: Sequence[Any], batch: int
) -> int:
    """Delete the rows of `table` matching `conditions`, at most `batch` rows (chosen by their `key` columns) per
    statement and transaction, so a large prune never holds a long lock on a database the daemon is writing.
    Returns how many rows went."""
    keys = key[0] if len(key) == 1 else sa.tuple_(*key)
    total = 0
    while True:
        chosen = sa.select(*key).where(*conditions).limit(batch)
        with db_errors(f"prune {table.name}"), engine.begin() as tx:
            deleted = int(tx.execute(sa.delete(table).where(keys.in_(chosen))).rowcount)
        total += deleted
        if deleted < batch:
            return total


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class State:
    """The state database. Open once per process; `close()` is idempotent."""

    def __init__(self, engine: sa.Engine, *, lock: FileLock | None = None) -> None:
        self.engine = engine
        self._lock = lock
        for attempt in range(3):
            try:
                metadata.create_all(engine)
                with engine.begin() as tx:
                    version = tx.execute(sa.select(schema_info.c.version)).scalar()
                    if version is None:
                        tx.execute(sa.insert(schema_info).values(version=SCHEMA_VERSION))
                    elif version > SCHEMA_VERSION:
                        raise StateError(
                            f"the state database has schema version {version}; this kbsync knows {SCHEMA_VERSION}: "
                            "upgrade kbsync"
                        )
                break
            except SQLAlchemyError as exc:
                # Replicas starting together race to create the tables; the loser sees them on its next try.
                if attempt == 2:
                    self.close()
                    raise StateError(f"cannot open the state database {_where(engine)}: {exc}") from exc
                time.sleep(0.2 * (attempt + 1))

    @classmethod
    def open(cls, settings: Settings) -> State:
        """The state of `settings`: PostgreSQL when `state.url` is set, else SQLite under `state_dir`."""
        if settings.state.url:
            return cls.open_postgres(settings.state.url, settings.state_password)
        return cls.open_sqlite(settings.state_dir)

    @classmethod
    def open_sqlite(cls, state_dir: Path) -> State:
        """SQLite at `<state_dir>/state.db` (WAL: readers never block the writer), held by this process alone."""
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(state_dir / STATE_LOCK)
        if not lock.acquire():
            raise StateLocked(
                f"the state at {state_dir} is in use by another kbsync process (pid "
                f"{lock_holder(lock.path)}): SQLite state serves one process; stop it, let the "
                f'running daemon do the work, or share state.url = "postgresql://..." between replicas'
            )
        engine = sa.create_engine(f"sqlite:///{state_dir / 'state.db'}")
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        try:
            return cls(engine, lock=lock)
        except StateError:
            lock.release()
            raise

    @classmethod
    def open_postgres(cls, url: str, password: SecretStr | None = None) -> State:
        """PostgreSQL, shared by every replica; the password comes from `state.password_env`, never the URL."""
        parsed = sa.engine.make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if password is not None:
            parsed = parsed.set(password=password.get_secret_value())
        engine = sa.create_engine(
            parsed, pool_pre_ping=True, pool_size=8, max_overflow=8, connect_args={"connect_timeout": 5}
        )
        return cls(engine)

    def ping(self) -> None:
        """Raise StateError when the database does not answer."""
        with db_errors(f"reach the state database {_where(self.engine)}"):
            with self.engine.connect() as conn:
                conn.execute(sa.select(1))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        """Close the connection pool and release the SQLite lock; idempotent."""
        self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- leases ----------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take (or renew) a lease that expires after `seconds`; False while another owner holds it.

        An expired lease is taken over: a replica that died (`kill -9`) loses its leases after `seconds`."""
        now = time.time()
        try:
            with db_errors(f"take lease {name}"), self.engine.begin() as tx:
                taken = tx.execute(
                    sa.update(leases)
                    .where(leases.c.name == name, sa.or_(leases.c.owner == owner, leases.c.expires_at < now))
                    .values(owner=owner, expires_at=now + seconds)
                ).rowcount
                if taken:
                    return True
                if tx.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                    return False
                tx.execute(sa.insert(leases).values(name=name, owner=owner, expires_at=now + seconds))
                return True
        except StateError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                return False  # another owner inserted it first
            raise

    def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Extend a lease this owner still holds; False when it was lost (expired and taken over)."""
        with db_errors(f"renew lease {name}"):
            with self.engine.begin() as tx:
                return bool(
                    tx.execute(
                        sa.update(leases)
                        .where(leases.c.name == name, leases.c.owner == owner)
                        .values(expires_at=time.time() + seconds)
                    ).rowcount
                )

    def release_lease(self, name: str, owner: str) -> None:
        with db_errors(f"release lease {name}"):
            with self.engine.begin() as tx:
                tx.execute(sa.delete(leases).where(leases.c.name == name, leases.c.owner == owner))

    def live_leases(self, prefix: str) -> int:
        """How many unexpired leases have a name starting with `prefix` (e.g. the live replicas, "replica:")."""
        with db_errors("count leases"):
            with self.engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.select(sa.func.count())
                        .select_from(leases)
                        .where(leases.c.name.startswith(prefix, autoescape=True), leases.c.expires_at >= time.time())
                    ).scalar_one()
                )

    def release_all_leases(self) -> int:
        """Drop every lease; returns how many. Only for SQLite state, which one process holds alone: a lease it
        finds when it starts was left by a process that died (`kill -9`)."""
        with db_errors("release leases"):
            with self.engine.begin() as tx:
                return int(tx.execute(sa.delete(leases)).rowcount)

    def start_run(self, tenant: str, project: str, kind: str, owner: str = "") -> int:
        """Record that a run began; returns its id.

        The caller holds the project's lease, so no other run of the project is live: one still open was cut off
        before it recorded its end (its process was killed, or this database was unreachable then). It is closed
        as `abandoned`, so `status` does not show it running for ever."""
        now = time.time()
        with db_errors("record a run start"):
            with self.engine.begin() as tx:
                tx.execute(
                    sa.update(runs)
                    .where(runs.c.tenant == tenant, runs.c.project == project, runs.c.finished_at.is_(None))
                    .values(
                        finished_at=now,
                        outcome="abandoned",
                        error="the run stopped before recording its end (its process was killed, or the state "
                        "database was unreachable); the end time is when a later run found it",
                    )
                )
                result = tx.execute(
                    sa.insert(runs).values(
                        tenant=tenant, project=project, kind=kind, started_at=now, owner=owner or None
                    )
                )
                return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(self, run_id: int, outcome: str, counts: dict[str, Any], error: str | None) -> None:
        with db_errors("record a run end"):
            with self.engine.begin() as tx:
                tx.execute(
                    sa.update(runs)
                    .where(runs.c.id == run_id)
                    .values(finished_at=time.time(), outcome=outcome, counts=json.dumps(counts), error=error)
                )

    def last_runs(self, tenant: str, project: str) -> dict[str, RunRecord]:
        """The newest run of each kind for one project."""
        latest = (
            sa.select(sa.func.max(runs.c.id))
            .where(runs.c.tenant == tenant, runs.c.project == project)
            .group_by(runs.c.kind)
        )
        with db_errors("read runs"):
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(runs).where(runs.c.id.in_(latest))).mappings().all()
        return {row["kind"]: _record(row) for row in rows}

    def last_error(self, tenant: str, project: str) -> RunRecord | None:
        """The newest run of a project that ended with an error."""
        query = (
            sa.select(runs)
            .where(runs.c.tenant == tenant, runs.c.project == project, runs.c.error.is_not(None))
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        with db_errors("read runs"):
            with self.engine.connect() as conn:
                row = conn.execute(query).mappings().first()
        return _record(row) if row else None

    def watermark(self, tenant: str, project: str, source: str) -> Watermark | None:
        """The poll watermark of one source, or None before its first successful reconcile."""
        query = sa.select(watermarks.c.updated_at, watermarks.c.total).where(
            watermarks.c.tenant == tenant, watermarks.c.project == project, watermarks.c.source == source
        )
        with db_errors("read a watermark"):
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        return Watermark(int(row.updated_at), None if row.total is None else int(row.total)) if row else None

    def set_watermark(self, tenant: str, project: str, source: str, mark: Watermark) -> None:
        """Persist a watermark (after the changes up to it were written), so a restart does not redo work."""
        values = {"updated_at": mark.updated_at, "total": mark.total, "recorded_at": time.time()}
        key = {"tenant": tenant, "project": project, "source": source}
        with db_errors("write a watermark"):
            with self.engine.begin() as tx:
                updated = tx.execute(
                    sa.update(watermarks).where(*(watermarks.c[k] == v for k, v in key.items())).values(**values)
                ).rowcount
                if not updated:
                    tx.execute(sa.insert(watermarks).values(**key, **values))

    # -- retention (kbsync/retention.py decides what and when) -----------------------------------------------

    def prune_runs(self, *, before: float, keep_per_project: int, batch: int) -> int:
        """Delete finished runs that started before `before`, and each project's runs beyond its newest
        `keep_per_project`; the newest run of each project and kind always stays (what `status` shows). Returns
        how many went."""
        newest = sa.select(sa.func.max(runs.c.id)).group_by(runs.c.tenant, runs.c.project, runs.c.kind)
        kept = (runs.c.finished_at.is_not(None), runs.c.id.not_in(newest))
        deleted = delete_in_batches(self.engine, runs, [runs.c.id], [*kept, runs.c.started_at < before], batch)
        crowded = (
            sa.select(runs.c.tenant, runs.c.project)
            .group_by(runs.c.tenant, runs.c.project)
            .having(sa.func.count() > keep_per_project)
        )
        with db_errors("count runs"), self.engine.connect() as conn:
            projects = conn.execute(crowded).all()
        for tenant, project in projects:
            of_project = (runs.c.tenant == tenant, runs.c.project == project)
            cutoff = sa.select(runs.c.id).where(*of_project).order_by(runs.c.id.desc()).offset(keep_per_project)
            with db_errors("read runs"), self.engine.connect() as conn:
                oldest_kept = conn.execute(cutoff.limit(1)).scalar()
            if oldest_kept is not None:
                conditions = [*of_project, *kept, runs.c.id <= oldest_kept]
                deleted += delete_in_batches(self.engine, runs, [runs.c.id], conditions, batch)
        return deleted

    def prune_leases(self, *, expired_before: float, spare: str = "") -> int:
        """Delete leases that expired before `expired_before`, except `spare` (the pruner's own); they were left
        by processes that died. An expired lease is free to take anyway: this only keeps the table small (each
        replica start makes a new `replica:<host>:<pid>` name)."""
        stale = sa.delete(leases).where(leases.c.expires_at < expired_before, leases.c.name != spare)
        with db_errors("prune leases"), self.engine.begin() as tx:
            return int(tx.execute(stale).rowcount)

    def size_bytes(self) -> int | None:
        """The database's size on disk (SQLite file, PostgreSQL database), for bench/ and status; None if unknown."""
        query = (
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            if self.dialect == "sqlite"
            else "SELECT pg_database_size(current_database())"
        )
        with db_errors("read the database size"), self.engine.connect() as conn:
            value = conn.execute(sa.text(query)).scalar()
        return int(value) if value is not None else None

    # -- counts: what `status` shows, kept here so it never reads every chunk's metadata ----------------------

    def counts(self, tenant: str, project: str) -> tuple[int, int] | None:
        """The (docs, chunks) a project's collection held after its last run, or None when not known."""
        query = sa.select(project_counts.c.docs, project_counts.c.chunks).where(
            project_counts.c.tenant == tenant, project_counts.c.project == project
        )
        with db_errors("read a project's counts"), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (int(row.docs), int(row.chunks)) if row else None

    def set_counts(self, tenant: str, project: str, counts: tuple[int, int] | None) -> None:
        """Record a project's (docs, chunks); None forgets them (a run that failed midway: recounted later)."""
        where = (project_counts.c.tenant == tenant, project_counts.c.project == project)
        with db_errors("record a project's counts"), self.engine.begin() as tx:
            tx.execute(sa.delete(project_counts).where(*where))
            if counts is not None:
                values = {"docs": counts[0], "chunks": counts[1], "recorded_at": time.time()}
                tx.execute(sa.insert(project_counts).values(tenant=tenant, project=project, **values))

    # -- locales ---------------------------------------------------------------------------------------
    # A project's chunk locales, recorded before chunks of a new locale are written, so a query may drop its locale
    # filter (slow in Chroma when it matches most of a collection) only while the project holds that locale alone.

    def locales(self, tenant: str, project: str) -> set[str]:
        """The locales recorded for a project's chunks (empty: none recorded yet)."""
        query = sa.select(project_locales.c.locale).where(
            project_locales.c.tenant == tenant, project_locales.c.project == project
        )
        with db_errors("read a project's locales"), self.engine.connect() as conn:
            return {str(locale) for locale in conn.execute(query).scalars()}

    def add_locales(self, tenant: str, project: str, locales: set[str]) -> None:
        """Record locales a project's chunks now carry (before they are written); ones already recorded stay."""
        if not locales:
            return
        rows = [{"tenant": tenant, "project": project, "locale": locale} for locale in sorted(locales)]
        insert = (sqlite_insert if self.dialect == "sqlite" else postgresql_insert)(project_locales)
        with db_errors("record a project's locales"), self.engine.begin() as tx:
            tx.execute(insert.on_conflict_do_nothing(), rows)

    def set_locales(self, tenant: str, project: str, locales: set[str]) -> None:
        """Replace a project's recorded locales with exactly `locales` (read from its whole collection, under the
        project's lease, so no write of another locale is under way)."""
        where = (project_locales.c.tenant == tenant, project_locales.c.project == project)
        with db_errors("record a project's locales"), self.engine.begin() as tx:
            tx.execute(sa.delete(project_locales).where(*where, project_locales.c.locale.not_in(sorted(locales))))
        self.add_locales(tenant, project, locales)


def _where(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _record(row: sa.RowMapping) -> RunRecord:
    return RunRecord(
        id=row["id"],
        tenant=row["tenant"],
        project=row["project"],
        kind=row["kind"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
        counts=json.loads(row["counts"]) if row["counts"] else {},
        error=row["error"],
        owner=row["owner"],
    )


class PageCacheTable:
    """A web source's conditional-request validators (ETag, Last-Modified, sitemap lastmod) in the state database,
    so an unchanged page costs a 304 after a restart too. Values are plain JSON objects: what they mean is the web
    source's business (the composition root adapts this table to its PageCache)."""

    def __init__(self, state: State, tenant: str, project: str, source: str) -> None:
        self._db = state.engine
        self._key = (web_pages.c.tenant == tenant, web_pages.c.project == project, web_pages.c.source == source)
        self._values = {"tenant": tenant, "project": project, "source": source}

    @db_errors("read page validators")
    def get(self, url: str) -> dict[str, object] | None:
        """The JSON object stored for `url`, or None."""
        with self._db.connect() as conn:
            row = conn.execute(sa.select(web_pages.c.validators).where(*self._key, web_pages.c.url == url)).first()
        return dict(json.loads(row.validators)) if row else None

    def put(self, url: str, doc_id: str, validators: dict[str, object]) -> None:
        """Store `validators` for `url`, replacing what was there; `doc_id` is what `url_for` finds it by."""
        data = json.dumps(validators)
        with db_errors("store page validators"):
            with self._db.begin() as tx:
                tx.execute(sa.delete(web_pages).where(*self._key, web_pages.c.url == url))
                tx.execute(sa.insert(web_pages).values(**self._values, url=url, doc_id=doc_id, validators=data))

    @db_errors("delete page validators")
    def delete(self, url: str) -> None:
        with self._db.begin() as tx:
            tx.execute(sa.delete(web_pages).where(*self._key, web_pages.c.url == url))

    @db_errors("read page validators")
    def url_for(self, doc_id: str) -> str | None:
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(web_pages.c.url).where(*self._key, web_pages.c.doc_id == doc_id).limit(1)
            ).first()
        return row.url if row else None
