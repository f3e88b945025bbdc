"""Making a data directory startable: back up, quarantine, salvage or cut, verify.

The plan is computed from a :class:`~.diagnosis.Diagnosis` and changes
nothing, so ``repair --dry-run`` prints exactly what ``repair`` would do.
The cut starts at the first bad record, or at the first segment after a lost
one, and runs to the end of the journal. When readable records lie in that
range, the default is to salvage them (see :mod:`.salvage`); ``cut_only``
drops them instead. Carrying the plan out:

1. copy every file the repair changes into a new backup folder, fsynced;
2. rename invalid snapshots to ``<name>.quarantine-<time>``;
3. salvage: write a snapshot of the salvaged state with the server's snapshot
   writer, covering the highest readable seq, then cut each damaged segment
   at its first bad byte. Cut only: cut the journal at the cut point, so the
   bytes from there to the end of that segment, and every later segment
   whole, move to quarantine files. Both cut through
   ``recovery.quarantine_tail``, the code a server start uses for a torn tail;
4. cut only: if a dropped record named a job id that is not below the
   recovered next id, write a snapshot with a higher next id, so the server
   never hands out the id of a job a runner may still know;
5. read the directory again as a server start would, to verify.
"""

import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from ..journal import fsync_directory
from ..recovery import quarantine_tail
from ..snapshot import snapshot_name
from .compaction import write_store_snapshot
from .diagnosis import EXIT_CLEAN, Diagnosis, SegmentSummary, diagnose
from .lost_records import CutRange, ids_lost_records_may_hold, read_cut_range
from .salvage import Salvage, SalvageError, plan_salvage

BACKUP_PREFIX = "repair-backup-"


@dataclass
class RepairPlan:
    data_dir: str
    backup_dir: str
    snapshots_to_quarantine: list[str] = field(default_factory=list)
    cuts: list[CutRange] = field(default_factory=list)
    # Why the directory cannot be repaired automatically; None if it can.
    blocked: str | None = None
    # First and last seq that no journal segment contains, if a segment is lost.
    missing_seqs: tuple[int, int] | None = None
    cut_only: bool = False
    # The salvaged state; None when cutting only, or when no readable record
    # follows the cut point, so there is nothing to salvage.
    salvage: Salvage | None = None
    # Salvage: (path, offset) of each damaged segment and its first bad byte.
    damaged: list[tuple[str, int]] = field(default_factory=list)
    # Salvage: an existing snapshot file that the new snapshot replaces, found
    # when planning, so the report still names it after the repair.
    replaced_snapshot: str | None = None

    @property
    def nothing_to_do(self) -> bool:
        return not self.snapshots_to_quarantine and not self.cuts and self.blocked is None

    @property
    def mode(self) -> str:
        return "salvage" if self.salvage is not None else "cut"

    @property
    def segments_to_cut(self) -> list[tuple[str, int]]:
        if self.salvage is not None:
            return self.damaged
        return [(cut.path, cut.offset) for cut in self.cuts]

    @property
    def files_to_back_up(self) -> list[str]:
        replaced = [self.replaced_snapshot] if self.replaced_snapshot is not None else []
        return [*self.snapshots_to_quarantine, *replaced, *(path for path, _ in self.segments_to_cut)]

    @property
    def lost_job_ids(self) -> list[int]:
        if self.salvage is not None:
            return self.salvage.skipped_job_ids
        return sorted({job_id for cut in self.cuts for job_id in cut.job_ids})

    @property
    def lost_records(self) -> int:
        if self.salvage is not None:
            return len(self.salvage.skipped)
        return sum(len(cut.changes) for cut in self.cuts)

    @property
    def unreadable_bytes(self) -> int:
        return sum(length for cut in self.cuts for _, length in cut.unreadable)

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "mode": self.mode,
            "backup_dir": self.backup_dir,
            "files_to_back_up": self.files_to_back_up,
            "snapshots_to_quarantine": self.snapshots_to_quarantine,
            "cuts": [asdict(cut) for cut in self.cuts],
            "segments_to_cut": self.segments_to_cut,
            "salvage": self.salvage.to_dict() if self.salvage is not None else None,
            "lost_records": self.lost_records,
            "lost_job_ids": self.lost_job_ids,
            "unreadable_bytes": self.unreadable_bytes,
            "missing_seqs": self.missing_seqs,
            "blocked": self.blocked,
        }


