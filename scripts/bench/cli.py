"""The ``poller-bench`` command line: run the scenarios and print the results."""

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import tornado

from poller_server.event_loop import EVENT_LOOPS, resolve_event_loop, uvloop_installed

from . import (report, scenario_create, scenario_json, scenario_lifecycle, scenario_longpoll, scenario_read,
               scenario_scale)
from .context import FULL, QUICK, BenchContext, ScenarioResult
from .datasets import DEFAULT_DATA_DIR, DataError
from .load import PYTHON_FALLBACK_NOTE, wrk_path
from .services import ServiceError, raise_open_file_limit, remove_tree, use_event_loop

SCENARIOS = {
    "read": scenario_read.run,
    "create": scenario_create.run,
    "json": scenario_json.run,
    "lifecycle": scenario_lifecycle.run,
    "longpoll": scenario_longpoll.run,
    "scale": scenario_scale.run,
}
# Idle waiters and their clients each need a descriptor on both sides.
OPEN_FILES_WANTED = 30_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller-bench",
        description="Benchmark the poller server on loopback against a bare Tornado app and beanstalkd. "
        "Starts every server it measures in a temporary folder and stops them at the end.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer rounds, about 40 s on 2 cores (default: the full run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help="run only this scenario; repeat for more (default: all of "
                        + ", ".join(SCENARIOS) + ")")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with e3sm-runs.json and legacy-userruns-dump.json (default: %(default)s)")
    parser.add_argument("--temp-dir", type=Path, default=None,
                        help="where to create the temporary folder for data directories and binlogs "
                        "(default: the system's temporary folder); fsync cost depends on its file system")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="event loop for the poller and the bare app alike: uvloop, asyncio, or auto "
                        "for uvloop when it is installed (default: %(default)s)")
    parser.add_argument("--python-load", action="store_true",
                        help="use the Python load generator even when wrk is installed")
    return parser


def describe_machine(temp_dir: Path) -> dict:
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(memory_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tornado": tornado.version,
        "temp_dir": str(temp_dir),
    }


def run_scenario(name: str, context: BenchContext) -> ScenarioResult:
    context.log(f"{name}: starting")
    started = time.monotonic()
    try:
        result = SCENARIOS[name](context)
    except (ServiceError, DataError, RuntimeError, OSError, TimeoutError) as exc:
        context.log(f"{name}: failed: {exc}")
        result = ScenarioResult(name, status="failed", reason=str(exc))
    result.seconds = time.monotonic() - started
    context.log(f"{name}: done in {result.seconds:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    sizes = QUICK if args.quick else FULL
    raise_open_file_limit(OPEN_FILES_WANTED)
    event_loop = resolve_event_loop(args.event_loop)
    if event_loop == "uvloop" and not uvloop_installed():
        print("poller-bench: --event-loop uvloop needs the uvloop package: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    use_event_loop(event_loop)
    use_wrk = not args.python_load and wrk_path() is not None
    notes = []
    if not use_wrk:
        notes.append(PYTHON_FALLBACK_NOTE if not args.python_load else "Python load generator chosen with --python-load")
        print(f"note: {notes[-1]}", file=sys.stderr)

    temp_dir = Path(tempfile.mkdtemp(prefix="poller-bench-", dir=args.temp_dir))
    context = BenchContext(sizes=sizes, quick=args.quick, temp_dir=temp_dir, data_dir=args.data, use_wrk=use_wrk)
    results = {}
    try:
        for name in names:
            results[name] = run_scenario(name, context)
            # Each scenario's data directories can be gigabytes; free them at once.
            remove_tree(temp_dir)
            temp_dir.mkdir()
    finally:
        remove_tree(temp_dir)

    output = {
        "command": " ".join(["scripts/poller-bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "full",
        "load_generator": "wrk" if use_wrk else "python",
        "event_loop": event_loop,
        "machine": describe_machine(Path(tempfile.gettempdir()) if args.temp_dir is None else args.temp_dir),
        "seconds": round(time.monotonic() - context.started, 1),
        "notes": notes,
        "scenarios": {name: result.to_dict() for name, result in results.items()},
    }
    print(report.format_json(output) if args.json else report.format_table(output))
    return 1 if any(result.status == "failed" for result in results.values()) else 0
