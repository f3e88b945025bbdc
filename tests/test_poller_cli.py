"""The ``poller`` command: every subcommand, its output and its exit status, against a real server."""

import io
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import wait_for
from poller_server.client import PollerClient
from poller_server.poller_cli import main


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self) -> str:
        return f"<Result {self.code} out={self.out!r} err={self.err!r}>"


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def client(server):
    return PollerClient(server.url)


@pytest.fixture
def poller(server, capsys):
    """Run ``poller`` in this process against the test server: ``poller("list", "--json")``."""

    def run(*argv: str, env: dict | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        environ = {"POLLER_URL": server.url} if env is None else env
        try:
            code = main(list(argv), environ=environ, out=out, err=err)
        except SystemExit as exit:  # argparse usage errors
            code = exit.code
        usage = capsys.readouterr().err
        return Result(code, out.getvalue(), err.getvalue() + usage)

    return run


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- submit ------------------------------------------------------------------------------


def test_submit_creates_job(poller, client):
    result = poller("submit", "--user", "jdoe", "casename=F1850.ne30", "mppwidth:=240", "walltime=00:30:00")

    assert result.code == 0, result
    assert result.out == "Created job 1 for jdoe (status new).\n"
    job = client.get(1)
    assert job["casename"] == "F1850.ne30"
    assert job["mppwidth"] == 240
    assert job["walltime"] == "00:30:00"


def test_submit_config_file(poller, client, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"user": "zoë", "casename": "from-file", "stop_n": 5}), encoding="utf-8")

    result = poller("submit", "--config", str(config), "stop_n:=10", "--json")

    assert result.code == 0, result
    printed = json.loads(result.out)
    assert printed["user"] == "zoë"
    assert printed["casename"] == "from-file"
    assert printed["stop_n"] == 10
    assert client.get(printed["job_id"])["stop_n"] == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "casename=x"], "missing --user"),
        (["submit", "--user", "jdoe", "casename"], "write key=value"),
        (["submit", "--user", "jdoe", "n:=not-json"], "invalid JSON value"),
        (["submit", "--user", "jdoe", "--config", "/nonexistent/run.json"], "cannot read configuration file"),
    ],
)
def test_submit_usage_errors(poller, client, argv, message):
    result = poller(*argv)
    assert result.code == 2, result
    assert message in result.err
    assert client.list_jobs() == []


def test_submit_rejected_by_server(poller):
    result = poller("submit", "--user", "jdoe", "status=new")
    assert result.code == 1, result
    assert "reserved" in result.err
    assert "HTTP 400" in result.err


# -- list, show, stats --------------------------------------------------------------------


def test_list_table_and_json(poller, client):
    client.create("jdoe", {"casename": "first"})
    client.create("用户七", {"casename": "second"})
    client.fail(2, reason="bad")

    table = poller("list")
    failed = poller("list", "--status", "failed", "--json")
    mine = poller("list", "--user", "jdoe")

    assert table.code == 0, table
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "USER", "STATUS", "UPDATED", "RUNNER", "CONFIG"]
    assert rows[0].split()[:3] == ["1", "jdoe", "new"]
    assert rows[1].split()[:3] == ["2", "用户七", "failed"]
    assert "casename=second" in rows[1]
    assert [job["job_id"] for job in json.loads(failed.out)] == [2]
    assert len(mine.out.splitlines()) == 2


def test_list_empty(poller):
    assert poller("list").out == "No jobs.\n"
    assert json.loads(poller("list", "--json").out) == []


def test_list_bad_status_is_usage_error(poller):
    result = poller("list", "--status", "done")
    assert result.code == 2
    assert "invalid choice" in result.err


def test_show_job_and_missing(poller, client):
    client.create("jdoe", {"casename": "shown"})

    text = poller("show", "1")
    as_json = poller("show", "1", "--json")
    missing = poller("show", "9")
    bad_id = poller("show", "abc")

    assert text.code == 0
    assert "casename  shown" in text.out
    assert json.loads(as_json.out)["casename"] == "shown"
    assert missing.code == 1
    assert "job 9 not found" in missing.err
    assert bad_id.code == 2


def test_stats_counts_per_user(poller, client):
    for user in ("jdoe", "jdoe", "lchen"):
        client.create(user, {})
    client.complete(1)

    table = poller("stats")
    counts = json.loads(poller("stats", "--json").out)

    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["USER", "NEW", "IN_PROGRESS", "COMPLETE", "FAILED", "TOTAL"]
    assert lines[1].split() == ["jdoe", "1", "0", "1", "0", "2"]
    assert lines[2].split() == ["lchen", "1", "0", "0", "0", "1"]
    assert lines[3].split() == ["total", "2", "0", "1", "0", "3"]
    assert counts == {"jdoe": {"new": 1, "in_progress": 0, "complete": 1, "failed": 0},
                      "lchen": {"new": 1, "in_progress": 0, "complete": 0, "failed": 0}}


