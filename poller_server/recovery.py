"""Recovery at start: newest valid snapshot, then the journal after it.

Steps, in order:

1. Load the newest snapshot that passes its checksum. An invalid one is
   skipped with a warning and the one before it is tried. If every snapshot
   is invalid, the journal alone is used only when it still starts at seq 1;
   otherwise recovery fails, because jobs would be missing.
2. Replay every journal record after the snapshot's seq, in seq order.
   Records the snapshot already covers are skipped, so a crash between a
   snapshot's rename and the journal's compaction applies nothing twice. A gap
   in the seq numbers fails recovery.
3. A bad record with no valid record after it is a torn tail: the bytes from
   it to the end move to a quarantine file beside the segment and the segment
   is cut there. A bad record followed by valid ones is corruption in the
   middle: recovery fails with the file, the offset and the repair command.

With ``repair=False`` nothing on disk changes and the report describes what
a start would do; ``poller-recover check`` uses that.
"""

import gc
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import msgpack

from .jobs import STATUSES
from .journal import (
    FILE_HEADER,
    MAGIC,
    SMALLEST_CREATE_RECORD,
    VERSION,
    decode_payload,
    encode_record,
    fsync_directory,
    list_segments,
    read_segment,
)
from .snapshot import SnapshotError, list_snapshots, read_snapshot
from .store import JobStore

logger = logging.getLogger(__name__)


class RecoveryError(Exception):
    """The data directory cannot be loaded without losing or inventing jobs.

    ``problem`` is the message without the advice on what to run next, for
    ``poller-recover repair``, which gives its own.
    """

    def __init__(self, problem: str, advice: str = "") -> None:
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem


@dataclass
class SnapshotReport:
    path: str
    seq: int | None
    jobs: int | None
    valid: bool
    error: str | None = None


@dataclass
class SegmentReport:
    path: str
    records: int
    first_seq: int | None
    last_seq: int | None
    size: int


@dataclass
class DamageReport:
    path: str
    offset: int
    bytes: int
    reason: str
    quarantine: str | None = None
    # First and last job id kept from use because the cut bytes may have created them.
    reserved_ids: tuple[int, int] | None = None


@dataclass
class RecoveryReport:
    snapshots: list[SnapshotReport] = field(default_factory=list)
    snapshot_loaded: str | None = None
    snapshot_seq: int = 0
    segments: list[SegmentReport] = field(default_factory=list)
    records_replayed: int = 0
    last_seq: int = 0
    torn_tail: DamageReport | None = None
    corruption: DamageReport | None = None
    error: str | None = None
    # The error without its advice on what to run next.
    problem: str | None = None
    jobs: int = 0
    next_id: int = 1
    status_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def repair_command(data_dir: str) -> str:
    return f"poller-recover repair --data-dir {data_dir}"


