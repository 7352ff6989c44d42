"""Key bindings carry ids (tui/actions.py); a keymap file remaps them: ``$STILTS_KEYMAP`` or
``$XDG_CONFIG_HOME/stilts-tui/keymap.toml`` (``~/.config`` without it) with lines like
``"queue.cancel" = "x"``. The queue's chosen columns are remembered beside it (``columns.json``, or
``$STILTS_COLUMNS``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from stilts_tui.contract import Env
from stilts_tui.errors import UserError
from stilts_tui.store import files
from stilts_tui.tomlio import tomllib

MAX_KEYMAP_BYTES = 1 << 20  # a settings file larger than this is not one


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
    try:
        raw = files.load_bytes(path, MAX_KEYMAP_BYTES)  # a FIFO or a folder is one line, never a hang
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UserError(f"{path}: cannot read the keymap ({e.strerror or e})") from None
    except files.DamagedFile as e:
        raise UserError(f"{path}: not a keymap: {e.what}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a keymap is a TOML file; save it as UTF-8)") from None
    except RecursionError:  # tomllib recurses once a level: a keymap nested 100,000 deep
        raise UserError(f"{path}: not a keymap: nested deeper than a keymap is") from None
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


def load_columns(warn: Callable[[str], None] | None = None) -> list[str] | None:
    """The queue columns chosen last time, or None (none chosen yet, or a file that cannot be read: a
    FIFO, a folder, nested 100,000 deep... ``warn`` gets one line saying so; the app starts as ever)."""
    path = columns_path()
    try:
        data = files.load_json(path, MAX_KEYMAP_BYTES, shape=list)
    except FileNotFoundError:
        return None
    except (OSError, files.DamagedFile) as e:
        if warn is not None:
            what = e.what if isinstance(e, files.DamagedFile) else (e.strerror or str(e))
            warn(f"{path}: the remembered columns are not read ({what}); showing them all")
        return None
    return [c for c in data if isinstance(c, str)] if isinstance(data, list) else None


def save_columns(columns: list[str]) -> None:
    """Remember the queue's columns for the next session."""
    files.write_text_atomic(columns_path(), json.dumps(columns) + "\n")
