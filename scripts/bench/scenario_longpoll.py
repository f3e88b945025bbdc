"""``longpoll``: wake-up latency with many waiting claimers, and memory with idle waiters.

Wake-up latency runs from the moment the client has the create's response
to the moment a waiting claimer has its claim. Both responses wait for the
same fsync, so the claim can arrive first and a latency can be slightly
negative; the figures keep the sign.
"""

import asyncio
import json
import time

from .beanstalk import BeanstalkConnection
from .context import BenchContext, ScenarioResult, Target
from .datasets import create_form_body, load_runs, run_payload
from .http_client import HttpConnection, open_connections
from .services import BEANSTALKD_MISSING, BareServer, Beanstalkd, PollerServer, beanstalkd_path
from .stats import percentile, summarize

ENDPOINT = "/poller/update/"
WAIT_SECONDS = 60
WAKEUP_TIMEOUT = 10.0
MEGABYTE = 1024 * 1024
IDLE_CLAIM = f"{ENDPOINT}?request=next&claim=1&wait={WAIT_SECONDS}"
# The bare app's route that keeps a request open until the client disconnects.
BARE_HOLD = "/hold/"


async def settle(count: int) -> None:
    """Give the server time to read ``count`` freshly sent requests (no count is exposed)."""
    await asyncio.sleep(0.3 + count / 5000)


async def poller_wakeups(port: int, claimers: int, wakeups: int, bodies: list[bytes]) -> list[float]:
    """Return the wake-up latencies, in ms, of ``wakeups`` jobs created one at a time."""
    loop = asyncio.get_running_loop()
    claimed: dict[int, asyncio.Future] = {}
    target = f"{ENDPOINT}?request=next&claim=1&wait={WAIT_SECONDS}"

    async def wait_for_jobs(connection: HttpConnection) -> None:
        while True:
            status, body = await connection.request("GET", target)
            received = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"GET next returned {status}: {body[:200]!r}")
            if body != b"{}":
                job_id = json.loads(body)["job_id"]
                claimed.setdefault(job_id, loop.create_future()).set_result(received)

    connections = await open_connections("127.0.0.1", port, claimers)
    tasks = [asyncio.ensure_future(wait_for_jobs(c)) for c in connections]
    creator = await HttpConnection("127.0.0.1", port).connect()
    latencies = []
    try:
        await settle(claimers)
        for index in range(wakeups):
            status, body = await creator.request("POST", ENDPOINT, bodies[index % len(bodies)])
            created = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"POST new returned {status}: {body[:200]!r}")
            job_id = json.loads(body)["job_id"]
            received = await asyncio.wait_for(claimed.setdefault(job_id, loop.create_future()), WAKEUP_TIMEOUT)
            latencies.append(1000 * (received - created))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in [creator, *connections]:
            connection.close()
    return latencies


async def beanstalkd_wakeups(port: int, reservers: int, wakeups: int, payloads: list[bytes]) -> list[float]:
    loop = asyncio.get_running_loop()
    reserved_at: dict[int, asyncio.Future] = {}

    async def wait_for_jobs(connection: BeanstalkConnection) -> None:
        while True:
            reserved = await connection.reserve(WAIT_SECONDS)
            received = time.perf_counter()
            if reserved is not None:
                reserved_at.setdefault(reserved[0], loop.create_future()).set_result(received)
                await connection.delete(reserved[0])

    connections = [await BeanstalkConnection("127.0.0.1", port).connect() for _ in range(reservers)]
    tasks = [asyncio.ensure_future(wait_for_jobs(c)) for c in connections]
    producer = await BeanstalkConnection("127.0.0.1", port).connect()
    latencies = []
    try:
        await settle(reservers)
        for index in range(wakeups):
            job_id = await producer.put(payloads[index % len(payloads)])
            created = time.perf_counter()
            received = await asyncio.wait_for(reserved_at.setdefault(job_id, loop.create_future()), WAKEUP_TIMEOUT)
            latencies.append(1000 * (received - created))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in [producer, *connections]:
            connection.close()
    return latencies


async def hold_idle_waiters(port: int, count: int, measure, target: str = IDLE_CLAIM) -> int:
    """Park ``count`` requests for ``target`` and return ``measure()`` taken while they wait."""
    connections = await open_connections("127.0.0.1", port, count)
    try:
        for connection in connections:
            connection.send("GET", target)
        await settle(count)
        return measure()
    finally:
        for connection in connections:
            connection.close()


