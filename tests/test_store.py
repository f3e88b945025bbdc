"""The in-memory store: plans, apply, indexes."""

import pytest

from poller_server.errors import BadRequest, Conflict, JobNotFound
from poller_server.jobs import has_control_character
from poller_server.store import JobStore


def make_store(*users: str) -> JobStore:
    store = JobStore()
    for index, user in enumerate(users):
        store.apply(store.plan_create(user, b'{"n":%d}' % index, 1000 + index))
    return store


def test_plan_changes_nothing():
    store = make_store("a")
    store.plan_create("b", b"{}", 5)
    store.plan_move(1, "complete", 5)
    store.plan_delete(1)
    assert store.next_id == 2
    assert store.jobs[1].status == "new"
    assert store.list_ids(user="b") == []


def test_indexes_follow_status_moves():
    store = make_store("a", "b", "a", "b")
    store.apply(store.plan_move(2, "in_progress", 2000))
    store.apply(store.plan_move(3, "complete", 2000))
    assert store.list_ids("new") == [1, 4]
    assert store.list_ids("new", "b") == [4]
    assert store.list_ids("in_progress", "b") == [2]
    assert store.list_ids("complete") == [3]
    assert store.list_ids(user="a") == [1, 3]
    assert store.count("new") == 2


def test_first_new_after_requeue_is_lowest_id():
    store = make_store("a", "a", "a")
    store.apply(store.plan_move(1, "failed", 2000))
    assert store.first_new().job_id == 2
    store.apply(store.plan_requeue(1, 3000))
    assert store.first_new().job_id == 1
    assert store.first_new("a").job_id == 1
    assert store.first_new("nobody") is None


def test_delete_removes_from_every_index():
    store = make_store("a", "b")
    store.apply(store.plan_delete(1))
    assert store.get(1) is None
    assert store.list_ids("new") == [2]
    assert store.list_ids(user="a") == []
    assert store.users() == ["b"]
    assert store.next_id == 3


def test_bad_plans_raise():
    store = make_store("a")
    with pytest.raises(JobNotFound):
        store.plan_move(9, "complete", 1)
    with pytest.raises(BadRequest):
        store.plan_move(1, "done", 1)
    store.apply(store.plan_move(1, "complete", 1))
    with pytest.raises(Conflict):
        store.plan_move(1, "failed", 1)
    with pytest.raises(Conflict):
        store.plan_requeue(1, 1)
    with pytest.raises(BadRequest):
        store.plan_create("", b"{}", 1)


def test_claim_unclaim_restores_attempts():
    store = make_store("a")
    job = store.jobs[1]
    store.apply(store.plan_claim(job, "r1", "lease-1", 9000, 2000))
    assert (job.status, job.attempts, job.runner, job.lease_id) == ("in_progress", 1, "r1", "lease-1")
    store.apply(store.plan_unclaim(job, None, 2001))
    assert (job.status, job.attempts, job.runner, job.lease_id) == ("new", 0, None, None)


def test_import_with_lower_id_keeps_order():
    store = make_store("a", "a", "a")
    store.apply(store.plan_delete(2))
    source = make_store("a", "b")
    imported = source.jobs[2]
    assert imported.job_id == 2
    store.apply(store.plan_import(imported))
    assert store.list_ids() == [1, 2, 3]
    assert store.list_ids(user="b") == [2]
    with pytest.raises(Conflict):
        store.plan_import(imported)


def test_dump_and_load_round_trip():
    store = make_store("zoë", "用户七", "a")
    store.apply(store.plan_move(2, "failed", 3000, "quota"))
    store.apply(store.plan_delete(3))
    copy = JobStore()
    copy.load(list(store.dump()), store.next_id)
    assert [job.render() for job in copy.jobs.values()] == [job.render() for job in store.jobs.values()]
    assert copy.next_id == 4
    assert copy.list_ids("failed") == [2]


def test_user_strings_are_shared():
    store = make_store("".join(["sha", "red"]), "".join(["sh", "ared"]))
    assert store.jobs[1].user is store.jobs[2].user


@pytest.mark.parametrize("text, expected", [
    ("plain", False), ("\x1f", True), ("space ok", False), ("~", False), ("\x7f", True),
    ("\x80", True), ("\x9f", True), ("\xa0 no-break space", False), ("zoë 用户", False),
])
def test_control_character_bounds(text, expected):
    assert has_control_character(text) is expected


def test_reserve_ids_only_raises_next_id():
    store = JobStore()
    store.apply(store.plan_create("u", b"{}", 0))
    assert store.apply(store.plan_reserve_ids(10)) == 10
    assert store.apply(store.plan_reserve_ids(5)) == 10
    assert store.plan_create("u", b"{}", 0)["job_id"] == 10


@pytest.mark.parametrize("next_id", [0, -3, True, 2.5, "7"])
def test_reserve_ids_rejects_bad_next_id(next_id):
    with pytest.raises(ValueError, match="invalid next job id"):
        JobStore().plan_reserve_ids(next_id)
