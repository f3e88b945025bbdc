"""Writing changes offline: the store's plan/apply seam, appended through the server's Journal."""

import asyncio
import os
import shutil
import tempfile

from ..journal import IMPORT_STAGING_PREFIX, Journal, fsync_directory, list_segments
from ..store import Change, JobStore

# The tool always waits for the disk, whatever fsync policy the server uses.
FSYNC_POLICY = "always"


def commit_changes(data_dir: str, store: JobStore, next_seq: int, changes: list[Change],
                   all_or_nothing: bool = False) -> list[int]:
    """Append ``changes`` to a new journal segment, apply each, fsync; return their seqs.

    Each change is applied only after its append succeeded, as the server
    does. Raises JournalError or OSError if an append or the fsync fails;
    changes appended before the failure then stay in the journal.

    With ``all_or_nothing`` the segment is written in a temporary folder
    inside ``data_dir`` and renamed into place only once all of it is on
    disk, so a failure, Ctrl-C or crash leaves the directory as it was (a
    leftover folder is removed by the next start). ``store`` must be thrown
    away after a failure.
    """
    if not all_or_nothing:
        return _append_changes(data_dir, store, next_seq, changes)
    staging = tempfile.mkdtemp(prefix=IMPORT_STAGING_PREFIX, dir=data_dir)
    try:
        seqs = _append_changes(staging, store, next_seq, changes)
        for _, path in list_segments(staging):
            os.rename(path, os.path.join(data_dir, os.path.basename(path)))
        fsync_directory(data_dir)
        return seqs
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
