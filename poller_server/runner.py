"""``poller-runner``: claim jobs from the poller and run a command for each.

The runner long-polls ``next`` with ``claim``, so no other runner gets the
same job, and runs ``COMMAND [ARG ...]`` once per job, directly and never
through a shell. While the command runs, the runner extends the job's lease
every third of the lease. Exit status 0 reports the job ``complete``. Any
other status, or death by a signal, reports it ``failed``, with the status
and the end of the command's standard error as the reason.

The command receives the job three ways:

- arguments: ``{job_id}``, ``{user}``, ``{job_file}`` and ``{KEY}`` for a
  configuration field ``KEY`` are replaced inside each argument. Each
  argument stays one argument whatever the value contains. ``{{`` and ``}}``
  stand for literal braces, and braces around anything but a name (letters,
  digits, ``_``) are left as they are, so that code such as ``{'a': 1}``
  passes unchanged;
- a JSON file containing the job (without its lease id), named by
  ``POLLER_JOB_FILE`` and removed when the command ends;
- environment variables ``POLLER_JOB_ID``, ``POLLER_USER``,
  ``POLLER_JOB_FILE``, and ``POLLER_CONFIG_<KEY>`` per configuration field,
  where ``<KEY>`` is the key in upper case with every character other than
  ASCII letters and digits replaced by ``_``.

A value that is not a string is passed as its JSON text (``240``, ``true``).

On SIGTERM or SIGINT the runner takes no more jobs, gives running commands
``--grace`` seconds to end, then sends them SIGTERM (SIGKILL
``KILL_DELAY_SECONDS`` later) and puts their jobs back to ``new``. A second
signal cuts the grace short. A poll already in flight is let finish, because
cancelling it could strand a job that the server claimed for it. Stopping can
therefore take up to ``--wait`` seconds more, plus the client's retry back-off
while the server is unreachable. A job that such a poll brings is requeued at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .arguments import positive_int_argument, seconds_argument
from .client import (
    AsyncPollerClient,
    BadRequest,
    Conflict,
    Forbidden,
    Job,
    PollerClientError,
    TLSFailed,
    Unauthorized,
)

logger = logging.getLogger(__name__)

CONFIG_ENV_PREFIX = "POLLER_CONFIG_"
# The server keeps at most 4096 characters of a failure reason.
STDERR_TAIL_CHARS = 3000
KILL_DELAY_SECONDS = 5.0
MAX_POLL_BACKOFF_SECONDS = 30.0
# Errors after which polling again cannot help: the runner's own settings are wrong.
FATAL_ERRORS = (BadRequest, Unauthorized, Forbidden, TLSFailed)
JOB_FIELDS = ("job_id", "id", "user", "status", "created", "updated", "attempts", "runner", "lease_id",
              "lease_expires", "reason")
# Only a name in braces is a placeholder, so code such as ``{'a': 1}`` passes unchanged.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A command argument names a field that the job does not have."""


# -- what the command receives ---------------------------------------------------------


def job_config(job: Job) -> dict[str, Any]:
    """Return the configuration fields of ``job``: everything but the job's own fields."""
    return {key: value for key, value in job.items() if key not in JOB_FIELDS}


