"""The one reader of JSON files from disk (store/rundir.read_json): a FIFO, a directory or a device in a
file's place is never opened in a way that blocks, nor read; an oversized or deeply nested file is damaged."""

from __future__ import annotations

import json
import os
import threading

from stilts_tui.store import rundir


def test_a_fifo_in_a_files_place_is_not_read_and_never_blocks(tmp_path):
    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)
    got: list = []
    t = threading.Thread(target=lambda: got.append(rundir.read_json(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the reader blocked on a FIFO"
    assert got == [None]


def test_a_directory_or_a_device_is_not_a_file(tmp_path):
    (tmp_path / "spec.json").mkdir()
    assert rundir.read_json(tmp_path / "spec.json") is None
    assert rundir.read_bytes(tmp_path / "spec.json") is None
    assert rundir.read_json(os.devnull) is None  # a character device


def test_an_oversized_or_deeply_nested_file_is_damaged(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "a" * 2000}))
    assert rundir.read_json(big, limit=1000) is None
    assert rundir.read_json(big)["x"] == "a" * 2000
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 100 + "]" * 100 + "}")
    assert rundir.read_json(deep) is None
    deeper = tmp_path / "deeper.json"
    deeper.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert rundir.read_json(deeper) is None
    fine = tmp_path / "fine.json"
    fine.write_text('{"a": [[{"b": [1]}]]}')
    assert rundir.read_json(fine) == {"a": [[{"b": [1]}]]}
