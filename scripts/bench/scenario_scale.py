"""``scale``: a million legacy-shaped jobs: memory, recovery, snapshot stall, a large listing.

While the server writes a snapshot (SIGUSR1) or sends a listing of
100,000 jobs, a second client sends ``GET job`` about every millisecond and
records each request's latency. The longest of these is the event-loop stall
that other clients of the server would see. The listing is fetched by a child
process, so reading its 40 MB body does not delay the measuring client.
"""

import asyncio
import re
import signal
import subprocess
import sys
import time

from .context import BenchContext, ScenarioResult, Target
from .datasets import LegacyJobs, build_data_dir
from .http_client import HttpConnection
from .services import PollerServer
from .stats import percentile, summarize

ENDPOINT = "/poller/update/"
RECOVERED = re.compile(r"Recovered (\d+) jobs in (\d+) ms")
SNAPSHOT_WRITTEN = re.compile(r"Snapshot \S+ written: (\d+) jobs, seq \d+, (\d+) ms")
PING_INTERVAL = 0.001
MEGABYTE = 1024 * 1024
# Run by the child process: fetch one URL, print monotonic start and end and the body size.
FETCH_SCRIPT = """
import sys, time, urllib.request
started = time.monotonic()
with urllib.request.urlopen(sys.argv[1], timeout=300) as response:
    size = len(response.read())
print(started, time.monotonic(), size)
"""


class Pinger:
    """Sends ``GET job`` in a loop and keeps ``(sent, latency ms)`` for each request."""

    def __init__(self, port: int, job_id: int) -> None:
        self.port = port
        self.target = f"{ENDPOINT}?request=job&job_id={job_id}"
        self.samples: list[tuple[float, float]] = []
        self._stop = False

    async def run(self) -> None:
        connection = await HttpConnection("127.0.0.1", self.port).connect()
        try:
            while not self._stop:
                sent = time.monotonic()
                status, body = await connection.request("GET", self.target)
                self.samples.append((sent, 1000 * (time.monotonic() - sent)))
                if status != 200:
                    raise RuntimeError(f"GET job returned {status}: {body[:200]!r}")
                await asyncio.sleep(PING_INTERVAL)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop = True

    def latencies_between(self, start: float, end: float) -> list[float]:
        return [latency for sent, latency in self.samples if start <= sent <= end]


async def measure_snapshot(server: PollerServer) -> tuple[float, float]:
    """Trigger a snapshot; return its duration from the server log and the max ping latency meanwhile."""
    pinger = Pinger(server.port, 1)
    task = asyncio.ensure_future(pinger.run())
    await asyncio.sleep(0.2)
    seen = len(server.lines)
    started = time.monotonic()
    server.signal(signal.SIGUSR1)
    match = await asyncio.to_thread(server.wait_for_line, SNAPSHOT_WRITTEN, seen, 300.0)
    ended = time.monotonic()
    pinger.stop()
    await task
    latencies = pinger.latencies_between(started, ended)
    return float(match.group(2)), max(latencies, default=float("nan"))


async def measure_listing(server: PollerServer, user: str) -> tuple[float, float, float, int]:
    """Fetch ``GET all?user=...`` in a child process; return its seconds, the pinger's p99 and max, and the bytes."""
    pinger = Pinger(server.port, 1)
    task = asyncio.ensure_future(pinger.run())
    await asyncio.sleep(0.2)
    url = f"http://127.0.0.1:{server.port}{ENDPOINT}?request=all&user={user}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FETCH_SCRIPT, url, stdout=subprocess.PIPE)
    output, _ = await process.communicate()
    pinger.stop()
    await task
    if process.returncode != 0:
        raise RuntimeError(f"listing fetch exited with status {process.returncode}")
    started, ended, size = output.split()
    latencies = pinger.latencies_between(float(started), float(ended))
    return (float(ended) - float(started), percentile(latencies, 0.99), max(latencies, default=float("nan")),
            int(size))


