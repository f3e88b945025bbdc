"""The ``poller-recover`` command line: check, repair, requeue, compact, export, import.

Exit statuses, the same for every subcommand:

- 0: success (``check``: the server would start cleanly);
- 1: for ``check``, the server would start only after cutting a torn
  journal tail or skipping an invalid snapshot. For ``import``, some rows
  were rejected. For the other commands, the operation failed, and the
  message on standard error gives the reason;
- 2: the server would refuse to start on this directory, or ``repair``
  could not make it startable;
- 3: a running server (or another ``poller-recover``) holds the directory's lock;
- 64: invalid command line.
"""

import argparse
import json
import logging
import os
import sys
from typing import NoReturn

from ..arguments import job_id_argument
from ..config import Config
from ..datadir import DataDirLocked
from ..errors import JournalError, PollerError, StartupError
from ..jobs import FAILED, NEW, STATUSES
from ..recovery import RecoveryError, recover
from ..store import JobStore, validate_user
from . import output
from .access import DataDirUnusable, check_data_dir, load_for_write, locked
from .compaction import compact_data_dir
from .diagnosis import EXIT_WOULD_NOT_START, diagnose
from .job_export import ExportPathError, export_to_file, write_export
from .job_import import ImportFileError, plan_import, read_import_file
from .journaled import commit_changes
from .repair import carry_out, plan_repair, succeeded
from .requeue import SelectionError, plan_requeue

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_LOCKED = 3
EXIT_USAGE = 64  # EX_USAGE from sysexits.h; 2 already means "would not start"


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with EXIT_USAGE instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def user_argument(text: str) -> str:
    """Parse a ``--user`` value with the rules the HTTP API applies to user names."""
    try:
        return validate_user(text)
    except PollerError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def check_combinations(parser: ArgumentParser, args: argparse.Namespace) -> None:
    """Reject options that would be silently ignored in the combination given."""
    if args.command == "requeue" and args.reason is not None and args.to != FAILED:
        parser.error("--reason is stored only with --to failed; add --to failed or leave out --reason")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="poller-recover",
        description="Check, repair and maintain a poller data directory while no server runs on it. "
        "Exit status: 0 success; 1 the server would start only after a repair, or an import "
        "rejected rows, or the operation failed; 2 the server would refuse to start; "
        "3 a server holds the directory; 64 invalid command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_dir = os.environ.get("POLLER_DATA_DIR", Config.data_dir)

    def add(name: str, help_text: str) -> ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--data-dir", default=default_dir,
            help="the server's data directory (default: $POLLER_DATA_DIR or %(default)s)",
        )
        return sub

    check = add("check", "Report what a server start would do with the data directory; change nothing.")
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")

    repair = add(
        "repair",
        "Make the data directory startable: back up the files it changes, move invalid snapshots "
        "and damaged journal bytes into quarantine files, apply the readable records after the "
        "damage that still apply and write a snapshot of the result, and list the records and "
        "job ids dropped.",
    )
    repair.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    repair.add_argument(
        "--cut-only", action="store_true",
        help="drop every record from the first bad one on, instead of applying the readable "
        "records after it that still apply",
    )
    repair.add_argument(
        "--backup-dir", metavar="DIR",
        help="folder in which the timestamped backup folder is made (default: the data directory)",
    )
    repair.add_argument("--json", action="store_true", help="print the plan and result as one JSON object")

    requeue = add(
        "requeue",
        "Move in_progress jobs back to new (or to failed) because the runners that held them are gone. "
        "The change is journaled, so the server sees it on start.",
    )
    requeue.add_argument("--user", type=user_argument, help="only jobs of this user")
    requeue.add_argument(
        "--job-id", type=job_id_argument, action="append", default=[], metavar="ID",
        help="only this job; repeat for more (each must be in_progress)",
    )
    requeue.add_argument("--to", choices=(NEW, FAILED), default=NEW, help="the new status (default: %(default)s)")
    requeue.add_argument(
        "--reason", help="reason stored with --to failed (default: runner gone); only valid with --to failed",
    )
    requeue.add_argument("--dry-run", action="store_true", help="list the jobs and change nothing")

    add(
        "compact",
        "Write a snapshot of the recovered state and remove the journal segments and old snapshots "
        "that the server's compaction would remove.",
    )

    export = add("export", "Write jobs as a JSON array in the shape the HTTP API returns.")
    export.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    export.add_argument("--user", type=user_argument, help="only jobs of this user")
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")

    importer = add(
        "import",
        "Load jobs from a poller-recover export or from a legacy 'manage.py dumpdata poller.UserRuns' "
        "dump, keeping their ids and creation times. Creates the data directory if needed.",
    )
    importer.add_argument("file", metavar="FILE", help="the export or dump file (JSON)")
    importer.add_argument(
        "--skip-existing", action="store_true",
        help="skip jobs whose id already exists instead of rejecting them",
    )
    importer.add_argument("--dry-run", action="store_true", help="report what would happen and change nothing")
    importer.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    logging.basicConfig(level=logging.WARNING, format="poller-recover: %(levelname)s: %(message)s", stream=sys.stderr)
    if args.command in ("check", "repair"):
        # Their reports list every warning recovery would log, so the log
        # lines would only repeat them.
        logging.getLogger("poller_server.recovery").setLevel(logging.ERROR)
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except DataDirLocked as exc:
        warn(f"poller-recover: {exc}")
        warn("poller-recover: works only while no server runs on the directory; "
             "stop the server (SIGTERM) and run the command again")
        return EXIT_LOCKED
    except (DataDirUnusable, StartupError) as exc:
        warn(f"poller-recover: {exc}")
        return EXIT_USAGE
    except RecoveryError as exc:
        warn(f"poller-recover: {exc}")
        warn(f"poller-recover: run 'poller-recover check --data-dir {args.data_dir}' for details")
        return EXIT_WOULD_NOT_START
    except BrokenPipeError:
        # The reader of standard output went away (``export | head``).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (JournalError, OSError) as exc:
        warn(f"poller-recover: {args.command} failed: {exc}")
        return EXIT_FAILED


