"""Writing changes offline: the store's plan/apply seam, appended through the server's Journal."""

import asyncio

from ..journal import Journal
from ..store import Change, JobStore

# The tool always waits for the disk, whatever fsync policy the server uses.
FSYNC_POLICY = "always"


def commit_changes(data_dir: str, store: JobStore, next_seq: int, changes: list[Change]) -> list[int]:
    """Append ``changes`` to a new journal segment, apply each, fsync; return their seqs.

    Each change is applied only after its append succeeded, as the server
    does. Raises JournalError if an append fails; changes appended before it
    stay in the journal and are fsynced.
    """
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
