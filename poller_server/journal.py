"""The append-only journal: framed msgpack records in numbered segment files.

File layout (all integers big-endian)::

    segment file  journal-<first seq, 20 digits>.log
    +-------------------------------+
    | magic  b"POLLJRNL"   8 bytes  |   file header, 16 bytes
    | format version u32 = 1        |
    | reserved       4 zero bytes   |
    +-------------------------------+
    | length u32 | seq u64 | crc u32 |   record header, 16 bytes
    | payload: msgpack, length bytes|
    +-------------------------------+
    | ... more records ...          |

``seq`` grows by exactly one per record across all segments. ``crc`` is the
CRC32 of the 8 seq bytes followed by the payload, so a damaged length, seq or
payload all fail the check. The payload is one change as planned by
:class:`poller_server.store.JobStore`.

A reader stops at the first record that is short, fails its CRC, or breaks
the seq order. If no valid record follows anywhere in the journal, the bad
bytes are a torn tail from a crash mid-write, and recovery cuts them off. If a
valid record follows, the journal is corrupt in the middle, and recovery
refuses to guess: see :mod:`poller_server.recovery`.

Writing: :meth:`Journal.write` appends with ``os.write`` on the event loop
(a page-cache copy) and returns the record's seq. :meth:`Journal.sync` waits
until that seq is on disk according to the fsync policy. Under ``always``
one ``fdatasync`` in a worker thread covers every record written before it
started, so concurrent requests share it (group commit).
"""

import asyncio
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from .errors import JournalError

logger = logging.getLogger(__name__)

MAGIC = b"POLLJRNL"
VERSION = 1
FILE_HEADER = struct.Struct(">8sI4x")
RECORD_HEADER = struct.Struct(">IQI")
SEQ = struct.Struct(">Q")
# Requests are bounded by the body size limit, so a larger length field can
# only be damage. Checking it avoids reading gigabytes on a corrupt header.
MAX_RECORD_SIZE = 64 * 1024 * 1024

SEGMENT_PATTERN = re.compile(r"^journal-(\d{20})\.log$")
FSYNC_POLICIES = ("always", "everysec", "no")


def segment_name(first_seq: int) -> str:
    return "journal-%020d.log" % first_seq


def list_segments(data_dir: str) -> list[tuple[int, str]]:
    """Return ``(first seq, path)`` of every journal segment, in seq order."""
    found = []
    for name in os.listdir(data_dir):
        match = SEGMENT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(data_dir, name)))
    return sorted(found)


def encode_record(seq: int, change: dict) -> bytes:
    payload = msgpack.packb(change, use_bin_type=True)
    seq_bytes = SEQ.pack(seq)
    crc = zlib.crc32(payload, zlib.crc32(seq_bytes))
    return RECORD_HEADER.pack(len(payload), seq, crc) + payload


# Prefix of the folders in the data directory where poller-recover stages an
# import's segment until all of it is on disk. A start removes leftover ones.
IMPORT_STAGING_PREFIX = "import-staging-"

# Minimum size in bytes of a record that creates a job. A torn or unreadable
# stretch of journal contains at most its length divided by it in creates,
# which bounds the job ids it may have handed out.
SMALLEST_CREATE_RECORD = len(encode_record(0, {"op": "create", "job_id": 0, "user": "", "config": b"", "ts": 0}))


def decode_payload(payload: bytes) -> dict:
    return msgpack.unpackb(payload, raw=False)


@dataclass
class Record:
    seq: int
    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER.size + len(self.payload)


@dataclass
class SegmentScan:
    """Summary of one segment as read: its good records and where damage starts."""

    path: str
    first_seq: int
    size: int
    records: int = 0
    last_seq: int | None = None
    good_end: int = 0
    # Offset of the first bad byte range, and why it is bad; None if clean.
    bad_offset: int | None = None
    bad_reason: str | None = None
    # Offset of a valid record after the bad range: corruption in the middle.
    resync_offset: int | None = None
    header_ok: bool = True


