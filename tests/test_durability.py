"""Crash, damage and restart tests against real poller-server processes."""

import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from poller_server.journal import list_segments, read_segment
from poller_server.snapshot import list_snapshots

NO_TIMED_SNAPSHOTS = ("--snapshot-interval", "0", "--snapshot-every", "0")
# The server forks for snapshots and fsyncs in a worker thread; both must hold on
# either event loop it can run on.
EVENT_LOOPS = pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])


def all_jobs(server) -> list[dict]:
    response = server.call("GET", request="all")
    assert response.code == 200, response
    return [] if response.json == {} else response.json


def create(server, user="u", **config) -> dict:
    response = server.call("POST", request="new", user=user, **config)
    assert response.code == 200, response
    return response.json


def last_segment(data_dir: Path) -> str:
    segments = [path for _, path in list_segments(str(data_dir)) if os.path.getsize(path) > 16]
    return segments[-1]


def records_of(path: str):
    first_seq = int(os.path.basename(path)[8:28])
    scan, records = read_segment(path, first_seq, None)
    assert scan.bad_offset is None
    return records


def quarantine_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if "quarantine" in p.name)


class TestKill9:
    @EVENT_LOOPS
    def test_acknowledged_writes_survive_kill9(self, server_factory, event_loop):
        """Concurrent creates and moves, kill -9 mid-flight: what was acknowledged is there, once."""
        server = server_factory(*NO_TIMED_SNAPSHOTS, "--event-loop", event_loop)
        assert f"event loop {event_loop}" in server.log
        acknowledged_creates: dict[str, int] = {}
        acknowledged_moves: dict[int, str] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def submitter(index: int) -> None:
            while not stop.is_set():
                marker = uuid.uuid4().hex
                try:
                    response = server.call("POST", request="new", user=f"user{index}", marker=marker, timeout=5)
                except OSError:
                    return
                if response.code == 200:
                    with lock:
                        acknowledged_creates[marker] = response.json["job_id"]

        def mover() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                with lock:
                    candidates = [job_id for job_id in acknowledged_creates.values() if job_id not in acknowledged_moves]
                if not candidates:
                    time.sleep(0.001)
                    continue
                job_id = rng.choice(candidates)
                status = rng.choice(["in_progress", "complete", "failed"])
                try:
                    response = server.call("POST", request=status, job_id=job_id, timeout=5)
                except OSError:
                    return
                if response.code == 200:
                    with lock:
                        acknowledged_moves[job_id] = status

        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(6)]
        threads += [threading.Thread(target=mover) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.kill9()
        stop.set()
        for thread in threads:
            thread.join(10)
        assert len(acknowledged_creates) > 20

        restarted = server_factory(*NO_TIMED_SNAPSHOTS)
        jobs = all_jobs(restarted)
        by_marker: dict[str, list[dict]] = {}
        for job in jobs:
            by_marker.setdefault(job["marker"], []).append(job)
        assert all(len(found) == 1 for found in by_marker.values()), "a create was applied twice"
        ids = [job["job_id"] for job in jobs]
        assert len(ids) == len(set(ids))
        for marker, job_id in acknowledged_creates.items():
            assert marker in by_marker, f"acknowledged job {job_id} is missing"
            assert by_marker[marker][0]["job_id"] == job_id
        statuses = {job["job_id"]: job["status"] for job in jobs}
        for job_id, status in acknowledged_moves.items():
            assert statuses[job_id] == status, f"job {job_id} lost its move to {status}"
        # The next id continues after every id handed out before the crash.
        assert create(restarted)["job_id"] > max(ids)


class TestTornTail:
    def _write_jobs(self, server_factory, count=3):
        server = server_factory(*NO_TIMED_SNAPSHOTS)
        jobs = [create(server, user=f"user{i}", n=str(i)) for i in range(count)]
        server.kill9()
        return server, jobs

    def test_cut_at_every_offset_of_last_record(self, server_factory, tmp_path):
        server, jobs = self._write_jobs(server_factory)
        data_dir = server.data_dir
        segment = last_segment(data_dir)
        last = records_of(segment)[-1]
        pristine = Path(segment).read_bytes()
        assert last.end == len(pristine)
        for cut in range(last.offset, last.end):
            for path in data_dir.iterdir():
                if "quarantine" in path.name:
                    path.unlink()
            Path(segment).write_bytes(pristine[:cut])
            started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=data_dir)
            survivors = all_jobs(started)
            assert survivors == jobs[:-1], f"cut at {cut}"
            if cut > last.offset:
                assert f"offset {last.offset}" in started.log
                [quarantined] = quarantine_files(data_dir)
                assert quarantined.read_bytes() == pristine[last.offset:cut]
            extra = create(started, user="after", cut=str(cut))
            started.kill9()
            again = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=data_dir)
            assert all_jobs(again) == jobs[:-1] + [extra], f"cut at {cut}"
            again.kill9()
            # Put the directory back for the next cut.
            for path in data_dir.iterdir():
                if path.name.startswith("journal") or path.name.startswith("snapshot"):
                    path.unlink()
            Path(segment).write_bytes(pristine)

    def test_damaged_last_create_keeps_its_id(self, server_factory):
        """A whole last record with a bad CRC is cut like a torn tail, but its id stays unused."""
        server, jobs = self._write_jobs(server_factory)
        segment = last_segment(server.data_dir)
        last = records_of(segment)[-1]
        data = bytearray(Path(segment).read_bytes())
        data[last.end - 2] ^= 0xFF
        Path(segment).write_bytes(bytes(data))

        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == jobs[:-1]
        assert "torn tail" in started.log
        assert "Job id 3 will not be handed out" in started.log
        # The reservation took the cut bytes' place and is on disk before the
        # server accepts requests, so a crash before any new job keeps it.
        reservation = records_of(segment)[-1]
        assert reservation.offset == last.offset
        started.kill9()

        again = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(again) == jobs[:-1]
        extra = create(again, user="after")
        assert extra["job_id"] == 4
        again.kill9()
        third = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert create(third, user="later")["job_id"] == 5

    def test_damage_before_a_damaged_segment_refuses_start(self, server_factory):
        """Two damaged places are corruption, not a torn tail: cutting the last one would hide the first."""
        server, jobs = self._write_jobs(server_factory, count=4)
        server.kill9()
        empty = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        empty.kill9()
        first, second = [path for _, path in list_segments(str(server.data_dir))]
        last = records_of(first)[-1]
        data = bytearray(Path(first).read_bytes())
        data[last.end - 2] ^= 0xFF
        Path(first).write_bytes(bytes(data))
        Path(second).write_bytes(bytes(120))

        refused = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir, expect_listening=False)
        assert refused.wait_exit() == 1
        assert f"journal {first} is corrupt" in refused.log
        assert "poller-recover repair" in refused.log

    @pytest.mark.parametrize("tail_kind", ["zeros", "random"])
    def test_garbage_tail(self, server_factory, tail_kind):
        server, jobs = self._write_jobs(server_factory)
        segment = last_segment(server.data_dir)
        size = os.path.getsize(segment)
        tail = bytes(4096) if tail_kind == "zeros" else random.Random(7).randbytes(4096)
        with open(segment, "ab") as f:
            f.write(tail)
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == jobs
        assert f"cut 4096 bytes at offset {size}" in started.log
        [quarantined] = quarantine_files(server.data_dir)
        assert quarantined.read_bytes() == tail
        assert quarantined.stat().st_mode & 0o777 == 0o600
        extra = create(started, user="after")
        started.kill9()
        again = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(again) == jobs + [extra]


