"""poller-recover against data directories written by real poller-server processes."""

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, load_runs

from poller_server.journal import list_segments, read_segment
from poller_server.recovery import recover
from poller_server.snapshot import list_snapshots

REPO = Path(__file__).resolve().parents[1]
LEGACY_DUMP = SHARED_DATA / "legacy-userruns-dump.json"
JOURNAL_ONLY = ("--snapshot-interval", "0")


def run_recover(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    """Run poller-recover as a user would, in a child process; return its exit status and output."""
    if script:
        command = [sys.executable, str(REPO / "scripts" / "poller-recover"), *args]
    else:
        command = [sys.executable, "-m", "poller_server.recover", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def checksums(data_dir: Path) -> dict[str, str]:
    """Return the SHA-256 of every file under ``data_dir``, by relative path."""
    found = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def create_jobs(server, runs: list[dict]) -> list[dict]:
    jobs = []
    for run in runs:
        response = server.call("POST", json_body={"request": "new", **run})
        assert response.code == 200, response
        jobs.append(response.json)
    return jobs


def listing(server) -> list[dict]:
    response = server.call("GET", request="all")
    assert response.code == 200, response
    return response.json if response.json != {} else []


def only_segment(data_dir: Path) -> Path:
    segments = [path for _, path in list_segments(str(data_dir))]
    with_records = [path for path in segments if os.path.getsize(path) > 16]
    assert len(with_records) == 1, segments
    return Path(with_records[0])


def record_offsets(segment: Path) -> list[tuple[int, int]]:
    """Return ``(offset, end)`` of every record of a clean journal segment."""
    scan, records = read_segment(str(segment), int(segment.name[8:28]), None)
    assert scan.bad_offset is None, scan
    return [(record.offset, record.end) for record in records]


def journal_with_jobs(server_factory, data_dir: Path, count: int) -> Path:
    """Create ``count`` jobs on a server that writes no snapshot, kill it with -9; return the segment."""
    server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
    create_jobs(server, load_runs()[:count])
    server.kill9()
    return only_segment(data_dir)


def write_three_segments(server_factory, data_dir: Path) -> None:
    """Create jobs 1 to 9 in three journal segments (seqs 1, 4 and 7), three servers killed with -9."""
    runs = load_runs()
    for start in (0, 3, 6):
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        create_jobs(server, runs[start:start + 3])
        server.kill9()


def corrupt_record(segment: Path, index: int) -> int:
    """Flip one payload byte of record ``index`` (from 0); return the record's offset."""
    offset, _ = record_offsets(segment)[index]
    data = bytearray(segment.read_bytes())
    data[offset + 20] ^= 0xFF
    segment.write_bytes(bytes(data))
    return offset


class TestCheck:
    def test_clean_directory_exits_0(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory(data_dir=data_dir)
        create_jobs(server, load_runs()[:8])
        assert server.terminate() == 0

        result = run_recover("check", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "would start cleanly" in result.stdout

        report = json.loads(run_recover("check", "--json", "--data-dir", str(data_dir)).stdout)
        assert report["exit_status"] == 0
        assert report["jobs"] == 8
        assert report["next_id"] == 9
        assert report["status_counts"]["new"] == 8
        assert report["snapshots"] and all(snapshot["valid"] for snapshot in report["snapshots"])
        assert report["torn_tail"] is None
        assert report["corruption"] is None

    def test_missing_directory_is_usage_error(self, tmp_path):
        result = run_recover("check", "--data-dir", str(tmp_path / "nowhere"))
        assert result.returncode == 64
        assert "does not exist" in result.stderr
        assert not (tmp_path / "nowhere").exists()


class TestRepair:
    def test_torn_tail_cut_and_server_starts(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 6)
        original = segment.read_bytes()
        last_offset, last_end = record_offsets(segment)[-1]
        cut_at = last_offset + (last_end - last_offset) // 2
        segment.write_bytes(original[:cut_at])

        check = run_recover("check", "--data-dir", str(data_dir))
        assert check.returncode == 1, check.stdout + check.stderr
        assert "Torn tail" in check.stdout

        repair = run_recover("repair", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        # The cut bytes held the create of job 6, so its id stays unused.
        assert "Next job id raised to" in repair.stdout
        backups = list(data_dir.glob("repair-backup-*"))
        assert len(backups) == 1
        assert (backups[0] / segment.name).read_bytes() == original[:cut_at]
        quarantined = list(data_dir.glob(segment.name + ".quarantine-*"))
        assert [q.read_bytes() for q in quarantined] == [original[last_offset:cut_at]]
        assert run_recover("check", "--data-dir", str(data_dir)).returncode == 0

        server = server_factory(data_dir=data_dir)
        jobs = listing(server)
        assert [job["job_id"] for job in jobs] == [1, 2, 3, 4, 5]
        assert [job["casename"] for job in jobs] == [run["casename"] for run in load_runs()[:5]]
        assert server.call("POST", request="new", user="jdoe").json["job_id"] > 6

    @pytest.mark.parametrize("command", ["compact", "requeue"])
    def test_offline_command_keeps_torn_tail_ids(self, server_factory, tmp_path, command):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 3)
        last_offset, last_end = record_offsets(segment)[-1]
        data = bytearray(segment.read_bytes())
        data[last_end - 2] ^= 0xFF
        segment.write_bytes(bytes(data))

        result = run_recover(command, "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == [1, 2]
        # Job 3's create was cut with the tail, so its id is not handed out again.
        # One id is skipped per 54 bytes cut, so a few more ids go with it.
        assert server.call("POST", request="new", user="jdoe").json["job_id"] > 3

    def test_check_next_id_after_torn_tail(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 3)
        _, last_end = record_offsets(segment)[-1]
        data = bytearray(segment.read_bytes())
        data[last_end - 2] ^= 0xFF
        segment.write_bytes(bytes(data))

        check = run_recover("check", "--json", "--data-dir", str(data_dir))
        assert check.returncode == 1, check.stdout + check.stderr
        report = json.loads(check.stdout)
        first, last = report["torn_tail"]["reserved_ids"]
        assert first == 3
        assert report["next_id"] == last + 1
        server = server_factory(data_dir=data_dir)
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == report["next_id"]

    def test_cut_only_quarantines_mid_file_corruption_with_ids(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 10)
        bad_offset = corrupt_record(segment, 3)
        damaged = segment.read_bytes()

        check = run_recover("check", "--data-dir", str(data_dir))
        assert check.returncode == 2, check.stdout + check.stderr
        assert f"offset {bad_offset}" in check.stdout

        repair = run_recover("repair", "--cut-only", "--json", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        result = json.loads(repair.stdout)
        assert result["mode"] == "cut"
        # Record 4 created job 4 but fails its CRC; records 5 to 10 still decode.
        assert result["lost_job_ids"] == [5, 6, 7, 8, 9, 10]
        assert result["lost_records"] == 6
        assert result["unreadable_bytes"] > 0
        assert result["next_id_raised_to"] == 11
        assert result["after"]["exit_status"] == 0

        backup = Path(result["backup_dir"])
        assert (backup / segment.name).read_bytes() == damaged
        quarantined = [Path(path) for path in result["quarantined"]]
        assert [q.read_bytes() for q in quarantined] == [damaged[bad_offset:]]
        assert segment.read_bytes() == damaged[:bad_offset]

        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == [1, 2, 3]
        created = server.call("POST", request="new", user="jdoe", casename="resubmitted")
        assert created.json["job_id"] == 11

    def test_cut_only_text_report_names_lost_ids(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 4)
        corrupt_record(segment, 1)
        backups = tmp_path / "backups"
        backups.mkdir()

        repair = run_recover("repair", "--cut-only", "--backup-dir", str(backups), "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert "job ids they touched: 3, 4" in repair.stdout
        assert "cannot be known" in repair.stdout
        assert [path.name for path in backups.glob("repair-backup-*/*")] == [segment.name]
        assert not list(data_dir.glob("repair-backup-*"))

    def test_cut_only_after_lost_segment(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        write_three_segments(server_factory, data_dir)
        segments = [Path(path) for _, path in list_segments(str(data_dir)) if os.path.getsize(path) > 16]
        assert [segment.name[8:28] for segment in segments] == ["%020d" % seq for seq in (1, 4, 7)]
        segments[1].unlink()

        assert run_recover("check", "--data-dir", str(data_dir)).returncode == 2
        repair = run_recover("repair", "--cut-only", "--json", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        result = json.loads(repair.stdout)
        assert result["missing_seqs"] == [4, 6]
        assert result["lost_job_ids"] == [7, 8, 9]
        assert result["next_id_raised_to"] == 10
        assert not segments[2].exists()

        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == [1, 2, 3]
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == 10

    def test_corrupt_snapshot_quarantined(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        runs = load_runs()
        server = server_factory(data_dir=data_dir)
        create_jobs(server, runs[:4])
        assert server.terminate() == 0
        server = server_factory(data_dir=data_dir)
        create_jobs(server, runs[4:7])
        assert server.terminate() == 0
        snapshots = [Path(path) for _, path in list_snapshots(str(data_dir))]
        assert len(snapshots) == 2
        both_bad = tmp_path / "both-bad"
        shutil.copytree(data_dir, both_bad)
        newest = snapshots[0]
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

        check = json.loads(run_recover("check", "--json", "--data-dir", str(data_dir)).stdout)
        assert check["exit_status"] == 1
        assert [snapshot["valid"] for snapshot in check["snapshots"]] == [False, True]

        repair = run_recover("repair", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert not newest.exists()
        assert list(data_dir.glob(newest.name + ".quarantine-*"))
        assert run_recover("check", "--data-dir", str(data_dir)).returncode == 0
        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == list(range(1, 8))

        # With no valid snapshot left, the journal alone would miss jobs 1 to 4:
        # repair must refuse and change nothing.
        for snapshot in both_bad.glob("snapshot-*.msgpack"):
            snapshot.write_bytes(bytes(snapshot.stat().st_size))
        before = checksums(both_bad)
        assert run_recover("check", "--data-dir", str(both_bad)).returncode == 2
        refused = run_recover("repair", "--data-dir", str(both_bad))
        assert refused.returncode == 2
        assert "cannot fix this automatically" in refused.stdout
        # It does not send the operator back to the command that just refused.
        assert "poller-recover repair" not in refused.stdout
        assert checksums(both_bad) == before

    def test_dry_run_changes_no_byte(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        segment = journal_with_jobs(server_factory, data_dir, 6)
        corrupt_record(segment, 2)
        before = checksums(data_dir)

        dry_run = run_recover("repair", "--dry-run", "--data-dir", str(data_dir))
        assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
        assert "would copy" in dry_run.stdout
        assert "create job 4" in dry_run.stdout
        for args in (
            ("check",),
            ("check", "--json"),
            ("repair", "--dry-run", "--json"),
            ("export",),
            ("requeue", "--dry-run"),
            ("import", "--dry-run", str(LEGACY_DUMP)),
        ):
            run_recover(*args, "--data-dir", str(data_dir))
        assert checksums(data_dir) == before
        assert sorted(os.listdir(data_dir)) == sorted(before)


def journal_segments(data_dir: Path) -> list[Path]:
    return [Path(path) for _, path in list_segments(str(data_dir)) if os.path.getsize(path) > 16]


class TestSalvage:
    def test_readable_records_after_damage_kept(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        create_jobs(server, load_runs()[:14])
        assert server.call("POST", request="complete", job_id="14").code == 200
        assert server.call("POST", request="complete", job_id="5").code == 200
        server.kill9()
        segment = only_segment(data_dir)
        # Seq 3 created job 3 and seq 14 job 14; seq 15 completes job 14.
        offsets = record_offsets(segment)
        first_bad, second_bad = offsets[2][0], offsets[13][0]
        data = bytearray(segment.read_bytes())
        for offset in (first_bad, second_bad):
            data[offset + 20] ^= 0xFF
        segment.write_bytes(bytes(data))
        damaged = segment.read_bytes()
        before = checksums(data_dir)

        dry_run = run_recover("repair", "--dry-run", "--json", "--data-dir", str(data_dir))
        assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
        assert checksums(data_dir) == before
        planned = json.loads(dry_run.stdout)
        assert planned["mode"] == "salvage"

        repair = run_recover("repair", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        text = repair.stdout
        assert "Applied (11):" in text
        assert "seq 16 in " + segment.name in text
        assert "Skipped (1):" in text
        assert "seq 15 (job ids: 14): move job 14 to complete: job 14 does not exist" in text
        assert f"bytes at offset {first_bad}" in text
        assert f"bytes at offset {second_bad}" in text
        assert "covering seq 16: 12 jobs, next job id 15" in text
        assert "job ids they touched: 14" in text
        # Job 3's create is unreadable, but ids 2 and 4 around it are not.
        assert "Jobs created in the lost records (ids between readable creates that no readable record names): 3" \
            in text

        salvage = planned["salvage"]
        assert [record["seq"] for record in salvage["applied"]] == [*range(4, 14), 16]
        assert [(record["seq"], record["job_ids"]) for record in salvage["skipped"]] == [(15, [14])]
        assert salvage["snapshot_seq"] == 16
        assert salvage["next_id"] == 15
        assert salvage["created_in_lost_records"] == [3]
        assert planned["lost_job_ids"] == [14]

        backups = list(data_dir.glob("repair-backup-*"))
        assert len(backups) == 1
        assert (backups[0] / segment.name).read_bytes() == damaged
        quarantined = list(data_dir.glob(segment.name + ".quarantine-*"))
        assert [q.read_bytes() for q in quarantined] == [damaged[first_bad:]]
        assert segment.read_bytes() == damaged[:first_bad]
        assert [seq for seq, _ in list_snapshots(str(data_dir))] == [16]
        assert run_recover("check", "--data-dir", str(data_dir)).returncode == 0

        server = server_factory(data_dir=data_dir)
        jobs = {job["job_id"]: job for job in listing(server)}
        assert sorted(jobs) == [1, 2, *range(4, 14)]
        assert jobs[5]["status"] == "complete"
        assert jobs[4]["casename"] == load_runs()[3]["casename"]
        created = server.call("POST", request="new", user="jdoe", casename="resubmitted")
        assert created.json["job_id"] == 15

    @pytest.mark.parametrize("mode", ["salvage", "cut-only"])
    def test_unreadable_last_create_id_not_reused(self, server_factory, tmp_path, mode):
        data_dir = tmp_path / "data"
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        create_jobs(server, load_runs()[:5])
        assert server.call("POST", request="complete", job_id="2").code == 200
        server.kill9()
        segment = only_segment(data_dir)
        # Seq 5 created job 5, whose id its user was given; seq 6 names only job 2.
        corrupt_record(segment, 4)

        options = ["--cut-only"] if mode == "cut-only" else []
        repair = run_recover("repair", *options, "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        if mode == "salvage":
            assert "next job id 6" in repair.stdout
            assert "Job id 5 will not be handed out: an unreadable record may have created it" in repair.stdout
        else:
            assert "Next job id raised to 6" in repair.stdout

        server = server_factory(data_dir=data_dir)
        jobs = {job["job_id"]: job for job in listing(server)}
        assert sorted(jobs) == [1, 2, 3, 4]
        # Salvage keeps the readable completion of job 2; a cut drops it.
        assert jobs[2]["status"] == ("complete" if mode == "salvage" else "new")
        created = server.call("POST", request="new", user="jdoe", casename="resubmitted")
        assert created.json["job_id"] == 6

    def test_unreadable_import_ids_not_reused(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        create_jobs(server, load_runs()[:1])
        server.kill9()
        exported = tmp_path / "import.json"
        exported.write_text(json.dumps([
            {"job_id": job_id, "user": "jdoe", "status": "new", "created": "2016-02-02T01:01:07.013Z",
             "updated": "2016-02-02T01:01:07.013Z", "casename": f"case{job_id}"}
            for job_id in (100, 101)
        ]))
        imported = run_recover("import", str(exported), "--data-dir", str(data_dir))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        assert server.call("POST", request="complete", job_id="1").code == 200
        server.kill9()
        # Damage both import records; the reservation before them and the
        # completion after them stay readable.
        segment = journal_segments(data_dir)[1]
        offsets = record_offsets(segment)
        data = bytearray(segment.read_bytes())
        for offset, _ in offsets[1:3]:
            data[offset + 20] ^= 0xFF
        segment.write_bytes(bytes(data))

        repair = run_recover("repair", "--json", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert json.loads(repair.stdout)["salvage"]["next_id"] >= 102
        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == [1]
        assert server.call("POST", request="new", user="jdoe").json["job_id"] >= 102

    @pytest.mark.parametrize("mode", ["salvage", "cut-only"])
    def test_readable_reservation_counts_for_lost_creates(self, server_factory, tmp_path, mode):
        data_dir = tmp_path / "data"
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        create_jobs(server, load_runs()[:2])
        server.kill9()
        exported = tmp_path / "import.json"
        exported.write_text(json.dumps([{"job_id": 10, "user": "jdoe", "status": "new",
                                         "created": "2016-02-02T01:01:07.013Z",
                                         "updated": "2016-02-02T01:01:07.013Z"}]))
        assert run_recover("import", str(exported), "--data-dir", str(data_dir)).returncode == 0
        server = server_factory(*JOURNAL_ONLY, data_dir=data_dir)
        assert [job["job_id"] for job in create_jobs(server, load_runs()[2:4])] == [11, 12]
        assert server.call("POST", request="complete", job_id="1").code == 200
        server.kill9()
        # Lose seq 2 (create 2), seq 4 (import 10) and seqs 5 and 6 (creates 11
        # and 12). The reservation (seq 3) and the completion (seq 7) stay.
        first, second, third = journal_segments(data_dir)
        for segment, indexes in ((first, [1]), (second, [1]), (third, [0, 1])):
            offsets = record_offsets(segment)
            data = bytearray(segment.read_bytes())
            for index in indexes:
                data[offsets[index][0] + 20] ^= 0xFF
            segment.write_bytes(bytes(data))

        options = ["--cut-only"] if mode == "cut-only" else []
        repair = run_recover("repair", *options, "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        server = server_factory(data_dir=data_dir)
        # Ids 11 and 12 were given to users before the damage.
        assert server.call("POST", request="new", user="jdoe").json["job_id"] > 12

    def test_garbage_after_older_segment_keeps_later_segments(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        write_three_segments(server_factory, data_dir)
        first, second, third = journal_segments(data_dir)
        clean_size = first.stat().st_size
        with open(first, "ab") as f:
            f.write(b"\x00garbage that is no journal record\xff" * 3)
        assert run_recover("check", "--data-dir", str(data_dir)).returncode == 2

        repair = run_recover("repair", "--json", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        result = json.loads(repair.stdout)
        assert [record["seq"] for record in result["salvage"]["applied"]] == list(range(4, 10))
        assert result["salvage"]["skipped"] == []
        assert result["lost_records"] == 0
        assert result["segments_to_cut"] == [[str(first), clean_size]]
        assert first.stat().st_size == clean_size
        assert second.exists()
        assert third.exists()
        assert result["after"]["exit_status"] == 0

        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == list(range(1, 10))
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == 10

    def test_lost_segment_later_records_applied(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        write_three_segments(server_factory, data_dir)
        journal_segments(data_dir)[1].unlink()

        repair = run_recover("repair", "--json", "--data-dir", str(data_dir))
        assert repair.returncode == 0, repair.stdout + repair.stderr
        result = json.loads(repair.stdout)
        assert result["missing_seqs"] == [4, 6]
        assert [record["job_ids"] for record in result["salvage"]["applied"]] == [[7], [8], [9]]
        # No existing file changed, so no empty backup folder is left behind.
        assert result["backed_up"] == []
        assert list(data_dir.glob("repair-backup-*")) == []
        server = server_factory(data_dir=data_dir)
        assert [job["job_id"] for job in listing(server)] == [1, 2, 3, 7, 8, 9]
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == 10


class TestRequeue:
    def test_requeue_after_kill9(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        runs = load_runs()
        server = server_factory(data_dir=data_dir)
        create_jobs(server, [{**run, "user": "alice"} for run in runs[:3]])
        create_jobs(server, [{**run, "user": "bob"} for run in runs[3:6]])
        for user in ("alice", "alice", "bob"):
            claimed = server.call("GET", request="next", claim="1", user=user, runner="runner-7")
            assert claimed.json["status"] == "in_progress"
        server.kill9()

        before = checksums(data_dir)
        dry_run = run_recover("requeue", "--dry-run", "--user", "alice", "--data-dir", str(data_dir))
        assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
        assert "Would move 2 jobs from in_progress to new: 1, 2" in dry_run.stdout
        assert checksums(data_dir) == before

        not_claimed = run_recover("requeue", "--job-id", "5", "--data-dir", str(data_dir))
        assert not_claimed.returncode == 1
        assert "job 5 is new" in not_claimed.stderr
        failed = run_recover("requeue", "--job-id", "4", "--to", "failed", "--data-dir", str(data_dir))
        assert failed.returncode == 0, failed.stdout + failed.stderr
        requeued = run_recover("requeue", "--user", "alice", "--data-dir", str(data_dir))
        assert requeued.returncode == 0, requeued.stdout + requeued.stderr
        assert "Moved 2 jobs from in_progress to new: 1, 2" in requeued.stdout

        server = server_factory(data_dir=data_dir)
        jobs = {job["job_id"]: job for job in listing(server)}
        assert [jobs[i]["status"] for i in (1, 2, 3)] == ["new", "new", "new"]
        assert jobs[1]["attempts"] == 1
        assert jobs[4]["status"] == "failed"
        assert "runner gone" in jobs[4]["reason"]
        assert server.call("GET", request="next").json["job_id"] == 1


class TestLock:
    def test_refuses_while_server_runs(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory(data_dir=data_dir)
        create_jobs(server, load_runs()[:2])
        before = {name: data for name, data in checksums(data_dir).items() if name != "lock"}

        for args in (
            ("check",),
            ("repair",),
            ("repair", "--dry-run"),
            ("requeue",),
            ("compact",),
            ("export",),
            ("import", str(LEGACY_DUMP)),
        ):
            result = run_recover(*args, "--data-dir", str(data_dir))
            assert result.returncode == 3, (args, result.stdout, result.stderr)
            assert "in use by another poller process" in result.stderr
            assert "stop the server" in result.stderr
        after = {name: data for name, data in checksums(data_dir).items() if name != "lock"}
        assert after == before
        assert len(listing(server)) == 2


class TestExportImport:
    @pytest.mark.parametrize("target, fragment", [
        ("folder", "it is a directory"), ("missing/x.json", "does not exist"),
    ])
    def test_export_to_bad_output_names_it(self, tmp_path, target, fragment):
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (tmp_path / "folder").mkdir()
        output_path = tmp_path / target
        result = run_recover("export", "--output", str(output_path), "--data-dir", str(data_dir))
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"invalid --output '{output_path}'" in result.stderr
        assert fragment in result.stderr
        assert ".tmp" not in result.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "folder"]

    def test_export_import_gives_same_jobs(self, server_factory, tmp_path):
        source_dir = tmp_path / "source"
        server = server_factory(data_dir=source_dir)
        create_jobs(server, load_runs()[:30])
        server.call("POST", request="complete", job_id="3")
        server.call("POST", request="failed", job_id="5", reason="walltime exceeded")
        server.call("POST", request="delete", job_id="7")
        server.call("GET", request="next", claim="1", runner="runner-1")
        expected = listing(server)
        assert server.terminate() == 0

        export_file = tmp_path / "export.json"
        exported = run_recover("export", "--output", str(export_file), "--data-dir", str(source_dir))
        assert exported.returncode == 0, exported.stderr
        assert json.loads(export_file.read_text(encoding="utf-8")) == expected

        target_dir = tmp_path / "target"
        imported = run_recover("import", str(export_file), "--data-dir", str(target_dir))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert "29 imported, 0 skipped, 0 rejected" in imported.stdout

        again = run_recover("import", str(export_file), "--json", "--data-dir", str(target_dir))
        assert again.returncode == 1
        assert len(json.loads(again.stdout)["rejected"]) == 29
        skipped = run_recover("import", str(export_file), "--skip-existing", "--json", "--data-dir", str(target_dir))
        assert skipped.returncode == 0
        assert len(json.loads(skipped.stdout)["skipped"]) == 29

        server = server_factory(data_dir=target_dir)
        assert listing(server) == expected
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == 31

    def test_export_filters(self, tmp_path):
        data_dir = tmp_path / "data"
        assert run_recover("import", str(LEGACY_DUMP), "--data-dir", str(data_dir)).returncode == 0

        result = run_recover("export", "--status", "failed", "--user", "jdoe", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        jobs = json.loads(result.stdout)
        assert [job["job_id"] for job in jobs] == [6, 48]
        empty = run_recover("export", "--user", "nobody", "--data-dir", str(data_dir))
        assert json.loads(empty.stdout) == []

    def test_legacy_dump_served_over_http(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        rows = json.loads(LEGACY_DUMP.read_text(encoding="utf-8"))
        imported = run_recover("import", str(LEGACY_DUMP), "--json", "--data-dir", str(data_dir))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        report = json.loads(imported.stdout)
        assert report["format"] == "legacy dump"
        assert report["imported"] == sorted(row["pk"] for row in rows)
        assert report["rejected"] == []
        assert report["skipped"] == []

        server = server_factory(data_dir=data_dir)
        jobs = {job["job_id"]: job for job in listing(server)}
        assert sorted(jobs) == sorted(row["pk"] for row in rows)
        for row in rows:
            job = jobs[row["pk"]]
            fields = row["fields"]
            assert job["user"] == fields["user"]
            assert job["status"] == fields["status"]
            assert job["created"] == fields["created"]
            config = {key: value for key, value in job.items()
                      if key not in ("job_id", "id", "user", "status", "created", "updated")}
            assert config == json.loads(fields["config_options"])
        first_new = min(row["pk"] for row in rows if row["fields"]["status"] == "new")
        assert server.call("GET", request="next").json["job_id"] == first_new
        assert server.call("POST", request="new", user="jdoe").json["job_id"] == 181

    def test_legacy_rows_rejected_with_reasons(self, tmp_path):
        rows = json.loads(LEGACY_DUMP.read_text(encoding="utf-8"))[:3]

        def variant(pk: int, **fields) -> dict:
            row = json.loads(json.dumps(rows[0]))
            row["pk"] = pk
            row["fields"].update(fields)
            return row

        bad_rows = [
            variant(1001, status="running"),
            variant(1002, config_options='{"status": "new"}'),
            variant(1003, config_options='{"casename": '),
            variant(1004, user=""),
            variant(1005, created="last tuesday"),
            variant(1006, config_options="[1, 2]"),
            {**variant(1007), "model": "poller.other"},
            dict(rows[1]),
        ]
        dump = tmp_path / "dump.json"
        dump.write_text(json.dumps(rows + bad_rows), encoding="utf-8")
        data_dir = tmp_path / "data"

        result = run_recover("import", str(dump), "--json", "--data-dir", str(data_dir))
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report["imported"] == sorted(row["pk"] for row in rows)
        reasons = {entry["job_id"]: entry["reason"] for entry in report["rejected"]}
        assert "invalid status 'running'" in reasons[1001]
        assert "'status' is reserved" in reasons[1002]
        assert "invalid config_options" in reasons[1003]
        assert "invalid user ''" in reasons[1004]
        assert "invalid created 'last tuesday'" in reasons[1005]
        assert "expected a JSON object" in reasons[1006]
        assert "is not poller.userruns" in reasons[1007]
        assert "appears more than once" in reasons[rows[1]["pk"]]

        store, _ = recover(str(data_dir), repair=False)
        assert sorted(store.jobs) == sorted(row["pk"] for row in rows)

    def test_compact_after_import(self, tmp_path):
        data_dir = tmp_path / "data"
        assert run_recover("import", str(LEGACY_DUMP), "--data-dir", str(data_dir)).returncode == 0
        assert [path for _, path in list_segments(str(data_dir))] == [str(data_dir / "journal-00000000000000000001.log")]

        result = run_recover("compact", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        # One record reserves the imported ids, then one record per job.
        assert [seq for seq, _ in list_snapshots(str(data_dir))] == [61]
        segments = [(seq, os.path.getsize(path)) for seq, path in list_segments(str(data_dir))]
        assert segments == [(62, 16)]
        store, report = recover(str(data_dir), repair=False)
        assert len(store) == 60
        assert store.next_id == 181
        assert report.records_replayed == 0


def test_script_wrapper_runs_check(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    result = run_recover("check", "--data-dir", str(data_dir), script=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Snapshots: none" in result.stdout
    assert "contains no snapshot or journal" in result.stdout


class TestArguments:
    def test_file_as_data_dir_is_not_a_directory(self, tmp_path):
        not_dir = tmp_path / "file"
        not_dir.write_text("x")
        for args in (("check",), ("repair", "--dry-run"), ("import", "--dry-run", str(LEGACY_DUMP))):
            result = run_recover(*args, "--data-dir", str(not_dir))
            assert result.returncode == 64, (args, result.stderr)
            assert f"data directory '{not_dir}' is not a directory" in result.stderr
            assert "does not exist" not in result.stderr
        assert not_dir.read_text() == "x"

    @pytest.mark.parametrize("dry_run", [True, False])
    def test_import_under_a_file_is_usage_error(self, tmp_path, dry_run):
        not_dir = tmp_path / "file"
        not_dir.write_text("x")
        options = ["--dry-run"] if dry_run else []
        result = run_recover("import", *options, str(LEGACY_DUMP), "--data-dir", str(not_dir / "sub"))
        assert result.returncode == 64, result.stdout + result.stderr
        assert f"cannot be created: '{not_dir}' is not a directory" in result.stderr
        assert "Traceback" not in result.stderr

    def test_empty_data_dir_is_usage_error(self):
        result = run_recover("import", str(LEGACY_DUMP), "--data-dir", "")
        assert result.returncode == 64, result.stdout + result.stderr
        assert "invalid --data-dir ''" in result.stderr

    def test_requeue_reason_needs_to_failed(self, tmp_path):
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        result = run_recover("requeue", "--reason", "node lost", "--data-dir", str(data_dir))
        assert result.returncode == 64
        assert "--reason is stored only with --to failed" in result.stderr
        assert os.listdir(data_dir) == []

    def test_requeue_job_id_must_be_positive(self, tmp_path):
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        for value in ("-1", "0", "seven"):
            result = run_recover("requeue", "--job-id", value, "--data-dir", str(data_dir))
            assert result.returncode == 64, result.stderr
            assert f"invalid job id '{value}': must be a positive integer" in result.stderr
            assert "not found" not in result.stderr


class TestImportIds:
    def test_failed_import_changes_nothing(self, tmp_path):
        data_dir = tmp_path / "data"
        rows = [{"job_id": job_id, "user": "jdoe", "status": "new", "created": "2016-02-02T01:01:07.013Z",
                 "updated": "2016-02-02T01:01:07.013Z", "casename": "x" * 100} for job_id in (1, 2, 3)]
        exported = tmp_path / "import.json"
        exported.write_text(json.dumps(rows))

        def small_file_limit():
            # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
            resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.RLIM_INFINITY))

        failed = subprocess.run([sys.executable, "-m", "poller_server.recover", "import", str(exported),
                                 "--data-dir", str(data_dir)],
                                capture_output=True, text=True, timeout=60, preexec_fn=small_file_limit)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "import failed" in failed.stderr
        assert "nothing was imported" in failed.stderr
        assert list_segments(str(data_dir)) == []

        # Once the cause is gone, the same import works, with the same ids.
        again = run_recover("import", str(exported), "--data-dir", str(data_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        store, _ = recover(str(data_dir), repair=False)
        assert sorted(store.jobs) == [1, 2, 3]

    def test_import_killed_before_rename_leaves_nothing(self, server_factory, tmp_path):
        # An import killed mid-way leaves only its staging folder. This one
        # contains a whole segment, as if the kill came just before the rename.
        rows = [{"job_id": job_id, "user": "jdoe", "status": "new", "created": "2016-02-02T01:01:07.013Z",
                 "updated": "2016-02-02T01:01:07.013Z"} for job_id in (1, 2, 3)]
        exported = tmp_path / "import.json"
        exported.write_text(json.dumps(rows))
        finished = tmp_path / "finished"
        assert run_recover("import", str(exported), "--data-dir", str(finished)).returncode == 0
        data_dir = tmp_path / "data"
        staging = data_dir / "import-staging-x1y2"
        staging.mkdir(parents=True)
        [(_, segment)] = list_segments(str(finished))
        shutil.copy(segment, staging)

        server = server_factory(data_dir=data_dir)
        assert listing(server) == []
        assert not staging.exists()
        server.terminate()
        again = run_recover("import", str(exported), "--data-dir", str(data_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        store, _ = recover(str(data_dir), repair=False)
        assert sorted(store.jobs) == [1, 2, 3]

    def test_deleted_id_not_reused(self, server_factory, tmp_path):
        data_dir = tmp_path / "data"
        server = server_factory(data_dir=data_dir)
        create_jobs(server, load_runs()[:2])
        exported = listing(server)
        assert server.call("POST", request="delete", job_id="1").code == 200
        assert server.terminate() == 0
        export_file = tmp_path / "export.json"
        export_file.write_text(json.dumps(exported), encoding="utf-8")

        reports = []
        for extra in (("--dry-run",), ()):
            result = run_recover("import", str(export_file), "--json", *extra, "--data-dir", str(data_dir))
            assert result.returncode == 1, result.stdout + result.stderr
            reports.append(json.loads(result.stdout))
        for report in reports:
            assert report["imported"] == []
            reasons = {entry["job_id"]: entry["reason"] for entry in report["rejected"]}
            assert "job id 1 is below the data directory's next id 3" in reasons[1]
            assert "never reused" in reasons[1]
            assert "already exists" in reasons[2]
        skipped = run_recover("import", str(export_file), "--skip-existing", "--json", "--data-dir", str(data_dir))
        report = json.loads(skipped.stdout)
        assert [entry["job_id"] for entry in report["skipped"]] == [2]
        assert [entry["job_id"] for entry in report["rejected"]] == [1]
        store, _ = recover(str(data_dir), repair=False)
        assert sorted(store.jobs) == [2]

    def test_legacy_row_without_fields_rejected_alone(self, tmp_path):
        rows = json.loads(LEGACY_DUMP.read_text(encoding="utf-8"))[:4]
        del rows[2]["fields"]
        dump = tmp_path / "dump.json"
        dump.write_text(json.dumps(rows), encoding="utf-8")
        data_dir = tmp_path / "data"

        result = run_recover("import", str(dump), "--json", "--data-dir", str(data_dir))
        assert result.returncode == 1, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["format"] == "legacy dump"
        assert report["imported"] == sorted(row["pk"] for i, row in enumerate(rows) if i != 2)
        assert report["rejected"] == [
            {"row": 3, "job_id": rows[2]["pk"], "reason": f"the row with pk {rows[2]['pk']} has no fields object"}
        ]
