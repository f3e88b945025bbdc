"""``poller``: the command line for people who submit, watch and fix jobs.

Exit status: 0 on success, 1 when the server reports an error (a job that
does not exist included), 2 on bad usage or unreadable local files, 3 when
the server cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import unicodedata
from typing import Any, Callable, TextIO

from .arguments import job_id_argument, seconds_argument
from .client import (
    STATUSES,
    ConnectionFailed,
    Job,
    PollerClient,
    PollerClientError,
    ResponseError,
    RetryPolicy,
    TLSFailed,
)

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_URL = "http://127.0.0.1:8080"
# Width of the CONFIG column in `poller list`; longer summaries end in "...".
CONFIG_COLUMN_WIDTH = 60

HINTS = {
    400: "check the values given on the command line",
    404: "run `poller list` to see the jobs",
    401: "give a valid token with --token-file or POLLER_TOKEN_FILE",
    403: "the token is valid but not allowed to do this; ask the server's operator",
    409: "run `poller show {job_id}` to see the job's current status",
    413: "make the configuration smaller",
    503: "the server is busy or stopping; try again in a moment",
    507: "the server is full; delete finished jobs with `poller delete ID`",
}


class UsageError(Exception):
    """A local problem the user can fix: a bad argument or an unreadable file."""


class JobMissing(Exception):
    """The server has no job with the requested id (its response was ``{}``)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found; run `poller list` to see the jobs")


# -- output ------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Return how many terminal columns ``text`` takes; East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def print_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [display_width(h) for h in headers]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row)]
    for row in [headers, *rows]:
        out.write("  ".join(pad(cell, w) for cell, w in zip(row, widths)).rstrip() + "\n")


def config_summary(job: Job) -> str:
    own = {"job_id", "id", "user", "status", "created", "updated", "attempts", "runner", "lease_id",
           "lease_expires", "reason"}
    text = " ".join(f"{k}={v}" for k, v in job.items() if k not in own)
    if len(text) > CONFIG_COLUMN_WIDTH:
        text = text[:CONFIG_COLUMN_WIDTH - 3] + "..."
    return text


def print_job(job: Job, out: TextIO) -> None:
    width = max(display_width(key) for key in job)
    for key, value in job.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.write(f"{pad(key, width)}  {text}\n")


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


# -- subcommands ------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (a string) or ``key:=JSON`` (any JSON value)."""
    key, separator, raw = text.partition("=")
    if not separator:
        raise UsageError(f"invalid configuration field {text!r}: write key=value, or key:=JSON for numbers")
    value: Any = raw
    if key.endswith(":"):
        key = key[:-1]
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"invalid JSON value in {text!r}: {exc}") from None
    if not key:
        raise UsageError(f"invalid configuration field {text!r}: the key is empty")
    return key, value


def read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"configuration file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"configuration file {path} must hold a JSON object, not {type(document).__name__}")
    return document


