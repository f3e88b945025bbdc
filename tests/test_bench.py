"""scripts/poller-bench: it runs, stops what it starts, and reports every scenario.

These tests check the benchmark's correctness only. They assert no timing,
because the figures depend on the machine and on what else runs on it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BENCH = REPOSITORY / "scripts" / "poller-bench"
SCENARIOS = {"read", "create", "json", "lifecycle", "longpoll", "scale"}
SUMMARY_KEYS = {"median", "min", "max", "unit", "rounds"}

sys.path.insert(0, str(REPOSITORY / "scripts"))

from bench.load import lua_long_string  # noqa: E402
from bench.stats import percentile, ratios, summarize  # noqa: E402


def run_bench(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--json", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def check_scenario(name: str, scenario: dict) -> None:
    assert scenario["status"] in ("ok", "skipped"), f"{name}: {scenario['status']}: {scenario['reason']}"
    if scenario["status"] == "skipped":
        assert scenario["reason"], f"{name} is skipped without a reason"
        return
    assert scenario["metrics"], f"{name} has no metrics"
    for metric, summary in scenario["metrics"].items():
        assert set(summary) == SUMMARY_KEYS, f"{name}.{metric}: {summary}"
        assert summary["rounds"], f"{name}.{metric} has no rounds"
        if summary["median"] is not None:
            assert summary["min"] <= summary["median"] <= summary["max"], f"{name}.{metric}: {summary}"
    for target in scenario["targets"]:
        assert target["metric"] in scenario["metrics"], f"{name}: target on unknown metric {target['metric']}"
        assert target["met"] in (True, False, None)
    for system, reason in scenario["skipped"].items():
        assert reason, f"{name}: {system} skipped without a reason"


def leftover_processes(marker: str) -> list[str]:
    """Return command lines of live processes whose arguments contain ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command:
            found.append(command)
    return found


@pytest.fixture
def bench_temp(tmp_path) -> Path:
    """A temporary folder for the benchmark's data directories, unique to this test."""
    path = tmp_path / "bench"
    path.mkdir()
    return path


def test_quick_run_reports_every_scenario(bench_temp):
    completed = run_bench("--quick", "--temp-dir", str(bench_temp))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["mode"] == "quick"
    assert set(report["scenarios"]) == SCENARIOS
    for name, scenario in report["scenarios"].items():
        check_scenario(name, scenario)
    assert {"cpus", "cpu_model", "memory_gb", "python", "tornado"} <= set(report["machine"])
    assert report["event_loop"] == "uvloop"
    assert list(bench_temp.iterdir()) == [], "the benchmark left files behind"
    assert leftover_processes(str(bench_temp)) == []


def test_json_scenario_compares_with_orjson(bench_temp):
    completed = run_bench("--quick", "--scenario", "json", "--temp-dir", str(bench_temp))
    assert completed.returncode == 0, completed.stderr[-3000:]
    json_scenario = json.loads(completed.stdout)["scenarios"]["json"]
    check_scenario("json", json_scenario)
    metrics = json_scenario["metrics"]
    assert metrics["server_encode_us"]["median"] > 0
    assert metrics["server_strict_parse_us"]["median"] > 0
    assert metrics["orjson_encode_us"]["median"] > 0
    assert metrics["server_create_form_decode_us"]["median"] > 0
    # Both encoders give the same bytes for every real configuration.
    assert metrics["orjson_encode_differs"]["median"] == 0


def test_missing_tools_are_skipped_with_reason(bench_temp, tmp_path):
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir()
    env = dict(os.environ, PATH=str(empty_path))
    completed = run_bench("--quick", "--scenario", "lifecycle", "--temp-dir", str(bench_temp), env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert set(report["scenarios"]) == {"lifecycle"}
    lifecycle = report["scenarios"]["lifecycle"]
    check_scenario("lifecycle", lifecycle)
    assert "not installed" in lifecycle["skipped"]["beanstalkd"]
    assert report["load_generator"] == "python"


def test_python_load_generator_runs_read_on_standard_loop(bench_temp):
    completed = run_bench("--quick", "--scenario", "read", "--python-load", "--event-loop", "asyncio",
                          "--temp-dir", str(bench_temp))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["load_generator"] == "python"
    assert report["event_loop"] == "asyncio"
    check_scenario("read", report["scenarios"]["read"])
    assert report["scenarios"]["read"]["metrics"]["poller_job_rps"]["median"] > 0


def test_missing_data_fails_with_message(bench_temp, tmp_path):
    completed = run_bench("--quick", "--scenario", "create", "--data", str(tmp_path / "nowhere"),
                          "--temp-dir", str(bench_temp))
    assert completed.returncode == 1
    report = json.loads(completed.stdout)
    assert report["scenarios"]["create"]["status"] == "failed"
    assert "--data" in report["scenarios"]["create"]["reason"]


def test_summary_keeps_rounds_and_drops_nan():
    summary = summarize([3.0, float("nan"), 1.0, 2.0], "ms")
    assert summary["median"] == 2.0
    assert summary["min"] == 1.0
    assert summary["max"] == 3.0
    assert len(summary["rounds"]) == 4


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0


def test_ratios_are_round_by_round():
    assert ratios([10, 30], [20, 30]) == [0.5, 1.0]


def test_lua_long_string_cannot_be_closed_early():
    assert lua_long_string("a=b") == "[[a=b]]"
    assert lua_long_string("x]]y") == "[=[x]]y]=]"
    assert lua_long_string("x]]y]=]z") == "[==[x]]y]=]z]==]"
