"""Faults at the Chroma boundary: a real chromadb collection that fails its Nth call of one method.

Only chromadb is wrapped (kbsync's own code runs unchanged): what a Chroma server that drops a request, or a full
disk under the embedded store, does to one write or delete in the middle of a run.
"""

from __future__ import annotations

from typing import Any

from chromadb.errors import InternalError


class FailingCollection:
    """Delegates to `real`; the `nth` call (1-based) of `method` raises instead of reaching Chroma."""

    def __init__(self, real: Any, method: str, nth: int = 1) -> None:
        self._real, self._method, self._nth = real, method, nth
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name != self._method:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self._nth:
                raise InternalError(f"injected failure of {name} call {self.calls}")
            return attribute(*args, **kwargs)

        return call


def fail_nth(store: Any, collection: str, method: str, nth: int = 1) -> FailingCollection:
    """Make `store`'s client of `collection` fail its `nth` `method` call; `heal(store, collection)` undoes it."""
    real = store._collection(collection)
    failing = FailingCollection(real, method, nth)
    store._collections[collection] = failing
    return failing


def heal(store: Any, collection: str) -> None:
    """Drop the wrapper: the next call opens the real collection again."""
    store._collections.pop(collection, None)