def quarantine_name(segment_path: str) -> str:
    """Return an unused quarantine file name for ``segment_path``, stamped with the UTC time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate, number = f"{segment_path}.quarantine-{stamp}", 1
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{segment_path}.quarantine-{stamp}-{number}"
    return candidate


def quarantine_tail(segment_path: str, offset: int, replacement: bytes = b"") -> str:
    """Move the bytes of ``segment_path`` from ``offset`` on into a quarantine file.

    ``replacement``, whole journal records, takes their place. It is written
    over the cut bytes and fsynced before the file is truncated behind it. A
    crash or power cut at any point therefore leaves the old bytes, the
    result, or the new records followed by part of the old bytes, which the
    next start cuts again.
    """
    target = quarantine_name(segment_path)
    with open(segment_path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        # The cut bytes are job data, so they are as private as the journal (mode 0600).
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        if offset < FILE_HEADER.size and not replacement:
            # Not even the file header survived, so the segment contains nothing.
            os.unlink(segment_path)
        else:
            start = offset
            if offset < FILE_HEADER.size:
                start, replacement = 0, FILE_HEADER.pack(MAGIC, VERSION) + replacement
            f.seek(start)
            f.write(replacement)
            # The new records reach the disk before the file shrinks, so a
            # power cut cannot leave a shorter file without them.
            f.flush()
            os.fsync(f.fileno())
            f.truncate(start + len(replacement))
            f.flush()
            os.fsync(f.fileno())
    fsync_directory(os.path.dirname(segment_path) or ".")
    return target


def _torn_tail_reservation(store: JobStore, tail: DamageReport, segment_first_seq: int,
                           last_seq: int) -> dict | None:
    """Plan the id reservation for the job ids that a torn tail's bytes may have created.

    A whole last record whose CRC fails looks like a torn tail, yet it may
    have been acknowledged and a user may hold its job id. Returns None when
    the bytes are too few to hold a create, or when the segment's own first
    record is lost and the reservation could not take its place.
    """
    count = tail.bytes // SMALLEST_CREATE_RECORD
    if count == 0:
        return None
    if tail.offset < FILE_HEADER.size and segment_first_seq != last_seq + 1:
        return None
    return store.plan_reserve_ids(store.next_id + count)


def recover(data_dir: str, repair: bool = True) -> tuple[JobStore, RecoveryReport]:
    """Rebuild the store from ``data_dir``; see the module docstring.

    Raises RecoveryError when the server must not start. The report is
    attached to the exception as ``.report``.
    """
    started = time.monotonic()
    report = RecoveryReport()
    # Loading creates millions of objects but no reference cycles. The cyclic
    # garbage collector would scan them again and again, which made decoding
    # a million-job snapshot about four times slower, so it pauses meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        store = _recover(data_dir, repair, report)
    except RecoveryError as exc:
        report.error = str(exc)
        report.problem = exc.problem
        exc.report = report  # type: ignore[attr-defined]
        raise
    finally:
        if collecting:
            gc.enable()
    report.jobs = len(store)
    report.next_id = store.next_id
    report.status_counts = {status: store.count(status) for status in STATUSES}
    report.seconds = time.monotonic() - started
    return store, report


def _load_snapshot(data_dir: str, store: JobStore, report: RecoveryReport) -> int | None:
    """Load the newest valid snapshot into ``store``; return its seq, or None if none is valid."""
    for seq, path in list_snapshots(data_dir):
        try:
            snapshot = read_snapshot(path)
        except SnapshotError as exc:
            logger.warning("Snapshot %s is invalid, trying an older one: %s", path, exc)
            report.snapshots.append(SnapshotReport(path, seq, None, False, str(exc)))
            continue
        store.load(snapshot.jobs, snapshot.next_id)
        report.snapshots.append(SnapshotReport(path, snapshot.seq, len(snapshot.jobs), True))
        report.snapshot_loaded = path
        report.snapshot_seq = snapshot.seq
        return snapshot.seq
    return None


def _recover(data_dir: str, repair: bool, report: RecoveryReport) -> JobStore:
    store = JobStore()
    segments = list_segments(data_dir)
    base_seq = _load_snapshot(data_dir, store, report)
    if base_seq is None:
        if report.snapshots and not (segments and segments[0][0] == 1):
            raise RecoveryError(
                f"no valid snapshot in {data_dir} and the journal does not start at seq 1, "
                "so jobs would be missing",
                f"restore a snapshot from backup or run '{repair_command(data_dir)}' to see what can be saved",
            )
        if report.snapshots:
            logger.warning("No valid snapshot; rebuilding from the whole journal")
        base_seq = 0

    last_seq = base_seq
    pending_tail: DamageReport | None = None
    pending_first_seq = 0
    for index, (first_seq, path) in enumerate(segments):
        scan, records = read_segment(path, first_seq, None)
        report.segments.append(
            SegmentReport(path, scan.records, records[0].seq if records else None, scan.last_seq, scan.size)
        )
        # Damage followed by more journal, readable or damaged, is not a torn
        # tail: cutting only the last damage would drop the earlier one unseen.
        if pending_tail is not None and (records or scan.bad_offset is not None):
            _fail_corrupt(data_dir, pending_tail, report)
        for record in records:
            if record.seq <= base_seq:
                continue
            if record.seq != last_seq + 1:
                raise RecoveryError(
                    f"journal {path} jumps from seq {last_seq} to {record.seq}: records are missing",
                    f"run '{repair_command(data_dir)}'",
                )
            try:
                store.apply(decode_payload(record.payload))
            except (KeyError, AssertionError, TypeError, ValueError, msgpack.UnpackException) as exc:
                raise RecoveryError(
                    f"journal {path} record seq {record.seq} at offset {record.offset} "
                    f"cannot be applied ({exc!r})",
                    f"run '{repair_command(data_dir)}'",
                ) from exc
            last_seq = record.seq
            report.records_replayed += 1
        if scan.bad_offset is None:
            continue
        damage = DamageReport(path, scan.bad_offset, scan.size - scan.bad_offset, scan.bad_reason or "")
        covered = index + 1 < len(segments) and segments[index + 1][0] <= base_seq + 1
        if covered:
            logger.warning(
                "Journal %s is damaged at offset %d, but the snapshot covers it: %s",
                path, scan.bad_offset, scan.bad_reason,
            )
            continue
        if scan.resync_offset is not None:
            _fail_corrupt(data_dir, damage, report)
        pending_tail, pending_first_seq = damage, first_seq

    if pending_tail is not None:
        report.torn_tail = pending_tail
        reservation = _torn_tail_reservation(store, pending_tail, pending_first_seq, last_seq)
        if not repair and reservation is not None:
            # Report the next id a start would use, without writing anything.
            first_reserved = store.next_id
            store.apply(reservation)
            pending_tail.reserved_ids = (first_reserved, store.next_id - 1)
        if repair:
            replacement = b"" if reservation is None else encode_record(last_seq + 1, reservation)
            first_reserved = store.next_id
            pending_tail.quarantine = quarantine_tail(pending_tail.path, pending_tail.offset, replacement)
            logger.warning(
                "Journal %s had a torn tail: cut %d bytes at offset %d (%s) and moved them to %s",
                pending_tail.path, pending_tail.bytes, pending_tail.offset, pending_tail.reason,
                pending_tail.quarantine,
            )
            if reservation is not None:
                store.apply(reservation)
                last_seq += 1
                pending_tail.reserved_ids = (first_reserved, store.next_id - 1)
                _log_reserved_ids(first_reserved, store.next_id - 1, pending_tail.bytes)
    report.last_seq = last_seq
    return store


def _log_reserved_ids(first: int, last: int, cut_bytes: int) -> None:
    ids = f"Job id {first}" if first == last else f"Job ids {first} to {last}"
    logger.warning("%s will not be handed out: the %d bytes cut from the journal may have created %s",
                   ids, cut_bytes, "it" if first == last else "them")


def _fail_corrupt(data_dir: str, damage: DamageReport, report: RecoveryReport) -> None:
    report.corruption = damage
    raise RecoveryError(
        f"journal {damage.path} is corrupt at offset {damage.offset} ({damage.reason}) "
        "and valid records follow, so starting would silently drop jobs",
        f"run '{repair_command(data_dir)}' to cut and quarantine the damaged part",
    )
