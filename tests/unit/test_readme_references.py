"""What README.md names exists: files it points to (kbsync/, bench/, docs/, tests/, systemd/) and dotted
`kbsync.module.Name` objects. A module split (BoundedDecoder moved to kbsync/sources/_body.py) must not leave the
README pointing at nothing."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEMPLATES = {"kbsync/sources/x.py"}  # the "Adding a source" walkthrough names a file to create
# Paths under /etc, /opt, /var (`/etc/kbsync/kbsync.env`) are the machine's, not the repository's: the lookbehind.


def test_every_file_the_readme_names_exists() -> None:
    named = set(re.findall(r"(?<![\w/.~-])((?:kbsync|bench|docs|tests|systemd)/[\w./@-]*\w)", README)) - TEMPLATES
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


def test_every_dotted_kbsync_object_the_readme_names_exists() -> None:
    missing = []
    for dotted in sorted(set(re.findall(r"`(kbsync(?:\.\w+){2,})`", README))):
        module_name, _, name = dotted.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module, name = None, ""
        if module is None or not hasattr(module, name):
            try:
                importlib.import_module(dotted)
            except ImportError:
                missing.append(dotted)
    assert not missing, missing


def test_the_layout_table_lists_every_module() -> None:
    layout = README[README.index("## Layout") : README.index("## Adding a source")]
    modules = sorted(p.relative_to(ROOT / "kbsync") for p in (ROOT / "kbsync").rglob("*.py"))
    missing = [str(m) for m in modules if m.name not in layout and str(m) not in layout]
    assert not missing, f"README Layout does not list {missing}"
