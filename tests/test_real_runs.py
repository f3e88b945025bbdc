"""The 240 run configurations shaped like the dashboard's, through HTTP."""

import collections

import pytest

from conftest import load_runs


@pytest.mark.gen_test(timeout=60)
async def test_load_list_and_walk_real_runs(api):
    runs = load_runs()
    created = []
    for run in runs:
        config = dict(run)
        user = config.pop("user")
        response = await api("POST", json_body={"request": "new", "user": user, **config})
        assert response.code == 200, response
        job = response.json
        assert job["user"] == user
        for key, value in config.items():
            assert job[key] == value
        created.append(job)
    assert [job["job_id"] for job in created] == list(range(1, len(runs) + 1))

    per_user = collections.Counter(run["user"] for run in runs)
    for user, count in per_user.items():
        listing = (await api("GET", request="all", user=user)).json
        assert len(listing) == count
        assert all(job["user"] == user for job in listing)
        assert [job["job_id"] for job in listing] == sorted(job["job_id"] for job in listing)

    # Walk a slice of the runs through every status.
    for job in created[:30]:
        assert (await api("POST", request="in_progress", job_id=job["job_id"])).code == 200
    for job in created[:20]:
        assert (await api("POST", request="complete", job_id=job["job_id"])).code == 200
    for job in created[20:30]:
        response = await api("POST", request="failed", job_id=job["job_id"], reason="node failure")
        assert response.json["reason"] == "node failure"
    for job in created[30:40]:
        assert (await api("POST", request="failed", job_id=job["job_id"])).code == 200

    counts = {}
    for status in ("new", "in_progress", "complete", "failed"):
        listing = (await api("GET", request=status)).json
        counts[status] = len(listing)
        assert all(job["status"] == status for job in listing)
    assert counts == {"new": 200, "in_progress": 0, "complete": 20, "failed": 20}

    first_user = created[0]["user"]
    complete_of_user = (await api("GET", request="complete", user=first_user)).json
    expected = [job["job_id"] for job in created[:20] if job["user"] == first_user]
    assert [job["job_id"] for job in complete_of_user] == expected

    assert (await api("GET", request="next")).json["job_id"] == 41
