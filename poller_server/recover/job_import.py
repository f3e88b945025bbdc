"""Importing jobs from an export file or from a dump of the legacy Django poller.

Two formats are read, recognized by the keys of their rows:

- ``poller-recover export`` (and the HTTP listing): an array of job objects
  with ``job_id``, ``user``, ``status``, ``created``, ``updated`` and the
  optional ``attempts``, ``runner``, ``lease_expires`` and ``reason``; every
  other key is a configuration value. ``{}`` (an empty HTTP listing) is an
  empty export.
- ``manage.py dumpdata poller.UserRuns``: an array of ``{"model":
  "poller.userruns", "pk": ..., "fields": {...}}`` with ``fields.user``,
  ``fields.status``, ``fields.created`` and ``fields.config_options`` as JSON
  text. The dump has no update time, so ``updated`` is set to ``created``.

Ids and creation times are kept. Each job goes through the store's
``plan_import`` and the journal, so the next id continues after the highest
imported one. An id below the directory's next id that no job has is
rejected: it belonged to a job that was deleted or lost, and a runner or user
may still know it, so it is never given to another job. Imported jobs carry no lease, even when ``in_progress``.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import PollerError
from ..jobs import RESERVED_KEYS, Job, encode_json
from ..params import parse_json
from ..store import Change, JobStore, validate_status, validate_user

LEGACY_MODEL = "poller.userruns"
EXPORT_FORMAT = "export"
LEGACY_FORMAT = "legacy dump"
MAX_JOB_ID = 2**63 - 1
EXISTS = "already exists in the data directory"
LEGACY_KEYS = {"model", "pk", "fields"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ImportFileError(Exception):
    """The import file cannot be read as either supported format."""


class InvalidRow(Exception):
    """One row of the import file cannot become a job; the message gives the reason."""


@dataclass
class Rejection:
    row: int  # position in the file, from 1
    job_id: object
    reason: str


@dataclass
class ImportPlan:
    format: str
    rows: int
    jobs: list[Job] = field(default_factory=list)
    skipped: list[Rejection] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def changes(self, store: JobStore) -> list[Change]:
        """Return the journal changes of the import: first the id reservation, then one per job.

        Imported ids do not follow the journal order, so a repair that finds
        an import record unreadable could not tell its id. The reservation
        record, written first, keeps every imported id from being handed out
        again even then.
        """
        if not self.jobs:
            return []
        reservation = store.plan_reserve_ids(max(job.job_id for job in self.jobs) + 1)
        return [reservation, *(store.plan_import(job) for job in self.jobs)]

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "rows": self.rows,
            "imported": [job.job_id for job in self.jobs],
            "skipped": [vars(entry) for entry in self.skipped],
            "rejected": [vars(entry) for entry in self.rejected],
        }


def read_import_file(path: str) -> tuple[str, list]:
    """Load ``path`` and return its format name and rows; raise ImportFileError."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImportFileError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    if document == {}:
        return EXPORT_FORMAT, []
    if not isinstance(document, list):
        raise ImportFileError(f"{path} contains a JSON {type(document).__name__}; expected an array of jobs")
    if is_legacy_dump(document):
        return LEGACY_FORMAT, document
    if all(isinstance(row, dict) and "job_id" in row for row in document):
        return EXPORT_FORMAT, document
    raise ImportFileError(
        f"{path} is neither a poller-recover export (objects with job_id) nor a "
        "legacy dump (objects with pk and fields); a file must use one format throughout"
    )


def is_legacy_dump(rows: list) -> bool:
    """Tell whether ``rows`` is a legacy dump, even one with some incomplete rows.

    It is one when no row is an export row, every row is an object with at
    least one of the dump's keys (``model``, ``pk``, ``fields``), and at
    least one row has both ``pk`` and ``fields``. Rows that lack a key are
    then rejected one by one, naming what is missing.
    """
    if not all(isinstance(row, dict) and "job_id" not in row and LEGACY_KEYS & row.keys() for row in rows):
        return False
    return any("pk" in row and "fields" in row for row in rows)


