"""Requeuing jobs whose runners are gone: ``in_progress`` back to ``new``, or to ``failed``."""

from dataclasses import dataclass

from ..errors import PollerError
from ..jobs import FAILED, IN_PROGRESS, NEW, now_ms
from ..store import Change, JobStore, validate_user

DEFAULT_FAILED_REASON = "runner gone; marked failed by poller-recover"


class SelectionError(Exception):
    """A ``--job-id`` or ``--user`` names no job that can be requeued."""


@dataclass
class RequeuePlan:
    job_ids: list[int]
    target: str
    changes: list[Change]


def plan_requeue(
    store: JobStore, user: str | None, job_ids: list[int], target: str, reason: str | None
) -> RequeuePlan:
    """Select the in-progress jobs and plan their changes; raise SelectionError naming bad ids."""
    if user is not None:
        try:
            validate_user(user)
        except PollerError as exc:
            raise SelectionError(exc.message) from None
    if job_ids:
        problems = []
        for job_id in job_ids:
            job = store.get(job_id)
            if job is None:
                problems.append(f"job {job_id} not found")
            elif job.status != IN_PROGRESS:
                problems.append(f"job {job_id} is {job.status}, not {IN_PROGRESS}")
            elif user is not None and job.user != user:
                problems.append(f"job {job_id} belongs to user {job.user!r}, not {user!r}")
        if problems:
            raise SelectionError("; ".join(problems) + "; nothing was changed")
        selected = sorted(set(job_ids))
    else:
        selected = store.list_ids(IN_PROGRESS, user)

    now = now_ms()
    changes: list[Change] = []
    for job_id in selected:
        if target == NEW:
            change = store.plan_requeue(job_id, now)
        else:
            assert target == FAILED
            change = store.plan_move(job_id, FAILED, now, reason or DEFAULT_FAILED_REASON)
        assert change is not None  # the job is in progress, so the status changes
        changes.append(change)
    return RequeuePlan(selected, target, changes)
