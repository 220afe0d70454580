"""The invariant tests run kbsync end to end against the Chatwoot-compatible server: see tests/chatwoot_fixtures.py."""

from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    chatwoot,
    fake,
    kb,
    kb_factory,
    other_chatwoot,
    other_fake,
    settings_factory,
)
