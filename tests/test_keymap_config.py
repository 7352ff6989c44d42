"""The app's settings folder: the keymap and the queue's columns are read from ``$XDG_CONFIG_HOME``
(``~/.config`` without it), unless ``$STILTS_KEYMAP`` / ``$STILTS_COLUMNS`` name a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stilts_tui.contract import Env
from stilts_tui.tui.keymap import columns_path, config_dir, keymap_path, load_columns, load_keymap, save_columns


@pytest.fixture
def no_overrides(monkeypatch, tmp_path) -> Path:
    """No STILTS_KEYMAP / STILTS_COLUMNS, and a home of the test's own."""
    monkeypatch.delenv(Env.KEYMAP, raising=False)
    monkeypatch.delenv(Env.COLUMNS, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "keymap-home"))
    return tmp_path


def test_the_keymap_and_columns_are_read_from_xdg_config_home(no_overrides, monkeypatch):
    xdg = no_overrides / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    (xdg / "stilts-tui").mkdir(parents=True)
    (xdg / "stilts-tui" / "keymap.toml").write_text('"queue.cancel" = "x"\n', encoding="utf-8")
    assert config_dir() == xdg / "stilts-tui" and keymap_path() == xdg / "stilts-tui" / "keymap.toml"
    assert load_keymap() == {"queue.cancel": "x"}
    save_columns(["id", "status"])
    assert columns_path() == xdg / "stilts-tui" / "columns.json" and columns_path().is_file()
    assert load_columns() == ["id", "status"]
    assert not (no_overrides / "keymap-home").exists()  # nothing written to ~/.config


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_without_an_absolute_xdg_config_home_the_settings_are_in_dot_config(no_overrides, monkeypatch, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    home = no_overrides / "keymap-home"
    assert config_dir() == home / ".config" / "stilts-tui"
    save_columns(["id"])
    assert (home / ".config" / "stilts-tui" / "columns.json").is_file()


def test_the_variables_name_the_files_over_the_settings_folder(no_overrides, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(no_overrides / "xdg"))
    monkeypatch.setenv(Env.KEYMAP, str(no_overrides / "k.toml"))
    monkeypatch.setenv(Env.COLUMNS, str(no_overrides / "c.json"))
    assert keymap_path() == no_overrides / "k.toml" and columns_path() == no_overrides / "c.json"
