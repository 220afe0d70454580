"""Which URLs belong to a web source (`include` regexes, else the configured hosts; `urls` always), and the
exception that says a page is not one of its documents."""

from __future__ import annotations

import re

from kbsync.errors import SourceRejected
from kbsync.settings import WebSourceSettings
from kbsync.sources.web.urls import clean_url, host_key, normalize_url

__all__ = ["OutOfScope", "Refused", "Scope"]


class OutOfScope(SourceRejected):
    """The page is not a document of this source (include rules, robots, content type, size, address)."""

    def __init__(self, reason: str, *, source: str = "", url: str = "") -> None:
        super().__init__(reason, source=source, url=url)
        self.reason = reason


class Refused(OutOfScope):
    """The SSRF guard refused an address: skipped, but never proof that a page is gone."""


class Scope:
    """Which URLs belong to the source: `include` regexes, else the configured hosts; `urls` always."""

    def __init__(self, settings: WebSourceSettings) -> None:
        self._patterns = [re.compile(p) for p in settings.include]
        seeds = ([settings.sitemap] if settings.sitemap else []) + list(settings.urls)
        self._hosts = {host_key(clean_url(u)) for u in seeds}
        self._explicit = {normalize_url(u) for u in settings.urls}

    def allows(self, url: str) -> bool:
        if normalize_url(url) in self._explicit:
            return True
        if self._patterns:
            return any(p.search(url) for p in self._patterns)
        return host_key(url) in self._hosts

    def same_site(self, url: str) -> bool:
        """A sitemap may point to sitemaps on its own hosts (the protocol's rule) or in scope."""
        return host_key(url) in self._hosts or self.allows(url)