def run(context: BenchContext) -> ScenarioResult:
    sizes = context.sizes
    result = ScenarioResult("scale")
    folder = context.folder("scale")
    data_dir = folder / "data"
    jobs = LegacyJobs(context.data_dir, listing_every=sizes.scale_jobs // sizes.listing_jobs)
    built = time.monotonic()
    build_data_dir(data_dir, jobs, sizes.scale_jobs, sizes.scale_journal_jobs)
    total_jobs = sizes.scale_jobs + sizes.scale_journal_jobs
    listing_count = total_jobs // (sizes.scale_jobs // sizes.listing_jobs)
    context.log(f"scale: built a snapshot of {sizes.scale_jobs} jobs and a journal of "
                f"{sizes.scale_journal_jobs} in {time.monotonic() - built:.1f} s")

    with PollerServer(folder / "empty", log_level="info") as empty:
        time.sleep(0.2)
        empty_rss = empty.rss()

    recovery_ms: list[float] = []
    listen_s: list[float] = []
    per_job: list[float] = []
    rss_mb: list[float] = []
    server: PollerServer | None = None
    try:
        for round_index in range(sizes.scale_rounds):
            server = PollerServer(data_dir, log_level="info").start()
            match = server.wait_for_line(RECOVERED, timeout=10)
            recovered_jobs = int(match.group(1))
            if recovered_jobs != total_jobs:
                raise RuntimeError(f"recovered {recovered_jobs} jobs, expected {total_jobs}")
            recovery_ms.append(float(match.group(2)))
            listen_s.append(server.ready_seconds)
            time.sleep(0.2)
            rss = server.rss()
            rss_mb.append(rss / MEGABYTE)
            per_job.append((rss - empty_rss) / recovered_jobs)
            context.log(f"scale round {round_index + 1}: recovered {recovered_jobs} jobs in {recovery_ms[-1]:.0f} ms, "
                        f"listening after {listen_s[-1]:.1f} s, {per_job[-1]:.0f} bytes per job")
            if round_index + 1 < sizes.scale_rounds:
                server.kill()  # no final snapshot: the next start recovers the same files
                server = None

        assert server is not None
        snapshot_ms: list[float] = []
        stall_ms: list[float] = []
        for round_index in range(sizes.scale_rounds):
            duration, stall = asyncio.run(measure_snapshot(server))
            snapshot_ms.append(duration)
            stall_ms.append(stall)
            context.log(f"scale snapshot {round_index + 1}: {duration:.0f} ms, longest ping {stall:.1f} ms")

        listing_s: list[float] = []
        other_p99: list[float] = []
        other_max: list[float] = []
        for round_index in range(sizes.scale_rounds):
            seconds, p99, longest, size = asyncio.run(measure_listing(server, jobs.listing_user))
            listing_s.append(seconds)
            other_p99.append(p99)
            other_max.append(longest)
            context.log(f"scale listing {round_index + 1}: {listing_count} jobs, {size / MEGABYTE:.1f} MB "
                        f"in {seconds:.2f} s, other client p99 {p99:.1f} ms, max {longest:.1f} ms")
    finally:
        if server is not None:
            server.kill()

    result.metrics["memory_per_job_bytes"] = summarize(per_job, "bytes")
    result.metrics["server_rss_mb"] = summarize(rss_mb, "MB")
    result.metrics["recovery_s"] = summarize([ms / 1000 for ms in recovery_ms], "s")
    result.metrics["time_to_listen_s"] = summarize(listen_s, "s")
    result.metrics["snapshot_s"] = summarize([ms / 1000 for ms in snapshot_ms], "s")
    result.metrics["snapshot_max_stall_ms"] = summarize(stall_ms, "ms")
    result.metrics["listing_s"] = summarize(listing_s, "s")
    result.metrics["listing_other_p99_ms"] = summarize(other_p99, "ms")
    result.metrics["listing_other_max_ms"] = summarize(other_max, "ms")
    result.notes.append(
        f"{sizes.scale_jobs} jobs in the snapshot plus {sizes.scale_journal_jobs} created by journal records; "
        f"the listing returns the {listing_count} jobs of one user; empty server RSS {empty_rss / MEGABYTE:.1f} MB"
    )
    result.targets = [
        Target("memory per job under 1 KB", "memory_per_job_bytes", 1024, "below"),
        Target("longest stall while a snapshot is written under 50 ms", "snapshot_max_stall_ms", 50, "below"),
        Target("recovery from snapshot plus journal under 5 s", "recovery_s", 5, "below"),
        Target("other client's p99 during the listing under 50 ms", "listing_other_p99_ms", 50, "below"),
    ]
    result.skipped["bare"] = "the bare app stores nothing, so there is nothing to compare"
    result.skipped["beanstalkd"] = "beanstalkd has no snapshot or listing of stored jobs"
    return result
