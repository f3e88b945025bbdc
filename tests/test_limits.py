"""Every size and count limit, each set by its own flag."""

import resource
import socket
import subprocess
import sys
import urllib.parse

import pytest

from conftest import wait_for
from poller_server.config import Config


@pytest.fixture
def config(tmp_path):
    return Config(port=0, data_dir=str(tmp_path / "data"), max_config_keys=3, max_value_length=10, max_jobs=2,
                  max_body_size=2000)


def assert_error(response, code, *fragments):
    assert response.code == code, response
    message = response.json["error"]
    for fragment in fragments:
        assert fragment in message, message


class TestJobConfiguration:
    @pytest.mark.gen_test
    async def test_keys_at_limit_are_accepted(self, api):
        response = await api("POST", request="new", user="u", a="1", b="2", c="3")
        assert response.code == 200, response

    @pytest.mark.gen_test
    async def test_key_beyond_limit_is_named(self, api):
        response = await api("POST", json_body={"request": "new", "user": "u", "a": 1, "b": 2, "c": 3, "d": 4})
        assert_error(response, 400, "'d'", "number 4", "maximum is 3", "--max-config-keys")

    @pytest.mark.gen_test
    async def test_config_options_keys_count(self, api):
        response = await api("POST", json_body={
            "request": "new", "user": "u", "config_options": {"a": 1, "b": 2, "c": 3}, "extra": 4,
        })
        assert_error(response, 400, "'extra'", "--max-config-keys")

    @pytest.mark.gen_test
    async def test_value_at_limit_is_accepted(self, api):
        response = await api("POST", request="new", user="u", casename="x" * 10)
        assert response.code == 200, response
        assert response.json["casename"] == "x" * 10

    @pytest.mark.gen_test
    async def test_long_string_value_is_named(self, api):
        response = await api("POST", request="new", user="u", casename="x" * 11)
        assert_error(response, 400, "'casename'", "11 characters", "maximum is 10", "--max-value-length")

    @pytest.mark.gen_test
    async def test_long_json_value_is_named(self, api):
        response = await api("POST", json_body={"request": "new", "user": "u", "tasks": [1, 2, 3, 4, 5]})
        assert_error(response, 400, "'tasks'", "11 characters", "--max-value-length")

    @pytest.mark.gen_test
    async def test_rejected_configuration_creates_nothing(self, api):
        await api("POST", request="new", user="u", casename="x" * 11)
        assert (await api("GET", request="all")).json == {}


class TestMaxJobs:
    @pytest.mark.gen_test
    async def test_create_beyond_max_jobs_is_507(self, api):
        for _ in range(2):
            assert (await api("POST", request="new", user="u")).code == 200
        response = await api("POST", request="new", user="u")
        assert_error(response, 507, "2 jobs", "--max-jobs")
        listing = await api("GET", request="all")
        assert len(listing.json) == 2

    @pytest.mark.gen_test
    async def test_delete_makes_room(self, api):
        for _ in range(2):
            await api("POST", request="new", user="u")
        assert (await api("POST", request="new", user="u")).code == 507
        assert (await api("POST", request="delete", job_id="1")).code == 200
        assert (await api("POST", request="new", user="u")).code == 200


