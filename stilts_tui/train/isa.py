"""Inductor's check of the CPU's vector instructions, paid once per cache directory, not once a process.

Before its first CPU kernel in a process, inductor checks which vector instruction sets the CPU claims
(avx512_vnni, avx512 and avx2 on this VM) its C++ compiler can build and load: it compiles a test
program per set (kept in its cache directory) and, in every process, cache warm or not, starts a Python
per set to load it. On this 2-core VM that is 11.6 s in a fresh cache and 2.1 s in every later process,
inside the first compiled step whatever is compiled (bench/compile_regional.py prints it apart).

:func:`settle`, before a process's first CPU compile, tells inductor the sets are good
(``config.cpp.vec_isa_ok``) when a record in the cache says every set the CPU claims passed with this
compiler, this torch and this CPU; else it runs inductor's check at once and records it where it passed
them all. A set that failed is never recorded, so every process checks again, as inductor does. The
record is read and written only through store/files.py: a record that is a FIFO, a directory, a symlink
or nested too deep is absent, and is written again (never through a planted link).
``TORCHINDUCTOR_VEC_ISA_OK`` in the environment wins. Only x86 Linux has the sets this covers.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

from stilts_tui.store import rundir

RECORD = "stilts-vec-isa.json"


def _applies() -> bool:
    return sys.platform == "linux" and platform.machine() == "x86_64" and "TORCHINDUCTOR_VEC_ISA_OK" not in os.environ


def _cache() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


@functools.cache
def _fingerprint() -> str:
    """What the check's outcome depends on: the compiler (its version text), torch, the CPU's sets."""
    import torch
    from torch._inductor import cpu_vec_isa
    from torch._inductor.cpp_builder import get_compiler_version_info, get_cpp_compiler

    flags = ",".join(sorted(cpu_vec_isa.x86_isa_checker()))
    return f"{get_compiler_version_info(get_cpp_compiler())}|{torch.__version__}|{flags}"


def _claimed() -> list[str]:
    """The sets inductor checks on this CPU (as ``valid_vec_isa_list`` chooses them, before the build)."""
    from torch._inductor import cpu_vec_isa

    cpu = cpu_vec_isa.x86_isa_checker()
    return [str(isa) for isa in cpu_vec_isa.supported_vec_isa_list if all(f in cpu for f in str(isa).split())]


def _use(cache: Path) -> list[str] | None:
    """The record's sets where it is whole and of this compiler, torch and CPU, else None."""
    rec = rundir.read_json(cache / RECORD, 4096, nofollow=True)  # a FIFO, folder, link or deep nesting: none
    isa = rec.get("isa") if isinstance(rec, dict) else None
    if not (isinstance(isa, list) and isa and all(isinstance(x, str) for x in isa)):
        return None
    return isa if rec.get("fingerprint") == _fingerprint() and isa == _claimed() else None


def _check(cache: Path) -> list[str] | None:
    """Inductor's own check, now; recorded (whole or not at all) where it passed every claimed set."""
    from torch._inductor import cpu_vec_isa

    passed = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
    if not passed or passed != _claimed():
        return None
    _record(cache / RECORD, {"fingerprint": _fingerprint(), "isa": passed})
    return passed


def _record(path: Path, record: dict) -> None:
    """Write the record whole (the one atomic writer: an unguessable temporary name, replaced over a
    symlink, never written through one). A record that is a directory is taken away first where it is
    empty; one that cannot be replaced is left, unrecorded: the next process checks again, never fails."""
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            pass
    try:
        rundir.write_json_atomic(path, record)  # another process may be reading it
    except (OSError, rundir.DamagedFile):
        pass


def settle(cache: Path | None = None) -> tuple[list[str] | None, str]:
    """Before a process's first CPU compile: the sets and how they are known, ``"record"`` (the cache's)
    or ``"checked"`` (inductor's check, run now and recorded), with inductor told they are good; or
    ``(None, why)``, inductor left to check as it does. Every process that compiles is told the same
    (``vec_isa_ok`` is part of inductor's cache keys: a process told otherwise would compile cold)."""
    if not _applies():
        return None, "not x86 Linux, or TORCHINDUCTOR_VEC_ISA_OK set"
    from torch._inductor import config

    if config.cpp.vec_isa_ok is not None:
        return None, f"already set ({config.cpp.vec_isa_ok})"
    folder = cache or _cache()
    for how, find in (("record", _use), ("checked", _check)):
        isa = find(folder)
        if isa:
            config.cpp.vec_isa_ok = True
            return isa, how
    return None, "a set the CPU claims failed inductor's check"
