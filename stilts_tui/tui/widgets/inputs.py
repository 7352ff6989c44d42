"""Inputs that apply every key in the order it was typed.

Textual inserts a printable key in the focused Input's own key handler, but an editing key bound by
the Input (backspace, delete, ctrl+u, left, home, ...) runs its action only once the key has bubbled
up to the App through the message queue of every widget above the Input. Keys that arrive together
(typed at normal speed on a busy machine, pasted, or sent by a terminal multiplexer) are then applied
out of order: "queue", eight backspaces and "pause" left "qu" in the command palette ("queuepause"
less eight). These inputs run their own bindings in their key handler, so each key is applied before
the next one is read.
"""

from __future__ import annotations

from textual import events
from textual.command import CommandInput, CommandList, CommandPalette, SearchIcon
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, LoadingIndicator


class InOrder:
    """Mixin for an Input: its own bound keys are applied at once, not after bubbling to the App."""

    async def _on_key(self, event: events.Key) -> None:
        for binding in self._bindings.key_to_bindings.get(event.key, []):
            if binding.action and self.check_action(binding.action, ()) is not False:
                event.stop()
                event.prevent_default()
                await self.run_action(binding.action)
                return
        await super()._on_key(event)


class KeysToInput:
    """Mixin for a screen with one input that takes every key. Keys the screen gets before its input
    exists (the screen was pushed by the key before them; its input mounts a moment later) are held
    and typed into the input once it has focus; keys that come while it exists but has no focus go
    straight into it. Before, they fell through to the app's keys ("o" opened the scores, "q" quit)."""

    async def on_key(self, event: events.Key) -> None:
        box = self.query(Input).first() if self.query(Input) else None
        if box is not None and (box.has_focus or event.key == "escape"):
            return
        if box is not None and not (event.is_printable or event.key in box._bindings.key_to_bindings):
            return
        event.stop()
        event.prevent_default()
        if box is None:
            self.__dict__.setdefault("_held_keys", []).append(event)
            return
        box.focus()
        await box._on_key(event)

    async def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        box = self.query(Input).first() if self.query(Input) else None
        for held in self.__dict__.pop("_held_keys", []) if box is not None else []:
            await box._on_key(held)


class KeyedInput(InOrder, Input):
    """An Input whose keys are applied in the order they were typed."""


class KeyedCommandInput(InOrder, CommandInput):
    """The command palette's input, with its keys applied in order."""


class Palette(KeysToInput, CommandPalette):
    """Textual's command palette with a :class:`KeyedCommandInput` (its layout as Textual composes it)."""

    def compose(self):
        with Vertical(id="--container"):
            with Horizontal(id="--input"):
                yield SearchIcon()
                yield KeyedCommandInput(placeholder=self._placeholder, select_on_focus=False)
                if not self.run_on_select:
                    yield Button("\u25b6")
            with Vertical(id="--results"):
                yield CommandList()
                yield LoadingIndicator()
