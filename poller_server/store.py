"""The in-memory job store: jobs by id, indexed by status, user and both.

The store does no I/O and reads no clock. Every change goes through two
steps so that a journal can sit between them:

1. ``plan_<operation>(...)`` checks the request against the current state,
   raises a :class:`~poller_server.errors.PollerError` if it is not allowed,
   and returns a *change*: a plain dict, ready for msgpack, that carries every
   value the change needs (ids, timestamps, lease tokens).
2. :meth:`JobStore.apply` carries a change out. Given the same state and the
   same change it always ends in the same state, which is what lets recovery
   replay a journal.

Indexes are sorted lists of job ids, so a listing or ``next`` costs in
proportion to what it returns and ``next`` always finds the lowest ``new``
id, also after requeues put an old job back.
"""

from collections.abc import Iterable

from sortedcontainers import SortedList

from .errors import BadRequest, Conflict, JobNotFound, show
from .jobs import (
    FAILED,
    FORWARD_MOVES,
    IN_PROGRESS,
    MAX_USER_LENGTH,
    NEW,
    STATUSES,
    Job,
    has_control_character,
)

Change = dict


def validate_user(user: object) -> str:
    """Return ``user`` if it is a valid user name, else raise BadRequest naming it."""
    if not isinstance(user, str):
        raise BadRequest(f"invalid user {show(user)}: must be a string")
    if not 1 <= len(user) <= MAX_USER_LENGTH:
        raise BadRequest(f"invalid user {show(user)}: must be 1 to {MAX_USER_LENGTH} characters")
    if has_control_character(user):
        raise BadRequest(f"invalid user {show(user)}: control characters are not allowed")
    return user


def validate_status(status: object) -> str:
    if status not in STATUSES:
        raise BadRequest(f"invalid status {show(status)}: must be one of {', '.join(STATUSES)}")
    assert isinstance(status, str)
    return status


