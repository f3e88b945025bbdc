"""The data directory: creating it and holding its lock.

One process at a time may use a data directory. The lock is an ``flock`` on
``DATA_DIR/lock``. The kernel drops it when the process dies, even by
``kill -9``, so a crashed server never leaves a stale lock behind.
"""

import fcntl
import os

from .errors import StartupError, describe_os_error


class DataDirLocked(Exception):
    """Another process holds the data directory's lock."""


LOCK_NAME = "lock"


def lock_data_dir(data_dir: str) -> int:
    """Create ``data_dir`` if needed, take its lock, and return the lock's file descriptor."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise StartupError(f"data directory {data_dir!r} (--data-dir) is not a directory; choose another --data-dir")
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError(
            f"data directory {data_dir!r} (--data-dir) cannot be used: {describe_os_error(exc)} ({exc.filename!r}); "
            "check the path and its permissions, or choose another --data-dir"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.read(fd, 64).decode(errors="replace").strip()
        finally:
            os.close(fd)
        holder_text = f" (process {holder})" if holder else ""
        raise DataDirLocked(
            f"data directory {data_dir!r} is in use by another poller process{holder_text}; "
            "stop it first or choose another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def unlock_data_dir(fd: int) -> None:
    os.close(fd)