def _read_record(data: bytes, offset: int, expected_seq: int | None) -> tuple[Record | None, str]:
    """Decode the record at ``offset``; return it, or None and the reason it is bad."""
    if offset + RECORD_HEADER.size > len(data):
        return None, "truncated record header"
    length, seq, crc = RECORD_HEADER.unpack_from(data, offset)
    if length > MAX_RECORD_SIZE:
        return None, f"record length {length} exceeds the maximum"
    start = offset + RECORD_HEADER.size
    if start + length > len(data):
        return None, "truncated record payload"
    payload = data[start:start + length]
    if zlib.crc32(payload, zlib.crc32(SEQ.pack(seq))) != crc:
        return None, "CRC mismatch"
    if expected_seq is not None and seq != expected_seq:
        return None, f"sequence number {seq} where {expected_seq} was expected"
    return Record(seq, offset, payload), ""


def find_valid_record(data: bytes, start: int, after_seq: int | None) -> int | None:
    """Return the offset of the first valid record at or after ``start``, or None.

    A valid record here passes its CRC and has a seq above ``after_seq``. The
    search tries every offset, which is slow only for long damaged ranges.
    """
    for offset in range(start, len(data) - RECORD_HEADER.size + 1):
        record, _ = _read_record(data, offset, None)
        if record is not None and (after_seq is None or record.seq > after_seq):
            return offset
    return None


