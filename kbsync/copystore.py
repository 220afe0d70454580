"""`kbsync copy-store --to-http`: move the embedded store to a Chroma server without re-embedding.

Ids, vectors, documents and metadata (`indexed_at` included) are copied in batches of 300 and verified by counts
and ids. Copying is idempotent (upserts), so an interrupted copy is simply run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kbsync.errors import StoreError
from kbsync.store import Store

__all__ = ["CopyReport", "copy_store"]


@dataclass(slots=True)
class CopyReport:
    collections: dict[str, int] = field(default_factory=dict)  # name -> records copied
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def copy_store(source: Store, target: Store, names: list[str] | None = None) -> CopyReport:
    """Copy every collection (or `names`) from `source` to `target` and verify each by count and ids."""
    report = CopyReport()
    for name in names if names is not None else source.collections():
        copied = 0
        try:
            for batch in source.export(name):
                target.import_records(name, batch)
                copied += len(batch["ids"])
            expected, actual = source.ids(name), target.ids(name)
            if expected - actual:
                report.errors.append(f"{name}: {len(expected - actual)} ids missing on the target after the copy")
            elif len(actual) != len(expected):
                report.errors.append(
                    f"{name}: the target holds {len(actual)} records, the source {len(expected)} (extra records "
                    f"were already on the target; kbsync does not delete them)"
                )
        except StoreError as exc:
            report.errors.append(f"{name}: {exc}")
        report.collections[name] = copied
    return report
