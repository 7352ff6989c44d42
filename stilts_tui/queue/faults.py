"""Whose an error is, for the tick's one rule (`queue/tick.py`): an error while the tick handles one run is
that run's (it is failed with one line, the queue goes on), unless it is the machine's (a full or
read-only disk, no file handles or memory, an unwritable ledger): failing runs one by one would not help
there, so the tick ends and the daemon backs off."""

from __future__ import annotations

import errno

from stilts_tui.queue.runfiles import BadRun
from stilts_tui.store.ledger import LedgerError

MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO}
)


def machine_error(e: BaseException) -> bool:
    """Is ``e`` an error of the machine rather than of the run being handled?"""
    if isinstance(e, BadRun):
        return False
    return isinstance(e, (LedgerError, MemoryError)) or (isinstance(e, OSError) and e.errno in MACHINE_ERRNOS)