class TestCorruption:
    def test_bad_record_in_middle_stops_start(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS)
        for i in range(5):
            create(server, n=str(i))
        server.kill9()
        segment = last_segment(server.data_dir)
        record = records_of(segment)[1]
        data = bytearray(Path(segment).read_bytes())
        data[record.offset + 20] ^= 0xFF
        Path(segment).write_bytes(bytes(data))
        before = {p.name: p.read_bytes() for p in server.data_dir.iterdir() if p.name != "lock"}

        failed = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir, expect_listening=False)
        assert failed.wait_exit() == 1
        assert segment in failed.log
        assert f"offset {record.offset}" in failed.log
        assert f"poller-recover repair --data-dir {server.data_dir}" in failed.log
        after = {p.name: p.read_bytes() for p in server.data_dir.iterdir() if p.name != "lock"}
        assert after == before, "a refused start must not change the data directory"


class TestSnapshots:
    def _two_snapshots(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS)
        jobs = [create(server, n=str(i)) for i in range(3)]
        assert server.terminate() == 0
        server = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        jobs += [create(server, n=str(i)) for i in range(3, 6)]
        server.call("POST", request="complete", job_id=2)
        jobs[1] = server.call("GET", request="job", job_id=2).json
        assert server.terminate() == 0
        snapshots = list_snapshots(str(server.data_dir))
        assert len(snapshots) == 2
        return server.data_dir, jobs, snapshots

    @pytest.mark.parametrize("damage", ["empty", "first_half", "zeros"])
    def test_damaged_newest_snapshot_falls_back(self, server_factory, damage):
        data_dir, jobs, snapshots = self._two_snapshots(server_factory)
        newest = Path(snapshots[0][1])
        content = newest.read_bytes()
        replacement = {"empty": b"", "first_half": content[: len(content) // 2], "zeros": bytes(len(content))}[damage]
        newest.write_bytes(replacement)
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=data_dir)
        assert all_jobs(started) == jobs
        assert "is invalid" in started.log
        assert create(started)["job_id"] == 7

    def test_only_snapshot_damaged_refuses_to_start(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS)
        create(server)
        assert server.terminate() == 0
        server = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        create(server)
        server.kill9()
        [(_, path)] = list_snapshots(str(server.data_dir))
        Path(path).write_bytes(b"")
        failed = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir, expect_listening=False)
        assert failed.wait_exit() == 1
        assert "no valid snapshot" in failed.log

    def test_crash_between_rename_and_compaction(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS, env={"POLLER_TEST_HOOK": "crash-after-snapshot-rename"})
        jobs = [create(server, n=str(i)) for i in range(4)]
        server.call("POST", request="in_progress", job_id=1)
        server.call("POST", request="delete", job_id=3)
        server.call("POST", request="all", status="failed", user="u")
        expected = all_jobs(server)
        server.proc.send_signal(signal.SIGUSR1)
        assert server.wait_exit() == -signal.SIGKILL
        assert list_snapshots(str(server.data_dir)), "the hook fires after the rename"
        assert len(list_segments(str(server.data_dir))) >= 2, "compaction must not have run"

        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == expected
        assert create(started)["job_id"] == len(jobs) + 1

    def test_restart_while_snapshot_child_still_writes(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS, env={"POLLER_TEST_HOOK": "slow-snapshot-child"})
        jobs = [create(server, n=str(i)) for i in range(3)]
        server.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)  # the child is forked and sleeping before it writes
        server.kill9()
        # The child must not hold the data directory's lock or the port.
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == jobs

    def test_ids_continue_after_deleting_everything(self, server_factory):
        server = server_factory(*NO_TIMED_SNAPSHOTS)
        for _ in range(3):
            create(server)
        for job_id in (1, 2, 3):
            assert server.call("POST", request="delete", job_id=job_id).code == 200
        assert server.terminate() == 0  # writes a snapshot and compacts the journal
        assert list_snapshots(str(server.data_dir))
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == []
        assert create(started)["job_id"] == 4

    @EVENT_LOOPS
    def test_snapshot_every_compacts_journal(self, server_factory, event_loop):
        server = server_factory("--snapshot-interval", "0", "--snapshot-every", "10", "--event-loop", event_loop)
        jobs = [create(server, n=str(i)) for i in range(35)]
        deadline = time.monotonic() + 10
        while len(list_snapshots(str(server.data_dir))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list_snapshots(str(server.data_dir))) == 2, "old snapshots are removed, two are kept"
        segments = list_segments(str(server.data_dir))
        assert len(segments) <= 3, segments
        server.kill9()
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert all_jobs(started) == jobs


