"""The score table of a plan: statistics per (intermediate, target) and its exports.

Textual-free; matplotlib only for the figures. docs/results.md states every statistic. The package by
concern, each module importing only those above it in this list:

- ``cell``: the data (``Cell``, ``ScoreTable``);
- ``stats``: bootstrap intervals and the paired sign-flip test;
- ``failed``: the failed-run rule (the majority-class score of a target's dev set);
- ``notes``: the words: a cell's text, the legend, the lines under the table, a run's status in a note;
- ``table``: ``build``, the ledger's target runs and their result.json files grouped into cells;
- ``text``: CSV, JSON, markdown, LaTeX, rich;
- ``figure``: the study's figure (png, pdf, svg);
- ``files``: the formats, a plan's export path, the atomic write.

This module is the face the rest of the project reads (``from stilts_tui import results``).
"""

from __future__ import annotations

from stilts_tui.results.cell import Cell, ScoreTable
from stilts_tui.results.failed import FAILED_NOTE
from stilts_tui.results.figure import _panel, figures_available  # _panel: the figure's test draws one panel
from stilts_tui.results.files import EXTENSIONS, FIGURES, FORMATS, export_bytes, export_path, format_for, write_output
from stilts_tui.results.notes import (
    STD_NOTE,
    failed_text,
    footnotes,
    gain_style,
    gain_text,
    predicted_text,
    pruned_text,
    target_label,
    test_note,
    view_gain,
    view_value,
)
from stilts_tui.results.stats import (
    MC_RESAMPLES,
    bootstrap_gain,
    min_attainable_p,
    paired,
    paired_bootstrap,
    sign_flip_test,
)
from stilts_tui.results.table import build
from stilts_tui.results.text import CSV_FIELDS, render, to_rich

__all__ = [
    "CSV_FIELDS",
    "EXTENSIONS",
    "FAILED_NOTE",
    "FIGURES",
    "FORMATS",
    "MC_RESAMPLES",
    "STD_NOTE",
    "Cell",
    "ScoreTable",
    "_panel",
    "bootstrap_gain",
    "build",
    "export_bytes",
    "export_path",
    "failed_text",
    "figures_available",
    "footnotes",
    "format_for",
    "gain_style",
    "gain_text",
    "min_attainable_p",
    "paired",
    "paired_bootstrap",
    "predicted_text",
    "pruned_text",
    "render",
    "sign_flip_test",
    "target_label",
    "test_note",
    "to_rich",
    "view_gain",
    "view_value",
    "write_output",
]
