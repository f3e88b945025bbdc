"""``GET /healthz``: whether the server can take writes, for load balancers and probes.

The request needs no token. It is 200 with ``"status": "ok"`` while the
journal accepts writes and 503 with ``"status": "failing"`` once an append
or fsync has failed (a full disk, an I/O error). Journal appends succeed
again once space is free, and the status returns to ``ok`` at the next
successful write. A failed fsync is not cleared without a restart.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .handlers import BaseHandler
from .jobs import encode_json
from .service import JobService
from .snapshot import list_snapshots

if TYPE_CHECKING:
    from .server import Runtime


def snapshot_age(runtime: Runtime) -> float | None:
    """Return seconds since the newest snapshot was written, or None if there is none.

    A snapshot written by an earlier run of the server counts, by its file's
    modification time.
    """
    written = runtime.snapshotter.last_snapshot_time
    if written is None:
        snapshots = list_snapshots(runtime.config.data_dir)
        if not snapshots:
            return None
        try:
            written = os.stat(snapshots[0][1]).st_mtime
        except FileNotFoundError:  # compacted away since the listing
            return None
    return max(0.0, time.time() - written)


def disk_free_bytes(path: str) -> int | None:
    try:
        usage = os.statvfs(path)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


def health_report(service: JobService, runtime: Runtime | None) -> dict:
    """Describe the journal and snapshot state; ``status`` is ``failing`` if writes fail."""
    journal = service.journal
    report: dict = {
        "status": "failing" if journal.failing else "ok",
        "journal": {
            "writes_failing": journal.failing,
            "error": journal.sync_error or journal.append_error,
            "fsync_policy": journal.fsync_policy,
            "last_fsync_age_seconds": round(time.monotonic() - journal.last_sync_time, 3),
            "last_seq": journal.last_seq,
            "disk_free_bytes": disk_free_bytes(journal.data_dir),
        },
        "jobs": len(service.store),
    }
    if runtime is not None:
        age = snapshot_age(runtime)
        snapshotter = runtime.snapshotter
        report["snapshot"] = {
            "age_seconds": round(age, 3) if age is not None else None,
            "last_duration_seconds": round(snapshotter.last_duration, 3),
            "last_error": snapshotter.last_error,
        }
    return report


class HealthHandler(BaseHandler):
    """``/healthz``: 200 while the journal takes writes, 503 when it does not."""

    needs_token = False

    def initialize(self, service: JobService, config: object, runtime: Runtime | None = None) -> None:  # type: ignore[override]
        super().initialize(service, config)  # type: ignore[arg-type]
        self.runtime = runtime

    def get(self) -> None:
        self.request_type = "healthz"
        report = health_report(self.service, self.runtime)
        if report["status"] != "ok":
            self.set_status(503)
        self.set_header("Cache-Control", "no-store")
        self.write_json(encode_json(report).encode())