class TestRestartState:
    @EVENT_LOOPS
    @pytest.mark.parametrize("stop", ["kill9", "terminate"])
    def test_state_identical_after_restart(self, server_factory, stop, event_loop):
        server = server_factory(*NO_TIMED_SNAPSHOTS, "--event-loop", event_loop)
        create(server, user="zoë", casename="B1850 ü", note="用户七 ✓")
        create(server, user="用户七", runspec="/User Documents/用户七/spec.json")
        create(server, user="jdoe", mppwidth="240")
        create(server, user="jdoe")
        server.call("POST", request="failed", job_id=1, reason="quota exceeded")
        server.call("POST", request="requeue", job_id=1)
        server.call("POST", request="complete", job_id=2)
        server.call("POST", request="delete", job_id=3)
        before = server.call("GET", request="all").body
        next_before = server.call("GET", request="next").body
        if stop == "kill9":
            server.kill9()
        else:
            assert server.terminate() == 0
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=server.data_dir)
        assert started.call("GET", request="all").body == before
        assert started.call("GET", request="next").body == next_before
        assert create(started)["job_id"] == 5
        assert "Recovered 3 jobs" in started.log


class TestLock:
    def test_second_server_on_same_directory_exits(self, server_factory):
        first = server_factory()
        second = server_factory(data_dir=first.data_dir, expect_listening=False)
        assert second.wait_exit() == 1
        assert "in use by another poller process" in second.log
        assert first.call("GET", request="all").code == 200


