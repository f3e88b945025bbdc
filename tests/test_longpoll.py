"""next with wait and claim: waiting, atomic hand-off, disconnects, leases."""

import asyncio
import json
import socket
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import ApiClient


async def create(api, user="u", **config):
    response = await api("POST", request="new", user=user, **config)
    assert response.code == 200, response
    return response.json


async def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
def many_clients(base_url, io_loop):
    """An HTTP client that allows hundreds of concurrent requests."""
    client = AsyncHTTPClient(force_instance=True, max_clients=600)
    yield ApiClient(client, base_url + "/poller/update/")
    client.close()


class TestClaim:
    @pytest.mark.gen_test
    async def test_claim_takes_job_with_lease(self, api):
        await create(api, casename="x")
        response = await api("GET", request="next", claim="true", runner="runner-1", lease=120)
        job = response.json
        assert job["status"] == "in_progress"
        assert job["attempts"] == 1
        assert job["runner"] == "runner-1"
        assert len(job["lease_id"]) >= 32
        assert job["lease_expires"].endswith("Z")
        assert (await api("GET", request="next", claim="1")).body == b"{}"

    @pytest.mark.gen_test
    async def test_lease_id_never_in_reads(self, api):
        await create(api)
        lease_id = (await api("GET", request="next", claim="yes")).json["lease_id"]
        for params in ({"request": "all"}, {"request": "in_progress"}, {"request": "job", "job_id": 1}):
            response = await api("GET", **params)
            assert lease_id.encode() not in response.body
            assert b"lease_id" not in response.body
        moved = await api("POST", request="in_progress", job_id=1, lease_id=lease_id)
        assert b"lease_id" not in moved.body

    @pytest.mark.gen_test
    async def test_claim_filters_by_user(self, api):
        await create(api, user="a")
        await create(api, user="b")
        assert (await api("GET", request="next", claim="1", user="b")).json["job_id"] == 2
        assert (await api("GET", request="next", user="b")).body == b"{}"
        assert (await api("GET", request="next", user="a")).json["job_id"] == 1

    @pytest.mark.gen_test
    @pytest.mark.parametrize("params, fragment", [
        ({"claim": "maybe"}, "claim"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "61"}, "--max-wait"),
        ({"wait": "nan"}, "wait"),
        ({"lease": "0"}, "lease"),
        ({"lease": str(8 * 86400)}, "--max-lease"),
        ({"runner": "x" * 129}, "runner"),
        ({"runner": "node\x01"}, "control characters"),
        ({"user": ""}, "user"),
    ])
    async def test_bad_next_parameters(self, api, params, fragment):
        await create(api)
        response = await api("GET", request="next", **{"claim": "1", **params})
        assert response.code == 400, response
        assert fragment in response.json["error"]
        assert (await api("GET", request="job", job_id=1)).json["status"] == "new"

    @pytest.mark.gen_test
    @pytest.mark.parametrize("claim", [None, "false", "0"])
    @pytest.mark.parametrize("name, value", [("lease", "600"), ("runner", "runner-1")])
    async def test_claim_only_parameters_need_claim(self, api, claim, name, value):
        await create(api)
        params = {name: value} if claim is None else {name: value, "claim": claim}
        response = await api("GET", request="next", **params)
        assert response.code == 400, response
        assert f"invalid parameter '{name}' without claim=true" in response.json["error"]
        assert "add claim=true" in response.json["error"]
        assert (await api("GET", request="job", job_id=1)).json["status"] == "new"

    @pytest.mark.gen_test
    async def test_peek_takes_wait_and_user(self, api):
        await create(api, user="a")
        response = await api("GET", request="next", wait=1, user="a")
        assert response.code == 200, response
        assert response.json["job_id"] == 1
        assert response.json["status"] == "new"

    @pytest.mark.gen_test
    async def test_without_new_parameters_next_only_peeks(self, api):
        await create(api)
        assert (await api("GET", request="next")).json["status"] == "new"
        assert (await api("GET", request="next", claim="false")).json["status"] == "new"