def text_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def expand_argument(argument: str, fields: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        name = match.group(1)
        if name not in fields:
            raise TemplateError(f"the command uses {{{name}}}, but the job has no field {name!r}")
        return text_value(fields[name])

    return PLACEHOLDER.sub(replace, argument)


def build_command(template: list[str], job: Job, job_file: str) -> list[str]:
    """Return the command for ``job``: each template argument with its placeholders filled in."""
    fields = {**job_config(job), "job_id": job["job_id"], "user": job["user"], "job_file": job_file}
    return [expand_argument(argument, fields) for argument in template]


def config_env_name(key: str) -> str:
    return CONFIG_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def build_environment(job: Job, job_file: str, base: dict[str, str]) -> dict[str, str]:
    """Return the environment of the command for ``job``: ``base`` plus the job's variables."""
    env = {name: value for name, value in base.items() if not name.startswith(CONFIG_ENV_PREFIX)}
    env["POLLER_JOB_ID"] = str(job["job_id"])
    env["POLLER_USER"] = job["user"]
    env["POLLER_JOB_FILE"] = job_file
    sources: dict[str, str] = {}
    for key, value in job_config(job).items():
        text = text_value(value)
        if "\0" in text:
            logger.warning("Job %d: configuration field %r contains a NUL character; not passed in the environment",
                           job["job_id"], key)
            continue
        name = config_env_name(key)
        if name in sources:
            # Keys such as stop_n and stop-n map to one name; the job file keeps both.
            logger.warning("Job %d: configuration fields %r and %r both map to %s; %s gets the value of %r",
                           job["job_id"], sources[name], key, name, name, key)
        sources[name] = key
        env[name] = text
    return env


def write_job_file(job: Job) -> tuple[str, str]:
    """Write ``job`` without its lease id to a new temporary directory; return (directory, file)."""
    directory = tempfile.mkdtemp(prefix=f"poller-job-{job['job_id']}-")
    path = os.path.join(directory, "job.json")
    visible = {key: value for key, value in job.items() if key != "lease_id"}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(visible, f, ensure_ascii=False, indent=2)
    return directory, path


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit status {returncode}"


# -- one job ------------------------------------------------------------------------------


@dataclass
class RunnerSettings:
    command: list[str]
    user: str | None
    runner_name: str
    concurrency: int
    max_jobs: int | None
    grace: float
    wait: float
    lease: float
    heartbeat: float


class JobRun:
    """One claimed job and the process running it."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_id: int = job["job_id"]
        self.lease_id: str = job["lease_id"]
        self.process: asyncio.subprocess.Process | None = None
        # Set when the runner stops the command itself; the job is then requeued, not reported.
        self.aborted = False
        self.lease_lost = False
        self.stderr_tail = ""

    def stop_process(self) -> None:
        """Send SIGTERM to the command's process group, then SIGKILL if it is still running later."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        signal_group(process.pid, signal.SIGTERM)
        asyncio.get_running_loop().call_later(KILL_DELAY_SECONDS, self._kill, process)

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            logger.warning("Job %d: command still running %.0f s after SIGTERM; sending SIGKILL",
                           self.job_id, KILL_DELAY_SECONDS)
            signal_group(process.pid, signal.SIGKILL)


def signal_group(pid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


class Runner:
    """Claims jobs and runs the command for each, up to ``concurrency`` at once."""

    def __init__(self, client: AsyncPollerClient, settings: RunnerSettings) -> None:
        self.client = client
        self.settings = settings
        self.running: dict[int, JobRun] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.jobs_taken = 0
        self.fatal_error: Exception | None = None
        # Whether the command template has found all its fields in a job yet.
        # Until it has, a missing field is more likely a typo in the template
        # than a gap in the job.
        self.template_worked = False
        self._stopping = asyncio.Event()
        self._abort_now = asyncio.Event()
        # Set whenever a job ends or a stop is requested, to wake the poll loop.
        self._changed = asyncio.Event()

    # -- stopping --------------------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        if self._stopping.is_set():
            logger.warning("Runner received a second stop signal; stopping %d running jobs now", len(self.running))
            self._abort_now.set()
            return
        name = signal.Signals(signum).name if signum is not None else "a stop request"
        logger.info("Runner received %s: taking no more jobs, %d running, grace %.1f s",
                    name, len(self.running), self.settings.grace)
        self._stopping.set()
        self._changed.set()

    async def run(self) -> int:
        """Take and run jobs until stopped or ``max_jobs`` are done; return the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        logger.info("Runner %s started: %s, concurrency %d, command %s",
                    self.settings.runner_name, self.client.url, self.settings.concurrency, self.settings.command)

        taker = asyncio.create_task(self._take_jobs())
        stopped = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({taker, stopped}, return_when=asyncio.FIRST_COMPLETED)
        while self.tasks and not self._stopping.is_set():
            await asyncio.wait({stopped, *self.tasks}, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping.is_set():
            await self._finish_within_grace()
        await taker
        stopped.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        logger.info("Runner %s stopped (jobs taken: %d)", self.settings.runner_name, self.jobs_taken)
        return 1 if self.fatal_error is not None else 0

    async def _finish_within_grace(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace
        abort_now = asyncio.create_task(self._abort_now.wait())
        while self.tasks and not self._abort_now.is_set() and loop.time() < deadline:
            await asyncio.wait({abort_now, *self.tasks}, timeout=deadline - loop.time(),
                               return_when=asyncio.FIRST_COMPLETED)
        abort_now.cancel()

        for run in list(self.running.values()):
            logger.warning("Job %d: still running after the grace period; stopping the command and requeuing the job",
                           run.job_id)
            run.aborted = True
            run.stop_process()
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    # -- taking jobs -----------------------------------------------------------------

    def _limit_reached(self) -> bool:
        return self.settings.max_jobs is not None and self.jobs_taken >= self.settings.max_jobs

    async def _take_jobs(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set() and not self._limit_reached():
            while len(self.running) >= self.settings.concurrency and not self._stopping.is_set():
                self._changed.clear()
                await self._changed.wait()
            if self._stopping.is_set():
                break

            try:
                job = await self.client.next(
                    user=self.settings.user,
                    wait=self.settings.wait,
                    claim=True,
                    runner=self.settings.runner_name,
                    lease=self.settings.lease,
                )
            except FATAL_ERRORS as exc:
                logger.error("Runner cannot take jobs: %s; fix the runner's options and start it again", exc)
                self.fatal_error = exc
                return
            except PollerClientError as exc:
                backoff = min(MAX_POLL_BACKOFF_SECONDS, max(1.0, backoff * 2))
                logger.warning("Polling %s failed: %s; polling again in %.0f s", self.client.url, exc, backoff)
                await self._sleep_unless_stopped(backoff)
                continue
            backoff = 0.0
            if job is None:
                continue

            if self._stopping.is_set():
                # The poll was in flight when the stop came; hand the job back at once.
                await self._release(job["job_id"], job["lease_id"], "the runner is stopping")
                break
            self.jobs_taken += 1
            run = JobRun(job)
            self.running[run.job_id] = run
            task = asyncio.create_task(self._run_job(run))
            self.tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("Runner failed while handling a job", exc_info=task.exception())

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- running one job ---------------------------------------------------------------

    async def _run_job(self, run: JobRun) -> None:
        job_id = run.job_id
        started = time.monotonic()
        directory, job_file = write_job_file(run.job)
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            try:
                argv = build_command(self.settings.command, run.job, job_file)
            except TemplateError as exc:
                if not self.template_worked and run.job.get("attempts", 1) <= 1:
                    # Failing this job would likely fail every queued job the
                    # same way: put it back and stop, as for a missing command.
                    # A job that comes back after such a stop fails below, so
                    # one job without the field cannot hold up the queue.
                    logger.error("Runner cannot build the command for job %d: %s; fix the command template "
                                 "and start the runner again", job_id, exc)
                    self.fatal_error = exc
                    self.request_stop()
                    await self._release(job_id, run.lease_id, "the command template names a field the job lacks")
                    return
                logger.error("Job %d: %s", job_id, exc)
                await self._report(run, "failed", f"the runner could not build the command: {exc}", started)
                return
            self.template_worked = True

            logger.info("Job %d started: user %s, attempt %s", job_id, run.job["user"], run.job.get("attempts", 1))
            logger.debug("Job %d: command %s", job_id, argv)
            try:
                returncode = await self._execute(run, argv, build_environment(run.job, job_file, dict(os.environ)))
            except OSError as exc:
                # Every job would fail the same way: stop instead of failing them all.
                logger.error("Runner cannot start the command %s: %s; fix the command and start the runner again",
                             argv, exc)
                self.fatal_error = exc
                self.request_stop()
                await self._release(job_id, run.lease_id, "the command could not be started")
                return

            if run.aborted:
                await self._release(job_id, run.lease_id, "the runner stopped before the command ended")
                logger.info("Job %d ended: requeued after %s in %.1f s", job_id, describe_exit(returncode),
                            time.monotonic() - started)
            elif run.lease_lost:
                logger.warning("Job %d ended: not reported, the lease was lost; %s in %.1f s",
                               job_id, describe_exit(returncode), time.monotonic() - started)
            elif returncode == 0:
                await self._report(run, "complete", None, started)
            else:
                reason = describe_exit(returncode)
                if run.stderr_tail.strip():
                    reason += "; stderr: " + run.stderr_tail.strip()
                await self._report(run, "failed", reason, started)
        finally:
            heartbeat.cancel()
            self.running.pop(job_id, None)
            shutil.rmtree(directory, ignore_errors=True)

    async def _execute(self, run: JobRun, argv: list[str], env: dict[str, str]) -> int:
        # A session of its own lets a stop reach the command's children too.
        run.process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True,
        )
        if run.aborted:  # the grace period ended while the command was starting
            run.stop_process()
        assert run.process.stderr is not None
        tail = ""
        while True:
            chunk = await run.process.stderr.read(65536)
            if not chunk:
                break
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            tail = (tail + chunk.decode("utf-8", "replace"))[-STDERR_TAIL_CHARS:]
        run.stderr_tail = tail
        return await run.process.wait()

    async def _heartbeat(self, run: JobRun) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self.client.heartbeat(run.job_id, run.lease_id, self.settings.lease)
            except Conflict as exc:
                logger.warning("Job %d: lease lost (%s); stopping the command, the job is no longer ours",
                               run.job_id, exc)
                run.lease_lost = True
                run.stop_process()
                return
            except PollerClientError as exc:
                logger.warning("Job %d: heartbeat failed: %s; trying again in %.1f s",
                               run.job_id, exc, self.settings.heartbeat)

    async def _report(self, run: JobRun, status: str, reason: str | None, started: float) -> None:
        duration = time.monotonic() - started
        try:
            if status == "complete":
                await self.client.complete(run.job_id, run.lease_id)
            else:
                await self.client.fail(run.job_id, run.lease_id, reason)
        except Conflict as exc:
            logger.warning("Job %d ended %s in %.1f s, but the server did not record it: %s",
                           run.job_id, status, duration, exc)
            return
        except PollerClientError as exc:
            logger.error("Job %d ended %s in %.1f s, but reporting it failed: %s; its lease will expire",
                         run.job_id, status, duration, exc)
            return
        if reason is None:
            logger.info("Job %d ended: %s in %.1f s", run.job_id, status, duration)
        else:
            logger.info("Job %d ended: %s in %.1f s (%s)", run.job_id, status, duration, reason.splitlines()[0])

    async def _release(self, job_id: int, lease_id: str, cause: str) -> None:
        """Put a claimed job back to ``new`` so that another runner can take it."""
        try:
            await self.client.requeue(job_id, lease_id)
        except PollerClientError as exc:
            logger.error("Job %d: requeue failed (%s): %s; the job returns to new when its lease expires",
                         job_id, cause, exc)
            return
        logger.info("Job %d requeued: %s", job_id, cause)


# -- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller-runner",
        usage="%(prog)s [options] -- COMMAND [ARG ...]",
        description="Claim jobs from a poller server and run COMMAND for each. Arguments may use "
        "{job_id}, {user}, {job_file} and {KEY} for configuration fields; the command also gets "
        "POLLER_JOB_ID, POLLER_USER, POLLER_JOB_FILE and POLLER_CONFIG_<KEY> in its environment. "
        "Exit status 0 reports the job complete, anything else failed.",
    )

    parser.add_argument("--url", default=os.environ.get("POLLER_URL", "http://127.0.0.1:8080"),
                        help="base URL of the poller server; env POLLER_URL (default: %(default)s)")
    parser.add_argument("--token-file", default=os.environ.get("POLLER_TOKEN_FILE"),
                        help="file whose first line is the bearer token; env POLLER_TOKEN_FILE")
    parser.add_argument("--ca-file", default=os.environ.get("POLLER_CA_FILE"),
                        help="PEM file of the CAs that an https server's certificate must chain to; "
                        "env POLLER_CA_FILE")
    parser.add_argument("--cert-file", default=os.environ.get("POLLER_CERT_FILE"),
                        help="PEM client certificate, for servers that require one; env POLLER_CERT_FILE")
    parser.add_argument("--key-file", default=os.environ.get("POLLER_KEY_FILE"),
                        help="PEM key of --cert-file, unless that file contains it; env POLLER_KEY_FILE")

    parser.add_argument("--user", help="take only this user's jobs (default: everyone's)")
    parser.add_argument("--runner-name", default=f"{socket.gethostname()}-{os.getpid()}",
                        help="name recorded on each claimed job, 1 to 128 characters (default: HOST-PID)")
    parser.add_argument("--concurrency", type=positive_int_argument, default=1, help="jobs to run at once (default: 1)")
    parser.add_argument("--max-jobs", type=positive_int_argument, help="exit after taking this many jobs (default: no limit)")
    parser.add_argument("--once", action="store_true", help="take one job, run it, then exit (same as --max-jobs 1)")
    parser.add_argument("--grace", type=seconds_argument, default=60,
                        help="seconds running commands get to end after SIGTERM before they are stopped and "
                        "their jobs requeued (default: %(default)s)")
    parser.add_argument("--wait", type=seconds_argument, default=20,
                        help="seconds each poll waits for a job, at most the server's --max-wait; a stop "
                        "lets the poll in flight finish first (default: %(default)s)")
    parser.add_argument("--lease", type=seconds_argument, default=300,
                        help="lease of each claimed job, in seconds; a job whose runner stops heartbeating "
                        "goes back to new after it (default: %(default)s)")
    parser.add_argument("--heartbeat", type=seconds_argument,
                        help="seconds between lease extensions (default: a third of --lease)")

    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    return parser


def parse_settings(argv: list[str] | None) -> tuple[argparse.Namespace, RunnerSettings]:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing COMMAND: put the command to run after --, for example: poller-runner -- ./run.sh {job_id}")
    if not 1 <= args.lease:
        parser.error(f"invalid --lease {args.lease}: must be at least 1 second")
    heartbeat = args.heartbeat if args.heartbeat is not None else args.lease / 3
    if not 0 < heartbeat < args.lease:
        parser.error(f"invalid --heartbeat {heartbeat:g}: must be more than 0 and less than --lease {args.lease}")
    if not 1 <= len(args.runner_name) <= 128:
        parser.error(f"invalid --runner-name {args.runner_name!r}: must be 1 to 128 characters")
    settings = RunnerSettings(
        command=command,
        user=args.user,
        runner_name=args.runner_name,
        concurrency=args.concurrency,
        max_jobs=1 if args.once else args.max_jobs,
        grace=args.grace,
        wait=args.wait,
        lease=args.lease,
        heartbeat=heartbeat,
    )
    return args, settings


async def run_runner(args: argparse.Namespace, settings: RunnerSettings) -> int:
    client = AsyncPollerClient(args.url, token_file=args.token_file, ca_file=args.ca_file,
                               cert_file=args.cert_file, key_file=args.key_file,
                               max_clients=2 * settings.concurrency + 2)
    try:
        return await Runner(client, settings).run()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_settings(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(run_runner(args, settings))
    except (OSError, ValueError) as exc:
        # An unreadable token, CA or certificate file, or an invalid --url.
        logger.error("Runner cannot start: %s; check --url and the file options", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
