"""Reading optional parts of an API's JSON answer: a missing or mistyped part reads as empty, so the code that
uses it needs no type checks of its own (the parts that must be there are checked where they are used)."""

from __future__ import annotations

from typing import Any

__all__ = ["json_list", "json_object"]


def json_object(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """`parent[key]` when it is a JSON object, else an empty one."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def json_list(parent: dict[str, Any], key: str) -> list[Any]:
    """`parent[key]` when it is a JSON array, else an empty one."""
    value = parent.get(key)
    return value if isinstance(value, list) else []
