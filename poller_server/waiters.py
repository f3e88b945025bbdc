"""Requests waiting in ``next?wait=...`` for a job to become ``new``.

A waiter is a future. Claimers wait in first-come, first-served order and a
new job wakes exactly one of them; peekers all see the job. Each waiter sits
in the queue for its user filter (``None`` for any user), so handing out a
job compares only two queue heads: the oldest claimer waiting for any user and
the oldest one waiting for the job's user.

Every path that ends a wait (hand-off, time-out, disconnect, shutdown) runs
on the event loop thread and first checks ``future.done()``, so two of them
can never both act on one waiter. That is what guarantees that a job handed
to a waiter is never also lost to its time-out.
"""

import asyncio
import itertools
from collections.abc import Callable

from .jobs import Job


class Waiter:
    """One waiting ``next`` request; ``runner`` and ``lease`` apply to claimers."""

    __slots__ = ("key", "user", "claim", "runner", "lease", "future", "timer")

    def __init__(
        self, key: int, user: str | None, claim: bool, runner: str | None, lease: float, future: asyncio.Future
    ) -> None:
        self.key = key
        self.user = user
        self.claim = claim
        self.runner = runner
        self.lease = lease
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class WaiterQueues:
    """Claimers and peekers by user filter, oldest first."""

    def __init__(self) -> None:
        self._keys = itertools.count()
        self._claimers: dict[str | None, dict[int, Waiter]] = {}
        self._peekers: dict[str | None, dict[int, Waiter]] = {}
        self.count = 0

    def add(self, user: str | None, claim: bool, runner: str | None, lease: float, timeout: float) -> Waiter:
        loop = asyncio.get_running_loop()
        waiter = Waiter(next(self._keys), user, claim, runner, lease, loop.create_future())
        queues = self._claimers if claim else self._peekers
        queues.setdefault(user, {})[waiter.key] = waiter
        self.count += 1
        waiter.timer = loop.call_later(timeout, self.finish, waiter, None)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Take ``waiter`` out of its queue (idempotent)."""
        queues = self._claimers if waiter.claim else self._peekers
        queue = queues.get(waiter.user)
        if queue is not None and queue.pop(waiter.key, None) is not None:
            self.count -= 1
            if not queue:
                del queues[waiter.user]
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None

    def finish(self, waiter: Waiter, result: object) -> None:
        """End a wait with ``result`` (None on time-out) unless it already ended."""
        self.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_result(result)

    def next_claimer(self, user: str) -> Waiter | None:
        """Return the oldest claimer that would take a job of ``user``, or None."""
        best: Waiter | None = None
        for key in (None, user):
            queue = self._claimers.get(key)
            if queue:
                head = next(iter(queue.values()))
                if best is None or head.key < best.key:
                    best = head
        return best

    def peekers_for(self, user: str) -> list[Waiter]:
        found: list[Waiter] = []
        for key in (None, user):
            found.extend(self._peekers.get(key, {}).values())
        return found

    def has_claimers(self) -> bool:
        return bool(self._claimers)

    def offer(self, job: Job, claim: Callable[[Job, Waiter], None], render: Callable[[Job], bytes]) -> None:
        """Show a job that just became ``new`` to the peekers and give it to one claimer."""
        peekers = self.peekers_for(job.user)
        if peekers:
            body = render(job)
            for waiter in peekers:
                self.finish(waiter, body)
        claimer = self.next_claimer(job.user)
        if claimer is not None:
            claim(job, claimer)

    def finish_all(self) -> None:
        """Resolve every waiter with None (an empty response), as on shutdown."""
        for queues in (self._claimers, self._peekers):
            for queue in list(queues.values()):
                for waiter in list(queue.values()):
                    self.finish(waiter, None)