class TestBodySize:
    @pytest.mark.gen_test
    async def test_body_over_flag_is_413(self, api):
        response = await api("POST", body="request=new&user=u&a=" + "x" * 2000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_error(response, 413, "2000 bytes", "--max-body-size")


def server_address(server):
    parsed = urllib.parse.urlsplit(server.url)
    return parsed.hostname, parsed.port


def read_all(sock):
    """Read until the server closes the connection; a reset counts as closed."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def request_bytes(path, extra_header_bytes=0, keep_alive=False):
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if extra_header_bytes:
        lines.append("X-Padding: " + "p" * extra_header_bytes)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TestHeaderSize:
    def test_headers_over_limit_close_connection(self, server_factory):
        server = server_factory("--max-header-size", "2048")
        with socket.create_connection(server_address(server), timeout=10) as sock:
            sock.sendall(request_bytes("/healthz", extra_header_bytes=1500))
            assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(server_address(server), timeout=10) as sock:
            sock.sendall(request_bytes("/healthz", extra_header_bytes=3000))
            assert read_all(sock) == b""


class TestConnections:
    def test_connections_over_limit_get_503(self, server_factory):
        server = server_factory("--max-connections", "3")
        # The default --max-waiters 10000 leaves no connection for other requests.
        assert "--max-waiters 10000 is not below --max-connections 3" in server.log
        address = server_address(server)
        open_sockets = []
        try:
            for _ in range(3):
                sock = socket.create_connection(address, timeout=10)
                open_sockets.append(sock)
                # A full keep-alive exchange proves the server took the connection.
                sock.sendall(request_bytes("/healthz", keep_alive=True))
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")

            with socket.create_connection(address, timeout=10) as extra:
                response = read_all(extra)
            assert response.startswith(b"HTTP/1.1 503 ")
            assert b"Retry-After: 1" in response
            assert b"--max-connections" in response

            open_sockets.pop().close()

            def fourth_served():
                with socket.create_connection(address, timeout=10) as sock:
                    sock.sendall(request_bytes("/healthz"))
                    return read_all(sock).startswith(b"HTTP/1.1 200 ")

            assert wait_for(fourth_served)
        finally:
            for sock in open_sockets:
                sock.close()
        # The server notices the closed socket a moment later and may reject connections until then.
        metrics = wait_for(lambda: (response := server.call("GET", url_path="/metrics")).code == 200 and response)
        assert metrics, "the server kept rejecting connections after the held ones closed"
        rejected = [line for line in metrics.body.decode().splitlines()
                    if line.startswith("poller_connections_rejected_total ")]
        assert rejected, metrics.body
        assert float(rejected[0].split()[1]) >= 1
        assert "rejected: 3 connections are open" in server.log


class TestDefaults:
    @pytest.mark.parametrize("flag, default", [
        ("--max-body-size", 1048576),
        ("--max-header-size", 65536),
        ("--max-connections", 11000),
        ("--max-config-keys", 256),
        ("--max-value-length", 1048576),
        ("--max-jobs", 10000000),
    ])
    def test_help_states_default(self, flag, default):
        help_text = subprocess.run([sys.executable, "-m", "poller_server", "--help"],
                                   capture_output=True, text=True, check=True).stdout
        # argparse wraps help text, so compare it with whitespace collapsed.
        flat = " ".join(help_text.split())
        field = flag[2:].replace("-", "_")
        # The usage line has "[--flag METAVAR]", but the option's own entry has a space after the metavar.
        option = flat[flat.index(f"{flag} {field.upper()} "):]
        assert f"(default: {default})" in option[:400]
        assert getattr(Config(), field) == default

    @pytest.mark.parametrize("flag", ["--max-header-size", "--max-connections", "--max-config-keys",
                                      "--max-value-length"])
    def test_zero_limit_is_usage_error(self, server_factory, flag):
        server = server_factory(flag, "0", expect_listening=False)
        assert server.wait_exit() == 2
        assert f"invalid {flag} 0" in server.log


def soft_open_file_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


class TestOpenFileLimit:
    def test_soft_limit_raised_to_fit_connections(self, server_factory):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2000:
            pytest.skip(f"the hard open-file limit {hard} is too low for this test")
        # The child inherits a low soft limit; the server must raise it itself.
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            server = server_factory("--max-connections", "1500")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert soft_open_file_limit(server.proc.pid) == 1500 + 128

    def test_warns_when_hard_limit_is_too_low(self, tmp_path):
        # Lower the hard limit in a shell that then becomes the server, so this process keeps its own.
        command = (
            f"ulimit -n 300 && exec {sys.executable} -m poller_server --port 0 "
            f"--data-dir {tmp_path / 'data'} --max-connections 5000"
        )
        proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if "Poller listening" in line:
                    break
        finally:
            proc.terminate()
            proc.wait(15)
        log = "".join(lines)
        assert "Open-file limit is 300, below --max-connections plus 128" in log, log
        assert "Poller listening" in log
