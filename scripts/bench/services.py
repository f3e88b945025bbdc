"""Starting and stopping what the benchmark measures, all on 127.0.0.1.

Each service is a child process on a port picked here: a poller server, the
bare Tornado app, or beanstalkd. Readiness is the moment the port accepts a
connection, which for the poller server comes after recovery.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


class ServiceError(Exception):
    """A service did not start or stop as expected."""


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServiceError(f"process {proc.args[0]} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s") from None
            time.sleep(0.005)


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ServiceError(f"process {pid} has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time that process ``pid`` has used, all threads included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name in brackets may contain spaces; the fields after it do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """A child process listening on ``port``; its stderr lines are kept in ``lines``."""

    name = "service"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.started_at = 0.0
        self.ready_seconds = 0.0
        self._new_line = threading.Condition()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> "Service":
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        try:
            wait_for_port(self.port, self.proc, timeout)
        except ServiceError as exc:
            self.kill()
            raise ServiceError(f"{self.name} did not start: {exc}\n{''.join(self.lines[-20:])}") from None
        self.ready_seconds = time.monotonic() - self.started_at
        return self

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    def wait_for_line(self, pattern: re.Pattern, after: int = 0, timeout: float = 60.0) -> re.Match:
        """Wait until a stderr line from index ``after`` on matches ``pattern``; return the match."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines[after:]:
                    match = pattern.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceError(f"{self.name} logged no line matching {pattern.pattern!r} in {timeout:.0f} s")
                self._new_line.wait(remaining)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """Stop with SIGTERM, and with SIGKILL if that takes longer than STOP_TIMEOUT."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Event loop of both the poller and the bare app, so that they are compared on
# the same stack. main() sets it from --event-loop.
EVENT_LOOP = {"name": "asyncio"}


def use_event_loop(name: str) -> None:
    EVENT_LOOP["name"] = name


class PollerServer(Service):
    """``poller-server`` on its own data directory.

    With ``counters=True`` it runs under :mod:`bench.journal_counters`, which
    prints the journal's fsync counters on SIGUSR2.
    """

    name = "poller-server"

    def __init__(self, data_dir: Path, fsync: str = "always", log_level: str = "warning",
                 max_waiters: int = 10000, counters: bool = False) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.fsync = fsync
        self.log_level = log_level
        self.max_waiters = max_waiters
        self.counters = counters

    def command(self) -> list[str]:
        if self.counters:
            entry = [sys.executable, str(BENCH_DIR / "journal_counters.py")]
        else:
            entry = [sys.executable, "-m", "poller_server"]
        return entry + [
            "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--fsync", self.fsync, "--max-waiters", str(self.max_waiters),
            # Every waiter keeps a connection open, and the benchmark's own clients need a few more.
            "--max-connections", str(self.max_waiters + 256),
            "--snapshot-interval", "0", "--snapshot-every", "0", "--log-level", self.log_level,
            "--event-loop", EVENT_LOOP["name"],
        ]


class BareServer(Service):
    """The bare Tornado app of :mod:`bench.bare_app`."""

    name = "bare Tornado app"

    def command(self) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "bare_app.py"), "--port", str(self.port),
                "--event-loop", EVENT_LOOP["name"]]


class Beanstalkd(Service):
    """beanstalkd with its binlog in ``binlog_dir`` and an fsync after every write (``-f 0``)."""

    name = "beanstalkd"

    def __init__(self, binlog_dir: Path) -> None:
        super().__init__()
        self.binlog_dir = binlog_dir

    def command(self) -> list[str]:
        self.binlog_dir.mkdir(parents=True, exist_ok=True)
        return [beanstalkd_path() or "beanstalkd", "-l", HOST, "-p", str(self.port), "-b", str(self.binlog_dir), "-f", "0"]


BEANSTALKD_MISSING = "beanstalkd is not installed (Debian package beanstalkd)"


def beanstalkd_path() -> str | None:
    return shutil.which("beanstalkd")


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted``; children inherit it. Return the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def cpu_count() -> int:
    return os.cpu_count() or 1