# -- next, set, requeue, delete -------------------------------------------------------------


def test_next_peek_claim_and_empty(poller, client):
    empty = poller("next", "--wait", "0.2")
    client.create("jdoe", {"casename": "next-one"})
    peeked = poller("next", "--json")
    claimed = poller("next", "--claim", "--runner", "operator")

    assert empty.code == 0
    assert empty.out == "No new job.\n"
    assert json.loads(peeked.out)["status"] == "new"
    assert claimed.code == 0
    assert "lease_id" in claimed.out
    assert "poller set 1 complete" in claimed.out
    job = client.get(1)
    assert job["status"] == "in_progress"
    assert job["runner"] == "operator"
    assert json.loads(poller("next", "--json").out) is None


@pytest.mark.parametrize("option, value", [("--lease", "600"), ("--runner", "operator")])
def test_next_claim_options_need_claim(poller, client, option, value):
    client.create("jdoe", {})
    result = poller("next", option, value)
    assert result.code == 2, result
    assert "apply only to a claimed job: add --claim" in result.err
    assert client.get(1)["status"] == "new"


def test_set_moves_status(poller, client):
    client.create("jdoe", {})
    client.create("jdoe", {})

    started = poller("set", "1", "in_progress")
    done = poller("set", "1", "complete")
    failed = poller("set", "2", "failed", "--reason", "input missing", "--json")
    renewed = poller("set", "2", "new")

    assert started.code == 0, started
    assert done.code == 0, done
    assert done.out == "Job 1 is now complete.\n"
    assert client.get(1)["status"] == "complete"
    assert failed.code == 0, failed
    assert json.loads(failed.out)["reason"] == "input missing"
    assert renewed.code == 0, renewed
    assert renewed.out == "Job 2 is now new.\n"
    assert client.get(2)["status"] == "new"


def test_set_errors(poller, client):
    client.create("jdoe", {})
    client.complete(1)

    conflict = poller("set", "1", "failed")
    missing = poller("set", "7", "complete")
    bad_status = poller("set", "1", "done")
    reason_misused = poller("set", "1", "complete", "--reason", "x")

    assert conflict.code == 1
    assert "cannot move to failed" in conflict.err
    assert "poller show 1" in conflict.err
    assert missing.code == 1
    assert "job 7 not found" in missing.err
    assert bad_status.code == 2
    assert reason_misused.code == 2
    assert "--reason applies only to status failed" in reason_misused.err


def test_requeue_and_delete(poller, client):
    client.create("jdoe", {})
    client.fail(1, reason="flaky")

    requeued = poller("requeue", "1")
    deleted = poller("delete", "1")
    deleted_again = poller("delete", "1")
    requeue_missing = poller("requeue", "1")

    assert requeued.code == 0
    assert requeued.out == "Job 1 is now new.\n"
    assert deleted.code == 0
    assert deleted.out == "Deleted job 1 (new).\n"
    assert client.get(1) is None
    assert deleted_again.code == 1
    assert "job 1 not found" in deleted_again.err
    assert requeue_missing.code == 1


@pytest.mark.parametrize("argv", [["requeue", "1"], ["set", "1", "new"]])
def test_requeue_claimed_at_once_by_waiting_runner(poller, client, server, argv):
    client.create("jdoe", {})
    client.fail(1, reason="flaky")
    claimed = []
    waiter = threading.Thread(target=lambda: claimed.append(
        client.next(wait=10, claim=True, runner="runner-w")))
    waiter.start()
    assert wait_for(lambda: b"poller_waiting_requests 1" in server.call("GET", url_path="/metrics").body)

    result = poller(*argv)
    waiter.join(10)

    assert result.code == 0, result
    assert result.out == ("Job 1 was requeued, and the waiting runner runner-w claimed it at once (attempt 1); "
                          "it is now in_progress. Run `poller show 1` to follow it.\n")
    assert claimed[0]["job_id"] == 1
    assert client.get(1)["status"] == "in_progress"


def test_requeue_complete_job_conflicts(poller, client):
    client.create("jdoe", {})
    client.complete(1)
    result = poller("requeue", "1")
    assert result.code == 1
    assert "only failed or in_progress jobs can be requeued" in result.err


# -- connection and usage ---------------------------------------------------------------------


