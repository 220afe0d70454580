"""Settings (README "Configuration"): one clear error naming the key, env overrides, secrets only from the
environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbsync.errors import ConfigError
from kbsync.settings import load_settings

CHATWOOT_TENANT = """
[[tenants]]
id = "acme"
chatwoot_url = "https://support.acme.example/"
account_id = 1
api_token_env = "ACME_TOKEN"
webhook_secret_env = "ACME_WEBHOOK"

[[tenants.projects]]
id = "alpha"

[[tenants.projects.sources]]
kind = "chatwoot"
portal = "alpha-help"
"""


def test_defaults_and_relative_paths(write_settings, tmp_path: Path) -> None:
    settings = load_settings(write_settings('state_dir = "var"\n'))
    assert settings.state_dir == tmp_path / "var"
    assert settings.chunking.max_tokens == 192
    assert settings.chroma.mode == "embedded"
    assert settings.tenants == []


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ('[[tenants]]\nid = "Acme Corp"\n', "tenants[0].id", "pattern"),
        ("[chunking]\nmax_tokens = 300\n", "chunking.max_tokens", "256"),
        ("[chunking]\nmax_token = 100\n", "chunking.max_token", "unknown key"),
        ("surprise = 1\n", "surprise", "unknown key"),
        ('[chroma]\nmode = "cloud"\n', "chroma.mode", "embedded"),
        ('[server]\nport = "eighty"\n', "server.port", "integer"),
        ('[state]\nurl = "postgresql://kb:hunter2@db/kb"\n', "state.url", "password"),
        (
            '[[tenants]]\nid = "a"\n[[tenants.projects]]\nid = "p"\n[[tenants.projects.sources]]\nkind = "ftp"\n',
            "tenants[0].projects[0].sources[0]",
            "kind",
        ),
        (
            '[[tenants]]\nid = "a"\n[[tenants.projects]]\nid = "p"\n'
            '[[tenants.projects.sources]]\nkind = "web"\nurls = ["https://x.example"]\ninclude = ["(unclosed"]\n',
            "tenants[0].projects[0].sources[0].include",
            "regex",
        ),
        ('[[tenants]]\nid = "a"\n[[tenants]]\nid = "a"\n', "tenants", "twice"),
        ("[retention]\nruns_per_project = 5\n", "retention.runs_per_project", "10"),
        ("[retention]\nruns_days = 0\n", "retention.runs_days", "greater than 0"),
        ('[[tenants]]\nid = "a"\nchatwoot_retry_seconds = 0\n', "tenants[0].chatwoot_retry_seconds", "1"),
    ],
)
def test_invalid_settings_name_the_key(write_settings, toml: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write_settings(toml))
    assert raised.value.key == key
    assert key in str(raised.value)
    assert words in str(raised.value)


def test_invalid_toml_and_missing_file(write_settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write_settings("[chunking\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_chatwoot_tenant_needs_its_api_token(write_settings, monkeypatch) -> None:
    path = write_settings(CHATWOOT_TENANT)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert raised.value.key == "tenants[0].api_token_env"
    assert "ACME_TOKEN" in str(raised.value)
    monkeypatch.setenv("ACME_TOKEN", "s3cret-token")
    settings = load_settings(path)
    tenant = settings.tenants[0]
    assert tenant.api_token is not None and tenant.api_token.get_secret_value() == "s3cret-token"
    assert tenant.webhook_secret is None  # optional secret: its route is disabled, not an error
    assert tenant.chatwoot_url == "https://support.acme.example"
    assert "s3cret-token" not in repr(settings) and "s3cret-token" not in str(settings.model_dump())


def test_chatwoot_source_needs_account(write_settings, monkeypatch) -> None:
    monkeypatch.setenv("ACME_TOKEN", "x")
    with pytest.raises(ConfigError, match="account_id"):
        load_settings(write_settings(CHATWOOT_TENANT.replace("account_id = 1\n", "")))


def test_environment_overrides_the_file(write_settings, monkeypatch) -> None:
    path = write_settings('log_level = "info"\n[chunking]\nmax_tokens = 200\n[server]\nport = 9000\n')
    monkeypatch.setenv("KBSYNC_CHUNKING__MAX_TOKENS", "150")
    monkeypatch.setenv("KBSYNC_LOG_LEVEL", "debug")
    settings = load_settings(path)
    assert settings.chunking.max_tokens == 150
    assert settings.log_level == "debug"
    assert settings.server.port == 9000  # untouched keys of an overridden section survive


def test_bad_environment_override_names_the_key(write_settings, monkeypatch) -> None:
    monkeypatch.setenv("KBSYNC_CHUNKING__MAX_TOKENS", "lots")
    with pytest.raises(ConfigError) as raised:
        load_settings(write_settings(""))
    assert raised.value.key == "chunking.max_tokens"


@pytest.mark.parametrize(("name", "value"), [("KBSYNC_CHUNKING", "{bad"), ("KBSYNC_TENANTS", "garbage")])
def test_a_section_variable_that_is_not_json_names_the_variable(write_settings, monkeypatch, name, value) -> None:
    """pydantic-settings reads KBSYNC_<SECTION> as JSON; garbage there was a SettingsError traceback."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"environment variable {name} is not valid JSON") as raised:
        load_settings(write_settings('state_dir = "v"\n'))
    assert f"{name}__<KEY>" in str(raised.value)


def test_files_source_path_is_relative_to_the_settings_file(files_settings, docs_dir) -> None:
    settings = load_settings(files_settings)
    assert settings.tenants[0].projects[0].sources[0].path == docs_dir


def test_admin_token_from_named_variable(write_settings, monkeypatch) -> None:
    monkeypatch.setenv("MY_ADMIN", "adm")
    settings = load_settings(write_settings('[server]\nadmin_token_env = "MY_ADMIN"\n'))
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "adm"


def test_repository_settings_file_is_valid() -> None:
    """The embedded demo of the repository loads without any secret."""
    settings = load_settings(Path(__file__).resolve().parents[2] / "settings.toml")
    assert [t.id for t in settings.tenants] == ["demo"]
    source = settings.tenants[0].projects[0].sources[0]
    assert source.kind == "files" and source.path.is_dir()
