"""The `kbsync` command line: a thin shell over the engine (README "CLI").

Exit codes: 0 ok; 1 a source, check or lookup failed; 2 invalid settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kbsync import __version__
from kbsync.cli_options import ConfigOption, JsonOption, LogLevelOption, cli_state
from kbsync.errors import ConfigError, KbsyncError, UnknownProject

if TYPE_CHECKING:
    import httpx
    from rich.progress import TaskID

    from kbsync.engine import Engine
    from kbsync.retrieval import Group
    from kbsync.runs import ProjectKey, RunReport
    from kbsync.settings import Settings

app = typer.Typer(
    name="kbsync",
    help="Keep per-tenant Chroma collections in sync with help-center articles and external docs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _console(*, stderr: bool = False) -> Console:
    """A console for text that may hold content (titles, URLs, errors): rich markup is applied only to what the
    CLI writes around it (callers `escape` the content), and `:name:` is never an emoji (`files:a:b`)."""
    return Console(stderr=stderr, emoji=False)


def _fail(message: str, code: int) -> NoReturn:
    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(ctx: typer.Context) -> Settings:
    state = cli_state(ctx)
    if state.settings is None:
        from kbsync.logging import configure_logging
        from kbsync.settings import config_path, load_settings

        try:
            state.settings = load_settings(config_path(state.config))
        except ConfigError as exc:
            _fail(str(exc), EXIT_CONFIG)
        configure_logging(state.settings.log_format, state.log_level or state.settings.log_level)
    return state.settings


@contextmanager
def _engine(ctx: typer.Context) -> Iterator[Engine]:
    from kbsync.wiring import open_engine

    settings = _settings(ctx)
    try:
        with open_engine(settings) as engine:
            yield engine
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except UnknownProject as exc:
        _fail(str(exc), EXIT_FAILED)
    except KbsyncError as exc:
        _fail(str(exc), EXIT_FAILED)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kbsync {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
    as_json: JsonOption = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """--config, --log-level and --json may also follow the subcommand (the callbacks of kbsync.cli_options
    keep them)."""


@app.command()
def run(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Webhook worker threads.")] = 2,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """The daemon: scheduler (poll, reconcile) + webhook workers + HTTP API on server.host:port.

    Reconciles every project at start. SIGTERM/SIGINT stop it gracefully (exit 0).
    """
    from kbsync.daemon import Daemon, DaemonOptions

    if cli_state(ctx).as_json:
        _fail('--json does not apply to `kbsync run` (it logs; set log_format = "json")', EXIT_CONFIG)
    settings = _settings(ctx)
    try:
        code = Daemon(settings, DaemonOptions(workers=workers)).run()
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except KbsyncError as exc:
        _fail(str(exc), EXIT_FAILED)
    raise typer.Exit(code)


def _daemon(
    settings: Settings, method: str, path: str, body: dict[str, Any] | None, timeout: float
) -> dict[str, Any] | None:
    """Ask the running daemon (it owns the embedded store). Returns the JSON answer, or None when no daemon
    answers on server.host:port."""
    import httpx

    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    headers = {}
    if settings.admin_token is not None:
        headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
    try:
        response = httpx.request(
            method, f"http://{host}:{settings.server.port}{path}", json=body, headers=headers, timeout=timeout
        )
    except httpx.HTTPError:
        return None
    if response.status_code in (401, 403):
        _fail(
            f"the running daemon refused the request ({response.status_code}): set "
            f"${settings.server.admin_token_env} to its admin token",
            EXIT_FAILED,
        )
    if response.status_code >= 400:
        _fail(f"the running daemon answered {response.status_code}: {_error_text(response)}", EXIT_FAILED)
    answer: dict[str, Any] = response.json()
    return answer


def _error_text(response: httpx.Response) -> str:
    """The message of the daemon's error body (kbsync.http_errors), else the start of the raw body."""
    from kbsync.http_errors import error_message

    try:
        message = error_message(response.json())
    except ValueError:
        message = None
    return message or response.text[:300]


