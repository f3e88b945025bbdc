"""Salvage: keep the readable journal records that follow damage, when they still apply.

A repair that only cuts drops every record after the first bad one, even
the many that still pass their CRC. Salvage rebuilds the state instead:

1. load the newest valid snapshot and replay the journal up to the first
   cut, as a server start does;
2. take every record in the cut ranges that passes its CRC, in journal
   order. Apply it when its seq is above the last one applied and the
   store's ``apply`` accepts it with the checks recovery makes: a job it
   changes exists, and a job it creates does not. Any other record is
   skipped and reported with its seq and job ids;
3. set the next job id above every id that any readable record names. Each
   record lost after the last readable create (a gap in the seqs, or
   unreadable bytes at the end) may have been an acknowledged create, so
   one more id is skipped for each;
4. plan a snapshot of the result covering the highest readable seq, so a
   server start replays nothing from the damaged journal.

Everything here runs in memory and changes no file; :mod:`.repair` writes
the snapshot and cuts the damaged segments.
"""

from dataclasses import dataclass, field

import msgpack

from ..journal import Record, decode_payload, list_segments, read_segment
from ..snapshot import SnapshotError, list_snapshots, read_snapshot
from ..store import JobStore
from .lost_records import (
    CutRange,
    describe,
    ids_created_in_lost_records,
    ids_lost_records_may_hold,
    readable_records,
)

# The errors recovery takes as "this record cannot be applied", plus
# AttributeError, which the store raises for an operation it does not know.
APPLY_ERRORS = (KeyError, AssertionError, TypeError, ValueError, AttributeError, msgpack.UnpackException)


class SalvageError(Exception):
    """The state before the damage cannot be rebuilt, so nothing can be salvaged."""


@dataclass
class SalvagedRecord:
    seq: int
    path: str
    offset: int
    description: str
    job_ids: list[int]
    # Why the record was not applied; None for an applied one.
    reason: str | None = None


@dataclass
class Salvage:
    store: JobStore
    # Seq the new snapshot covers: the highest readable seq, so no damaged
    # or salvaged record is replayed again.
    snapshot_seq: int
    # Ids skipped past for records that could not be read and may have
    # created jobs, so that no id a user was given is handed out again.
    reserved_ids: int = 0
    # Ids that lost records must have created, seen as gaps between readable
    # creates; no readable record names them.
    created_in_lost_records: list[int] = field(default_factory=list)
    applied: list[SalvagedRecord] = field(default_factory=list)
    skipped: list[SalvagedRecord] = field(default_factory=list)

    @property
    def next_id(self) -> int:
        return self.store.next_id

    @property
    def skipped_job_ids(self) -> list[int]:
        return sorted({job_id for record in self.skipped for job_id in record.job_ids})

    def to_dict(self) -> dict:
        return {
            "snapshot_seq": self.snapshot_seq,
            "next_id": self.next_id,
            "reserved_ids": self.reserved_ids,
            "created_in_lost_records": self.created_in_lost_records,
            "jobs": len(self.store),
            "applied": [vars(record) for record in self.applied],
            "skipped": [vars(record) for record in self.skipped],
        }


def plan_salvage(data_dir: str, cuts: list[CutRange]) -> Salvage:
    """Rebuild the state with every readable record that still applies; see the module docstring."""
    store = JobStore()
    last_seq = _load_newest_snapshot(data_dir, store)
    cut_offsets = {cut.path: cut.offset for cut in cuts}
    readable: list[tuple[str, Record]] = []
    reached_cut = False
    for first_seq, path in list_segments(data_dir):
        cut_offset = cut_offsets.get(path)
        if not reached_cut:
            _, records = read_segment(path, first_seq, None)
            for record in records:
                if cut_offset is not None and record.end > cut_offset:
                    break
                if record.seq > last_seq:
                    _replay(store, path, record)
                    last_seq = record.seq
        if cut_offset is not None:
            reached_cut = True
            records, _ = readable_records(path, cut_offset, [])
            readable.extend((path, record) for record in records)

    salvage = Salvage(store, last_seq)
    first_lost_id, lost_creates = ids_lost_records_may_hold(cuts, last_seq, store.next_id)
    salvage.created_in_lost_records = ids_created_in_lost_records(cuts, last_seq, store.next_id)
    highest_id = 0
    for path, record in readable:
        lost = describe(record)
        entry = SalvagedRecord(record.seq, path, record.offset, lost.description, lost.job_ids)
        highest_id = max([highest_id, *lost.job_ids])
        salvage.snapshot_seq = max(salvage.snapshot_seq, record.seq)
        if record.seq <= last_seq:
            entry.reason = f"seq {record.seq} is not above seq {last_seq}, the last one applied"
        else:
            entry.reason = _apply(store, record)
        if entry.reason is None:
            last_seq = record.seq
            salvage.applied.append(entry)
        else:
            salvage.skipped.append(entry)
    # A skipped create, or a record naming a job whose create was lost, still
    # shows an id that users or runners may know: never hand it out again.
    # Each record lost after the last readable create may have created the
    # next id in turn, so those ids are skipped too.
    without_lost = max(store.next_id, highest_id + 1)
    store.next_id = max(without_lost, first_lost_id + lost_creates)
    salvage.reserved_ids = store.next_id - without_lost
    return salvage


def _load_newest_snapshot(data_dir: str, store: JobStore) -> int:
    for _, path in list_snapshots(data_dir):
        try:
            snapshot = read_snapshot(path)
        except SnapshotError:
            continue
        store.load(snapshot.jobs, snapshot.next_id)
        return snapshot.seq
    return 0


def _replay(store: JobStore, path: str, record: Record) -> None:
    try:
        store.apply(decode_payload(record.payload))
    except APPLY_ERRORS as exc:
        # Recovery would have stopped here too, so repair blocks before salvage.
        raise SalvageError(f"journal {path} record seq {record.seq} cannot be applied ({exc!r})") from exc


def _apply(store: JobStore, record: Record) -> str | None:
    """Apply ``record`` if it still fits the state; return None, or why it was skipped."""
    try:
        change = decode_payload(record.payload)
        reason = _precheck(store, change)
        if reason is None:
            store.apply(change)
    except APPLY_ERRORS as exc:
        reason = f"cannot be applied ({exc!r})"
    return reason


def _precheck(store: JobStore, change: dict) -> str | None:
    """Name the usual reasons a change no longer fits, before ``apply`` touches anything."""
    op = change["op"]
    if op in ("bulk", "reserve_ids"):
        return None
    if op in ("create", "import"):
        job_id = change["job_id"] if op == "create" else change["job"][0]
        return f"job {job_id} already exists" if job_id in store.jobs else None
    job_id = change["job_id"]
    if job_id not in store.jobs:
        return f"job {job_id} does not exist: the record that created it is lost, or the job was deleted"
    return None
