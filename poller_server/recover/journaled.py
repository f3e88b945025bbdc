"""Writing changes offline: the store's plan/apply seam, appended through the server's Journal."""

import asyncio
import os

from ..errors import JournalError
from ..journal import Journal, fsync_directory, list_segments
from ..store import Change, JobStore

# The tool always waits for the disk, whatever fsync policy the server uses.
FSYNC_POLICY = "always"


def commit_changes(data_dir: str, store: JobStore, next_seq: int, changes: list[Change],
                   all_or_nothing: bool = False) -> list[int]:
    """Append ``changes`` to a new journal segment, apply each, fsync; return their seqs.

    Each change is applied only after its append succeeded, as the server
    does. Raises JournalError or OSError if an append or the fsync fails.
    Changes appended before the failure then stay in the journal, unless
    ``all_or_nothing``: the new segment is removed, so the directory is as
    it was and ``store`` must be thrown away.
    """
    try:
        return _append_changes(data_dir, store, next_seq, changes)
    except (JournalError, OSError):
        if all_or_nothing:
            for first_seq, path in list_segments(data_dir):
                if first_seq >= next_seq:
                    os.unlink(path)
            fsync_directory(data_dir)
        raise


def _append_changes(data_dir: str, store: JobStore, next_seq: int, changes: list[Change]) -> list[int]:
    journal = Journal(data_dir, next_seq, FSYNC_POLICY)
    seqs = []
    try:
        for change in changes:
            seqs.append(journal.write(change))
            store.apply(change)
    finally:
        # close() waits for an fdatasync of the segment and an fsync of the
        # directory, so the records are on disk when it returns.
        asyncio.run(journal.close())
    return seqs
