"""Opening the API sources (Confluence, Notion): one pooled HTTP client per source, closed with the engine."""

from __future__ import annotations

from contextlib import ExitStack

from kbsync.settings import ConfluenceSourceSettings, NotionSourceSettings
from kbsync.sources import Source
from kbsync.sources._http import HttpOptions

__all__ = ["open_api_source"]


def open_api_source(
    settings: ConfluenceSourceSettings | NotionSourceSettings, stack: ExitStack, *, options: HttpOptions | None = None
) -> Source:
    """The source for `settings`, its client registered on `stack`. `options` replace the default timeouts and
    retries (the source's own pace is kept unless `options` set one)."""
    if isinstance(settings, ConfluenceSourceSettings):
        from kbsync.sources import confluence

        client = stack.enter_context(confluence.open_client(settings, _paced(options, settings.requests_per_second)))
        return confluence.ConfluenceSource(settings, client)
    from kbsync.sources import notion

    client = stack.enter_context(notion.open_client(settings, _paced(options, settings.requests_per_second)))
    return notion.NotionSource(settings, client)


def _paced(options: HttpOptions | None, requests_per_second: float) -> HttpOptions:
    from dataclasses import replace

    if options is None:
        return HttpOptions(requests_per_second=requests_per_second)
    if options.requests_per_second is not None:
        return options
    return replace(options, requests_per_second=requests_per_second)


# A check waits and retries less than a sync, so an unreachable API fails `kbsync check` within seconds.
CHECK_OPTIONS = HttpOptions(
    connect_timeout=5.0, read_timeout=10.0, attempt_deadline_seconds=15.0, retry_budget_seconds=10.0
)


def check_api_source(
    settings: ConfluenceSourceSettings | NotionSourceSettings, options: HttpOptions | None = None
) -> tuple[bool, str]:
    """`kbsync check` for one Confluence or Notion source: the token is accepted, the space or root exists and
    is readable, and how much it holds. `(ok, detail)`; details name URLs and variables, never a token."""
    from kbsync.errors import SourceError

    with ExitStack() as stack:
        try:
            source = open_api_source(settings, stack, options=options or CHECK_OPTIONS)
            if isinstance(settings, ConfluenceSourceSettings):
                from kbsync.sources.confluence import ConfluenceSource

                assert isinstance(source, ConfluenceSource)
                space = source.space()
                count = source.count_pages()
                labels = f", only pages labelled {', '.join(settings.labels)}" if settings.labels else ""
                name = space.name or space.id
                return True, f"token accepted, space {space.key} ({name}) has {count} current pages{labels}"
            from kbsync.sources.notion import NotionSource

            assert isinstance(source, NotionSource)
            root = source.root()
            count = source.top_level_children()
            what = "rows on its first page" if root.kind == "database" else "child pages or databases at its top level"
            return True, f"token accepted, root {root.kind} {root.title!r} shared with the integration, {count} {what}"
        except SourceError as exc:
            return False, str(exc)
