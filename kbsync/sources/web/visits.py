"""What one page came to (`Visit`), and the rule that many pages naming one canonical URL are not one document:
that is a maintenance or error page answering for the whole site, so each page keeps its own URL."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import structlog

from kbsync.sources import DocError, Document
from kbsync.sources.web.cache import PageValidators
from kbsync.sources.web.discovery import Target
from kbsync.sources.web.urls import normalize_url, page_doc_id

__all__ = ["MAX_CANONICAL_SHARE", "Visit", "unshare_canonicals", "without_shared_canonicals"]

log = structlog.get_logger("kbsync.sources.web")

# More pages than this naming one canonical URL (other than itself) is not deduplication but one answer for all.
MAX_CANONICAL_SHARE = 3


@dataclass(slots=True)
class Visit:
    """What one page came to; exactly one of the fields below `target` is set (none: skipped)."""

    target: Target
    document: Document | None = None
    validators: PageValidators | None = None  # to stage (document, or a 304 with news)
    unchanged: str = ""  # doc_id of a 304 / unchanged <lastmod>
    gone: str = ""  # doc_id of a 404 / 410
    error: DocError | None = None
    lastmod_skip: bool = False  # unchanged without a request
    drop_validators: bool = False  # gone or out of scope: a later 304 must not stand for it
    served_from: str = ""  # the URL that answered (after redirects), when a document was read


def _claims_canonical(visit: Visit) -> bool:
    doc = visit.document
    return doc is not None and bool(visit.served_from) and normalize_url(doc.url) != normalize_url(visit.served_from)


def unshare_canonicals(visits: list[Visit], source_id: str) -> tuple[list[Visit], list[str]]:
    """`visits` with every document whose canonical URL more than MAX_CANONICAL_SHARE pages name put back under
    the URL it was served from; and a warning per such canonical."""
    claims = Counter(v.document.doc_id for v in visits if v.document is not None and _claims_canonical(v))
    shared = {doc_id for doc_id, count in claims.items() if count > MAX_CANONICAL_SHARE}
    if not shared:
        return visits, []
    out: list[Visit] = []
    urls: dict[str, str] = {}
    for visit in visits:
        doc = visit.document
        if doc is not None and doc.doc_id in shared and _claims_canonical(visit):
            urls[doc.doc_id] = doc.url
            own = replace(doc, doc_id=page_doc_id(visit.served_from), url=visit.served_from)
            validators = replace(visit.validators, doc_id=own.doc_id) if visit.validators is not None else None
            visit = replace(visit, document=own, validators=validators)
        out.append(visit)
    warnings = []
    for doc_id in sorted(shared):
        log.warning("web.shared_canonical_ignored", canonical=urls[doc_id], pages=claims[doc_id])
        warnings.append(
            f"{source_id}: {claims[doc_id]} pages name {urls[doc_id]} as their canonical URL; ignored, each page "
            "keeps its own URL (a maintenance or error page answering for many pages?)"
        )
    return out, warnings


def without_shared_canonicals(
    verdicts: dict[str, tuple[str | None, bool | str]],
) -> dict[str, tuple[str | None, bool]]:
    """Second-look verdicts (URL, gone or the doc_id the page now stands for): "now serving another document"
    counts as gone only when few pages point at that document."""
    pointing = Counter(v for _, v in verdicts.values() if isinstance(v, str))
    out: dict[str, tuple[str | None, bool]] = {}
    for doc_id, (url, verdict) in verdicts.items():
        if isinstance(verdict, str) and pointing[verdict] > MAX_CANONICAL_SHARE:
            log.warning("web.shared_canonical_not_gone", doc_id=doc_id, canonical_doc_id=verdict)
            verdict = False
        out[doc_id] = (url, bool(verdict))
    return out
