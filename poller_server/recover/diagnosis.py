"""Reading a data directory without changing it: what a server start would do with it.

The verdict comes from :func:`poller_server.recovery.recover` with
``repair=False``, the same code a server start runs. Around it, every
snapshot and every journal segment is summarized on its own, because
recovery stops at the first error and does not look at older snapshots.
"""

import os
from dataclasses import asdict, dataclass, field

from ..journal import list_segments, read_segment
from ..recovery import RecoveryError, RecoveryReport, SnapshotReport, recover
from ..snapshot import SnapshotError, list_snapshots, read_snapshot
from ..store import JobStore

# Exit statuses of ``check``; ``repair`` uses the same numbers for its result.
EXIT_CLEAN = 0
EXIT_STARTS_AFTER_REPAIR = 1
EXIT_WOULD_NOT_START = 2


@dataclass
class SegmentSummary:
    path: str
    size: int
    records: int
    first_seq: int | None
    last_seq: int | None
    # Offset of the first bad byte and why it is bad; None for a clean segment.
    damaged_offset: int | None = None
    damage_reason: str | None = None
    # Offset of a valid record after the damage: corruption in the middle.
    resync_offset: int | None = None


@dataclass
class Diagnosis:
    data_dir: str
    report: RecoveryReport
    snapshots: list[SnapshotReport]
    segments: list[SegmentSummary]
    temporary_files: list[str] = field(default_factory=list)
    quarantine_files: list[str] = field(default_factory=list)
    # The recovered store, or None when recovery fails.
    store: JobStore | None = None

    @property
    def invalid_snapshots(self) -> list[SnapshotReport]:
        return [snapshot for snapshot in self.snapshots if not snapshot.valid]

    @property
    def exit_status(self) -> int:
        if self.report.error is not None:
            return EXIT_WOULD_NOT_START
        if self.report.torn_tail is not None or self.invalid_snapshots:
            return EXIT_STARTS_AFTER_REPAIR
        return EXIT_CLEAN

    @property
    def verdict(self) -> str:
        status = self.exit_status
        if status == EXIT_WOULD_NOT_START:
            return f"the server would refuse to start: {self.report.error}"
        if status == EXIT_STARTS_AFTER_REPAIR:
            reasons = []
            if self.report.torn_tail is not None:
                reasons.append("cut the torn journal tail")
            if self.invalid_snapshots:
                count = len(self.invalid_snapshots)
                reasons.append(f"skip {count} invalid snapshot" + ("" if count == 1 else "s"))
            return "the server would start after it had to " + " and ".join(reasons)
        if not self.snapshots and not self.segments:
            return "the server would start cleanly, with no jobs: the directory contains no snapshot or journal"
        return "the server would start cleanly"

    def to_dict(self) -> dict:
        report = self.report
        return {
            "data_dir": self.data_dir,
            "exit_status": self.exit_status,
            "verdict": self.verdict,
            "snapshots": [asdict(snapshot) for snapshot in self.snapshots],
            "snapshot_loaded": report.snapshot_loaded,
            "segments": [asdict(segment) for segment in self.segments],
            "torn_tail": asdict(report.torn_tail) if report.torn_tail else None,
            "corruption": asdict(report.corruption) if report.corruption else None,
            "error": report.error,
            "records_replayed": report.records_replayed,
            "last_seq": report.last_seq if self.store is not None else None,
            "jobs": len(self.store) if self.store is not None else None,
            "next_id": self.store.next_id if self.store is not None else None,
            "status_counts": report.status_counts if self.store is not None else None,
            "temporary_files": self.temporary_files,
            "quarantine_files": self.quarantine_files,
        }


def diagnose(data_dir: str) -> Diagnosis:
    """Read ``data_dir`` as a server start would, changing nothing; see the module docstring."""
    store: JobStore | None
    try:
        store, report = recover(data_dir, repair=False)
    except RecoveryError as exc:
        store, report = None, exc.report  # type: ignore[attr-defined]
    names = sorted(os.listdir(data_dir))
    return Diagnosis(
        data_dir=data_dir,
        report=report,
        snapshots=_summarize_snapshots(data_dir, report),
        segments=[summarize_segment(path, first_seq) for first_seq, path in list_segments(data_dir)],
        temporary_files=[os.path.join(data_dir, n) for n in names if n.startswith("snapshot-") and n.endswith(".tmp")],
        quarantine_files=[os.path.join(data_dir, n) for n in names if "quarantine" in n],
        store=store,
    )


def _summarize_snapshots(data_dir: str, report: RecoveryReport) -> list[SnapshotReport]:
    checked = {entry.path: entry for entry in report.snapshots}
    summaries = []
    for seq, path in list_snapshots(data_dir):
        entry = checked.get(path)
        if entry is not None:
            summaries.append(entry)
            continue
        # Older than the one recovery loaded: read it too, because it is the
        # fallback if the newest one is ever damaged.
        try:
            snapshot = read_snapshot(path)
        except SnapshotError as exc:
            summaries.append(SnapshotReport(path, seq, None, False, str(exc)))
        else:
            summaries.append(SnapshotReport(path, snapshot.seq, len(snapshot.jobs), True))
    return summaries


def summarize_segment(path: str, first_seq: int) -> SegmentSummary:
    scan, records = read_segment(path, first_seq, None)
    return SegmentSummary(
        path=path,
        size=scan.size,
        records=scan.records,
        first_seq=records[0].seq if records else None,
        last_seq=scan.last_seq,
        damaged_offset=scan.bad_offset,
        damage_reason=scan.bad_reason,
        resync_offset=scan.resync_offset,
    )