def plan_import(store: JobStore, format_name: str, rows: list, skip_existing: bool) -> ImportPlan:
    """Turn rows into jobs, and sort out the ones to skip or reject; changes nothing."""
    plan = ImportPlan(format_name, len(rows))
    parse_row = parse_legacy_row if format_name == LEGACY_FORMAT else parse_export_row
    seen: set[int] = set()
    for position, row in enumerate(rows, start=1):
        job_id = row.get("pk" if format_name == LEGACY_FORMAT else "job_id")
        try:
            job = parse_row(row)
        except InvalidRow as exc:
            plan.rejected.append(Rejection(position, job_id, str(exc)))
            continue
        if job.job_id in seen:
            plan.rejected.append(Rejection(position, job.job_id, f"job id {job.job_id} appears more than once in the file"))
            continue
        seen.add(job.job_id)
        if job.job_id in store.jobs:
            target = plan.skipped if skip_existing else plan.rejected
            target.append(Rejection(position, job.job_id, f"job {job.job_id} {EXISTS}"))
            continue
        if job.job_id < store.next_id:
            plan.rejected.append(Rejection(position, job.job_id, (
                f"job id {job.job_id} is below the data directory's next id {store.next_id} "
                "and no job has it: it belonged to a deleted or lost job, and ids are never reused"
            )))
            continue
        plan.jobs.append(job)
    plan.jobs.sort(key=lambda job: job.job_id)
    return plan


def parse_legacy_row(row: dict) -> Job:
    if str(row.get("model", "")).lower() != LEGACY_MODEL:
        raise InvalidRow(f"model {row.get('model')!r} is not {LEGACY_MODEL}")
    if "pk" not in row:
        raise InvalidRow("the row has no pk")
    job_id = _check_job_id(row["pk"], "pk")
    if "fields" not in row:
        raise InvalidRow(f"the row with pk {job_id} has no fields object")
    fields = row["fields"]
    if not isinstance(fields, dict):
        raise InvalidRow("fields is not an object")
    user = _check(validate_user, fields.get("user"))
    status = _check(validate_status, fields.get("status"))
    created = parse_time(fields.get("created"), "created")
    updated = parse_time(fields["updated"], "updated") if "updated" in fields else created
    raw = fields.get("config_options")
    # NOTE: an empty or null config_options is read as no configuration;
    # rows like that are assumed to come from jobs created without options.
    if raw is None or raw == "":
        config: object = {}
    elif isinstance(raw, str):
        try:
            config = parse_json(raw, "config_options")
        except PollerError as exc:
            raise InvalidRow(exc.message) from None
    else:
        raise InvalidRow(f"invalid config_options: expected JSON text, got {type(raw).__name__}")
    return Job(job_id, user, status, created, updated, encode_config(config))


def parse_export_row(row: dict) -> Job:
    job_id = _check_job_id(row["job_id"], "job_id")
    if "id" in row and row["id"] != job_id:
        raise InvalidRow(f"id {row['id']!r} differs from job_id {job_id}")
    user = _check(validate_user, row.get("user"))
    status = _check(validate_status, row.get("status"))
    created = parse_time(row.get("created"), "created")
    updated = parse_time(row.get("updated"), "updated")
    attempts = row.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise InvalidRow(f"invalid attempts {attempts!r}: must be a non-negative integer")
    optional_text = {}
    for name in ("runner", "reason", "lease_id"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRow(f"invalid {name} {value!r}: must be a string")
        optional_text[name] = value
    lease_expires = parse_time(row["lease_expires"], "lease_expires") if row.get("lease_expires") else None
    config = {key: value for key, value in row.items() if key not in RESERVED_KEYS}
    return Job(
        job_id, user, status, created, updated, encode_config(config), attempts,
        optional_text["runner"], optional_text["lease_id"], lease_expires, optional_text["reason"],
    )


def encode_config(config: object) -> bytes:
    """Check a configuration as the HTTP API does and encode it as the store keeps it."""
    if not isinstance(config, dict):
        raise InvalidRow(f"invalid config_options: expected a JSON object, got {type(config).__name__}")
    for key in config:
        if key in RESERVED_KEYS:
            raise InvalidRow(f"configuration key {key!r} is reserved for the job's own fields")
        if not key:
            raise InvalidRow("configuration keys must not be empty")
    try:
        text = encode_json(config)
        # A second strict parse applies the API's limits (nesting, integer
        # range, unpaired surrogates) to values read by the plain json module.
        parse_json(text, "configuration")
    except ValueError as exc:
        raise InvalidRow(f"invalid configuration: {exc}") from None
    except PollerError as exc:
        raise InvalidRow(exc.message) from None
    return text.encode()


def parse_time(value: object, name: str) -> int:
    """Parse an ISO 8601 time as epoch milliseconds; a time without zone is taken as UTC."""
    if not isinstance(value, str):
        raise InvalidRow(f"missing or invalid {name} {value!r}: expected an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRow(f"invalid {name} {value!r}: expected an ISO 8601 time such as 2016-02-02T01:01:07.013Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _check_job_id(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOB_ID:
        raise InvalidRow(f"invalid {name} {value!r}: must be a positive integer")
    return value


def _check(validate, value: object) -> str:
    try:
        return validate(value)
    except PollerError as exc:
        raise InvalidRow(exc.message) from None
