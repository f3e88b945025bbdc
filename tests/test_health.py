"""/healthz, including a journal on a full disk, and the clean stop on SIGTERM."""

import errno
import json
import os
import subprocess
import uuid

import pytest

from conftest import wait_for
from poller_server.snapshot import list_snapshots, read_snapshot


async def get_health(http_client, base_url):
    response = await http_client.fetch(base_url + "/healthz", raise_error=False)
    return response.code, json.loads(response.body)


class TestInProcess:
    @pytest.mark.gen_test
    async def test_healthy_server_reports_state(self, http_client, base_url, api):
        assert (await api("POST", request="new", user="jdoe")).code == 200
        code, report = await get_health(http_client, base_url)
        assert code == 200
        assert report["status"] == "ok"
        assert report["jobs"] == 1
        journal = report["journal"]
        assert journal["writes_failing"] is False
        assert journal["error"] is None
        assert journal["fsync_policy"] == "always"
        assert journal["last_seq"] == 1
        assert journal["last_fsync_age_seconds"] >= 0
        assert journal["disk_free_bytes"] > 0
        assert report["snapshot"]["age_seconds"] is None
        assert report["snapshot"]["last_error"] is None

    @pytest.mark.gen_test
    async def test_snapshot_age_after_snapshot(self, http_client, base_url, runtime):
        await runtime.snapshotter.take(fork=False)
        code, report = await get_health(http_client, base_url)
        assert code == 200
        assert report["snapshot"]["age_seconds"] is not None
        assert report["snapshot"]["age_seconds"] >= 0

    @pytest.mark.gen_test
    async def test_failing_append_gives_503(self, http_client, base_url, runtime):
        # Stands in for a full disk where mounting a small tmpfs is not permitted.
        runtime.journal.append_error = "journal append failed: No space left on device"
        code, report = await get_health(http_client, base_url)
        assert code == 503
        assert report["status"] == "failing"
        assert report["journal"]["writes_failing"] is True
        assert "No space left" in report["journal"]["error"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted under tmp_path; skips the test where mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    yield mount_point
    if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(path):
    """Write ``path`` until the file system is full, down to the last byte."""
    chunk = 64 * 1024
    with open(path, "wb", buffering=0) as f:
        while chunk:
            try:
                f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2


class TestFullDisk:
    def test_healthz_fails_while_disk_is_full(self, small_disk, server_factory):
        server = server_factory(data_dir=small_disk / "data")
        assert server.call("POST", request="new", user="jdoe").code == 200
        assert server.call("GET", url_path="/healthz").code == 200

        filler = small_disk / "filler"
        fill_disk(filler)
        # A record larger than a page cannot fit in the journal's last, partly used page.
        response = server.call("POST", request="new", user="jdoe", casename="x" * 10000)
        assert response.code == 503, response
        assert "not made" in response.json["error"]

        health = server.call("GET", url_path="/healthz")
        assert health.code == 503
        assert health.json["status"] == "failing"
        assert health.json["journal"]["writes_failing"] is True
        assert "No space left" in health.json["journal"]["error"]

        os.unlink(filler)
        assert server.call("POST", request="new", user="jdoe", casename="x" * 10000).code == 200
        health = server.call("GET", url_path="/healthz")
        assert health.code == 200
        assert health.json["journal"]["writes_failing"] is False
        assert [job["job_id"] for job in server.call("GET", request="all").json] == [1, 2]


class TestCleanStop:
    def test_sigterm_flushes_and_writes_snapshot(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory("--snapshot-interval", "0", data_dir=data_dir)
        users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for user in users:
            assert server.call("POST", request="new", user=user).code == 200
        assert list_snapshots(str(data_dir)) == []

        assert server.terminate() == 0
        assert "Poller stopped" in server.log
        snapshots = list_snapshots(str(data_dir))
        assert len(snapshots) == 1
        snapshot = read_snapshot(snapshots[0][1])
        assert snapshot.seq == 3
        assert "3 jobs, seq 3" in server.log

        restarted = server_factory(data_dir=data_dir)
        assert wait_for(lambda: "Recovered 3 jobs" in restarted.log)
        assert "0 journal records replayed" in restarted.log
        listing = restarted.call("GET", request="all").json
        assert [job["user"] for job in listing] == users
