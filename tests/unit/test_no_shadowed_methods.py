"""A method defined twice in one class silently replaces the first (two helpers each added a `Store.neighbours`, and
query expansion broke). Checked for every class of the package, from the source."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kbsync"


def test_no_class_defines_a_method_twice() -> None:
    twice = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = Counter(
                    item.name
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in item.decorator_list)
                    and not any(isinstance(d, ast.Name) and d.id == "overload" for d in item.decorator_list)
                )
                twice += [f"{path.name}:{node.name}.{name}" for name, count in names.items() if count > 1]
    assert twice == []
