"""Opening a data directory offline: its lock, and its state as a server start would load it."""

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..datadir import LOCK_NAME, DataDirLocked, lock_data_dir, unlock_data_dir
from ..recovery import RecoveryReport, recover
from ..snapshotter import remove_temporary_files
from ..store import JobStore

logger = logging.getLogger(__name__)


class DataDirUnusable(Exception):
    """The data directory named on the command line does not exist or is not a directory."""


def check_data_dir(data_dir: str, may_be_missing: bool) -> bool:
    """Return whether ``data_dir`` exists; raise DataDirUnusable if it cannot be used.

    A path that exists but is not a directory is never usable. A missing one
    is an error unless ``may_be_missing`` (``import`` creates the directory).
    """
    if not data_dir:
        raise DataDirUnusable("invalid --data-dir '': pass the server's data directory")
    if os.path.isdir(data_dir):
        return True
    if os.path.lexists(data_dir):
        raise DataDirUnusable(f"data directory {data_dir!r} is not a directory; pass the server's --data-dir")
    if not may_be_missing:
        raise DataDirUnusable(f"data directory {data_dir!r} does not exist; pass the server's --data-dir")
    # It will be created: the nearest folder above it that exists must be a directory.
    parent = os.path.dirname(os.path.abspath(data_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DataDirUnusable(
            f"data directory {data_dir!r} cannot be created: {parent!r} is not a directory; "
            "pass a --data-dir under a directory"
        )
    return False


@contextmanager
def locked(data_dir: str, write: bool, create: bool = False) -> Iterator[None]:
    """Hold the data directory's lock for the duration of the block.

    Raises DataDirLocked while a server (or another ``poller-recover``) holds
    it. A read-only hold writes nothing, not even this process's id into the
    lock file, so ``check`` and ``--dry-run`` leave every byte as it was.
    """
    check_data_dir(data_dir, may_be_missing=create)
    fd = lock_data_dir(data_dir) if write else _lock_read_only(data_dir)
    try:
        yield
    finally:
        if fd is not None:
            unlock_data_dir(fd)


def _lock_read_only(data_dir: str) -> int | None:
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        # No server has opened this directory yet, and a read cannot harm one
        # that starts now, so there is nothing to wait for.
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        holder_text = f" (process {holder})" if holder else ""
        raise DataDirLocked(
            f"data directory {data_dir} is in use by another poller process{holder_text}"
        ) from None
    return fd


def load_for_write(data_dir: str) -> tuple[JobStore, RecoveryReport]:
    """Recover the store exactly as a server start does, torn-tail cut included.

    Raises RecoveryError when the server would refuse to start; the caller
    must hold the write lock.
    """
    remove_temporary_files(data_dir)
    store, report = recover(data_dir, repair=True)
    if report.torn_tail is not None:
        logger.warning(
            "Journal %s had a torn tail: %d bytes at offset %d moved to %s, as a server start would",
            report.torn_tail.path, report.torn_tail.bytes, report.torn_tail.offset, report.torn_tail.quarantine,
        )
    return store, report