def test_unreachable_server_exit_3(poller):
    url = f"http://127.0.0.1:{closed_port()}"
    for argv in (["list"], ["--url", url, "show", "1"], ["stats", "--url", url]):
        result = poller(*argv, env={"POLLER_URL": url})
        assert result.code == 3, result
        assert "connection refused" in result.err
        assert "POLLER_URL" in result.err


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_bad_url_port_names_value(poller, port):
    url = f"http://127.0.0.1:{port}"
    result = poller("--url", url, "list")
    assert result.code == 2, result
    assert f"invalid port {port!r} in server URL {url!r}: must be a number from 1 to 65535" in result.err
    assert "check --url" in result.err


def test_next_wait_error_shows_value_as_typed(poller):
    result = poller("next", "--wait", "9999")
    assert result.code == 1, result
    assert "invalid wait '9999': must be 0 to 60 seconds" in result.err
    assert "9999.0" not in result.err


@pytest.mark.parametrize("value", ["0", "abc", "²", "9" * 5000])
def test_bad_job_id_is_usage_error(poller, value):
    result = poller("show", value)
    assert result.code == 2, result
    assert "invalid job id" in result.err
    assert "Traceback" not in result.err


def test_next_wait_not_a_number_is_usage_error(poller):
    result = poller("next", "--wait", "soon")
    assert result.code == 2, result
    assert "argument --wait: invalid number of seconds 'soon': must be a number" in result.err


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", str(10**400)])
def test_next_wait_not_finite_is_usage_error(poller, value):
    result = poller("next", "--wait", value)
    assert result.code == 2, result
    assert f"argument --wait: invalid number of seconds {value!r}" in result.err
    assert "Traceback" not in result.err


@pytest.fixture
def plain_http_listener():
    """Yield the port of a loopback socket that responds to every connection with a plain HTTP 400.

    A server without TLS responds like this to a TLS handshake.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(10)
    listener.close()


def test_https_to_plain_http_server_hints_http(poller, plain_http_listener):
    port = plain_http_listener
    result = poller("--url", f"https://127.0.0.1:{port}", "list")
    assert result.code == 3, result
    assert f"TLS handshake with https://127.0.0.1:{port} failed" in result.err
    assert f"the server may not use TLS: if it serves plain HTTP, use http://127.0.0.1:{port}" in result.err
    assert "--ca-file" not in result.err


def test_url_option_beats_environment(poller, server):
    result = poller("list", "--url", server.url, env={"POLLER_URL": f"http://127.0.0.1:{closed_port()}"})
    assert result.code == 0, result


def test_missing_token_file_exit_2(poller, tmp_path):
    result = poller("--token-file", str(tmp_path / "absent"), "list")
    assert result.code == 2
    assert f"cannot read {tmp_path / 'absent'}" in result.err
    assert "--token-file" in result.err


def test_no_subcommand_is_usage_error(poller):
    assert poller().code == 2


def test_console_entry_point(server):
    env = dict(os.environ, POLLER_URL=server.url)
    command = [sys.executable, "-m", "poller_server.poller_cli"]

    submitted = subprocess.run([*command, "submit", "--user", "jdoe", "casename=cli"],
                               env=env, capture_output=True, text=True, timeout=30)
    listed = subprocess.run([*command, "list", "--json"], env=env, capture_output=True, text=True, timeout=30)
    usage = subprocess.run([*command, "frobnicate"], env=env, capture_output=True, text=True, timeout=30)

    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(listed.stdout)[0]["casename"] == "cli"
    assert usage.returncode == 2
    assert "invalid choice" in usage.stderr


def test_token_file_and_auth_errors(server_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token-0123456789  read  reader\n", encoding="utf-8")
    tokens.chmod(0o600)
    server = server_factory("--token-file", str(tokens))
    env = {"POLLER_URL": server.url}
    token_env = {**env, "POLLER_TOKEN_FILE": str(tokens)}

    def poller(*argv: str, environ: dict) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ=environ, out=out, err=err)
        return Result(code, out.getvalue(), err.getvalue())

    anonymous = poller("list", environ=env)
    reading = poller("list", environ=token_env)
    submitting = poller("submit", "--user", "jdoe", "casename=x", environ=token_env)

    assert anonymous.code == 1, anonymous
    assert "HTTP 401" in anonymous.err
    assert "--token-file" in anonymous.err
    assert reading.code == 0, reading
    assert reading.out == "No jobs.\n"
    assert submitting.code == 1, submitting
    assert "HTTP 403" in submitting.err
    assert "not allowed" in submitting.err