def run_check(args: argparse.Namespace) -> int:
    with locked(args.data_dir, write=False):
        diagnosis = diagnose(args.data_dir)
    if args.json:
        say(json.dumps(diagnosis.to_dict(), ensure_ascii=False, indent=2))
    else:
        output.print_diagnosis(diagnosis, say)
    return diagnosis.exit_status


def run_repair(args: argparse.Namespace) -> int:
    # Plan under the read-only lock first, so a dry run, a refusal or a clean
    # directory leaves every byte as it was, the lock file included.
    with locked(args.data_dir, write=False):
        plan = plan_repair(diagnose(args.data_dir), args.backup_dir, args.cut_only)
    if not (args.dry_run or plan.blocked is not None or plan.nothing_to_do):
        with locked(args.data_dir, write=True):
            # Plan again: a server may have run between the two locks.
            plan = plan_repair(diagnose(args.data_dir), args.backup_dir, args.cut_only)
            if not (plan.blocked is not None or plan.nothing_to_do):
                if not args.json:
                    output.print_plan(plan, say, dry_run=False)
                result = carry_out(plan)
                if args.json:
                    say(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
                else:
                    output.print_result(result, say)
                return EXIT_OK if succeeded(result) else EXIT_WOULD_NOT_START
    if args.json:
        say(json.dumps({**plan.to_dict(), "dry_run": args.dry_run}, ensure_ascii=False, indent=2))
    else:
        output.print_plan(plan, say, dry_run=True)
    return EXIT_WOULD_NOT_START if plan.blocked is not None else EXIT_OK


def run_requeue(args: argparse.Namespace) -> int:
    with locked(args.data_dir, write=not args.dry_run):
        if args.dry_run:
            store, report = recover(args.data_dir, repair=False)
        else:
            store, report = load_for_write(args.data_dir)
        try:
            plan = plan_requeue(store, args.user, args.job_id, args.to, args.reason)
        except SelectionError as exc:
            warn(f"poller-recover: {exc}")
            return EXIT_FAILED
        if not plan.job_ids:
            say("No in_progress job matches; nothing changed.")
            return EXIT_OK
        ids = ", ".join(str(job_id) for job_id in plan.job_ids)
        if args.dry_run:
            say(f"Would move {output.plural(len(plan.job_ids), 'job')} from in_progress to {plan.target}: {ids}")
            return EXIT_OK
        seqs = commit_changes(args.data_dir, store, report.last_seq + 1, plan.changes)
    say(f"Moved {output.plural(len(plan.job_ids), 'job')} from in_progress to {plan.target}: {ids} (journal seq {seqs[0]} to {seqs[-1]})")
    return EXIT_OK


def run_compact(args: argparse.Namespace) -> int:
    with locked(args.data_dir, write=True):
        result = compact_data_dir(args.data_dir)
    say(f"Snapshot {result.snapshot} written: {result.jobs} jobs, seq {result.seq}")
    for path in result.removed:
        say(f"Removed {path}")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    with locked(args.data_dir, write=False):
        store, report = recover(args.data_dir, repair=False)
    if report.torn_tail is not None:
        warn(f"poller-recover: the journal has a torn tail at {report.torn_tail.path} offset "
             f"{report.torn_tail.offset}; the export contains the jobs before it")
    if args.output:
        try:
            count = export_to_file(store, args.output, args.status, args.user)
        except ExportPathError as exc:
            warn(f"poller-recover: {exc}")
            return EXIT_FAILED
        warn(f"Exported {output.plural(count, 'job')} to {args.output}")
    else:
        count = write_export(store, sys.stdout.buffer, args.status, args.user)
        sys.stdout.buffer.flush()
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    try:
        format_name, rows = read_import_file(args.file)
    except ImportFileError as exc:
        warn(f"poller-recover: {exc}")
        return EXIT_FAILED
    exists = check_data_dir(args.data_dir, may_be_missing=True)
    if args.dry_run and not exists:
        plan = plan_import(JobStore(), format_name, rows, args.skip_existing)
    else:
        with locked(args.data_dir, write=not args.dry_run, create=True):
            if args.dry_run:
                store, report = recover(args.data_dir, repair=False)
            else:
                store, report = load_for_write(args.data_dir)
            plan = plan_import(store, format_name, rows, args.skip_existing)
            if not args.dry_run and plan.jobs:
                try:
                    commit_changes(args.data_dir, store, report.last_seq + 1, plan.changes(store),
                                   all_or_nothing=True)
                except (JournalError, OSError) as exc:
                    warn(f"poller-recover: import failed: {exc}")
                    warn("poller-recover: nothing was imported; after fixing the cause, run the import again")
                    return EXIT_FAILED
    if args.json:
        say(json.dumps({**plan.to_dict(), "dry_run": args.dry_run}, ensure_ascii=False, indent=2))
    else:
        output.print_import(plan, say, args.dry_run)
        if plan.jobs and not args.dry_run:
            say(f"Next job id: {max(job.job_id for job in plan.jobs) + 1} or higher")
    return EXIT_FAILED if plan.rejected else EXIT_OK


COMMANDS = {
    "check": run_check,
    "repair": run_repair,
    "requeue": run_requeue,
    "compact": run_compact,
    "export": run_export,
    "import": run_import,
}


if __name__ == "__main__":
    sys.exit(main())
