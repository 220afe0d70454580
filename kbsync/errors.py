"""kbsync errors: raise the most specific, catch only in the shells.

* KbsyncError
  + ConfigError          bad settings or a missing secret; names the key; exit 2
  + SourceError          .transient says whether a retry can help; carries source and url, never a token
    - SourceUnavailable  timeout, 5xx, 429, connection refused (transient)
    - SourceRejected     401/403, unknown portal, malformed payload (permanent)
    - IncompleteListing  a listing stopped early: nothing may be deleted because of it
  + StoreError           Chroma failed a read or write, partial writes included
    - StoreLocked        another process owns the embedded store
    - ModelMismatch      the collection was embedded with another model
  + EmbeddingError       the model could not be found or loaded
  + StateError           the state database failed
    - StateLocked        another process owns the SQLite state
  + UnknownProject       a tenant/project that settings do not define
  + Interrupted          a run stopped early because kbsync is shutting down
"""

from __future__ import annotations


class KbsyncError(Exception):
    """Base of every error kbsync raises on purpose."""


class ConfigError(KbsyncError):
    """Invalid settings or a required secret that is not set. `key` names the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class SourceError(KbsyncError):
    """A source could not be read. Never carries a secret in its message."""

    transient: bool = True

    def __init__(self, message: str, *, source: str = "", url: str = "") -> None:
        where = " ".join(part for part in (source, url) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.url = url


class SourceUnavailable(SourceError):
    """Timeout, 5xx, 429 or a connection failure: a later retry may succeed."""

    transient = True


class SourceRejected(SourceError):
    """Bad token, unknown portal, malformed payload: retrying the same request will not help."""

    transient = False


class IncompleteListing(SourceError):
    """A listing stopped early: the documents it did return may be synced, but nothing may be deleted."""

    transient = True


class StoreError(KbsyncError):
    """Chroma failed a read or a write."""


class RebuildFailed(StoreError):
    """A collection could not be rebuilt; the old one is left in place, as it was."""


class StoreLocked(StoreError):
    """Another process holds the embedded store (Chroma is not process-safe)."""


class ModelMismatch(StoreError):
    """A collection holds vectors of another embedding model."""


class EmbeddingError(KbsyncError):
    """The embedding model could not be found or loaded."""


class StateError(KbsyncError):
    """The state database failed."""


class StateLocked(StateError):
    """Another process holds the SQLite state (it serves one process; replicas share PostgreSQL)."""


class UnknownProject(KbsyncError):
    """A tenant or project that the settings do not define."""


class Interrupted(KbsyncError):
    """A run stopped between two document groups because kbsync is shutting down."""
