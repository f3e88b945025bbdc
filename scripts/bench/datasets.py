"""Input data: real run configurations, and data directories built on disk.

The run configurations (``e3sm-runs.json``) and the legacy dump
(``legacy-userruns-dump.json``) are read from ``DEFAULT_DATA_DIR``, a folder
beside the repository, unless ``--data`` names another.

A large store is built by writing a snapshot file and a journal segment
directly, which takes seconds where creating a million jobs over HTTP would
take many minutes. Recovery then reads exactly what a server that had
created those jobs would have left behind.
"""

import calendar
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from poller_server.jobs import COMPLETE, FAILED, IN_PROGRESS, NEW, encode_json
from poller_server.journal import FILE_HEADER, MAGIC, VERSION, encode_record, segment_name
from poller_server.snapshot import snapshot_name, write_snapshot_file

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPOSITORY.parent / "shared" / "data"
RUNS_FILE = "e3sm-runs.json"
LEGACY_FILE = "legacy-userruns-dump.json"
# The seq the built snapshot covers; the journal continues after it.
BUILT_SNAPSHOT_SEQ = 1_000_000
LEGACY_STATUSES = (NEW, IN_PROGRESS, COMPLETE, FAILED)


class DataError(Exception):
    """An input file is missing or not in the expected shape."""


def read_json(data_dir: Path, name: str) -> list:
    path = data_dir / name
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; pass --data DIR with {RUNS_FILE} and {LEGACY_FILE}") from None
    if not isinstance(value, list) or not value:
        raise DataError(f"{path} must hold a non-empty JSON list")
    return value


def load_runs(data_dir: Path) -> list[dict]:
    """Return the run configurations, each a dict with ``user`` and the configuration fields."""
    return read_json(data_dir, RUNS_FILE)


def create_form_body(run: dict) -> bytes:
    """Encode a run as the form body of ``POST request=new``."""
    fields = [("request", "new")] + [(name, str(value)) for name, value in run.items()]
    return urllib.parse.urlencode(fields).encode("ascii")


def run_payload(run: dict) -> bytes:
    """Encode a run's configuration as the JSON a beanstalkd job carries."""
    return encode_json({name: value for name, value in run.items() if name != "user"}).encode()


class LegacyJobs:
    """Legacy-shaped job records, cycling through the legacy dump.

    Job ``i`` belongs to ``listing_user`` when ``i`` is a multiple of
    ``listing_every`` and to one of the other dump users otherwise, so that one
    user owns a known share of the store for the listing measurement.
    """

    def __init__(self, data_dir: Path, listing_every: int) -> None:
        rows = read_json(data_dir, LEGACY_FILE)
        self.rows = []
        for row in rows:
            fields = row["fields"]
            config = encode_json(json.loads(fields["config_options"])).encode()
            status = fields["status"] if fields["status"] in LEGACY_STATUSES else NEW
            self.rows.append((config, status, parse_legacy_time(fields["created"])))
        users = sorted({row["fields"]["user"] for row in rows})
        self.listing_user = users[0]
        self.other_users = users[1:] or users
        self.listing_every = listing_every

    def user_of(self, job_id: int) -> str:
        if job_id % self.listing_every == 0:
            return self.listing_user
        return self.other_users[job_id % len(self.other_users)]

    def record(self, job_id: int) -> list:
        config, status, created = self.rows[job_id % len(self.rows)]
        # A fresh bytes object per job, as unpacking a real snapshot gives.
        return [job_id, self.user_of(job_id), status, created, created, bytes(bytearray(config)),
                0, None, None, None, None]

    def records(self, count: int) -> Iterator[list]:
        for job_id in range(1, count + 1):
            yield self.record(job_id)


def parse_legacy_time(text: str) -> int:
    """Convert ``2016-02-02T01:01:07.013Z`` to epoch milliseconds."""
    seconds = time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    millis = int(text[20:23]) if len(text) >= 23 else 0
    return calendar.timegm(seconds) * 1000 + millis


def build_data_dir(path: Path, jobs: LegacyJobs, snapshot_jobs: int, journal_jobs: int) -> None:
    """Write a snapshot of ``snapshot_jobs`` jobs and a journal that creates ``journal_jobs`` more."""
    path.mkdir(parents=True, exist_ok=True)
    seq = BUILT_SNAPSHOT_SEQ
    tmp = path / (snapshot_name(seq) + ".tmp")
    written = int(time.time() * 1000)
    write_snapshot_file(str(tmp), seq, snapshot_jobs + 1, written, snapshot_jobs, jobs.records(snapshot_jobs))
    os.rename(tmp, path / snapshot_name(seq))

    with open(path / segment_name(seq + 1), "wb") as segment:
        segment.write(FILE_HEADER.pack(MAGIC, VERSION))
        for offset in range(journal_jobs):
            job_id = snapshot_jobs + 1 + offset
            record = jobs.record(job_id)
            change = {"op": "create", "job_id": job_id, "user": record[1], "config": record[5], "ts": written}
            segment.write(encode_record(seq + 1 + offset, change))
        segment.flush()
        os.fsync(segment.fileno())