class TestWait:
    @pytest.mark.gen_test(timeout=30)
    async def test_fifty_claimers_twenty_jobs(self, many_clients, api, runtime):
        """Every job goes to exactly one claimer; the other 30 get {} at time-out."""
        claimers = [asyncio.ensure_future(many_clients("GET", request="next", claim="1", wait=5))
                    for _ in range(50)]
        await wait_until(lambda: runtime.service.waiters.count == 50)
        created = [(await create(api, n=str(i)))["job_id"] for i in range(20)]
        answers = await asyncio.gather(*claimers)
        assert all(answer.code == 200 for answer in answers)
        handed = [answer.json["job_id"] for answer in answers if answer.body != b"{}"]
        assert sorted(handed) == created
        assert sum(answer.body == b"{}" for answer in answers) == 30
        assert (await api("GET", request="in_progress")).json.__len__() == 20

    @pytest.mark.gen_test(timeout=30)
    async def test_one_job_wakes_one_of_200_claimers(self, many_clients, api, runtime):
        claimers = [asyncio.ensure_future(many_clients("GET", request="next", claim="1", wait=3))
                    for _ in range(200)]
        await wait_until(lambda: runtime.service.waiters.count == 200)
        job = await create(api)
        await wait_until(lambda: sum(task.done() for task in claimers) >= 1)
        await asyncio.sleep(0.2)
        assert sum(task.done() for task in claimers) == 1
        assert runtime.service.waiters.count == 199
        answers = await asyncio.gather(*claimers)
        winners = [answer.json for answer in answers if answer.body != b"{}"]
        assert [winner["job_id"] for winner in winners] == [job["job_id"]]

    @pytest.mark.gen_test(timeout=30)
    async def test_claimers_served_first_come_first_served(self, api, runtime):
        claimers = []
        for index in range(3):
            claimers.append(asyncio.ensure_future(
                api("GET", request="next", claim="1", wait=5, runner=f"r{index}")))
            await wait_until(lambda: runtime.service.waiters.count == index + 1)
        for _ in range(3):
            await create(api)
        answers = [(await task).json for task in claimers]
        assert [(a["runner"], a["job_id"]) for a in answers] == [("r0", 1), ("r1", 2), ("r2", 3)]

    @pytest.mark.gen_test(timeout=30)
    async def test_peekers_all_see_the_job(self, many_clients, api, runtime):
        peekers = [asyncio.ensure_future(many_clients("GET", request="next", wait=5)) for _ in range(5)]
        claimer = asyncio.ensure_future(many_clients("GET", request="next", wait=5, claim="1"))
        await wait_until(lambda: runtime.service.waiters.count == 6)
        job = await create(api)
        seen = [(await task).json for task in peekers]
        assert all(answer["job_id"] == job["job_id"] for answer in seen)
        assert all(answer["status"] == "new" for answer in seen)
        assert (await claimer).json["status"] == "in_progress"

    @pytest.mark.gen_test(timeout=30)
    async def test_waiter_for_other_user_keeps_waiting(self, api, runtime):
        waiting = asyncio.ensure_future(api("GET", request="next", claim="1", wait=1, user="b"))
        await wait_until(lambda: runtime.service.waiters.count == 1)
        await create(api, user="a")
        assert (await waiting).body == b"{}"
        assert (await api("GET", request="job", job_id=1)).json["status"] == "new"

    @pytest.mark.gen_test(timeout=30)
    async def test_requeued_job_wakes_claimer(self, api, runtime):
        await create(api)
        await api("POST", request="failed", job_id=1)
        waiting = asyncio.ensure_future(api("GET", request="next", claim="1", wait=5))
        await wait_until(lambda: runtime.service.waiters.count == 1)
        await api("POST", request="requeue", job_id=1)
        assert (await waiting).json["job_id"] == 1

    @pytest.mark.gen_test(timeout=30)
    async def test_bulk_to_new_wakes_claimers(self, api, runtime):
        await create(api)
        await create(api)
        await api("POST", request="all", status="complete")
        waiting = [asyncio.ensure_future(api("GET", request="next", claim="1", wait=5)) for _ in range(3)]
        await wait_until(lambda: runtime.service.waiters.count == 3)
        await api("POST", request="all", status="new")
        answers = [(await task).body for task in waiting]
        assert sorted(json.loads(body).get("job_id", 0) for body in answers) == [0, 1, 2]

    @pytest.mark.gen_test(timeout=30)
    @pytest.mark.config(max_waiters=2)
    async def test_max_waiters_answers_503(self, api, runtime):
        waiting = [asyncio.ensure_future(api("GET", request="next", wait=2)) for _ in range(2)]
        await wait_until(lambda: runtime.service.waiters.count == 2)
        response = await api("GET", request="next", wait=2)
        assert response.code == 503
        assert response.headers["Retry-After"] == "1"
        assert "--max-waiters" in response.json["error"]
        # Without wait the request does not queue and is not limited.
        assert (await api("GET", request="next")).code == 200
        await asyncio.gather(*waiting)

    @pytest.mark.gen_test(timeout=60)
    async def test_timeout_racing_creation_never_loses_a_job(self, many_clients, api, runtime):
        handed: list[int] = []
        for attempt in range(40):
            claimers = [asyncio.ensure_future(many_clients("GET", request="next", claim="1", wait=0.05))
                        for _ in range(3)]
            await asyncio.sleep(0.04 + (attempt % 5) * 0.005)
            await create(api)
            for answer in await asyncio.gather(*claimers):
                if answer.body != b"{}":
                    handed.append(answer.json["job_id"])
        assert len(handed) == len(set(handed))
        in_progress = (await api("GET", request="in_progress")).json
        in_progress_ids = sorted(job["job_id"] for job in in_progress) if in_progress != {} else []
        assert in_progress_ids == sorted(handed), "a claimed job was not delivered to anyone"
        new = (await api("GET", request="new")).json
        new_ids = [job["job_id"] for job in new] if new != {} else []
        assert sorted(handed + new_ids) == list(range(1, 41))


