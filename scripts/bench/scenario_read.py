"""``read``: GET job and GET next (peek) on a store of 100,000 jobs, against the bare app."""

import random

from .context import BenchContext, ScenarioResult, Target
from .datasets import LegacyJobs, build_data_dir
from .load import RequestSpec, run_load
from .services import BareServer, PollerServer
from .stats import ratios, summarize

ENDPOINT = "/poller/update/"
# Distinct job ids per wrk script; enough that reads spread over the store.
RANDOM_IDS = 1000


def run(context: BenchContext) -> ScenarioResult:
    sizes = context.sizes
    result = ScenarioResult("read")
    data_dir = context.folder("read") / "data"
    # Every 10th job is new, so a peek at next finds one at once.
    build_data_dir(data_dir, LegacyJobs(context.data_dir, listing_every=10), sizes.read_jobs, 0)

    ids = random.Random(1).sample(range(1, sizes.read_jobs + 1), min(RANDOM_IDS, sizes.read_jobs))
    job_requests = [RequestSpec("GET", f"{ENDPOINT}?request=job&job_id={job_id}") for job_id in ids]
    next_requests = [RequestSpec("GET", f"{ENDPOINT}?request=next")]
    plans = {
        "bare_get": job_requests,
        "poller_job": job_requests,
        "poller_next": next_requests,
    }
    rounds: dict[str, list[float]] = {name: [] for name in plans}
    p99: dict[str, list[float]] = {name: [] for name in plans}
    cpu_per_request: dict[str, list[float]] = {name: [] for name in plans}

    with PollerServer(data_dir) as poller, BareServer() as bare:
        context.log(f"read: {sizes.read_jobs} jobs recovered in {poller.ready_seconds:.1f} s")
        servers = {"bare_get": bare, "poller_job": poller, "poller_next": poller}
        if sizes.warmup_seconds:
            for name, requests in plans.items():
                run_load(servers[name].port, requests, sizes.connections, sizes.warmup_seconds, context.use_wrk)
        for round_index in range(sizes.rounds):
            for name, requests in plans.items():
                cpu_before = servers[name].cpu_seconds()
                load = run_load(servers[name].port, requests, sizes.connections, sizes.load_seconds, context.use_wrk)
                cpu_per_request[name].append(1e6 * (servers[name].cpu_seconds() - cpu_before) / max(1, load.requests))
                if load.errors:
                    result.notes.append(f"{name} round {round_index + 1}: {load.errors} failed requests")
                rounds[name].append(load.requests_per_second)
                p99[name].append(load.p99_ms)
            context.log(
                "read round %d: bare %.0f, job %.0f, next %.0f req/s"
                % (round_index + 1, rounds["bare_get"][-1], rounds["poller_job"][-1], rounds["poller_next"][-1])
            )

    for name in plans:
        result.metrics[f"{name}_rps"] = summarize(rounds[name], "req/s")
        result.metrics[f"{name}_p99_ms"] = summarize(p99[name], "ms")
        result.metrics[f"{name}_server_cpu_us_per_request"] = summarize(cpu_per_request[name], "µs")
    result.metrics["job_vs_bare"] = summarize(ratios(rounds["poller_job"], rounds["bare_get"]), "ratio")
    result.metrics["next_vs_bare"] = summarize(ratios(rounds["poller_next"], rounds["bare_get"]), "ratio")
    result.targets = [
        Target("GET job at least 0.90 of bare", "job_vs_bare", 0.90, "at_least"),
        Target("GET next (peek) at least 0.90 of bare", "next_vs_bare", 0.90, "at_least"),
    ]
    result.skipped["beanstalkd"] = "beanstalkd has no equivalent of a read by id over HTTP"
    return result
