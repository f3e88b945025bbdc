"""Writing snapshots while the server runs, and compacting the journal after.

A snapshot is taken in four steps:

1. the journal is fsynced and a new segment starts; the snapshot covers every
   seq before it (``Journal.rotate``);
2. the process forks, as Redis does for its RDB files, and the child writes
   the store it inherited to a temporary file and fsyncs it. The parent keeps
   serving; copy-on-write keeps the child's view fixed at step 1;
3. the parent renames the file into place and fsyncs the directory;
4. compaction: all but the two newest snapshots are removed, and so is every
   journal segment that the older of the two covers. Keeping that older
   snapshot and the journal after it lets recovery fall back to it if the
   newest snapshot turns out to be damaged.
"""

import asyncio
import gc
import logging
import os
import resource
import shutil
import signal
import time

from .jobs import now_ms
from .journal import IMPORT_STAGING_PREFIX, Journal, fsync_directory, list_segments
from .snapshot import install_snapshot, list_snapshots, snapshot_name, write_snapshot_file
from .store import JobStore

logger = logging.getLogger(__name__)

SNAPSHOTS_KEPT = 2
# Set by crash tests only: kill the process, or slow the snapshot writer, at a chosen point.
TEST_HOOK_ENV = "POLLER_TEST_HOOK"


class SnapshotFailed(Exception):
    pass


class Snapshotter:
    def __init__(self, data_dir: str, store: JobStore, journal: Journal, interval: float, every: int) -> None:
        self.data_dir = data_dir
        self.store = store
        self.journal = journal
        self.interval = interval
        self.every = every
        self.last_snapshot_time: float | None = None
        self.last_duration = 0.0
        self.last_error: str | None = None
        self._running: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._timer = asyncio.ensure_future(self._run_timer())

    async def _run_timer(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.request()

    def after_commit(self) -> None:
        """Start a snapshot once enough journal records have piled up."""
        if self.every and self.journal.records_since_rotate >= self.every:
            self.request()

    def request(self) -> None:
        if self._running is None:
            self._running = asyncio.ensure_future(self._take_logged())

    async def _take_logged(self) -> None:
        try:
            await self.take(fork=True)
        except Exception as exc:  # logged, retried at the next trigger
            self.last_error = str(exc)
            logger.exception("Snapshot failed; the journal keeps every change, retrying later")
        finally:
            self._running = None

    async def wait_idle(self) -> None:
        if self._running is not None:
            await asyncio.shield(self._running)

    async def take(self, fork: bool = True) -> str:
        """Write a snapshot of the store and compact the journal; return its path."""
        started = time.monotonic()
        seq = await self.journal.rotate()
        tmp_path = os.path.join(self.data_dir, snapshot_name(seq) + ".tmp")
        next_id, count, written = self.store.next_id, len(self.store), now_ms()
        if fork:
            await self._write_in_child(tmp_path, seq, next_id, written, count)
        else:
            write_snapshot_file(tmp_path, seq, next_id, written, count, self.store.dump())
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(None, install_snapshot, self.data_dir, tmp_path, seq)
        if os.environ.get(TEST_HOOK_ENV) == "crash-after-snapshot-rename":
            os.kill(os.getpid(), signal.SIGKILL)
        await loop.run_in_executor(None, compact, self.data_dir)
        # Jobs that made it into a snapshot are long-lived; as after recovery,
        # move them out of the garbage collector's full scans.
        gc.freeze()
        self.last_snapshot_time = time.time()
        self.last_duration = time.monotonic() - started
        self.last_error = None
        logger.info(
            "Snapshot %s written: %d jobs, seq %d, %.0f ms", path, count, seq, 1000 * self.last_duration
        )
        return path

    async def _write_in_child(self, tmp_path: str, seq: int, next_id: int, written: int, count: int) -> None:
        pid = os.fork()
        if pid == 0:
            # Child: write and leave at once, running no cleanup of the parent's.
            # It closes every inherited descriptor first, so that it never holds
            # the data directory's lock or the listening sockets: a server
            # restarted after the parent died would otherwise wait for it.
            code = 1
            try:
                os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                if os.environ.get(TEST_HOOK_ENV) == "slow-snapshot-child":
                    time.sleep(3)
                write_snapshot_file(tmp_path, seq, next_id, written, count, self.store.dump())
                code = 0
            finally:
                os._exit(code)
        loop = asyncio.get_running_loop()
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            raise SnapshotFailed(f"snapshot writer process exited with status {os.waitstatus_to_exitcode(status)}")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def compact(data_dir: str) -> None:
    """Remove old snapshots and the journal segments the kept ones make unneeded."""
    snapshots = list_snapshots(data_dir)
    for _, path in snapshots[SNAPSHOTS_KEPT:]:
        os.unlink(path)
    kept = snapshots[:SNAPSHOTS_KEPT]
    if not kept:
        return
    oldest_kept_seq = kept[-1][0]
    segments = list_segments(data_dir)
    for (first_seq, path), (next_first_seq, _) in zip(segments, segments[1:]):
        # A segment's records end where the next segment starts.
        if next_first_seq - 1 <= oldest_kept_seq:
            os.unlink(path)
    fsync_directory(data_dir)


def remove_temporary_files(data_dir: str) -> None:
    """Delete snapshot files a crash left half-written, and imports a crash left unfinished."""
    for name in os.listdir(data_dir):
        path = os.path.join(data_dir, name)
        if name.startswith("snapshot-") and name.endswith(".tmp"):
            os.unlink(path)
        elif name.startswith(IMPORT_STAGING_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path)
