"""Offline snapshots: write the recovered state as a snapshot and compact the journal."""

import asyncio
import os
from dataclasses import dataclass

from ..jobs import now_ms
from ..journal import Journal, list_segments
from ..snapshot import install_snapshot, list_snapshots, snapshot_name, write_snapshot_file
from ..snapshotter import compact
from ..store import JobStore
from .access import load_for_write


@dataclass
class CompactionResult:
    snapshot: str
    seq: int
    jobs: int
    removed: list[str]


def write_store_snapshot(data_dir: str, store: JobStore, seq: int) -> str:
    """Write ``store`` as the snapshot covering journal seq ``seq``; return its path.

    Uses the server's writer: temporary file, fsync, rename, directory fsync.
    """
    tmp_path = os.path.join(data_dir, snapshot_name(seq) + ".tmp")
    write_snapshot_file(tmp_path, seq, store.next_id, now_ms(), len(store), store.dump())
    return install_snapshot(data_dir, tmp_path, seq)


def compact_data_dir(data_dir: str) -> CompactionResult:
    """Snapshot the recovered state and remove what the server's compaction would.

    The caller holds the write lock. The steps follow a snapshot taken by the
    running server: start a new journal segment, write the snapshot, compact.
    """
    store, report = load_for_write(data_dir)
    before = {path for _, path in list_segments(data_dir)} | {path for _, path in list_snapshots(data_dir)}

    # An empty segment after the last record marks where the covered ones
    # end, so compaction can remove the last full one too.
    journal = Journal(data_dir, report.last_seq + 1, "always")
    segment_path = journal.segment_path
    asyncio.run(journal.close())
    _fsync_file(segment_path)

    path = write_store_snapshot(data_dir, store, report.last_seq)
    compact(data_dir)
    after = {path for _, path in list_segments(data_dir)} | {path for _, path in list_snapshots(data_dir)}
    return CompactionResult(path, report.last_seq, len(store), sorted(before - after))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
