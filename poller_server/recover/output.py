"""Human-readable reports of each subcommand; ``--json`` prints the ``to_dict()`` forms instead."""

import os
from collections.abc import Callable

from ..jobs import STATUSES
from .diagnosis import Diagnosis
from .job_import import EXISTS, ImportPlan
from .lost_records import CutRange
from .repair import RepairPlan, RepairResult

Print = Callable[[str], None]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_diagnosis(diagnosis: Diagnosis, say: Print) -> None:
    report = diagnosis.report
    say(f"Data directory: {diagnosis.data_dir}")

    say("Snapshots:" if diagnosis.snapshots else "Snapshots: none")
    for snapshot in diagnosis.snapshots:
        name = os.path.basename(snapshot.path)
        if snapshot.valid:
            loaded = ", loaded" if snapshot.path == report.snapshot_loaded else ""
            say(f"  {name}: valid, seq {snapshot.seq}, {plural(snapshot.jobs or 0, 'job')}{loaded}")
        else:
            say(f"  {name}: INVALID: {snapshot.error}")

    say("Journal segments:" if diagnosis.segments else "Journal segments: none")
    for segment in diagnosis.segments:
        name = os.path.basename(segment.path)
        records = f"{plural(segment.records, 'record')}, seq {segment.first_seq} to {segment.last_seq}" if segment.records else "no records"
        say(f"  {name}: {records}, {segment.size} bytes")
        if segment.damaged_offset is not None:
            after = (
                f"; valid records follow at offset {segment.resync_offset}"
                if segment.resync_offset is not None else "; no valid record follows"
            )
            say(
                f"    damaged at offset {segment.damaged_offset} ({segment.damage_reason}), "
                f"{segment.size - segment.damaged_offset} bytes to the end of the file{after}"
            )

    if report.torn_tail is not None:
        tail = report.torn_tail
        say(
            f"Torn tail: {tail.path} at offset {tail.offset}, {tail.bytes} bytes ({tail.reason}); "
            "a server start cuts it and moves the bytes to a quarantine file"
        )
    if report.corruption is not None:
        bad = report.corruption
        say(f"Corrupt record: {bad.path} at offset {bad.offset}, {bad.bytes} bytes to the end ({bad.reason})")
    for path in diagnosis.temporary_files:
        say(f"Temporary file (a server start deletes it): {path}")
    for path in diagnosis.quarantine_files:
        say(f"Quarantine file from an earlier cut: {path}")

    if diagnosis.store is not None:
        counts = ", ".join(f"{status} {report.status_counts.get(status, 0)}" for status in STATUSES)
        say(f"Jobs: {len(diagnosis.store)} ({counts}); next id {diagnosis.store.next_id}; last seq {report.last_seq}")
    else:
        say("Jobs: unknown, because recovery stops at the error")
    say(f"Verdict: {diagnosis.verdict} (exit status {diagnosis.exit_status})")


def print_cut(cut: CutRange, say: Print) -> None:
    say(f"  {cut.path}: {cut.bytes} bytes from offset {cut.offset}")
    for change in cut.changes:
        say(f"    seq {change.seq} at offset {change.offset}: {change.description}")
    for offset, length in cut.unreadable:
        say(f"    {length} bytes at offset {offset} hold no readable record: the jobs they touched cannot be known")


def print_plan(plan: RepairPlan, say: Print, dry_run: bool) -> None:
    verb = "would" if dry_run else "will"
    if plan.blocked is not None:
        say(f"Repair is not possible: {plan.blocked}")
        return
    if plan.nothing_to_do:
        say("Nothing to repair: the server would start cleanly.")
        return
    if plan.files_to_back_up:
        say(f"Backup folder: {plan.backup_dir}")
    for path in plan.files_to_back_up:
        say(f"  {verb} copy {path}")
    for path in plan.snapshots_to_quarantine:
        say(f"Invalid snapshot {path} {verb} move to a quarantine file")
    if plan.salvage is not None:
        print_salvage(plan, say, verb)
        return
    if plan.cuts:
        say(f"Journal {verb} be cut; these bytes {verb} move to quarantine files:")
        for cut in plan.cuts:
            print_cut(cut, say)
    print_lost(plan, say)


