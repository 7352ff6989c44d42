"""Key bindings carry ids (tui/actions.py); a keymap file remaps them: ``$STILTS_KEYMAP`` or
``$XDG_CONFIG_HOME/stilts-tui/keymap.toml`` (``~/.config`` without it) with lines like
``"queue.cancel" = "x"``. The queue's chosen columns are remembered beside it (``columns.json``, or
``$STILTS_COLUMNS``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stilts_tui.contract import Env
from stilts_tui.errors import UserError
from stilts_tui.tomlio import tomllib


def config_dir() -> Path:
    """The app's settings folder: ``$XDG_CONFIG_HOME/stilts-tui``, or ``~/.config/stilts-tui`` where that
    is unset or not an absolute path (as the XDG base directory specification says)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config") / "stilts-tui"


def keymap_path() -> Path:
    """The keymap file: ``$STILTS_KEYMAP``, else keymap.toml in the settings folder."""
    return Path(os.environ.get(Env.KEYMAP) or config_dir() / "keymap.toml")


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """The keymap file's ``"binding.id" = "key"`` pairs ({} without a file); a bad file is one line."""
    path = path or keymap_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a keymap is a TOML file; save it as UTF-8)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the keymap ({e.strerror or e})") from None
    keys = data.get("keys", data)
    if not isinstance(keys, dict):
        raise UserError(f'{path}: \'keys\' is {type(keys).__name__}; expected a table of "binding.id" = "key"')
    bad = [k for k, v in keys.items() if not isinstance(v, str)]
    if bad:
        raise UserError(f'{path}: key \'{bad[0]}\': expected a key name like "x" or "ctrl+x"')
    return dict(keys)


def columns_path() -> Path:
    """The queue's chosen columns: ``$STILTS_COLUMNS``, else columns.json in the settings folder."""
    return Path(os.environ.get(Env.COLUMNS) or config_dir() / "columns.json")


def load_columns() -> list[str] | None:
    """The queue columns chosen last time, or None (none chosen yet, or a file that cannot be read)."""
    try:
        data = json.loads(columns_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [c for c in data if isinstance(c, str)] if isinstance(data, list) else None


def save_columns(columns: list[str]) -> None:
    """Remember the queue's columns for the next session."""
    path = columns_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(columns) + "\n", encoding="utf-8")