@dataclass
class RepairResult:
    plan: RepairPlan
    backed_up: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    next_id_raised_to: int | None = None
    after: Diagnosis | None = None

    def to_dict(self) -> dict:
        return {
            **self.plan.to_dict(),
            "backed_up": self.backed_up,
            "quarantined": self.quarantined,
            "next_id_raised_to": self.next_id_raised_to,
            "after": self.after.to_dict() if self.after is not None else None,
        }


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def plan_repair(diagnosis: Diagnosis, backup_root: str | None = None, cut_only: bool = False) -> RepairPlan:
    """Work out what ``repair`` would change; read-only."""
    data_dir = diagnosis.data_dir
    backup_dir = _unused_path(os.path.join(backup_root or data_dir, BACKUP_PREFIX + utc_stamp()))
    plan = RepairPlan(data_dir, backup_dir, cut_only=cut_only)
    report = diagnosis.report
    damage = report.corruption or report.torn_tail
    cut_path, cut_offset = (damage.path, damage.offset) if damage is not None else (None, 0)
    if report.error is not None and report.corruption is None:
        gap = find_seq_gap(diagnosis)
        if gap is None:
            # No valid snapshot, or a record that does not apply: no cut point
            # is known, and guessing one could drop jobs.
            plan.blocked = (
                f"{report.problem or report.error}. Repair cannot fix this automatically; "
                "restore the data directory from a backup"
            )
            return plan
        segment, plan.missing_seqs = gap
        cut_path, cut_offset = segment.path, 0

    plan.snapshots_to_quarantine = [snapshot.path for snapshot in diagnosis.invalid_snapshots]
    if cut_path is None:
        return plan
    plan.cuts.append(read_cut_range(cut_path, cut_offset))
    paths = [segment.path for segment in diagnosis.segments]
    # Segments are listed in seq order, so everything after the cut follows it.
    for path in paths[paths.index(cut_path) + 1:]:
        plan.cuts.append(read_cut_range(path, 0))
    if not cut_only and plan.lost_records:
        try:
            plan.salvage = plan_salvage(data_dir, plan.cuts)
        except SalvageError as exc:
            plan.blocked = f"{exc}. Repair cannot fix this automatically; restore the data directory from a backup"
            return plan
        replaced = os.path.join(data_dir, snapshot_name(plan.salvage.snapshot_seq))
        if os.path.exists(replaced) and replaced not in plan.snapshots_to_quarantine:
            plan.replaced_snapshot = replaced
        plan.damaged = [
            (segment.path, segment.damaged_offset)
            for segment in diagnosis.segments if segment.damaged_offset is not None
        ]
    return plan


def find_seq_gap(diagnosis: Diagnosis) -> tuple[SegmentSummary, tuple[int, int]] | None:
    """Return the first segment that starts after missing seqs, and the missing range.

    A gap between segments means a segment file is lost; the records after it
    cannot be replayed on top of the missing ones.
    """
    last_seq = diagnosis.report.snapshot_seq
    for segment in diagnosis.segments:
        if segment.first_seq is None or segment.last_seq is None or segment.last_seq <= last_seq:
            continue
        if segment.first_seq > last_seq + 1:
            if diagnosis.report.snapshot_loaded is None and last_seq == 0:
                # The start of the history is missing, as when every snapshot
                # is lost: cutting would leave a store without those jobs.
                return None
            return segment, (last_seq + 1, segment.first_seq - 1)
        last_seq = segment.last_seq
    return None


def carry_out(plan: RepairPlan) -> RepairResult:
    """Make the changes of ``plan``; the caller holds the write lock."""
    assert plan.blocked is None
    result = RepairResult(plan)
    stamp = utc_stamp()
    for path in plan.files_to_back_up:
        result.backed_up.append(_back_up(path, plan.backup_dir))
    if result.backed_up:
        fsync_directory(plan.backup_dir)

    for path in plan.snapshots_to_quarantine:
        target = _unused_path(f"{path}.quarantine-{stamp}")
        os.rename(path, target)
        result.quarantined.append(target)
    fsync_directory(plan.data_dir)
    if plan.salvage is not None:
        # The snapshot comes first: once it is in place it covers every
        # salvaged record, so the cuts after it lose nothing it holds.
        write_store_snapshot(plan.data_dir, plan.salvage.store, plan.salvage.snapshot_seq)
    for path, offset in plan.segments_to_cut:
        result.quarantined.append(quarantine_tail(path, offset))
    if plan.salvage is not None:
        result.after = diagnose(plan.data_dir)
        return result

    after = diagnose(plan.data_dir)
    # Every dropped id that can be read, and the ids that unreadable records
    # may have created, stay unused.
    if after.store is not None:
        lost_ids = plan.lost_job_ids
        first_unknown, unknown_count = ids_lost_records_may_hold(plan.cuts, after.report.last_seq, after.store.next_id)
        needed = max(lost_ids[-1] + 1 if lost_ids else 0, first_unknown + unknown_count)
    if after.store is not None and needed > after.store.next_id:
        after.store.next_id = needed
        seq = after.report.last_seq
        existing = os.path.join(plan.data_dir, snapshot_name(seq))
        if os.path.exists(existing):
            result.backed_up.append(_back_up(existing, plan.backup_dir))
            fsync_directory(plan.backup_dir)
        write_store_snapshot(plan.data_dir, after.store, seq)
        result.next_id_raised_to = after.store.next_id
        after = diagnose(plan.data_dir)
    result.after = after
    return result


def succeeded(result: RepairResult) -> bool:
    return result.after is not None and result.after.exit_status == EXIT_CLEAN


def _back_up(path: str, backup_dir: str) -> str:
    """Copy ``path`` into ``backup_dir``, creating that folder on first use."""
    if not os.path.isdir(backup_dir):
        os.makedirs(backup_dir, mode=0o700)
        fsync_directory(os.path.dirname(backup_dir) or ".")
    target = os.path.join(backup_dir, os.path.basename(path))
    shutil.copy2(path, target)
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    return target


def _unused_path(path: str) -> str:
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate
