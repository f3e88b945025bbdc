"""The job service: every operation as plan, journal, apply, wake, sync.

Handlers call one method per request. Each write follows the same steps:

1. plan the change against the store (raises on bad input, changes nothing);
2. append it to the journal (on failure: 503, nothing applied);
3. apply it to the store;
4. wake waiters and arm lease timers;
5. wait until the journal record is durable under the fsync policy.

Steps 1 to 4 run without yielding to the event loop, so no other request
can see or change the state between the check and the change. Other requests
can read a change after step 3 and before its own request is acknowledged in
step 5; no change is acknowledged before it is durable.
"""

import asyncio
import heapq
import logging
import secrets
from dataclasses import dataclass

from .config import Config
from .errors import JournalError, StoreFull, Unavailable
from .jobs import IN_PROGRESS, NEW, Job, now_ms
from .journal import Journal
from .store import Change, JobStore
from .waiters import Waiter, WaiterQueues

logger = logging.getLogger(__name__)


@dataclass
class Claim:
    """A job taken by one ``next?claim=1`` request, ready to be sent."""

    job_id: int
    lease_id: str
    body: bytes
    seq: int
    previous_runner: str | None


class JobService:
    def __init__(self, store: JobStore, journal: Journal, config: Config) -> None:
        self.store = store
        self.journal = journal
        self.config = config
        self.waiters = WaiterQueues()
        self.counters: dict[str, int] = {
            "created": 0,
            "claimed": 0,
            "completed": 0,
            "failed": 0,
            "requeued": 0,
            "lease_expired": 0,
            "unclaimed": 0,
        }
        # Lease deadlines: (loop time, job id, lease id). A heartbeat pushes a
        # new entry instead of moving the old one; _lease_deadlines holds each
        # job's latest deadline, so an older entry is skipped when it comes due.
        self._lease_heap: list[tuple[float, int, str]] = []
        self._lease_deadlines: dict[int, float] = {}
        self._lease_timer: asyncio.TimerHandle | None = None
        self.on_commit: list = []
        self.closing = False

    # -- the commit path -------------------------------------------------------

    def _commit_nowait(self, change: Change) -> tuple[object, int]:
        try:
            seq = self.journal.write(change)
        except JournalError as exc:
            raise Unavailable(f"{exc}; the change was not made, retry later", retry_after=1) from exc
        result = self.store.apply(change)
        self._after_apply(change, result)
        for callback in self.on_commit:
            callback()
        return result, seq

    async def _sync(self, seq: int) -> None:
        try:
            await self.journal.sync(seq)
        except JournalError as exc:
            raise Unavailable(f"{exc}; the change may not be durable", retry_after=1) from exc

    async def _commit(self, change: Change) -> object:
        result, seq = self._commit_nowait(change)
        await self._sync(seq)
        return result

    def _after_apply(self, change: Change, result: object) -> None:
        op = change["op"]
        if op == "create":
            self.counters["created"] += 1
        elif op == "move":
            if change["status"] == "complete":
                self.counters["completed"] += 1
            elif change["status"] == "failed":
                self.counters["failed"] += 1
        elif op == "requeue":
            self.counters["requeued"] += 1
        elif op == "claim":
            self.counters["claimed"] += 1
        elif op == "unclaim":
            self.counters["unclaimed"] += 1

        if op in ("create", "requeue", "unclaim", "import"):
            assert isinstance(result, Job)
            self._offer(result)
        elif op == "bulk" and change["status"] == NEW:
            for job_id in self.store.list_ids(NEW, change["user"]):
                if not (self.waiters.count and not self.closing):
                    break
                self._offer(self.store.jobs[job_id])
        elif op in ("claim", "heartbeat"):
            assert isinstance(result, Job)
            self._arm_lease(result)

    # -- plain operations ------------------------------------------------------

    async def create(self, user: str, config: bytes) -> Job:
        if self.config.max_jobs and len(self.store) >= self.config.max_jobs:
            raise StoreFull(
                f"the store contains {len(self.store)} jobs, the maximum set by --max-jobs; "
                "delete finished jobs or raise the limit"
            )
        job = await self._commit(self.store.plan_create(user, config, now_ms()))
        assert isinstance(job, Job)
        return job

    async def move(self, job_id: int, status: str, lease_id: str | None = None, reason: str | None = None) -> Job:
        """Move one job forward to ``status``; a no-op if it already has it."""
        job = self.store.require(job_id)
        if lease_id is not None:
            if job.status == status and job.lease_id == lease_id:
                return job  # a retry of the report that ended this lease
            self.store.check_lease(job, lease_id)
        change = self.store.plan_move(job_id, status, now_ms(), reason)
        if change is None:
            return job
        result = await self._commit(change)
        assert isinstance(result, Job)
        return result

    async def bulk(self, status: str, user: str | None) -> int:
        count = await self._commit(self.store.plan_bulk(status, user, now_ms()))
        assert isinstance(count, int)
        return count

    async def delete(self, job_id: int) -> Job:
        job = await self._commit(self.store.plan_delete(job_id))
        assert isinstance(job, Job)
        return job

    async def requeue(self, job_id: int, lease_id: str | None = None) -> Job:
        """Put a job back to ``new``; with ``lease_id``, only while that lease is current."""
        if lease_id is not None:
            self.store.check_lease(self.store.require(job_id), lease_id)
        change = self.store.plan_requeue(job_id, now_ms())
        if change is None:
            return self.store.require(job_id)
        job = await self._commit(change)
        assert isinstance(job, Job)
        return job

    async def heartbeat(self, job_id: int, lease_id: str, lease: float) -> bytes:
        expires = now_ms() + int(lease * 1000)
        job = await self._commit(self.store.plan_heartbeat(job_id, lease_id, expires, now_ms()))
        assert isinstance(job, Job)
        return job.render(with_lease_id=True)

    # -- next: peek, claim, wait ---------------------------------------------------

    def next_now(self, user: str | None, claim: bool, runner: str | None, lease: float) -> bytes | Claim | None:
        """Return the oldest ``new`` job of ``user`` (a body, or a Claim), or None.

        A Claim's journal record may not be durable yet: the caller must await
        :meth:`sync_claim` before sending it.
        """
        job = self.store.first_new(user)
        if job is None:
            return None
        if not claim:
            return job.render()
        return self._claim(job, runner, lease)

    def start_wait(self, user: str | None, claim: bool, runner: str | None, lease: float, wait: float) -> Waiter:
        """Queue a ``next`` request until a job becomes ``new`` or ``wait`` seconds pass.

        The waiter's future ends with a body (peek), a Claim, or None on time-out.
        """
        if self.closing:
            raise Unavailable("the server is shutting down; retry later", retry_after=1)
        if self.waiters.count >= self.config.max_waiters:
            raise Unavailable(
                f"{self.waiters.count} requests are already waiting, the maximum set by --max-waiters; retry later",
                retry_after=1,
            )
        return self.waiters.add(user, claim, runner, lease, wait)

    def cancel_wait(self, waiter: Waiter) -> None:
        """End a wait whose client went away; a job is never handed to it afterwards."""
        self.waiters.finish(waiter, None)

    def _claim(self, job: Job, runner: str | None, lease: float) -> Claim:
        now = now_ms()
        previous_runner = job.runner
        lease_id = secrets.token_urlsafe(24)
        change = self.store.plan_claim(job, runner, lease_id, now + int(lease * 1000), now)
        _, seq = self._commit_nowait(change)
        return Claim(job.job_id, lease_id, job.render(with_lease_id=True), seq, previous_runner)

    def _claim_for_waiter(self, job: Job, waiter: Waiter) -> None:
        try:
            claim = self._claim(job, waiter.runner, waiter.lease)
        except Unavailable as exc:
            self.waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            return
        self.waiters.finish(waiter, claim)

    def _offer(self, job: Job) -> None:
        if job.status == NEW and self.waiters.count and not self.closing:
            self.waiters.offer(job, self._claim_for_waiter, Job.render)

    async def sync_claim(self, claim: Claim) -> None:
        await self._sync(claim.seq)

    async def undo_claim(self, claim: Claim) -> None:
        """Put a claimed job back to ``new`` because its response never reached the runner."""
        job = self.store.get(claim.job_id)
        if job is None or job.status != IN_PROGRESS or job.lease_id != claim.lease_id:
            return
        logger.warning("Claim of job %d was not delivered; putting the job back to new", claim.job_id)
        await self._commit(self.store.plan_unclaim(job, claim.previous_runner, now_ms()))

    # -- leases ----------------------------------------------------------------------

    def _arm_lease(self, job: Job) -> None:
        assert job.lease_id is not None and job.lease_expires is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (job.lease_expires - now_ms()) / 1000
        self._lease_deadlines[job.job_id] = deadline
        heapq.heappush(self._lease_heap, (deadline, job.job_id, job.lease_id))
        if self._lease_heap[0] == (deadline, job.job_id, job.lease_id):
            self._reset_lease_timer()

    def _reset_lease_timer(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        if self._lease_heap:
            loop = asyncio.get_running_loop()
            self._lease_timer = loop.call_at(self._lease_heap[0][0], self._expire_due_leases)

    def _expire_due_leases(self) -> None:
        self._lease_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        retry: list[tuple[float, int, str]] = []
        while self._lease_heap and self._lease_heap[0][0] <= now:
            deadline, job_id, lease_id = heapq.heappop(self._lease_heap)
            if self._lease_deadlines.get(job_id) != deadline:
                continue  # superseded by a heartbeat or a later claim
            job = self.store.get(job_id)
            if job is None or job.status != IN_PROGRESS or job.lease_id != lease_id:
                del self._lease_deadlines[job_id]
                continue
            assert job.lease_expires is not None
            remaining = (job.lease_expires - now_ms()) / 1000
            if remaining > 0:
                # The wall clock is behind the loop's clock: wait for the stored expiry time.
                retry.append((now + remaining, job_id, lease_id))
                continue
            try:
                change = self.store.plan_expire(job, self.config.max_attempts, now_ms())
                self._commit_nowait(change)
            except Unavailable:
                retry.append((now + 1.0, job_id, lease_id))
                continue
            # The requeue may have handed the job to a waiting claimer, which armed a new lease.
            if self._lease_deadlines.get(job_id) == deadline:
                del self._lease_deadlines[job_id]
            self.counters["lease_expired"] += 1
            logger.info(
                "Lease of job %d expired after attempt %d; job is now %s",
                job_id, job.attempts, self.store.jobs[job_id].status,
            )
        for entry in retry:
            self._lease_deadlines[entry[1]] = entry[0]
            heapq.heappush(self._lease_heap, entry)
        self._reset_lease_timer()

    def arm_recovered_leases(self) -> None:
        """Start timers for the leases of jobs that were in progress at the last stop."""
        for job_id in self.store.list_ids(IN_PROGRESS):
            job = self.store.jobs[job_id]
            if job.lease_id is not None and job.lease_expires is not None:
                self._arm_lease(job)

    # -- shutdown --------------------------------------------------------------------

    def close(self) -> None:
        """Resolve every waiting request with an empty response and stop lease timers."""
        self.closing = True
        self.waiters.finish_all()
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