def run(context: BenchContext) -> ScenarioResult:
    sizes = context.sizes
    result = ScenarioResult("longpoll")
    runs = load_runs(context.data_dir)
    bodies = [create_form_body(run) for run in runs]
    payloads = [run_payload(run) for run in runs]
    have_beanstalkd = beanstalkd_path() is not None
    if not have_beanstalkd:
        result.skipped["beanstalkd"] = BEANSTALKD_MISSING

    max_waiters = max(sizes.idle_waiters, sizes.waiting_claimers) + 100
    p50: dict[str, list[float]] = {"poller": [], "beanstalkd": []}
    p99: dict[str, list[float]] = {"poller": [], "beanstalkd": []}
    with PollerServer(context.folder("longpoll") / "wakeups", max_waiters=max_waiters) as poller:
        beanstalkd = Beanstalkd(context.folder("longpoll") / "binlog") if have_beanstalkd else None
        if beanstalkd is not None:
            beanstalkd.start()
        try:
            for round_index in range(sizes.scale_rounds):
                latencies = {"poller": asyncio.run(
                    poller_wakeups(poller.port, sizes.waiting_claimers, sizes.wakeups, bodies))}
                if beanstalkd is not None:
                    latencies["beanstalkd"] = asyncio.run(
                        beanstalkd_wakeups(beanstalkd.port, sizes.waiting_claimers, sizes.wakeups, payloads))
                for system, values in latencies.items():
                    p50[system].append(percentile(values, 0.50))
                    p99[system].append(percentile(values, 0.99))
                context.log(
                    "longpoll round %d, %d waiting: %s"
                    % (round_index + 1, sizes.waiting_claimers,
                       ", ".join(f"{s} p50 {p50[s][-1]:.2f} p99 {p99[s][-1]:.2f} ms" for s in latencies))
                )
        finally:
            if beanstalkd is not None:
                beanstalkd.stop()

    idle_rss: list[float] = []
    empty_rss: list[float] = []
    bare_idle_rss: list[float] = []
    bare_empty_rss: list[float] = []
    for round_index in range(sizes.scale_rounds):
        data_dir = context.folder("longpoll") / f"idle-{round_index}"
        with PollerServer(data_dir, max_waiters=max_waiters) as poller:
            empty_rss.append(poller.rss() / MEGABYTE)
            idle_rss.append(asyncio.run(hold_idle_waiters(poller.port, sizes.idle_waiters, poller.rss)) / MEGABYTE)
        context.log(f"longpoll: {sizes.idle_waiters} idle waiters, server RSS {idle_rss[-1]:.1f} MB")
        # The same number of requests held open by a bare Tornado app: what
        # the HTTP stack alone needs for them.
        with BareServer() as bare:
            bare_empty_rss.append(bare.rss() / MEGABYTE)
            bare_idle_rss.append(
                asyncio.run(hold_idle_waiters(bare.port, sizes.idle_waiters, bare.rss, BARE_HOLD)) / MEGABYTE)
        context.log(f"longpoll: {sizes.idle_waiters} requests held by the bare app, RSS {bare_idle_rss[-1]:.1f} MB")

    for system in ("poller", "beanstalkd"):
        if p50[system]:
            result.metrics[f"{system}_wakeup_p50_ms"] = summarize(p50[system], "ms")
            result.metrics[f"{system}_wakeup_p99_ms"] = summarize(p99[system], "ms")
    result.metrics["idle_waiters_rss_mb"] = summarize(idle_rss, "MB")
    result.metrics["empty_server_rss_mb"] = summarize(empty_rss, "MB")
    result.metrics["rss_per_waiter_kb"] = summarize(
        [1024 * (idle - empty) / sizes.idle_waiters for idle, empty in zip(idle_rss, empty_rss)], "KB")
    result.metrics["bare_held_requests_rss_mb"] = summarize(bare_idle_rss, "MB")
    result.metrics["bare_rss_per_held_request_kb"] = summarize(
        [1024 * (idle - empty) / sizes.idle_waiters for idle, empty in zip(bare_idle_rss, bare_empty_rss)], "KB")
    result.notes.append(
        f"{sizes.waiting_claimers} waiting claimers, {sizes.wakeups} jobs created one at a time per round; "
        f"memory with {sizes.idle_waiters} idle waiters"
    )
    result.targets = [
        Target("wake-up p99 under 5 ms", "poller_wakeup_p99_ms", 5.0, "below"),
        Target(f"server memory with {sizes.idle_waiters} idle waiters under 150 MB",
               "idle_waiters_rss_mb", 150.0, "below"),
    ]
    return result
