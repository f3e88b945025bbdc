#!/usr/bin/env python3
"""A minimal runner built on PollerClient, for sites that want their own loop.

Usage: example_runner.py URL COMMAND [ARG ...]

Claims one job at a time, runs COMMAND with the job's id as its last
argument and the job as JSON on standard input, extends the lease while
it runs, and reports the result. Stop it with Ctrl-C between jobs.
``poller-runner`` does the same with concurrency, templates and a clean
SIGTERM; start from this file only when you need a different loop.
"""

import json
import logging
import subprocess
import sys
import threading

from poller_server.client import Conflict, PollerClient, PollerClientError

LEASE_SECONDS = 300
POLL_WAIT_SECONDS = 20

logger = logging.getLogger("example_runner")


def keep_lease(client: PollerClient, job: dict, done: threading.Event) -> None:
    """Extend the job's lease every third of it until ``done`` is set."""
    while not done.wait(LEASE_SECONDS / 3):
        try:
            client.heartbeat(job["job_id"], job["lease_id"], LEASE_SECONDS)
        except PollerClientError as exc:
            logger.warning("Job %d: heartbeat failed: %s", job["job_id"], exc)


def run_job(client: PollerClient, job: dict, command: list[str]) -> None:
    done = threading.Event()
    heartbeat = threading.Thread(target=keep_lease, args=(client, job, done), daemon=True)
    heartbeat.start()
    try:
        result = subprocess.run([*command, str(job["job_id"])], input=json.dumps(job), text=True,
                                stderr=subprocess.PIPE)
    finally:
        done.set()
        heartbeat.join()

    try:
        if result.returncode == 0:
            client.complete(job["job_id"], job["lease_id"])
        else:
            reason = f"exit status {result.returncode}: {result.stderr[-1000:]}"
            client.fail(job["job_id"], job["lease_id"], reason)
    except Conflict as exc:
        # The lease expired and another runner has the job now.
        logger.warning("Job %d: result not recorded: %s", job["job_id"], exc)
        return
    logger.info("Job %d: exit status %d", job["job_id"], result.returncode)


def main() -> int:
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client = PollerClient(sys.argv[1])
    command = sys.argv[2:]
    while True:
        try:
            job = client.next(wait=POLL_WAIT_SECONDS, claim=True, lease=LEASE_SECONDS)
        except PollerClientError as exc:
            logger.error("Polling failed: %s", exc)
            return 1
        if job is not None:
            logger.info("Job %d: started for %s", job["job_id"], job["user"])
            run_job(client, job, command)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
