"""The screen's keys on one line, as Textual's Footer shows them, but one widget built once.

Textual's Footer is a widget per key, rebuilt whenever the bindings or the screen change; closing the
add-plan prompt rebuilt the queue screen's and restyled its keys, and the next key waited 100-230 ms
for it (bench/tui.py, during adds; without the Footer, a prompt's close and the next key took half as
long under Pilot). This bar is one Static: written at mount (the keymap's keys, as remapped), rewritten
only when the screen's keys change, each key clickable as in the Footer."""

from __future__ import annotations

from textual.widgets import Static


def literal(text: str) -> str:
    """``text`` as itself in Textual's markup: every ``[`` escaped (``markup.escape`` leaves a lone one,
    as the ``[`` key shows, which then breaks the line); a backslash, the one key that would escape what
    follows it, is named."""
    return text.replace("\\", "backslash").replace("[", "\\[")


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom; height: 1; width: 1fr; padding: 0 1;
        background: $footer-background; color: $footer-description-foreground;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    """

    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self._text: str | None = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.call_after_refresh(self.show_keys)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen) -> None:
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self.show_keys)

    def show_keys(self) -> None:
        """Write the keys the screen has now (nothing when they are the ones shown)."""
        text = self.keys_text()
        if text != self._text:
            self._text = text
            self.update(text)

    def keys_text(self) -> str:
        screen, app = self.screen, self.app
        parts, seen, palette = [], set(), None
        for node, binding, enabled, _tooltip in screen.active_bindings.values():
            if binding.key == app.COMMAND_PALETTE_BINDING and app.ENABLE_COMMAND_PALETTE:
                palette = binding
                continue
            if not binding.show or binding.action in seen or not enabled:
                continue
            seen.add(binding.action)
            where = "app" if node is app else "screen" if node is screen else "focused"
            key = literal(app.get_key_display(binding))
            action = literal(f"{where}.{binding.action}")
            parts.append(f"[@click={action}][b $footer-key-foreground]{key}[/] {literal(binding.description)}[/]")
        if palette is not None:
            parts.append(f"[b $footer-key-foreground]{literal(app.get_key_display(palette))}[/] palette")
        return "  ".join(parts)
