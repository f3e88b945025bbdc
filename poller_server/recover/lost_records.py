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
from ..journal import (
    FILE_HEADER,
    MAGIC,
    SMALLEST_CREATE_RECORD,
    Record,
    _read_record,
    decode_payload,
    find_valid_record,
)


@dataclass
class LostChange:
    seq: int
    offset: int
    op: str
    job_ids: list[int]
    description: str
    # For an id reservation: the next job id it sets.
    reserves_to: int | None = None


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


def ids_lost_records_may_hold(cuts: list[CutRange], applied_seq: int, next_id: int) -> tuple[int, int]:
    """Return the first id that unreadable records in ``cuts`` may have created, and how many.

    ``applied_seq`` is the last seq applied before the damage and
    ``next_id`` the next job id at that point. Ids grow with seqs (an
    import's ids do not, but its reservation record comes first and names
    the highest), so only records lost after the last readable create can
    hold ids above it. These
    are the seqs missing between that create and the last readable record,
    plus as many records as fit in the unreadable bytes after the last one.
    """
    after, first_id = applied_seq, next_id
    seqs = []
    for cut in cuts:
        for change in cut.changes:
            if change.seq <= applied_seq:
                continue
            seqs.append(change.seq)
            known_next_id = _next_id_after(change)
            if known_next_id is not None and change.seq > after:
                after, first_id = change.seq, max(first_id, known_next_id)
    missing = 0
    if seqs:
        missing = max(seqs) - after - sum(1 for seq in seqs if seq > after)

    trailing_bytes = 0
    for cut in cuts:
        last_offset = max((change.offset for change in cut.changes), default=None)
        if last_offset is not None:
            trailing_bytes = 0
        trailing_bytes += sum(length for offset, length in cut.unreadable
                              if last_offset is None or offset > last_offset)
    return first_id, missing + trailing_bytes // SMALLEST_CREATE_RECORD


def ids_created_in_lost_records(cuts: list[CutRange], applied_seq: int, next_id: int) -> list[int]:
    """Return the job ids that lost records must have created: gaps between readable creates.

    Creates take ids in journal order, so when a readable create has an id
    above the one expected, the ids in between were created by records that
    are lost. Imports and id reservations move the expected id up, and ids
    that a readable record names are left out: they are reported with it.
    """
    expected = next_id
    gaps: list[int] = []
    named: set[int] = set()
    for cut in cuts:
        for change in cut.changes:
            if change.seq <= applied_seq:
                continue
            named.update(change.job_ids)
            if change.op == "create":
                created = change.job_ids[0]
                gaps.extend(range(expected, created))
            known_next_id = _next_id_after(change)
            if known_next_id is not None:
                expected = max(expected, known_next_id)
    return [job_id for job_id in gaps if job_id not in named]


def _next_id_after(change: LostChange) -> int | None:
    """Return the next job id that ``change`` implies right after it, or None if it implies none."""
    if change.op in ("create", "import") and change.job_ids:
        return change.job_ids[0] + 1
    return change.reserves_to


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
    elif op == "reserve_ids":
        job_ids = []
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
    elif op == "reserve_ids":
        text = f"raise the next job id to {change['next_id']}"
    elif op == "claim":
        text = f"claim job {change['job_id']} by runner {change.get('runner')!r}"
    else:
        text = f"{op} job {change['job_id']}" if job_ids else op
    reserves_to = change["next_id"] if op == "reserve_ids" else None
    return LostChange(record.seq, record.offset, op, job_ids, text, reserves_to)
