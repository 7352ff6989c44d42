"""Key bindings carry ids; a keymap file remaps them: ``$STILTS_KEYMAP`` or
``~/.config/stilts-tui/keymap.toml`` with lines like ``"queue.cancel" = "x"``."""

from __future__ import annotations

import os
from pathlib import Path

from stilts_tui.errors import UserError
from stilts_tui.tomlio import tomllib


def keymap_path() -> Path:
    return Path(os.environ.get("STILTS_KEYMAP") or Path.home() / ".config" / "stilts-tui" / "keymap.toml")


def load_keymap(path: Path | None = None) -> dict[str, str]:
    path = path or keymap_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: TOML syntax error: {e}") from None
    keys = data.get("keys", data)
    bad = [k for k, v in keys.items() if not isinstance(v, str)]
    if bad:
        raise UserError(f"{path}: key '{bad[0]}': expected a key name like \"x\" or \"ctrl+x\"")
    return dict(keys)