class _RichProgress:
    """The engine's Progress drawn as one bar per project on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[ProjectKey, TaskID] = {}

    def listed(self, key: ProjectKey, source_id: str, total: int) -> None:
        task = self._tasks.get(key)
        if task is None:
            self._tasks[key] = self._progress.add_task(str(key), total=total)
        else:
            self._progress.update(task, total=(self._progress.tasks[task].total or 0) + total)

    def advanced(self, key: ProjectKey, done: int) -> None:
        if key in self._tasks:
            self._progress.advance(self._tasks[key], done)


@app.command()
def resync(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Re-embed every chunk, changed or not.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
    allow_mass_delete: Annotated[
        bool, typer.Option(help="Delete even when a source lost more than sync.max_delete_fraction of its documents.")
    ] = False,
) -> None:
    """Full reconcile of every project (or the ones named): list, sync changes, delete what is gone.

    Asks the running daemon instead when it owns the embedded store.
    Exit 0 when every source synced, 1 when some source failed (the others were still synced), 2 bad config.
    """
    from kbsync.runs import RunReport

    settings = _settings(ctx)
    if _store_is_locked(settings):
        body = {
            "tenant": tenant,
            "project": project,
            "rebuild": rebuild,
            "allow_mass_delete": allow_mass_delete,
            "wait": True,
        }
        answer = _daemon(settings, "POST", "/v1/resync", body, timeout=24 * 3600)
        if answer is None:
            _no_daemon(settings)
        reports = [RunReport.from_dict(r) for r in answer["reports"]]
        _finish_resync(reports, as_json)
    with _engine(ctx) as engine:
        try:
            keys = engine.projects(tenant, project)
        except UnknownProject as exc:
            _fail(str(exc), EXIT_FAILED)
        console = _console(stderr=True)
        reports = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=as_json or not console.is_terminal,
            transient=False,
        ) as bar:
            progress = _RichProgress(bar)
            for key in keys:
                reports.append(
                    engine.reconcile(key, rebuild=rebuild, progress=progress, allow_mass_delete=allow_mass_delete)
                )
    _finish_resync(reports, as_json)


def _store_is_locked(settings: Settings) -> bool:
    """Whether another process (a running daemon) holds the embedded store or the SQLite state, checked without
    opening either."""
    from kbsync.wiring import local_owner

    return local_owner(settings) is not None


def _no_daemon(settings: Settings) -> NoReturn:
    from kbsync.wiring import local_owner

    _fail(
        f"the store at {settings.state_dir} is open in another kbsync process "
        f"(pid {local_owner(settings) or 'unknown'}) and no daemon answers on "
        f"{settings.server.host}:{settings.server.port}; stop that process or start `kbsync run`",
        EXIT_FAILED,
    )


def _finish_resync(reports: list[RunReport], as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        _print_reports(reports)
    raise typer.Exit(EXIT_OK if all(r.outcome == "ok" for r in reports) else EXIT_FAILED)


def _print_reports(reports: list[RunReport]) -> None:
    table = Table(title="kbsync resync", caption="docs: seen, new, changed, same, gone; chunks: embedded, held")
    table.add_column("project", no_wrap=True)
    for column in ("seen", "new", "changed", "same", "gone", "embedded", "held", "errors", "secs"):
        table.add_column(column, justify="right")
    for r in reports:
        table.add_row(
            f"{r.tenant}/{r.project}",
            *(str(v) for v in (r.docs_seen, r.docs_added, r.docs_updated, r.docs_unchanged, r.docs_deleted)),
            str(r.chunks_embedded),
            str(r.chunks_total),
            str(len(r.errors)),
            f"{r.seconds:.1f}",
        )
    console = _console()
    console.print(table)
    for r in reports:
        for error in r.errors:
            console.print(f"[red]{r.tenant}/{r.project}:[/] {escape(error)}", highlight=False, soft_wrap=True)


@app.command()
def query(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="Tenant id.")],
    project: Annotated[str, typer.Argument(help="Project id.")],
    text: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[
        int, typer.Option("-k", min=1, max=50, help="How many results (articles; chunks with --group chunk).")
    ] = 5,
    locale: Annotated[str | None, typer.Option(help="Only content of this locale.")] = None,
    group: Annotated[
        str, typer.Option(help="doc: the best chunk of each article, hybrid ranking; chunk: raw dense chunk ranking.")
    ] = "doc",
    expand: Annotated[int, typer.Option(min=0, max=3, help="Neighbouring chunks on each side added as context.")] = 0,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Top-k articles (or chunks) of a project for a question: score, title, heading, url. Exit 1 for an unknown
    project."""
    from kbsync.runs import ProjectKey

    if group not in ("doc", "chunk"):
        _fail(f"--group must be doc or chunk, not {group!r}", EXIT_CONFIG)
    _check_question(text)

    started = time.perf_counter()
    settings = _settings(ctx)
    if _store_is_locked(settings):
        body = {
            "tenant": tenant,
            "project": project,
            "query": text,
            "k": k,
            "locale": locale,
            "group": group,
            "expand": expand,
        }
        answer = _daemon(settings, "POST", "/v1/query", body, timeout=60)
        if answer is None:
            _no_daemon(settings)
        results = answer["results"]
    else:
        with _engine(ctx) as engine:
            try:
                ranking: Group = "doc" if group == "doc" else "chunk"  # checked above: one of the two
                hits = engine.query(ProjectKey(tenant, project), text, k=k, locale=locale, group=ranking, expand=expand)
            except UnknownProject as exc:
                _fail(str(exc), EXIT_FAILED)
        results = [hit.as_result() for hit in hits]
    if as_json:
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        typer.echo(json.dumps({"results": results, "took_ms": took_ms}, indent=2, ensure_ascii=False))
        return
    console = _console()
    if not results:
        console.print("no results (has the project been synced? run `kbsync resync`)")
    for rank, result in enumerate(results, 1):
        heading = f" > {result['heading']}" if result["heading"] else ""
        console.print(f"[bold]{rank}. {result['score']:.3f}  {escape(result['title'] + heading)}[/]", highlight=False)
        if result["url"]:
            console.print(f"   {result['url']}", highlight=False, markup=False)
        snippet = " ".join(result["text"].split("\n\n", 1)[-1].split())
        console.print(f"   {snippet[:240]}{'…' if len(snippet) > 240 else ''}", highlight=False, markup=False)
        if result.get("context"):
            indexes = ", ".join(str(c["chunk_index"]) for c in result["context"])
            console.print(f"   + neighbouring chunks {indexes} (see --json)", highlight=False)


