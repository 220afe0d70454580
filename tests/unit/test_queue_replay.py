"""The queue's replay dedupe (issue 17, low): the same signed notice under another or no X-Chatwoot-Delivery adds
no work while its first item waits (stored `covered`, done), and queues again once that item is being applied (a
later edit may hide behind an identical minimal body)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kbsync.queue import Queue
from kbsync.state import State

FINGERPRINT = "sha256:" + "ab" * 32


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    state = State.open_sqlite(tmp_path)
    try:
        yield Queue(state)
    finally:
        state.close()


def _enqueue(queue: Queue, delivery: str | None, fingerprint: str | None = FINGERPRINT):  # type: ignore[no-untyped-def]
    return queue.enqueue(
        "acme", ["alpha"], "chatwoot:acme-help", "article_updated", {"article_id": 7}, delivery, fingerprint=fingerprint
    )


def test_a_replay_while_the_first_item_waits_is_a_duplicate(queue: Queue) -> None:
    assert not _enqueue(queue, "d-1").duplicate
    assert _enqueue(queue, "d-2").covered  # a new delivery id
    assert _enqueue(queue, None).covered  # no delivery id
    assert queue.depth()["pending"] == 1


def test_the_same_notice_after_its_item_was_claimed_queues_once_more(queue: Queue) -> None:
    first = _enqueue(queue, "d-1")
    item = queue.claim("worker-1", 30)
    assert item is not None and item.id == first.item_id
    again = _enqueue(queue, None)  # the refresh may have read the source before this edit
    assert not again.duplicate and not again.covered and again.item_id is not None
    assert _enqueue(queue, "d-3").covered  # but not a third time while that one waits
    assert queue.depth()["pending"] == 2


def test_other_notices_and_a_repeated_delivery_id(queue: Queue) -> None:
    assert not _enqueue(queue, "d-1").duplicate
    other = _enqueue(queue, "d-2", "sha256:" + "cd" * 32)  # another signing: not a replay
    assert not other.duplicate and not other.covered
    assert _enqueue(queue, "d-1", "sha256:" + "ef" * 32).duplicate  # a delivery id seen before


def test_a_covered_notice_is_stored_done_with_no_work_of_its_own(queue: Queue) -> None:
    first = _enqueue(queue, "d-1")
    covered = _enqueue(queue, "d-2")
    assert covered.covered and covered.item_id is not None and covered.item_id != first.item_id
    assert queue.depth()["pending"] == 1  # the covered one is done: never claimed, never refreshed
    assert queue.claim("worker-1", 30).id == first.item_id  # type: ignore[union-attr]
