"""``create``: POST new with real run configurations at each fsync policy, against bare POST."""

import re
import signal

from .context import BenchContext, ScenarioResult, Target
from .datasets import create_form_body, load_runs
from .load import RequestSpec, run_load
from .services import BareServer, PollerServer
from .stats import ratios, summarize

ENDPOINT = "/poller/update/"
POLICIES = ("always", "everysec", "no")
COUNTERS = re.compile(r"Journal counters: fsyncs (\d+) records (\d+)")


def read_counters(server: PollerServer) -> tuple[int, int]:
    """Ask the server for its journal counters (SIGUSR2) and return ``(fsyncs, records)``."""
    seen = len(server.lines)
    server.signal(signal.SIGUSR2)
    match = server.wait_for_line(COUNTERS, after=seen, timeout=10)
    return int(match.group(1)), int(match.group(2))


def run(context: BenchContext) -> ScenarioResult:
    sizes = context.sizes
    result = ScenarioResult("create")
    requests = [RequestSpec("POST", ENDPOINT, create_form_body(run)) for run in load_runs(context.data_dir)]
    rates: dict[str, list[float]] = {name: [] for name in ("bare", *POLICIES)}
    p99: dict[str, list[float]] = {name: [] for name in ("bare", *POLICIES)}
    fsync_rates: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    records_per_fsync: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    cpu_per_request: dict[str, list[float]] = {name: [] for name in ("bare", *POLICIES)}

    with BareServer() as bare:
        for round_index in range(sizes.rounds):
            cpu_before = bare.cpu_seconds()
            load = run_load(bare.port, requests, sizes.connections, sizes.load_seconds, context.use_wrk)
            cpu_per_request["bare"].append(1e6 * (bare.cpu_seconds() - cpu_before) / max(1, load.requests))
            rates["bare"].append(load.requests_per_second)
            p99["bare"].append(load.p99_ms)
            for policy in POLICIES:
                # A fresh data directory per round, so every round starts from an empty journal.
                data_dir = context.folder("create") / f"{policy}-{round_index}"
                with PollerServer(data_dir, fsync=policy, counters=True) as poller:
                    fsyncs_before, records_before = read_counters(poller)
                    cpu_before = poller.cpu_seconds()
                    load = run_load(poller.port, requests, sizes.connections, sizes.load_seconds, context.use_wrk)
                    cpu_per_request[policy].append(1e6 * (poller.cpu_seconds() - cpu_before) / max(1, load.requests))
                    fsyncs, records = read_counters(poller)
                if load.errors:
                    result.notes.append(f"fsync {policy} round {round_index + 1}: {load.errors} failed requests")
                rates[policy].append(load.requests_per_second)
                p99[policy].append(load.p99_ms)
                fsyncs -= fsyncs_before
                records -= records_before
                fsync_rates[policy].append(fsyncs / sizes.load_seconds)
                records_per_fsync[policy].append(records / fsyncs if fsyncs else float("nan"))
            context.log(
                "create round %d: bare %.0f, always %.0f, everysec %.0f, no %.0f req/s"
                % (round_index + 1, rates["bare"][-1], rates["always"][-1], rates["everysec"][-1], rates["no"][-1])
            )

    result.metrics["bare_post_rps"] = summarize(rates["bare"], "req/s")
    result.metrics["bare_post_p99_ms"] = summarize(p99["bare"], "ms")
    result.metrics["bare_post_server_cpu_us_per_request"] = summarize(cpu_per_request["bare"], "µs")
    for policy in POLICIES:
        result.metrics[f"{policy}_rps"] = summarize(rates[policy], "req/s")
        result.metrics[f"{policy}_p99_ms"] = summarize(p99[policy], "ms")
        result.metrics[f"{policy}_server_cpu_us_per_request"] = summarize(cpu_per_request[policy], "µs")
        result.metrics[f"{policy}_vs_bare"] = summarize(ratios(rates[policy], rates["bare"]), "ratio")
        result.metrics[f"{policy}_fsyncs_per_s"] = summarize(fsync_rates[policy], "fsync/s")
        result.metrics[f"{policy}_records_per_fsync"] = summarize(records_per_fsync[policy], "records")
    result.targets = [Target("fsync always at least 0.75 of bare POST", "always_vs_bare", 0.75, "at_least")]
    result.skipped["beanstalkd"] = "compared in lifecycle, where put has the same role as POST new"
    return result
