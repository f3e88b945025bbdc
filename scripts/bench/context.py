"""The inputs every scenario gets (sizes for the mode, a temporary folder, data) and its result."""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sizes:
    """Sizes and round counts of one mode; ``QUICK`` keeps the whole run near 40 s on 2 cores."""

    rounds: int
    load_seconds: float
    warmup_seconds: float
    read_jobs: int
    connections: int
    lifecycle_jobs: int
    lifecycle_rounds: int
    runner_counts: tuple[int, ...]
    submitters: int
    waiting_claimers: int
    wakeups: int
    idle_waiters: int
    scale_jobs: int
    scale_journal_jobs: int
    listing_jobs: int
    scale_rounds: int


FULL = Sizes(
    rounds=5, load_seconds=5, warmup_seconds=1, read_jobs=100_000, connections=64,
    lifecycle_jobs=2000, lifecycle_rounds=3, runner_counts=(1, 8, 64), submitters=4,
    waiting_claimers=1000, wakeups=300, idle_waiters=10_000,
    scale_jobs=1_000_000, scale_journal_jobs=50_000, listing_jobs=100_000, scale_rounds=3,
)
QUICK = Sizes(
    rounds=2, load_seconds=1, warmup_seconds=0, read_jobs=10_000, connections=64,
    lifecycle_jobs=150, lifecycle_rounds=2, runner_counts=(1, 8, 64), submitters=4,
    waiting_claimers=100, wakeups=30, idle_waiters=1000,
    scale_jobs=20_000, scale_journal_jobs=2_000, listing_jobs=2_000, scale_rounds=2,
)


@dataclass
class Target:
    """A goal for one metric: its median must be ``at_least``, ``above`` or ``below`` ``threshold``."""

    description: str
    metric: str
    threshold: float
    direction: str
    met: bool | None = None

    def check(self, metrics: dict) -> None:
        value = metrics.get(self.metric, {}).get("median")
        if value is None:
            self.met = None
        elif self.direction == "at_least":
            self.met = value >= self.threshold
        elif self.direction == "above":
            self.met = value > self.threshold
        else:
            self.met = value < self.threshold


@dataclass
class ScenarioResult:
    name: str
    status: str = "ok"  # "ok", "skipped" or "failed"
    reason: str | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        for target in self.targets:
            target.check(self.metrics)
        return {
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "metrics": self.metrics,
            "targets": [vars(target) for target in self.targets],
            "skipped": self.skipped,
            "notes": self.notes,
        }


@dataclass
class BenchContext:
    sizes: Sizes
    quick: bool
    temp_dir: Path
    data_dir: Path
    use_wrk: bool
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        """Print a progress line to stderr, with seconds since the start."""
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        path = self.temp_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
