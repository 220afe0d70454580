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
    return options if options.requests_per_second is not None else replace(options, requests_per_second=requests_per_second)