@app.command()
def audit(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    repair: Annotated[bool, typer.Option(help="Rebuild the collections with unreachable chunks.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Query every chunk with its own vector and report those no query returns (chroma-core/chroma#7758).

    Asks the running daemon instead when it owns the embedded store.
    Exit 0 when every chunk is reachable (after --repair), 1 otherwise, 2 bad config.
    """
    from kbsync.runs import RunReport

    settings = _settings(ctx)
    if _store_is_locked(settings):
        answer = _daemon(
            settings, "POST", "/v1/audit", {"tenant": tenant, "project": project, "repair": repair}, timeout=24 * 3600
        )
        if answer is None:
            _no_daemon(settings)
        reports = [RunReport.from_dict(r) for r in answer["reports"]]
    else:
        with _engine(ctx) as engine:
            try:
                keys = engine.projects(tenant, project)
            except UnknownProject as exc:
                _fail(str(exc), EXIT_FAILED)
            reports = [engine.audit(key, repair=repair) for key in keys]
    _finish_audit(reports, as_json)


def _finish_audit(reports: list[RunReport], as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        table = Table(title="kbsync audit", caption="chunks queried with their own vector")
        for column in ("project", "checked", "unreachable", "repaired", "rebuilt", "outcome", "secs"):
            table.add_column(column, justify="left" if column == "project" else "right", no_wrap=True)
        for r in reports:
            values = (r.chunks_checked, r.chunks_unreachable, r.chunks_repaired, r.collections_rebuilt, r.outcome)
            table.add_row(f"{r.tenant}/{r.project}", *(str(v) for v in values), f"{r.seconds:.1f}")
        console = _console()
        console.print(table)
        for r in reports:
            for problem in [*r.errors, *r.warnings]:
                console.print(f"[red]{r.tenant}/{r.project}:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    clean = all(r.outcome == "ok" and r.chunks_unreachable == r.chunks_repaired for r in reports)
    raise typer.Exit(EXIT_OK if clean else EXIT_FAILED)


def _check_question(text: str) -> None:
    """Exit 2 for a question that cannot be asked: bytes that are not UTF-8 arrive from argv as lone surrogates
    (a traceback when encoded), and a blank one embeds to results that answer nothing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _fail("the question is not valid UTF-8 (check the terminal's or the script's encoding)", EXIT_CONFIG)
    if not text.strip():
        _fail("the question is empty", EXIT_CONFIG)


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Per project: last reconcile (time, result, counts), documents and chunks indexed, last error."""
    from kbsync.status import status_payload
    from kbsync.wiring import open_for_status

    settings = _settings(ctx)
    if _store_is_locked(settings):
        answer = _daemon(settings, "GET", "/v1/status", None, timeout=60)
        if answer is not None:
            _show_status(answer, as_json)
            return
    try:
        with open_for_status(settings) as parts:
            from kbsync.queue import Queue  # dead webhook items are shown even while no daemon runs

            queue = Queue(parts.state)
            payload = status_payload(settings, parts.state, parts.store_for, store_note=parts.store_note, queue=queue)
    except KbsyncError as exc:
        _fail(str(exc), EXIT_FAILED)
    _show_status(payload, as_json)


def _show_status(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        _print_status(payload)


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _print_status(payload: dict[str, Any]) -> None:
    console = _console()
    table = Table(title="kbsync status")
    for column in ("project", "docs", "chunks", "last reconcile", "result", "last error"):
        table.add_column(column)
    for p in payload["projects"]:
        run = p["last_runs"].get("reconcile")
        table.add_row(
            f"{p['tenant']}/{p['project']}",
            "-" if p["docs"] is None else str(p["docs"]),
            "-" if p["chunks"] is None else str(p["chunks"]),
            _when(run["finished_at"]) if run else "never",
            (run["outcome"] or "running") if run else "-",
            escape((p["last_error"] or "")[:80]),
        )
    console.print(table)
    dead = (payload.get("queue") or {}).get("dead_items") or []
    if dead:
        console.print(f"[red]dead webhook items[/] ({payload['queue']['dead']}, newest first; not retried):")
        for item in dead:
            console.print(
                f"  #{item['id']} {item['tenant']}/{item['project']} {item['event']} after {item['attempts']} "
                f"attempt(s): {(item['error'] or '')[:160]}",
                highlight=False,
                markup=False,
                emoji=False,  # "chatwoot:x: ..." is not an emoji code
            )
    if payload["orphaned_collections"]:
        console.print(
            f"orphaned collections (no project in settings): {', '.join(payload['orphaned_collections'])}", markup=False
        )
    if payload["store"] != "ok":
        console.print(f"[yellow]store not read:[/] {escape(payload['store'])}", highlight=False)


@app.command()
def check(
    ctx: typer.Context,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Validate settings, secret variables, the model, the store and every source. Exit 1 if a check failed."""
    from dataclasses import asdict

    from kbsync.checks import run_checks

    settings = _settings(ctx)
    console = _console()
    results = []
    for result in run_checks(settings):
        results.append(result)
        if not as_json:
            mark = "[green]ok[/]  " if result.ok else "[red]FAIL[/]"
            console.print(f"{mark} {escape(result.name)}: {escape(result.detail)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in results], indent=2))
    raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_FAILED)


@app.command("copy-store")
def copy_store_command(
    ctx: typer.Context,
    to_http: Annotated[bool, typer.Option("--to-http", help="Copy to a Chroma server (the only target).")] = False,
    host: Annotated[str | None, typer.Option(help="Server host (default: chroma.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Server port (default: chroma.port).")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Copy the embedded store at <state_dir>/chroma to a Chroma server: ids, documents, metadata and vectors
    unchanged, no re-embedding, verified by counts and ids. Exit 0 ok, 1 failed. Stop the daemon first."""
    from kbsync.copystore import copy_store
    from kbsync.wiring import open_copy_stores

    if not to_http:
        _fail("name the target: --to-http", EXIT_CONFIG)
    settings = _settings(ctx)
    try:
        with open_copy_stores(settings, host=host, port=port) as (source, destination, target):
            report = copy_store(source, destination)
    except KbsyncError as exc:
        _fail(str(exc), EXIT_FAILED)
    if as_json:
        payload = {"target": target.describe(), "collections": report.collections, "errors": report.errors}
        typer.echo(json.dumps({**payload, "ok": report.ok}, indent=2))
        raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)
    console = _console()
    for name, count in report.collections.items():
        console.print(f"{name}: {count} records copied to {target.describe()}", highlight=False, markup=False)
    for error in report.errors:
        console.print(f"[red]error:[/] {escape(error)}", highlight=False)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kbsync")


if __name__ == "__main__":
    main()