def open_waiting_socket(port: int, query: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /poller/update/?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


class TestDisconnect:
    @pytest.mark.gen_test(timeout=30)
    async def test_disconnected_claimer_is_removed(self, api, runtime, http_port):
        sock = open_waiting_socket(http_port, "request=next&claim=1&wait=10")
        await wait_until(lambda: runtime.service.waiters.count == 1)
        sock.close()
        await wait_until(lambda: runtime.service.waiters.count == 0)
        await create(api)
        job = (await api("GET", request="job", job_id=1)).json
        assert job["status"] == "new"
        assert "attempts" not in job
        # The next claimer gets it.
        assert (await api("GET", request="next", claim="1", wait=1)).json["job_id"] == 1

    @pytest.mark.gen_test(timeout=30)
    async def test_claim_for_vanished_client_is_undone(self, api, runtime, http_port):
        sock = open_waiting_socket(http_port, "request=next&claim=1&wait=10")
        await wait_until(lambda: runtime.service.waiters.count == 1)
        # Reset the connection and create the job before the server notices.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        await runtime.service.create("u", b"{}")
        await wait_until(lambda: runtime.service.store.jobs[1].status == "new")
        job = (await api("GET", request="job", job_id=1)).json
        assert job["status"] == "new"
        assert "attempts" not in job
        assert runtime.service.counters["unclaimed"] == 1


class TestLeases:
    @pytest.mark.gen_test(timeout=30)
    @pytest.mark.config(max_attempts=2)
    async def test_expiry_requeues_then_fails(self, api):
        await create(api)
        first = (await api("GET", request="next", claim="1", lease=1, runner="a")).json
        assert first["attempts"] == 1
        waiting = await api("GET", request="next", claim="1", wait=5, lease=1, runner="b")
        second = waiting.json
        assert second["job_id"] == first["job_id"]
        assert second["attempts"] == 2
        assert second["lease_id"] != first["lease_id"]
        # The first runner's lease is stale now.
        stale = await api("POST", request="complete", job_id=1, lease_id=first["lease_id"])
        assert stale.code == 409
        assert (await api("GET", request="job", job_id=1)).json["status"] == "in_progress"
        await asyncio.sleep(2.2)
        failed = (await api("GET", request="job", job_id=1)).json
        assert failed["status"] == "failed"
        assert failed["reason"] == "lease expired"
        assert failed["attempts"] == 2

    @pytest.mark.gen_test(timeout=30)
    async def test_heartbeat_extends_lease(self, api):
        await create(api)
        claimed = (await api("GET", request="next", claim="1", lease=1)).json
        for _ in range(3):
            await asyncio.sleep(0.5)
            beat = await api("POST", request="heartbeat", job_id=1, lease_id=claimed["lease_id"], lease=1)
            assert beat.code == 200, beat
            assert beat.json["lease_id"] == claimed["lease_id"]
        assert (await api("GET", request="job", job_id=1)).json["status"] == "in_progress"
        done = await api("POST", request="complete", job_id=1, lease_id=claimed["lease_id"])
        assert done.json["status"] == "complete"

    @pytest.mark.gen_test
    async def test_heartbeat_errors(self, api):
        await create(api)
        claimed = (await api("GET", request="next", claim="1")).json
        wrong = await api("POST", request="heartbeat", job_id=1, lease_id="not-the-lease")
        assert wrong.code == 409
        missing = await api("POST", request="heartbeat", job_id=1)
        assert missing.code == 400
        assert (await api("POST", request="heartbeat", job_id=9, lease_id="x")).code == 404
        await api("POST", request="complete", job_id=1, lease_id=claimed["lease_id"])
        finished = await api("POST", request="heartbeat", job_id=1, lease_id=claimed["lease_id"])
        assert finished.code == 409
        assert "complete" in finished.json["error"]

    @pytest.mark.gen_test
    async def test_failed_with_lease_and_reason(self, api):
        await create(api)
        claimed = (await api("GET", request="next", claim="1")).json
        response = await api("POST", request="failed", job_id=1, lease_id=claimed["lease_id"], reason="exit 3")
        assert response.json["status"] == "failed"
        assert response.json["reason"] == "exit 3"

    @pytest.mark.gen_test
    async def test_requeue_rules(self, api):
        await create(api)
        await create(api)
        await api("POST", request="complete", job_id=2)
        assert (await api("POST", request="requeue", job_id=2)).code == 409
        assert (await api("POST", request="requeue", job_id=1)).json["status"] == "new"
        await api("GET", request="next", claim="1")
        requeued = (await api("POST", request="requeue", job_id=1)).json
        assert requeued["status"] == "new"
        assert requeued["attempts"] == 1
        assert (await api("POST", request="requeue", job_id=5)).code == 404


class TestLeasesAcrossRestart:
    def test_lease_survives_kill9(self, server_factory):
        server = server_factory("--snapshot-interval", "0")
        server.call("POST", request="new", user="u")
        server.call("POST", request="new", user="u")
        claimed = server.call("GET", request="next", claim="1", runner="node-7", lease=3).json
        long_claim = server.call("GET", request="next", claim="1", runner="node-8", lease=600).json
        server.call("POST", request="failed", job_id=long_claim["job_id"], reason="segfault in cam")
        server.call("POST", request="requeue", job_id=long_claim["job_id"])
        long_claim = server.call("GET", request="next", claim="1", runner="node-8", lease=600).json
        server.kill9()

        restarted = server_factory("--snapshot-interval", "0", data_dir=server.data_dir)
        job = restarted.call("GET", request="job", job_id=claimed["job_id"]).json
        assert job["status"] == "in_progress"
        assert job["runner"] == "node-7"
        assert job["attempts"] == 1
        assert job["lease_expires"] == claimed["lease_expires"]
        # The lease id still works after the restart.
        beat = restarted.call("POST", request="heartbeat", job_id=long_claim["job_id"], lease_id=long_claim["lease_id"])
        assert beat.code == 200, beat
        assert beat.json["attempts"] == 2
        # The short lease expires on its wall-clock deadline after the restart.
        deadline = time.monotonic() + 10
        while restarted.call("GET", request="job", job_id=claimed["job_id"]).json["status"] != "new":
            assert time.monotonic() < deadline, "lease did not expire after restart"
            time.sleep(0.1)
        assert restarted.call("GET", request="job", job_id=claimed["job_id"]).json["attempts"] == 1
        assert restarted.terminate() == 0

        again = server_factory("--snapshot-interval", "0", data_dir=server.data_dir)
        job = again.call("GET", request="job", job_id=claimed["job_id"]).json
        assert job["status"] == "new"
        assert job["attempts"] == 1


class TestShutdown:
    def test_sigterm_answers_1000_waiters(self, server_factory):
        server = server_factory("--max-waiters", "2000")
        port = int(server.url.rsplit(":", 1)[1])
        sockets = [open_waiting_socket(port, "request=next&claim=1&wait=60") for _ in range(1000)]
        deadline = time.monotonic() + 20
        # A peek without wait gets its response after the waiting requests ahead of it were read.
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if server.call("GET", request="all").code == 200 and len(server.lines) >= 2:
                break
        time.sleep(1.0)
        server.proc.send_signal(15)
        assert server.wait_exit(timeout=30) == 0
        assert "responding to 1000 waiting requests" in server.log
        for sock in sockets:
            sock.settimeout(10)
            data = b""
            while not data.endswith(b"{}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            assert data.endswith(b"{}")
            sock.close()


class TestLeasedReports:
    @pytest.mark.gen_test
    async def test_repeated_leased_report_is_noop(self, api):
        await create(api)
        claimed = (await api("GET", request="next", claim="1")).json
        first = await api("POST", request="complete", job_id=1, lease_id=claimed["lease_id"])
        again = await api("POST", request="complete", job_id=1, lease_id=claimed["lease_id"])
        assert again.code == 200, again
        assert again.json == first.json
        other = await api("POST", request="failed", job_id=1, lease_id=claimed["lease_id"])
        assert other.code == 409

    @pytest.mark.gen_test(timeout=30)
    async def test_stale_runner_cannot_report_after_retake(self, api):
        await create(api)
        first = (await api("GET", request="next", claim="1", lease=1)).json
        second = (await api("GET", request="next", claim="1", wait=5)).json
        assert second["attempts"] == 2
        done = await api("POST", request="complete", job_id=1, lease_id=second["lease_id"])
        assert done.code == 200
        stale = await api("POST", request="complete", job_id=1, lease_id=first["lease_id"])
        assert stale.code == 409

    @pytest.mark.gen_test
    async def test_runner_releases_own_job(self, api):
        await create(api)
        claimed = (await api("GET", request="next", claim="1")).json
        wrong = await api("POST", request="requeue", job_id=1, lease_id="someone-else")
        assert wrong.code == 409
        assert (await api("GET", request="job", job_id=1)).json["status"] == "in_progress"
        released = await api("POST", request="requeue", job_id=1, lease_id=claimed["lease_id"])
        assert released.json["status"] == "new"
        assert released.json["attempts"] == 1
        again = await api("POST", request="requeue", job_id=1, lease_id=claimed["lease_id"])
        assert again.code == 409
