"""Options every `kbsync` command takes, before or after the subcommand: `--config`, `--log-level`, `--json`.

Each is declared on the root callback and on each command with the same `Annotated` type. Click parses the root's
copy before the subcommand name and the command's copy after it; the callbacks here merge both into the one
`CliState` of the invocation (the value given after the subcommand wins), so command bodies read one value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kbsync.settings import Settings

__all__ = ["CliState", "ConfigOption", "JsonOption", "LogLevel", "LogLevelOption", "cli_state"]


class LogLevel(StrEnum):
    """The levels of the settings' `log_level`."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@dataclass
class CliState:
    """What one invocation was told; `settings` are loaded lazily so `--help` never reads the file."""

    config: Path | None = None  # as given; resolved by kbsync.settings.config_path when loaded
    log_level: str | None = None  # overrides the settings' log_level
    as_json: bool = False
    settings: Settings | None = None


def cli_state(ctx: typer.Context) -> CliState:
    """The invocation's state, held by the root context (created on first use, e.g. by `--help` of a command)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _config(ctx: typer.Context, _param: typer.CallbackParam, value: Path | None) -> Path | None:
    state = cli_state(ctx)
    if value is not None:
        state.config = value
    return state.config


def _log_level(ctx: typer.Context, _param: typer.CallbackParam, value: LogLevel | None) -> LogLevel | None:
    state = cli_state(ctx)
    if value is not None:
        state.log_level = value.value
    return LogLevel(state.log_level) if state.log_level else None


def _json(ctx: typer.Context, _param: typer.CallbackParam, value: bool) -> bool:
    state = cli_state(ctx)
    state.as_json = state.as_json or value
    return state.as_json


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        callback=_config,
        help="Settings file (default: $KBSYNC_CONFIG, else ./settings.toml).",
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    LogLevel | None,
    typer.Option(
        "--log-level",
        callback=_log_level,
        case_sensitive=False,
        help="Log level for this command (default: the settings' log_level).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", callback=_json, help="Print the result as JSON.")]
