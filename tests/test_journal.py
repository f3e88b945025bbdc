"""The journal file: framing, reading back, group commit, failed appends."""

import asyncio
import os
import resource
import signal

import pytest

from poller_server.errors import JournalError
from poller_server.journal import FILE_HEADER, MAGIC, VERSION, Journal, list_segments, read_segment


def read_back(data_dir):
    [(first_seq, path)] = list_segments(str(data_dir))
    return read_segment(path, first_seq, None)


@pytest.mark.gen_test
async def test_records_read_back_in_order(tmp_path):
    journal = Journal(str(tmp_path), 1, "always")
    for index in range(5):
        assert journal.write({"op": "create", "n": index, "text": "zoë"}) == index + 1
    await journal.flush()
    await journal.close()
    scan, records = read_back(tmp_path)
    assert scan.bad_offset is None
    assert [record.seq for record in records] == [1, 2, 3, 4, 5]
    assert scan.good_end == os.path.getsize(scan.path)


@pytest.mark.gen_test
async def test_concurrent_syncs_share_fsyncs(tmp_path):
    journal = Journal(str(tmp_path), 1, "always")

    async def write_and_sync(index):
        await journal.sync(journal.write({"op": "create", "n": index}))

    await asyncio.gather(*(write_and_sync(index) for index in range(200)))
    assert journal.synced_seq == 200
    assert journal.sync_count < 200, "each record had an fsync of its own"
    await journal.close()


@pytest.mark.gen_test
async def test_everysec_syncs_in_background(tmp_path):
    journal = Journal(str(tmp_path), 1, "everysec")
    journal.start_background_sync()
    seq = journal.write({"op": "x"})
    await journal.sync(seq)
    assert journal.synced_seq == 0, "everysec acknowledges before the fsync"
    for _ in range(40):
        await asyncio.sleep(0.1)
        if journal.synced_seq == seq:
            break
    assert journal.synced_seq == seq
    await journal.close()


@pytest.mark.gen_test
async def test_rotate_starts_new_segment(tmp_path):
    journal = Journal(str(tmp_path), 1, "no")
    journal.write({"op": "a"})
    journal.write({"op": "b"})
    assert await journal.rotate() == 2
    journal.write({"op": "c"})
    await journal.close()
    segments = list_segments(str(tmp_path))
    assert [first for first, _ in segments] == [1, 3]


@pytest.mark.gen_test
async def test_failed_append_leaves_no_partial_record(tmp_path):
    journal = Journal(str(tmp_path), 1, "always")
    await journal.sync(journal.write({"op": "small"}))
    size = os.path.getsize(journal.segment_path)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # The file may grow by 100 bytes only, so a 10 kB record is cut mid-write.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
    try:
        with pytest.raises(JournalError):
            journal.write({"op": "big", "blob": "x" * 10000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert os.path.getsize(journal.segment_path) == size
    assert journal.append_error is not None
    assert journal.last_seq == 1
    seq = journal.write({"op": "after"})
    assert seq == 2
    assert journal.append_error is None
    await journal.sync(seq)
    await journal.close()
    scan, records = read_back(tmp_path)
    assert scan.bad_offset is None
    assert [record.seq for record in records] == [1, 2]


def test_header_only_segment_reads_empty(tmp_path):
    path = tmp_path / "journal-00000000000000000001.log"
    path.write_bytes(FILE_HEADER.pack(MAGIC, VERSION))
    scan, records = read_segment(str(path), 1, None)
    assert scan.bad_offset is None
    assert records == []
