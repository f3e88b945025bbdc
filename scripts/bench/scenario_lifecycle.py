"""``lifecycle``: submitters create jobs while N runners claim and finish them.

The poller runs at ``--fsync always``: a runner long-polls ``next`` with a
claim, then posts ``complete`` with its lease. beanstalkd (``-f 0``) gets the
same client concurrency and payloads as put, reserve-with-timeout and delete.
Server CPU per job (user plus system time of the server process, divided by
the jobs of the round) shows whether a server was busy or waiting. Latency
runs from sending the create (or put) to receiving the claim (or
reservation), so it is never negative even when the claim's response
overtakes the create's.
"""

import asyncio
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable

from .beanstalk import BeanstalkConnection
from .context import BenchContext, ScenarioResult, Target
from .datasets import create_form_body, load_runs, run_payload
from .http_client import HttpConnection, open_connections
from .services import BEANSTALKD_MISSING, Beanstalkd, PollerServer, beanstalkd_path
from .stats import percentile, ratios, summarize

ENDPOINT = "/poller/update/"
WAIT_SECONDS = 5
ROUND_TIMEOUT = 300.0


class RoundRecord:
    """Timestamps of one round, keyed by job id."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.created_at: dict[int, float] = {}
        self.claimed_at: dict[int, float] = {}
        self.finished = 0
        self.started = 0.0
        self.ended = 0.0
        self.done = asyncio.Event()

    def finish_one(self) -> None:
        self.finished += 1
        if self.finished == self.jobs:
            self.ended = time.perf_counter()
            self.done.set()

    def jobs_per_second(self) -> float:
        return self.jobs / (self.ended - self.started)

    def latencies_ms(self) -> list[float]:
        return [1000 * (self.claimed_at[job_id] - sent) for job_id, sent in self.created_at.items()
                if job_id in self.claimed_at]


async def drive_round(record: RoundRecord, submitters: list[Callable[[], Awaitable[None]]],
                      runners: list[Callable[[], Awaitable[None]]]) -> None:
    """Run submitters to the end and runners until every job is finished, then stop the runners."""
    record.started = time.perf_counter()
    runner_tasks = [asyncio.ensure_future(runner()) for runner in runners]
    try:
        await asyncio.wait_for(asyncio.gather(*(submit() for submit in submitters)), ROUND_TIMEOUT)
        waiting = asyncio.ensure_future(record.done.wait())
        finished, _ = await asyncio.wait([waiting, *runner_tasks], timeout=ROUND_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        if waiting not in finished:
            waiting.cancel()
            for task in finished:
                task.result()  # a runner that failed raises here
            raise TimeoutError(f"only {record.finished} of {record.jobs} jobs finished in {ROUND_TIMEOUT:.0f} s")
    finally:
        for task in runner_tasks:
            task.cancel()
        await asyncio.gather(*runner_tasks, return_exceptions=True)


def split(count: int, parts: int) -> list[range]:
    return [range(index, count, parts) for index in range(parts)]


async def poller_round(port: int, bodies: list[bytes], jobs: int, submitters: int, runners: int) -> RoundRecord:
    record = RoundRecord(jobs)
    submit_connections = await open_connections("127.0.0.1", port, submitters)
    runner_connections = await open_connections("127.0.0.1", port, runners)

    def submitter(connection: HttpConnection, indexes: range) -> Callable[[], Awaitable[None]]:
        async def submit() -> None:
            for index in indexes:
                sent = time.perf_counter()
                status, body = await connection.request("POST", ENDPOINT, bodies[index % len(bodies)])
                if status != 200:
                    raise RuntimeError(f"POST new returned {status}: {body[:200]!r}")
                record.created_at[json.loads(body)["job_id"]] = sent
        return submit

    def runner(connection: HttpConnection, name: str) -> Callable[[], Awaitable[None]]:
        claim_target = f"{ENDPOINT}?request=next&claim=1&wait={WAIT_SECONDS}&runner={name}"

        async def run_jobs() -> None:
            while True:
                status, body = await connection.request("GET", claim_target)
                received = time.perf_counter()
                if status != 200:
                    raise RuntimeError(f"GET next returned {status}: {body[:200]!r}")
                if body == b"{}":
                    continue
                job = json.loads(body)
                record.claimed_at[job["job_id"]] = received
                form = urllib.parse.urlencode(
                    {"request": "complete", "job_id": job["job_id"], "lease_id": job["lease_id"]}
                ).encode()
                status, body = await connection.request("POST", ENDPOINT, form)
                if status != 200:
                    raise RuntimeError(f"POST complete returned {status}: {body[:200]!r}")
                record.finish_one()
        return run_jobs

    try:
        await drive_round(
            record,
            [submitter(c, r) for c, r in zip(submit_connections, split(jobs, submitters))],
            [runner(c, f"runner-{i}") for i, c in enumerate(runner_connections)],
        )
    finally:
        for connection in submit_connections + runner_connections:
            connection.close()
    return record


async def beanstalkd_round(port: int, payloads: list[bytes], jobs: int, submitters: int, runners: int) -> RoundRecord:
    record = RoundRecord(jobs)
    submit_connections = [await BeanstalkConnection("127.0.0.1", port).connect() for _ in range(submitters)]
    runner_connections = [await BeanstalkConnection("127.0.0.1", port).connect() for _ in range(runners)]

    def submitter(connection: BeanstalkConnection, indexes: range) -> Callable[[], Awaitable[None]]:
        async def submit() -> None:
            for index in indexes:
                sent = time.perf_counter()
                job_id = await connection.put(payloads[index % len(payloads)])
                record.created_at[job_id] = sent
        return submit

    def runner(connection: BeanstalkConnection) -> Callable[[], Awaitable[None]]:
        async def run_jobs() -> None:
            while True:
                reserved = await connection.reserve(WAIT_SECONDS)
                received = time.perf_counter()
                if reserved is None:
                    continue
                job_id, _ = reserved
                record.claimed_at[job_id] = received
                await connection.delete(job_id)
                record.finish_one()
        return run_jobs

    try:
        await drive_round(
            record,
            [submitter(c, r) for c, r in zip(submit_connections, split(jobs, submitters))],
            [runner(c) for c in runner_connections],
        )
    finally:
        for connection in submit_connections + runner_connections:
            connection.close()
    return record


def run(context: BenchContext) -> ScenarioResult:
    sizes = context.sizes
    result = ScenarioResult("lifecycle")
    runs = load_runs(context.data_dir)
    bodies = [create_form_body(run) for run in runs]
    payloads = [run_payload(run) for run in runs]
    have_beanstalkd = beanstalkd_path() is not None
    if not have_beanstalkd:
        result.skipped["beanstalkd"] = BEANSTALKD_MISSING
        context.log("lifecycle: beanstalkd is not installed; measuring the poller alone")

    systems = ("poller", "beanstalkd") if have_beanstalkd else ("poller",)
    throughput = {(s, n): [] for s in systems for n in sizes.runner_counts}
    p50 = {(s, n): [] for s in systems for n in sizes.runner_counts}
    p99 = {(s, n): [] for s in systems for n in sizes.runner_counts}
    cpu_per_job = {(s, n): [] for s in systems for n in sizes.runner_counts}

    poller = PollerServer(context.folder("lifecycle") / "data", fsync="always", max_waiters=1000)
    beanstalkd = Beanstalkd(context.folder("lifecycle") / "binlog") if have_beanstalkd else None
    with poller:
        if beanstalkd is not None:
            beanstalkd.start()
        try:
            for round_index in range(sizes.lifecycle_rounds):
                for runners in sizes.runner_counts:
                    cpu_before = poller.cpu_seconds()
                    records = {"poller": asyncio.run(
                        poller_round(poller.port, bodies, sizes.lifecycle_jobs, sizes.submitters, runners))}
                    cpu_used = {"poller": poller.cpu_seconds() - cpu_before}
                    if beanstalkd is not None:
                        cpu_before = beanstalkd.cpu_seconds()
                        records["beanstalkd"] = asyncio.run(
                            beanstalkd_round(beanstalkd.port, payloads, sizes.lifecycle_jobs, sizes.submitters, runners))
                        cpu_used["beanstalkd"] = beanstalkd.cpu_seconds() - cpu_before
                    for system, record in records.items():
                        cpu_per_job[system, runners].append(1e6 * cpu_used[system] / record.jobs)
                        latencies = record.latencies_ms()
                        throughput[system, runners].append(record.jobs_per_second())
                        p50[system, runners].append(percentile(latencies, 0.50))
                        p99[system, runners].append(percentile(latencies, 0.99))
                    context.log(
                        "lifecycle round %d, %d runners: %s jobs/s"
                        % (round_index + 1, runners,
                           ", ".join(f"{s} {throughput[s, runners][-1]:.0f}" for s in records))
                    )
        finally:
            if beanstalkd is not None:
                beanstalkd.stop()

    for runners in sizes.runner_counts:
        for system in systems:
            result.metrics[f"{system}_n{runners}_jobs_per_s"] = summarize(throughput[system, runners], "jobs/s")
            result.metrics[f"{system}_n{runners}_claim_p50_ms"] = summarize(p50[system, runners], "ms")
            result.metrics[f"{system}_n{runners}_claim_p99_ms"] = summarize(p99[system, runners], "ms")
            result.metrics[f"{system}_n{runners}_server_cpu_us_per_job"] = summarize(
                cpu_per_job[system, runners], "µs")
        if have_beanstalkd:
            result.metrics[f"n{runners}_poller_vs_beanstalkd"] = summarize(
                ratios(throughput["poller", runners], throughput["beanstalkd", runners]), "ratio")
    for runners in (8, 64):
        if have_beanstalkd and runners in sizes.runner_counts:
            result.targets.append(Target(f"ahead of beanstalkd at N = {runners}",
                                         f"n{runners}_poller_vs_beanstalkd", 1.0, "above"))
    return result
