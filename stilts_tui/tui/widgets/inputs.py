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


class KeyedInput(InOrder, Input):
    """An Input whose keys are applied in the order they were typed."""


class KeyedCommandInput(InOrder, CommandInput):
    """The command palette's input, with its keys applied in order."""


class Palette(CommandPalette):
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
