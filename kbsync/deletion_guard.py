"""The mass-delete breaker: one healthy-looking answer (robots.txt `Disallow: /`, an empty sitemap, a maintenance
page) must not wipe a source. A run may delete at most `max_delete_fraction` of the documents a source held, once
the source held at least `mass_delete_min_docs`; more needs an explicit `kbsync resync --allow-mass-delete`.

It guards the sources whose listing one answer can fake: `web` (robots.txt, sitemaps, pages), `files` (a
half-checked-out folder), and `confluence` and `notion`, where one permission change (a page restriction, the
integration removed from a parent page's connections) hides a whole subtree. A Chatwoot listing is complete only
when its ids add up to Chatwoot's own counts, and an archived portal must leave the index at once (only published
content is indexed), so it is not held back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kbsync.settings import SyncSettings

__all__ = ["GUARDED_KINDS", "DeleteVerdict", "check_deletes"]

GUARDED_KINDS = frozenset({"web", "files", "confluence", "notion"})


@dataclass(frozen=True, slots=True)
class DeleteVerdict:
    """`allowed` False: delete nothing this run; `message` says why (naming the source and the counts)."""

    allowed: bool
    message: str = ""


def check_deletes(
    source_id: str, kind: str, held: int, deleting: int, settings: SyncSettings, *, allow: bool
) -> DeleteVerdict:
    """Whether a run may delete `deleting` of the `held` documents of `source_id` (a source of `kind`)."""
    if allow or kind not in GUARDED_KINDS or deleting == 0 or held < settings.mass_delete_min_docs:
        return DeleteVerdict(True)
    ceiling = math.floor(held * settings.max_delete_fraction)
    if deleting <= ceiling:
        return DeleteVerdict(True)
    return DeleteVerdict(
        False,
        f"{source_id}: refused to delete {deleting} of its {held} documents in one run (more than "
        f"sync.max_delete_fraction = {settings.max_delete_fraction}); nothing was deleted. If the source really "
        "lost them, run `kbsync resync --allow-mass-delete`",
    )