def _can_mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        return False
    subprocess.run(["umount", str(path)], capture_output=True)
    return True


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs mounted for the test; skipped where mounting is not permitted."""
    mount_point = tmp_path / "small"
    if os.geteuid() != 0 or not shutil.which("mount") or not _can_mount_tmpfs(mount_point):
        pytest.skip("mounting a size-limited tmpfs is not permitted here")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


class TestDiskFull:
    def test_full_disk_answers_503_and_recovers(self, server_factory, small_filesystem):
        data_dir = small_filesystem / "data"
        server = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=data_dir)
        filler = small_filesystem / "filler"
        # Leave about 64 KiB free so the journal runs out soon.
        free = os.statvfs(small_filesystem).f_bavail * os.statvfs(small_filesystem).f_frsize
        filler.write_bytes(b"\0" * (free - 64 * 1024))
        blob = "x" * 2000
        acknowledged = []
        failure = None
        for index in range(200):
            response = server.call("POST", request="new", user="u", n=str(index), blob=blob)
            if response.code == 200:
                acknowledged.append(response.json)
                continue
            failure = response
            break
        assert failure is not None, "the small filesystem never filled up"
        assert failure.code == 503, failure
        assert "journal append failed" in failure.json["error"]
        assert "Retry-After" in failure.headers
        assert all_jobs(server) == acknowledged
        # Still full: the next create fails the same way and changes nothing.
        assert server.call("POST", request="new", user="u", blob=blob).code == 503
        assert all_jobs(server) == acknowledged

        filler.unlink()
        resumed = create(server, user="after", blob=blob)
        acknowledged.append(resumed)
        assert all_jobs(server) == acknowledged
        server.kill9()
        started = server_factory(*NO_TIMED_SNAPSHOTS, data_dir=data_dir)
        assert all_jobs(started) == acknowledged
