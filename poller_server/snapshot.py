"""Snapshots: the whole store as one msgpack file with a checksum.

File layout (integers big-endian)::

    snapshot-<seq, 20 digits>.msgpack
    +--------------------------------------+
    | magic b"POLLSNAP" | version u32 | 4 0 |  header, 16 bytes
    +--------------------------------------+
    | msgpack map: seq, next_id, jobs,     |  body
    |   written (epoch ms)                 |
    | msgpack array of jobs, each an array |
    +--------------------------------------+
    | magic b"SNAPEND1" | body length u64  |  trailer, 20 bytes
    | crc32 of the body u32                |
    +--------------------------------------+

``seq`` is the last journal seq the snapshot covers; recovery replays only
records after it. A file whose trailer is missing, whose length does not
match, or whose CRC fails is invalid as a whole, and recovery falls back to
the snapshot before it.

A snapshot is written to ``<name>.tmp``, fsynced, renamed into place, and
the directory is fsynced, so a crash leaves either the old files or the
new one, never a half file under a snapshot name.
"""

import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from .journal import fsync_directory

MAGIC = b"POLLSNAP"
TRAILER_MAGIC = b"SNAPEND1"
VERSION = 1
HEADER = struct.Struct(">8sI4x")
TRAILER = struct.Struct(">8sQI")
SNAPSHOT_PATTERN = re.compile(r"^snapshot-(\d{20})\.msgpack$")
WRITE_CHUNK = 1 << 20


class SnapshotError(Exception):
    """A snapshot file is missing, short or fails its checksum."""


def snapshot_name(seq: int) -> str:
    return "snapshot-%020d.msgpack" % seq


def list_snapshots(data_dir: str) -> list[tuple[int, str]]:
    """Return ``(seq, path)`` of every snapshot file, newest first."""
    found = []
    for name in os.listdir(data_dir):
        match = SNAPSHOT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(data_dir, name)))
    return sorted(found, reverse=True)


@dataclass
class Snapshot:
    path: str
    seq: int
    next_id: int
    written: int
    jobs: list[list]


def write_snapshot_file(path: str, seq: int, next_id: int, written: int, count: int, jobs: Iterable[list]) -> int:
    """Write ``jobs`` to ``path`` (a temporary name) and fsync it; return its size.

    Called in the forked child while the server runs, so it must not touch the
    event loop, logging or any lock.
    """
    packer = msgpack.Packer(use_bin_type=True)
    crc = 0
    length = 0
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION))
        # The jobs form one msgpack array, so a reader decodes them in one call.
        buffer = [
            packer.pack({"seq": seq, "next_id": next_id, "jobs": count, "written": written}),
            packer.pack_array_header(count),
        ]
        buffered = sum(map(len, buffer))
        for record in jobs:
            chunk = packer.pack(record)
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_CHUNK:
                data = b"".join(buffer)
                crc = zlib.crc32(data, crc)
                length += len(data)
                f.write(data)
                buffer, buffered = [], 0
        data = b"".join(buffer)
        crc = zlib.crc32(data, crc)
        length += len(data)
        f.write(data)
        f.write(TRAILER.pack(TRAILER_MAGIC, length, crc))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def install_snapshot(data_dir: str, tmp_path: str, seq: int) -> str:
    """Rename a finished temporary snapshot into place and fsync the directory."""
    path = os.path.join(data_dir, snapshot_name(seq))
    os.rename(tmp_path, path)
    fsync_directory(data_dir)
    return path


def read_snapshot(path: str) -> Snapshot:
    """Read and verify a snapshot file; raise SnapshotError naming what is wrong."""
    match = SNAPSHOT_PATTERN.match(os.path.basename(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SnapshotError(f"snapshot {path} cannot be read: {exc}") from exc

    if len(data) < HEADER.size + TRAILER.size:
        raise SnapshotError(f"snapshot {path} is too short ({len(data)} bytes)")
    magic, version = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"snapshot {path} has no valid header")
    if version != VERSION:
        raise SnapshotError(f"snapshot {path} has unsupported format version {version}")
    trailer_magic, length, crc = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    body = memoryview(data)[HEADER.size:len(data) - TRAILER.size]
    if trailer_magic != TRAILER_MAGIC or length != len(body):
        raise SnapshotError(f"snapshot {path} is incomplete (no valid trailer)")
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"snapshot {path} fails its CRC check")

    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(body) + 1)
    unpacker.feed(body)
    del body, data
    try:
        meta = unpacker.unpack()
        jobs = unpacker.unpack()
        if not isinstance(meta, dict) or not isinstance(jobs, list):
            raise ValueError("unexpected layout")
        unpacker.unpack()
    except msgpack.OutOfData:
        pass
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SnapshotError(f"snapshot {path} cannot be decoded: {exc}") from exc
    else:
        raise SnapshotError(f"snapshot {path} has data after its job list")

    if len(jobs) != meta["jobs"]:
        raise SnapshotError(f"snapshot {path} contains {len(jobs)} jobs but its header lists {meta['jobs']}")
    if match and int(match.group(1)) != meta["seq"]:
        raise SnapshotError(f"snapshot {path} covers seq {meta['seq']}, which does not match its file name")
    return Snapshot(path=path, seq=meta["seq"], next_id=meta["next_id"], written=meta["written"], jobs=jobs)
