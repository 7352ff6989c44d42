"""The one duration format, shared by train.log's ETA and the app's ETA column."""

from __future__ import annotations

from stilts_tui.fmt import duration


def test_a_duration_shows_hours_only_when_there_are_some():
    assert duration(None) == ""  # no estimate yet: an empty cell, not 0:00
    assert duration(0) == "0:00" and duration(59.9) == "0:59" and duration(61) == "1:01"
    assert duration(3599) == "59:59" and duration(3600) == "1:00:00" and duration(90061) == "25:01:01"
    assert duration(-5) == "0:00"  # a clock that went backwards is no time left, not a negative one