def read_segment(path: str, first_seq: int, expected_seq: int | None) -> tuple[SegmentScan, list[Record]]:
    """Read a whole segment and return its scan summary and its good records.

    ``expected_seq`` is the seq the first record must carry (None: take the
    file name's). Records after the first bad one are not returned.
    """
    with open(path, "rb") as f:
        data = f.read()
    scan = SegmentScan(path=path, first_seq=first_seq, size=len(data))
    records: list[Record] = []
    if len(data) < FILE_HEADER.size or FILE_HEADER.unpack_from(data)[0] != MAGIC:
        scan.header_ok = False
        scan.bad_offset = 0
        scan.bad_reason = "missing or invalid file header"
        resync = find_valid_record(data, 0, None)
        scan.resync_offset = resync
        return scan, records
    magic, version = FILE_HEADER.unpack_from(data)
    if version != VERSION:
        scan.header_ok = False
        scan.bad_offset = 0
        scan.bad_reason = f"unsupported journal format version {version}"
        scan.resync_offset = 0
        return scan, records

    offset = FILE_HEADER.size
    expected = first_seq if expected_seq is None else expected_seq
    while offset < len(data):
        record, reason = _read_record(data, offset, expected)
        if record is None:
            scan.bad_offset = offset
            scan.bad_reason = reason
            scan.resync_offset = find_valid_record(data, offset + 1, scan.last_seq)
            break
        records.append(record)
        scan.records += 1
        scan.last_seq = record.seq
        expected = record.seq + 1
        offset = record.end
    scan.good_end = offset if scan.bad_offset is None else scan.bad_offset
    return scan, records


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Appends changes to the current segment and makes them durable.

    One instance per data directory, used from the event loop thread only;
    the fsync itself runs in a worker thread.
    """

    def __init__(self, data_dir: str, next_seq: int, fsync: str = "always") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"invalid fsync policy {fsync!r}: must be one of {', '.join(FSYNC_POLICIES)}")
        self.data_dir = data_dir
        self.fsync_policy = fsync
        self.next_seq = next_seq
        self.synced_seq = next_seq - 1
        self.records_since_rotate = 0
        self.last_sync_time = time.monotonic()
        self.last_sync_seconds = 0.0
        self.sync_count = 0
        self.synced_records = 0
        # Totals since start for the metrics: successful appends and fsyncs, and their time.
        self.append_count = 0
        self.append_seconds_total = 0.0
        self.sync_seconds_total = 0.0
        # Set while appends fail (disk full, I/O error); cleared by the next
        # successful append. A failed fsync is sticky: see _sync_loop.
        self.append_error: str | None = None
        self.sync_error: str | None = None
        self._fd = -1
        self._offset = 0
        self._dir_dirty = False
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._sync_task: asyncio.Task | None = None
        self._everysec_task: asyncio.Task | None = None
        self._open_segment(next_seq)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def failing(self) -> bool:
        return self.append_error is not None or self.sync_error is not None

    def _open_segment(self, first_seq: int) -> None:
        path = os.path.join(self.data_dir, segment_name(first_seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            header = FILE_HEADER.pack(MAGIC, VERSION)
            if os.write(fd, header) != len(header):
                raise OSError("short write of the journal file header")
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._offset = FILE_HEADER.size
        self._dir_dirty = True
        self.segment_path = path

    def write(self, change: dict) -> int:
        """Append ``change`` and return its seq; raise JournalError if it failed.

        On failure the file is cut back to where it was, so no partial record
        stays behind, and the caller must not apply the change.
        """
        if self.sync_error is not None:
            raise JournalError(self.sync_error)
        seq = self.next_seq
        started = time.monotonic()
        data = encode_record(seq, change)
        start = self._offset
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            except OSError:
                logger.exception("Journal %s could not be cut back to offset %d", self.segment_path, start)
            self.append_error = f"journal append failed: {exc.strerror or exc}"
            logger.error("Journal append of seq %d failed: %s", seq, exc)
            raise JournalError(self.append_error) from exc
        if self.append_error is not None:
            logger.info("Journal appends succeed again from seq %d", seq)
            self.append_error = None
        self._offset = start + len(data)
        self.next_seq = seq + 1
        self.records_since_rotate += 1
        self.append_count += 1
        self.append_seconds_total += time.monotonic() - started
        return seq

    async def sync(self, seq: int) -> None:
        """Wait until ``seq`` is as durable as the fsync policy promises."""
        if self.fsync_policy == "always":
            await self.flush(seq)

    async def flush(self, seq: int | None = None) -> None:
        """Wait until every record up to ``seq`` (default: all written) is fsynced."""
        if seq is None:
            seq = self.last_seq
        if seq <= self.synced_seq:
            return
        if self.sync_error is not None:
            raise JournalError(self.sync_error)
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        if self._sync_task is None:
            self._sync_task = asyncio.ensure_future(self._sync_loop())
        await future

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters or self.synced_seq < self.last_seq:
                target = self.last_seq
                fd, dir_dirty = self._fd, self._dir_dirty
                self._dir_dirty = False
                started = time.monotonic()
                try:
                    await loop.run_in_executor(None, self._sync_files, fd, dir_dirty)
                except OSError as exc:
                    # After a failed fsync the kernel may have dropped the dirty
                    # pages, so a later fsync can succeed without the data being
                    # on disk. Stop taking writes instead of acknowledging them.
                    self.sync_error = f"journal fsync failed: {exc.strerror or exc}; restart the server"
                    logger.critical("Journal fsync of %s failed: %s", self.segment_path, exc)
                    for _, future in self._waiters:
                        if not future.done():
                            future.set_exception(JournalError(self.sync_error))
                    self._waiters = []
                    return
                self.last_sync_seconds = time.monotonic() - started
                self.sync_seconds_total += self.last_sync_seconds
                self.last_sync_time = time.monotonic()
                self.sync_count += 1
                self.synced_records += target - self.synced_seq
                self.synced_seq = target
                waiting = []
                for seq, future in self._waiters:
                    if seq <= target:
                        if not future.done():
                            future.set_result(None)
                    else:
                        waiting.append((seq, future))
                self._waiters = waiting
                if self.fsync_policy != "always" and not self._waiters:
                    break
        finally:
            self._sync_task = None

    def _sync_files(self, fd: int, dir_dirty: bool) -> None:
        os.fdatasync(fd)
        if dir_dirty:
            fsync_directory(self.data_dir)

    def start_background_sync(self) -> None:
        """Start the once-a-second fsync that the ``everysec`` policy promises."""
        if self.fsync_policy == "everysec" and self._everysec_task is None:
            self._everysec_task = asyncio.ensure_future(self._everysec_loop())

    async def _everysec_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.synced_seq < self.last_seq and self._sync_task is None:
                self._sync_task = asyncio.ensure_future(self._sync_loop())

    async def rotate(self) -> int:
        """Fsync the current segment, start a new one, and return the last seq before it.

        The switch happens without yielding to the event loop after the last
        check, so the caller can copy the state covered by the returned seq
        before any other change applies.
        """
        while True:
            target = self.last_seq
            await self.flush(target)
            if self.last_seq == target:
                break
        if self._offset > FILE_HEADER.size:
            self._open_segment(self.next_seq)
        self.records_since_rotate = 0
        return target

    async def close(self) -> None:
        if self._everysec_task is not None:
            self._everysec_task.cancel()
            self._everysec_task = None
        if self.sync_error is None:
            await self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def iter_changes(records: list[Record]) -> Iterator[tuple[int, dict]]:
    for record in records:
        yield record.seq, decode_payload(record.payload)
