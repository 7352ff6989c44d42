"""Inductor's CPU vector-ISA check is paid once per cache directory: the first process runs it and
records it; a later one takes the record, but only one that is whole and of this compiler, torch and
CPU (a missing, damaged, other-shaped or other-machine record means the check runs again and the record
is written whole). Every process ends with inductor told the same, since that is part of its cache keys.
Real inductor checks (the first in a process compiles its test programs; the rest reuse them). A second
real trainer process that takes the record is in test_compile_regional.py's warm-start test."""

from __future__ import annotations

import json
import platform
import sys

import pytest

from stilts_tui.train import isa


@pytest.fixture
def inductor_config(monkeypatch):
    """Inductor not yet told (what a new process has), on the x86 Linux the check covers (CI's)."""
    from torch._inductor import config

    assert sys.platform == "linux" and platform.machine() == "x86_64"

    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)
    monkeypatch.setattr(config.cpp, "vec_isa_ok", None)
    return config


def _record(folder) -> dict:
    return json.loads((folder / isa.RECORD).read_text())


def test_the_first_process_checks_and_records_and_the_next_takes_the_record(tmp_path, inductor_config):
    sets, how = isa.settle(tmp_path)
    assert how == "checked" and sets and inductor_config.cpp.vec_isa_ok is True
    assert _record(tmp_path)["isa"] == sets
    inductor_config.cpp.vec_isa_ok = None  # the next process
    assert isa.settle(tmp_path) == (sets, "record")
    assert inductor_config.cpp.vec_isa_ok is True


@pytest.mark.parametrize(
    "rec",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"fingerprint": "gcc 1.0|0.1|avx2", "isa": ["avx2"]}),  # another compiler, torch or CPU
        json.dumps({"isa": ["avx2"]}),
        json.dumps({"fingerprint": None, "isa": "avx2"}),
        json.dumps({"fingerprint": "x", "isa": [1]}),
        "",
    ],
    ids=["not-json", "a-list", "other-machine", "no-fingerprint", "isa-a-string", "isa-not-strings", "empty"],
)
def test_a_damaged_or_foreign_record_is_never_taken_the_check_runs_and_writes_it_whole(tmp_path, inductor_config, rec):
    (tmp_path / isa.RECORD).write_text(rec)
    sets, how = isa.settle(tmp_path)
    assert how == "checked" and sets
    assert _record(tmp_path) == {"fingerprint": isa._fingerprint(), "isa": sets}


def test_a_record_of_other_sets_than_the_cpu_claims_is_not_taken(tmp_path, inductor_config):
    (tmp_path / isa.RECORD).write_text(json.dumps({"fingerprint": isa._fingerprint(), "isa": ["avx2", "amx_tile"]}))
    assert isa.settle(tmp_path)[1] == "checked"


def test_the_environment_or_an_earlier_setting_wins(tmp_path, inductor_config, monkeypatch):
    inductor_config.cpp.vec_isa_ok = False
    assert isa.settle(tmp_path)[0] is None and inductor_config.cpp.vec_isa_ok is False
    inductor_config.cpp.vec_isa_ok = None
    monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
    assert isa.settle(tmp_path)[0] is None and inductor_config.cpp.vec_isa_ok is None
    assert not (tmp_path / isa.RECORD).exists()