def cmd_submit(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    config = read_config_file(args.config) if args.config else {}
    user = args.user
    if user is None and isinstance(config.get("user"), str):
        user = config.pop("user")
    if user is None:
        raise UsageError("missing --user: say whose job this is, for example --user jdoe")
    config.pop("user", None)
    for assignment in args.fields:
        key, value = parse_assignment(assignment)
        config[key] = value
    job = client.create(user, config)
    if args.json:
        print_json(job, out)
    else:
        out.write(f"Created job {job['job_id']} for {job['user']} (status {job['status']}).\n")
    return EXIT_OK


def cmd_list(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    jobs = client.list_jobs(args.status, args.user)
    if args.json:
        print_json(jobs, out)
    elif not jobs:
        out.write("No jobs.\n")
    else:
        rows = [
            [str(j["job_id"]), j["user"], j["status"], j["updated"], j.get("runner", ""), config_summary(j)]
            for j in jobs
        ]
        print_table(["ID", "USER", "STATUS", "UPDATED", "RUNNER", "CONFIG"], rows, out)
    return EXIT_OK


def cmd_show(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    job = client.get(args.job_id)
    if job is None:
        raise JobMissing(args.job_id)
    if args.json:
        print_json(job, out)
    else:
        print_job(job, out)
    return EXIT_OK


def cmd_next(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    if not args.claim and (args.runner is not None or args.lease is not None):
        raise UsageError("--runner and --lease apply only to a claimed job: add --claim, or leave them out")
    job = client.next(user=args.user, wait=args.wait, claim=args.claim, runner=args.runner, lease=args.lease)
    if args.json:
        print_json(job, out)
    elif job is None:
        out.write("No new job.\n")
    else:
        print_job(job, out)
        if args.claim:
            out.write(f"Claimed job {job['job_id']}; report the result with "
                      f"`poller set {job['job_id']} complete` or `poller set {job['job_id']} failed`.\n")
    return EXIT_OK


def cmd_set(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.status == "new":
        if args.reason is not None or args.lease_id is not None:
            raise UsageError("--reason and --lease-id do not apply to status new")
        job = client.requeue(args.job_id)
        return print_change(job, requeue_message(job), args, out)
    else:
        if args.reason is not None and args.status != "failed":
            raise UsageError("--reason applies only to status failed")
        job = client.set_status(args.job_id, args.status, lease_id=args.lease_id, reason=args.reason)
    return print_change(job, f"Job {job['job_id']} is now {job['status']}.", args, out)


def cmd_requeue(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    job = client.requeue(args.job_id)
    return print_change(job, requeue_message(job), args, out)


def requeue_message(job: Job) -> str:
    """Return the message for the job that a requeue returned.

    A requeued job is ``new``. If a runner was waiting in ``next`` with
    ``claim``, the server hands the job to it in the same step, so the
    response already shows the job ``in_progress`` under the new claim.
    """
    if job["status"] != "in_progress":
        return f"Job {job['job_id']} is now {job['status']}."
    runner = f" {job['runner']}" if job.get("runner") else ""
    return (f"Job {job['job_id']} was requeued, and the waiting runner{runner} claimed it at once "
            f"(attempt {job.get('attempts', '?')}); it is now in_progress. "
            f"Run `poller show {job['job_id']}` to follow it.")


def cmd_delete(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    job = client.delete(args.job_id)
    return print_change(job, f"Deleted job {job['job_id']} ({job['status']}).", args, out)


def print_change(job: Job, message: str, args: argparse.Namespace, out: TextIO) -> int:
    if args.json:
        print_json(job, out)
    else:
        out.write(message + "\n")
    return EXIT_OK


def cmd_stats(client: PollerClient, args: argparse.Namespace, out: TextIO) -> int:
    counts: dict[str, dict[str, int]] = {}
    for job in client.list_jobs(user=args.user):
        per_user = counts.setdefault(job["user"], dict.fromkeys(STATUSES, 0))
        per_user[job["status"]] = per_user.get(job["status"], 0) + 1
    if args.json:
        print_json(counts, out)
        return EXIT_OK
    if not counts:
        out.write("No jobs.\n")
        return EXIT_OK
    totals = dict.fromkeys(STATUSES, 0)
    rows = []
    for user in sorted(counts):
        per_user = counts[user]
        for status in STATUSES:
            totals[status] += per_user[status]
        rows.append([user, *(str(per_user[s]) for s in STATUSES), str(sum(per_user.values()))])
    rows.append(["total", *(str(totals[s]) for s in STATUSES), str(sum(totals.values()))])
    print_table(["USER", *(s.upper() for s in STATUSES), "TOTAL"], rows, out)
    return EXIT_OK


# -- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The connection options work before and after the subcommand; SUPPRESS
    # keeps a subcommand's missing option from hiding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"base URL of the poller server; env POLLER_URL (default: {DEFAULT_URL})")
    common.add_argument("--token-file", default=argparse.SUPPRESS,
                        help="file whose first line is the bearer token; env POLLER_TOKEN_FILE")
    common.add_argument("--ca-file", default=argparse.SUPPRESS,
                        help="PEM file of the CAs that an https server's certificate must chain to; env POLLER_CA_FILE")
    common.add_argument("--cert-file", default=argparse.SUPPRESS,
                        help="PEM client certificate, for servers that require one; env POLLER_CERT_FILE")
    common.add_argument("--key-file", default=argparse.SUPPRESS,
                        help="PEM key of --cert-file, unless that file contains it; env POLLER_KEY_FILE")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of text, for scripts")

    parser = argparse.ArgumentParser(
        prog="poller", parents=[common],
        description="Submit, watch and change jobs on a poller server. "
        "Exit status: 0 success, 1 error reported by the server, 2 bad usage, 3 server unreachable.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    submit = commands.add_parser("submit", parents=[common], help="create a job",
                                 description="Create a job. Fields are key=value (a string) or key:=JSON "
                                 "(a number, true, false, a list or an object).")
    submit.add_argument("--user", help="owner of the job; may also come from the configuration file's 'user'")
    submit.add_argument("--config", metavar="FILE.json", help="JSON object with configuration fields; "
                        "key=value arguments override its fields")
    submit.add_argument("fields", nargs="*", metavar="key=value", help="configuration fields")
    submit.set_defaults(handler=cmd_submit)

    listing = commands.add_parser("list", parents=[common], help="list jobs as a table")
    listing.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    listing.add_argument("--user", help="only this user's jobs")
    listing.set_defaults(handler=cmd_list)

    show = commands.add_parser("show", parents=[common], help="show one job")
    show.add_argument("job_id", type=job_id_argument, metavar="ID")
    show.set_defaults(handler=cmd_show)

    next_job = commands.add_parser("next", parents=[common], help="show, or claim, the oldest new job")
    next_job.add_argument("--claim", action="store_true",
                          help="take the job: it becomes in_progress and no runner gets it")
    next_job.add_argument("--wait", type=seconds_argument, default=0,
                          help="seconds to wait for a job when none is new (default: 0)")
    next_job.add_argument("--user", help="only this user's jobs")
    next_job.add_argument("--runner", help="name recorded on the claimed job (with --claim)")
    next_job.add_argument("--lease", type=seconds_argument,
                          help="lease of the claimed job in seconds, with --claim (default: the server's)")
    next_job.set_defaults(handler=cmd_next)

    set_status = commands.add_parser("set", parents=[common], help="change a job's status",
                                     description="Change a job's status. Status new requeues the job.")
    set_status.add_argument("job_id", type=job_id_argument, metavar="ID")
    set_status.add_argument("status", choices=STATUSES, metavar="STATUS", help=", ".join(STATUSES))
    set_status.add_argument("--reason", help="why the job failed (status failed only)")
    set_status.add_argument("--lease-id", help="change the job only while this lease is current")
    set_status.set_defaults(handler=cmd_set)

    requeue = commands.add_parser("requeue", parents=[common], help="put a failed or in-progress job back to new")
    requeue.add_argument("job_id", type=job_id_argument, metavar="ID")
    requeue.set_defaults(handler=cmd_requeue)

    delete = commands.add_parser("delete", parents=[common], help="delete a job")
    delete.add_argument("job_id", type=job_id_argument, metavar="ID")
    delete.set_defaults(handler=cmd_delete)

    stats = commands.add_parser("stats", parents=[common], help="count jobs per status and user")
    stats.add_argument("--user", help="only this user's jobs")
    stats.set_defaults(handler=cmd_stats)
    return parser


def make_client(args: argparse.Namespace, environ: dict[str, str]) -> PollerClient:
    url = getattr(args, "url", None) or environ.get("POLLER_URL") or DEFAULT_URL
    token_file = getattr(args, "token_file", None) or environ.get("POLLER_TOKEN_FILE") or None
    ca_file = getattr(args, "ca_file", None) or environ.get("POLLER_CA_FILE") or None
    cert_file = getattr(args, "cert_file", None) or environ.get("POLLER_CERT_FILE") or None
    key_file = getattr(args, "key_file", None) or environ.get("POLLER_KEY_FILE") or None
    try:
        # A person is waiting, so retry briefly and then report the error.
        return PollerClient(url, token_file=token_file, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                            connect_timeout=5, retry=RetryPolicy(retries=2, max_delay=1.0))
    except ssl.SSLError as exc:
        raise UsageError(f"invalid CA or certificate file: {exc}; check --ca-file, --cert-file and --key-file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}; check --token-file, --ca-file, "
                         "--cert-file and --key-file and the matching POLLER_* variables") from None
    except ValueError as exc:
        raise UsageError(f"{exc}; check --url, POLLER_URL and the token file") from None


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    # Retry warnings would only clutter a person's terminal; the final error is printed.
    logging.basicConfig(level=logging.ERROR, format="poller: %(message)s")
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    handler: Callable[[PollerClient, argparse.Namespace, TextIO], int] = args.handler
    try:
        client = make_client(args, environ)
        return handler(client, args, out)
    except UsageError as exc:
        err.write(f"poller: {exc}\n")
        return EXIT_USAGE
    except JobMissing as exc:
        err.write(f"poller: {exc}\n")
        return EXIT_SERVER_ERROR
    except ResponseError as exc:
        hint = HINTS.get(exc.status, "").format(job_id=getattr(args, "job_id", "ID"))
        err.write(f"poller: {args.command} failed: {exc}" + (f"; {hint}" if hint else "") + "\n")
        return EXIT_SERVER_ERROR
    except TLSFailed as exc:
        hint = "" if exc.plain_http else "; give the server's CA with --ca-file or POLLER_CA_FILE"
        err.write(f"poller: {exc}{hint}\n")
        return EXIT_UNREACHABLE
    except ConnectionFailed as exc:
        err.write(f"poller: {exc}. Check that poller-server is running and that --url or POLLER_URL "
                  "points to it.\n")
        return EXIT_UNREACHABLE
    except PollerClientError as exc:
        err.write(f"poller: {args.command} failed: {exc}\n")
        return EXIT_SERVER_ERROR


if __name__ == "__main__":
    sys.exit(main())
