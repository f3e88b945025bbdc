"""Decoding what can still be read from journal bytes that a repair sets aside.

A cut range contains damaged bytes and, after them, records that still pass
their CRC. Those records are changes the server acknowledged and that the
repair drops, so their job ids are listed for the operator to re-submit or
check. The jobs touched by damaged bytes cannot be known: those bytes are
reported as ranges only.
"""

from dataclasses import dataclass, field

import msgpack

# NOTE: _read_record is the journal's own record decoder; it is private there
# but reusing it keeps the record framing parsed in one place only.
from ..journal import FILE_HEADER, MAGIC, Record, _read_record, decode_payload, find_valid_record


@dataclass
class LostChange:
    seq: int
    offset: int
    op: str
    job_ids: list[int]
    description: str


@dataclass
class CutRange:
    """Bytes of one file that a repair moves to quarantine, and what they contained."""

    path: str
    offset: int
    bytes: int
    changes: list[LostChange] = field(default_factory=list)
    # (offset, length) of byte ranges that hold no record passing its CRC.
    unreadable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def job_ids(self) -> list[int]:
        return sorted({job_id for change in self.changes for job_id in change.job_ids})


def read_cut_range(path: str, offset: int) -> CutRange:
    """Decode the bytes of the segment ``path`` from ``offset`` to its end."""
    cut = CutRange(path, offset, 0)
    records, cut.bytes = readable_records(path, offset, cut.unreadable)
    for record in records:
        cut.changes.append(describe(record))
    return cut


def readable_records(path: str, offset: int, unreadable: list[tuple[int, int]]) -> tuple[list[Record], int]:
    """Return the records of ``path`` from ``offset`` on that pass their CRC, and the byte count.

    The ranges between them that hold no such record are added to ``unreadable``.
    """
    with open(path, "rb") as f:
        data = f.read()
    start = offset
    if offset == 0 and len(data) >= FILE_HEADER.size and FILE_HEADER.unpack_from(data)[0] == MAGIC:
        start = FILE_HEADER.size
    elif offset < FILE_HEADER.size:
        # The file header itself is damaged: look for records anywhere.
        start = 0
    return _scan(data, start, unreadable), len(data) - offset


def _scan(data: bytes, start: int, unreadable: list[tuple[int, int]]) -> list[Record]:
    records = []
    offset = start
    while offset < len(data):
        record, _ = _read_record(data, offset, None)
        if record is not None:
            records.append(record)
            offset = record.end
            continue
        resync = find_valid_record(data, offset + 1, None)
        end = len(data) if resync is None else resync
        unreadable.append((offset, end - offset))
        offset = end
    return records


def describe(record: Record) -> LostChange:
    try:
        change = decode_payload(record.payload)
        op = change["op"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return LostChange(record.seq, record.offset, "unknown", [], "a record whose payload cannot be decoded")
    if op == "import":
        job_ids = [change["job"][0]]
    elif "job_id" in change:
        job_ids = [change["job_id"]]
    else:
        job_ids = []

    if op == "create":
        text = f"create job {change['job_id']} for user {change['user']!r}"
    elif op == "import":
        text = f"import job {job_ids[0]} for user {change['job'][1]!r}"
    elif op == "move":
        text = f"move job {change['job_id']} to {change['status']}"
    elif op == "bulk":
        scope = f"of user {change['user']!r}" if change.get("user") is not None else "of every user"
        text = f"set all jobs {scope} to {change['status']} (job ids not recorded)"
    elif op == "claim":
        text = f"claim job {change['job_id']} by runner {change.get('runner')!r}"
    else:
        text = f"{op} job {change['job_id']}" if job_ids else op
    return LostChange(record.seq, record.offset, op, job_ids, text)
