"""Closed-loop HTTP load: wrk when installed, else a Python load generator.

Both keep ``connections`` connections busy for ``duration`` seconds, each
sending its next request as soon as the previous response arrives, and
report requests per second and latency percentiles. Requests come from a
list of ``(method, target, body)`` used in turn, so GET and POST scenarios
share one code path.
"""

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .http_client import HttpConnection, open_connections
from .stats import percentile

PYTHON_FALLBACK_NOTE = (
    "wrk is not installed, so HTTP load comes from the Python load generator; "
    "it uses more CPU per request than wrk, so throughput figures are lower"
)
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@dataclass
class RequestSpec:
    method: str
    target: str
    body: bytes = b""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_load(port: int, requests: list[RequestSpec], connections: int, duration: float,
             use_wrk: bool = True) -> LoadResult:
    if use_wrk and wrk_path():
        return run_wrk(port, requests, connections, duration)
    return asyncio.run(run_python_load(port, requests, connections, duration))


# -- wrk ------------------------------------------------------------------------------

LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def lua_long_string(text: str) -> str:
    """Quote ``text`` as a Lua long string whose closing bracket does not occur in ``text``."""
    level = 0
    while "]" + "=" * level + "]" in text:
        level += 1
    return "[" + "=" * level + "[" + text + "]" + "=" * level + "]"


def write_lua_script(path: Path, requests: list[RequestSpec]) -> None:
    # wrk.format builds each request once per call, so the script pre-formats
    # them in init and the per-request function only picks the next one.
    entries = []
    for spec in requests:
        headers = '{["Content-Type"] = "%s"}' % FORM_TYPE if spec.method == "POST" else "nil"
        body = lua_long_string(spec.body.decode("utf-8")) if spec.body else "nil"
        entries.append(f'  {{"{spec.method}", {lua_long_string(spec.target)}, {headers}, {body}}},')
    script = """
local specs = {
%s
}
local requests = {}
local index = 0
init = function(args)
  for i, spec in ipairs(specs) do
    requests[i] = wrk.format(spec[1], spec[2], spec[3], spec[4])
  end
end
request = function()
  index = index %% #requests + 1
  return requests[index]
end
""" % "\n".join(entries)
    path.write_text(script, encoding="utf-8")


def parse_latency(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"invalid wrk latency {text!r}")
    return float(match.group(1)) * LATENCY_UNITS[match.group(2)]


def run_wrk(port: int, requests: list[RequestSpec], connections: int, duration: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="poller-bench-wrk-") as folder:
        script = Path(folder) / "requests.lua"
        write_lua_script(script, requests)
        command = [
            wrk_path() or "wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--latency", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/",
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    output = completed.stdout
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed with status {completed.returncode}: {completed.stderr.strip()}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (rate and total and p50 and p99):
        raise RuntimeError(f"wrk output could not be read:\n{output}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(value) for value in socket_errors.groups())
    return LoadResult(float(rate.group(1)), parse_latency(p50.group(1)), parse_latency(p99.group(1)),
                      int(total.group(1)), errors)


# -- Python fallback ------------------------------------------------------------------


async def run_python_load(port: int, requests: list[RequestSpec], connections: int, duration: float) -> LoadResult:
    pool = await open_connections("127.0.0.1", port, connections)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def drive(connection: HttpConnection, offset: int) -> None:
        nonlocal errors
        index = offset
        while time.monotonic() < deadline:
            spec = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            status, _ = await connection.request(spec.method, spec.target, spec.body)
            latencies.append(1000 * (time.perf_counter() - started))
            if not 200 <= status < 400:
                errors += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(drive(connection, i) for i, connection in enumerate(pool)))
    finally:
        for connection in pool:
            connection.close()
    elapsed = time.monotonic() - started
    return LoadResult(len(latencies) / elapsed, percentile(latencies, 0.50), percentile(latencies, 0.99),
                      len(latencies), errors)
