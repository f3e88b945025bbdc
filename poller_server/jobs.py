"""The job record, its statuses, and its JSON form.

A job keeps its configuration as the UTF-8 JSON text of one object
(``Job.config``), encoded once when the job is created. Reads splice that
text into the response instead of encoding the fields again, and a job costs
one ``bytes`` object for its configuration instead of a dict of strings.
"""

import functools
import json
import re
import time

NEW = "new"
IN_PROGRESS = "in_progress"
COMPLETE = "complete"
FAILED = "failed"
STATUSES = (NEW, IN_PROGRESS, COMPLETE, FAILED)

# Per-job status moves a runner may make. The bulk ``POST all`` ignores this
# table on purpose: it is the operator's override.
FORWARD_MOVES = {
    NEW: frozenset({IN_PROGRESS, COMPLETE, FAILED}),
    IN_PROGRESS: frozenset({COMPLETE, FAILED}),
    COMPLETE: frozenset(),
    FAILED: frozenset(),
}

# Names a configuration key may not take: the job's own fields, the request
# parameters that are not configuration, and the claim and lease fields.
RESERVED_KEYS = frozenset(
    {
        "job_id",
        "id",
        "user",
        "status",
        "created",
        "updated",
        "request",
        "config_options",
        "attempts",
        "runner",
        "lease_id",
        "lease_expires",
        "reason",
    }
)

MAX_USER_LENGTH = 128


def now_ms() -> int:
    """Return the wall-clock time in whole milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def format_time(ms: int) -> str:
    """Format epoch milliseconds as ISO 8601 UTC, for example ``2016-02-02T01:01:07.013Z``."""
    seconds, millis = divmod(ms, 1000)
    return _format_second(seconds) + ".%03dZ" % millis


@functools.lru_cache(maxsize=4096)
def _format_second(seconds: int) -> str:
    # Every read renders two times per job; jobs made in the same second share this part.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# One encoder for every call. json.dumps builds a new one whenever it is given
# options, about 0.7 µs, which is most of the cost of encoding a user name.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# C0 controls, DEL and C1 controls: not allowed in user names or configuration keys.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def encode_json(value: object) -> str:
    """Encode a value as compact JSON, keeping non-ASCII characters as they are."""
    return _JSON_ENCODER.encode(value)


def has_control_character(text: str) -> bool:
    """Tell whether ``text`` contains a C0 or C1 control character or DEL."""
    return _CONTROL_CHARACTERS.search(text) is not None


class Job:
    """One run request and its state.

    ``created``, ``updated`` and ``lease_expires`` are epoch milliseconds.
    ``lease_id`` is a credential: :func:`render` never includes it unless
    asked to, so listings and ``job`` reads cannot leak it.
    """

    __slots__ = (
        "job_id",
        "user",
        "status",
        "created",
        "updated",
        "config",
        "attempts",
        "runner",
        "lease_id",
        "lease_expires",
        "reason",
    )

    def __init__(
        self,
        job_id: int,
        user: str,
        status: str,
        created: int,
        updated: int,
        config: bytes,
        attempts: int = 0,
        runner: str | None = None,
        lease_id: str | None = None,
        lease_expires: int | None = None,
        reason: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.user = user
        self.status = status
        self.created = created
        self.updated = updated
        self.config = config
        self.attempts = attempts
        self.runner = runner
        self.lease_id = lease_id
        self.lease_expires = lease_expires
        self.reason = reason

    def to_record(self) -> list:
        """Return the job as a plain list for msgpack (snapshots and imports)."""
        return [
            self.job_id,
            self.user,
            self.status,
            self.created,
            self.updated,
            self.config,
            self.attempts,
            self.runner,
            self.lease_id,
            self.lease_expires,
            self.reason,
        ]

    @classmethod
    def from_record(cls, record: list) -> "Job":
        return cls(*record)

    def config_dict(self) -> dict:
        return json.loads(self.config)

    def render(self, with_lease_id: bool = False) -> bytes:
        """Encode the job as the JSON object the HTTP API returns."""
        parts = [
            '{"job_id":%d,"id":%d,"user":%s,"status":"%s","created":"%s","updated":"%s"'
            % (
                self.job_id,
                self.job_id,
                encode_json(self.user),
                self.status,
                format_time(self.created),
                format_time(self.updated),
            )
        ]
        if self.attempts:
            parts.append(',"attempts":%d' % self.attempts)
        if self.runner is not None:
            parts.append(',"runner":' + encode_json(self.runner))
        if self.lease_expires is not None:
            parts.append(',"lease_expires":"%s"' % format_time(self.lease_expires))
        if with_lease_id and self.lease_id is not None:
            parts.append(',"lease_id":"%s"' % self.lease_id)
        if self.reason is not None:
            parts.append(',"reason":' + encode_json(self.reason))
        head = "".join(parts).encode()
        if len(self.config) > 2:
            return head + b"," + self.config[1:]
        return head + b"}"

    def to_dict(self, with_lease_id: bool = False) -> dict:
        return json.loads(self.render(with_lease_id))