class JobStore:
    """Jobs by id with sorted secondary indexes; see the module docstring."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.next_id = 1
        self._by_status: dict[str, SortedList] = {s: SortedList() for s in STATUSES}
        self._by_user: dict[str, SortedList] = {}
        self._by_user_status: dict[tuple[str, str], SortedList] = {}

    # -- reads ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)

    def require(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list_ids(self, status: str | None = None, user: str | None = None) -> list[int]:
        """Return the ids of the matching jobs, lowest first, as a copy."""
        if status is None and user is None:
            # dict order is id order: ids only grow, and load() sorts imports.
            return list(self.jobs)
        return list(self._index(status, user))

    def first_new(self, user: str | None = None) -> Job | None:
        """Return the ``new`` job with the lowest id (of ``user``), or None."""
        ids = self._index(NEW, user)
        return self.jobs[ids[0]] if ids else None

    def count(self, status: str | None = None, user: str | None = None) -> int:
        if status is None and user is None:
            return len(self.jobs)
        return len(self._index(status, user))

    def users(self) -> list[str]:
        return sorted(self._by_user)

    def _index(self, status: str | None, user: str | None) -> SortedList:
        empty: SortedList = SortedList()
        if user is None:
            assert status is not None
            return self._by_status[status]
        if status is None:
            return self._by_user.get(user, empty)
        return self._by_user_status.get((user, status), empty)

    # -- plans: validate, return a change, touch nothing -----------------------

    def plan_create(self, user: str, config: bytes, now: int) -> Change:
        validate_user(user)
        return {"op": "create", "job_id": self.next_id, "user": user, "config": config, "ts": now}

    def plan_move(self, job_id: int, status: str, now: int, reason: str | None = None) -> Change | None:
        """Plan a per-job forward move; return None when the job already has ``status``."""
        validate_status(status)
        job = self.require(job_id)
        if job.status == status:
            return None
        if status not in FORWARD_MOVES[job.status]:
            raise Conflict(f"job {job_id} is {job.status}; it cannot move to {status}")
        return {"op": "move", "job_id": job_id, "status": status, "reason": reason, "ts": now}

    def plan_bulk(self, status: str, user: str | None, now: int) -> Change:
        validate_status(status)
        if user is not None:
            validate_user(user)
        return {"op": "bulk", "status": status, "user": user, "ts": now}

    def plan_delete(self, job_id: int) -> Change:
        self.require(job_id)
        return {"op": "delete", "job_id": job_id}

    def plan_claim(self, job: Job, runner: str | None, lease_id: str, lease_expires: int, now: int) -> Change:
        assert job.status == NEW, job.status
        return {
            "op": "claim",
            "job_id": job.job_id,
            "runner": runner,
            "lease_id": lease_id,
            "lease_expires": lease_expires,
            "ts": now,
        }

    def plan_unclaim(self, job: Job, previous_runner: str | None, now: int) -> Change:
        """Plan to undo a claim whose response never reached the runner."""
        assert job.status == IN_PROGRESS, job.status
        assert job.attempts > 0, job.attempts
        return {"op": "unclaim", "job_id": job.job_id, "runner": previous_runner, "ts": now}

    def plan_heartbeat(self, job_id: int, lease_id: str, lease_expires: int, now: int) -> Change:
        job = self.require(job_id)
        self.check_lease(job, lease_id)
        return {"op": "heartbeat", "job_id": job_id, "lease_expires": lease_expires, "ts": now}

    def plan_requeue(self, job_id: int, now: int) -> Change | None:
        """Plan to put a failed or in-progress job back to ``new``; None if it is new."""
        job = self.require(job_id)
        if job.status == NEW:
            return None
        if job.status not in (FAILED, IN_PROGRESS):
            raise Conflict(f"job {job_id} is {job.status}; only failed or in_progress jobs can be requeued")
        return {"op": "requeue", "job_id": job_id, "ts": now}

    def plan_expire(self, job: Job, max_attempts: int, now: int) -> Change:
        """Plan what happens when ``job``'s lease runs out: requeue, or fail at the limit."""
        assert job.status == IN_PROGRESS
        if job.attempts >= max_attempts:
            return {"op": "move", "job_id": job.job_id, "status": FAILED, "reason": "lease expired", "ts": now}
        return {"op": "requeue", "job_id": job.job_id, "ts": now}

    def plan_import(self, job: Job) -> Change:
        if job.job_id in self.jobs:
            raise Conflict(f"job {job.job_id} already exists")
        validate_user(job.user)
        validate_status(job.status)
        return {"op": "import", "job": job.to_record()}

    def plan_reserve_ids(self, next_id: int) -> Change:
        """Plan to raise the next job id to ``next_id``, so that no id below it is handed out.

        Imports journal one before their jobs, whose ids do not follow the
        journal order, and a start that cuts a torn tail journals one for
        the ids the cut bytes may have held.
        """
        if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 1:
            raise ValueError(f"invalid next job id {next_id!r}: must be a positive integer")
        return {"op": "reserve_ids", "next_id": next_id}

    def check_lease(self, job: Job, lease_id: str) -> None:
        """Raise Conflict unless ``lease_id`` is the current lease of an in-progress job."""
        if job.status != IN_PROGRESS:
            raise Conflict(f"job {job.job_id} is {job.status}; the lease is no longer valid")
        if job.lease_id is None or job.lease_id != lease_id:
            raise Conflict(f"lease {show(lease_id)} is not the current lease of job {job.job_id}")

    # -- apply: carry out a planned change ------------------------------------

    def apply(self, change: Change) -> object:
        """Carry out ``change``; return the job it touched (or the count of a bulk change)."""
        return getattr(self, "_apply_" + change["op"])(change)

    def _apply_create(self, change: Change) -> Job:
        job_id = change["job_id"]
        assert job_id not in self.jobs, job_id
        ts = change["ts"]
        job = Job(job_id, change["user"], NEW, ts, ts, change["config"])
        self._insert(job)
        return job

    def _apply_import(self, change: Change) -> Job:
        job = Job.from_record(change["job"])
        assert job.job_id not in self.jobs, job.job_id
        self._insert(job)
        return job

    def _apply_reserve_ids(self, change: Change) -> int:
        self.next_id = max(self.next_id, change["next_id"])
        return self.next_id

    def _apply_move(self, change: Change) -> Job:
        job = self.jobs[change["job_id"]]
        self._set_status(job, change["status"], change["ts"])
        if change.get("reason") is not None:
            job.reason = change["reason"]
        return job

    def _apply_bulk(self, change: Change) -> int:
        status, user, ts = change["status"], change["user"], change["ts"]
        ids = self.list_ids(user=user) if user is not None else list(self.jobs)
        for job_id in ids:
            self._set_status(self.jobs[job_id], status, ts)
        return len(ids)

    def _apply_delete(self, change: Change) -> Job:
        job = self.jobs.pop(change["job_id"])
        self._unindex(job)
        return job

    def _apply_claim(self, change: Change) -> Job:
        job = self.jobs[change["job_id"]]
        self._set_status(job, IN_PROGRESS, change["ts"])
        job.attempts += 1
        job.runner = change["runner"]
        job.lease_id = change["lease_id"]
        job.lease_expires = change["lease_expires"]
        return job

    def _apply_unclaim(self, change: Change) -> Job:
        job = self.jobs[change["job_id"]]
        self._set_status(job, NEW, change["ts"])
        job.attempts -= 1
        job.runner = change["runner"]
        return job

    def _apply_heartbeat(self, change: Change) -> Job:
        job = self.jobs[change["job_id"]]
        job.lease_expires = change["lease_expires"]
        job.updated = change["ts"]
        return job

    def _apply_requeue(self, change: Change) -> Job:
        job = self.jobs[change["job_id"]]
        self._set_status(job, NEW, change["ts"])
        return job

    # -- index upkeep ----------------------------------------------------------

    def _insert(self, job: Job) -> None:
        if self.jobs and job.job_id < next(reversed(self.jobs)):
            # An imported job with an old id: keep the dict in id order.
            items = sorted([*self.jobs.items(), (job.job_id, job)])
            self.jobs = dict(items)
        else:
            self.jobs[job.job_id] = job
        self.next_id = max(self.next_id, job.job_id + 1)
        # One str object per user name, shared by all of that user's jobs.
        user_ids = self._by_user.get(job.user)
        if user_ids is None:
            user_ids = self._by_user[job.user] = SortedList()
        else:
            job.user = self.jobs[user_ids[0]].user
        user_ids.add(job.job_id)
        self._index_status(job)

    def _unindex(self, job: Job) -> None:
        self._unindex_status(job)
        user_ids = self._by_user[job.user]
        user_ids.remove(job.job_id)
        if not user_ids:
            del self._by_user[job.user]

    def _index_status(self, job: Job) -> None:
        self._by_status[job.status].add(job.job_id)
        key = (job.user, job.status)
        ids = self._by_user_status.get(key)
        if ids is None:
            ids = self._by_user_status[key] = SortedList()
        ids.add(job.job_id)

    def _unindex_status(self, job: Job) -> None:
        self._by_status[job.status].remove(job.job_id)
        key = (job.user, job.status)
        ids = self._by_user_status[key]
        ids.remove(job.job_id)
        if not ids:
            del self._by_user_status[key]

    def _set_status(self, job: Job, status: str, ts: int) -> None:
        job.updated = ts
        if job.status != status:
            self._unindex_status(job)
            job.status = status
            self._index_status(job)
        if status != IN_PROGRESS:
            job.lease_expires = None
        # A complete or failed job keeps the id of its last lease, so that a
        # runner repeating the report that ended the lease gets the same response.
        if status in (NEW, IN_PROGRESS):
            job.lease_id = None
        if status != FAILED:
            job.reason = None

    # -- whole-state export and load (snapshots, tools) -----------------------

    def dump(self) -> Iterable[list]:
        """Yield every job as a record list, lowest id first."""
        for job in self.jobs.values():
            yield job.to_record()

    def load(self, records: Iterable[list], next_id: int) -> None:
        """Replace the contents with ``records`` (from :meth:`dump`) and set the next id.

        Builds each index once from sorted id lists instead of inserting job
        by job, which matters when a snapshot of a million jobs is loaded.
        """
        self.__init__()  # type: ignore[misc]
        jobs = [Job.from_record(record) for record in records]
        if any(a.job_id >= b.job_id for a, b in zip(jobs, jobs[1:])):
            jobs.sort(key=lambda job: job.job_id)
        by_status: dict[str, list[int]] = {status: [] for status in STATUSES}
        by_user: dict[str, list[int]] = {}
        by_user_status: dict[tuple[str, str], list[int]] = {}
        names: dict[str, str] = {}
        for job in jobs:
            job.user = names.setdefault(job.user, job.user)
            job_id = job.job_id
            self.jobs[job_id] = job
            by_status[job.status].append(job_id)
            by_user.setdefault(job.user, []).append(job_id)
            by_user_status.setdefault((job.user, job.status), []).append(job_id)
        self._by_status = {status: SortedList(ids) for status, ids in by_status.items()}
        self._by_user = {user: SortedList(ids) for user, ids in by_user.items()}
        self._by_user_status = {key: SortedList(ids) for key, ids in by_user_status.items()}
        last_id = jobs[-1].job_id if jobs else 0
        self.next_id = max(last_id + 1, next_id)