def print_salvage(plan: RepairPlan, say: Print, verb: str) -> None:
    salvage = plan.salvage
    assert salvage is not None
    say(f"Readable records after the damage: {len(salvage.applied) + len(salvage.skipped)}")
    say(f"Applied ({len(salvage.applied)}):" if salvage.applied else "Applied: none")
    for record in salvage.applied:
        say(f"  seq {record.seq} in {os.path.basename(record.path)} at offset {record.offset}: {record.description}")
    say(f"Skipped ({len(salvage.skipped)}):" if salvage.skipped else "Skipped: none")
    for record in salvage.skipped:
        ids = ", ".join(str(job_id) for job_id in record.job_ids) or "none recorded"
        say(f"  seq {record.seq} (job ids: {ids}): {record.description}: {record.reason}")
    ranges = [(cut.path, offset, length) for cut in plan.cuts for offset, length in cut.unreadable]
    say("Unreadable byte ranges:" if ranges else "Unreadable byte ranges: none")
    for path, offset, length in ranges:
        say(f"  {os.path.basename(path)}: {length} bytes at offset {offset}; the records in them cannot be known")
    if plan.missing_seqs is not None:
        first, last = plan.missing_seqs
        say(f"Journal records seq {first} to {last} are missing: no segment file contains them.")
    if salvage.created_in_lost_records:
        ids = ", ".join(str(job_id) for job_id in salvage.created_in_lost_records)
        say(f"Jobs created in the lost records (ids between readable creates that no readable record names): {ids}")
    say(
        f"A snapshot {verb} be written covering seq {salvage.snapshot_seq}: "
        f"{plural(len(salvage.store), 'job')}, next job id {salvage.next_id}"
    )
    if salvage.reserved_ids == 1:
        say(f"Job id {salvage.next_id - 1} {verb} not be handed out: an unreadable record may have created it")
    elif salvage.reserved_ids:
        first = salvage.next_id - salvage.reserved_ids
        say(f"Job ids {first} to {salvage.next_id - 1} {verb} not be handed out: unreadable records "
            "may have created them")
    for path, offset in plan.segments_to_cut:
        say(f"Damaged segment {path} {verb} be cut at offset {offset}; the bytes from there move to a quarantine file")
    ids = ", ".join(str(job_id) for job_id in plan.lost_job_ids) or "none"
    say(f"Records dropped that are still readable: {plan.lost_records}; job ids they touched: {ids}")
    if ranges or plan.missing_seqs is not None:
        say("The changes in unreadable or missing records are lost. Compare with what runners and users report.")


def print_lost(plan: RepairPlan, say: Print) -> None:
    if not plan.cuts:
        return
    ids = ", ".join(str(job_id) for job_id in plan.lost_job_ids) or "none"
    say(f"Records dropped that are still readable: {plan.lost_records}; job ids they touched: {ids}")
    if plan.missing_seqs is not None:
        first, last = plan.missing_seqs
        say(
            f"Journal records seq {first} to {last} are missing: no segment file contains them, "
            "so the jobs they touched cannot be known."
        )
    if plan.unreadable_bytes:
        say(
            f"Unreadable bytes: {plan.unreadable_bytes}; the records in them, and the job ids they "
            "touched, cannot be known. Compare with what runners and users report."
        )


def print_result(result: RepairResult, say: Print) -> None:
    if result.backed_up:
        say(f"Backed up {plural(len(result.backed_up), 'file')} to {result.plan.backup_dir}")
    else:
        say("Backed up nothing: the repair changes no existing file")
    for path in result.quarantined:
        say(f"Quarantined: {path}")
    if result.plan.salvage is not None:
        say(f"Snapshot written covering seq {result.plan.salvage.snapshot_seq}, next job id {result.plan.salvage.next_id}")
    if result.next_id_raised_to is not None:
        say(f"Next job id raised to {result.next_id_raised_to}, so no dropped job's id is handed out again")
    if result.after is not None:
        say(f"After the repair: {result.after.verdict}")
        if result.after.store is not None:
            say(f"The server will start with {plural(len(result.after.store), 'job')}")


def print_import(plan: ImportPlan, say: Print, dry_run: bool) -> None:
    verb = "would be imported" if dry_run else "imported"
    say(f"Read {plan.rows} rows ({plan.format} format)")
    say(f"{len(plan.jobs)} {verb}, {len(plan.skipped)} skipped, {len(plan.rejected)} rejected")
    for entry in plan.skipped:
        say(f"  skipped row {entry.row} (job {entry.job_id}): {entry.reason}")
    for entry in plan.rejected:
        say(f"  rejected row {entry.row} (job {entry.job_id!r}): {entry.reason}")
    if any(entry.reason.endswith(EXISTS) for entry in plan.rejected):
        say("Pass --skip-existing to keep the jobs that already exist and import the rest.")
