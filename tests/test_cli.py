"""The poller-server command line, as a real process."""

import os
import signal
import subprocess
import sys

import pytest

from poller_server.cli import parse_config
from poller_server.config import config_fields


def run_cli(*args, env=None, timeout=15):
    return subprocess.run([sys.executable, "-m", "poller_server", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_help_states_unit_and_default_of_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for item in config_fields():
        flag = "--" + item.name.replace("_", "-")
        assert flag in text
        assert "POLLER_" + item.name.upper() in text
    assert "(default: 127.0.0.1)" in text
    assert "(default: 8080)" in text
    assert "(default: ./poller-data)" in text
    assert "in bytes (default: 1048576)" in text
    assert "(default: info)" in text


def test_environment_sets_options():
    config = parse_config([], {"POLLER_PORT": "9999", "POLLER_DATA_DIR": "/tmp/x", "POLLER_FSYNC": "no"})
    assert (config.port, config.data_dir, config.fsync) == (9999, "/tmp/x", "no")


def test_command_line_wins_over_environment():
    config = parse_config(["--port", "7000"], {"POLLER_PORT": "9999"})
    assert config.port == 7000


@pytest.mark.parametrize("env, fragment", [
    ({"POLLER_PORT": "eighty"}, "POLLER_PORT"),
    ({"POLLER_FSYNC": "sometimes"}, "POLLER_FSYNC"),
])
def test_bad_environment_value_is_usage_error(env, fragment):
    result = run_cli("--data-dir", "/nonexistent/never-created", env=env)
    assert result.returncode == 2
    assert fragment in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--port", "70000"], "--port"),
    (["--max-wait", "4000"], "--max-wait"),
    (["--lease", "0"], "--lease"),
    (["--fsync", "maybe"], "--fsync"),
    (["--event-loop", "libev"], "--event-loop"),
])
def test_bad_option_is_usage_error(args, fragment):
    result = run_cli(*args, "--data-dir", "/nonexistent/never-created")
    assert result.returncode == 2
    assert fragment in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(server_factory, signum):
    server = server_factory()
    assert server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith(":0")
    assert server.call("POST", request="new", user="u").code == 200
    server.proc.send_signal(signum)
    assert server.wait_exit() == 0
    assert "Poller stopped" in server.log


def test_port_zero_logs_bound_port(server_factory):
    server = server_factory()
    port = int(server.url.rsplit(":", 1)[1])
    assert port > 0
    assert server.call("GET", request="all").code == 200


def test_port_in_use_fails_with_message(server_factory, tmp_path):
    first = server_factory()
    port = first.url.rsplit(":", 1)[1]
    second = server_factory("--port", port, data_dir=tmp_path / "other", expect_listening=False)
    assert second.wait_exit() == 1
    assert "cannot start" in second.log


def test_default_event_loop_is_uvloop(server_factory):
    # uvloop is a dependency of the server, so "auto" picks it.
    server = server_factory()
    assert "event loop uvloop" in server.log


def test_standard_event_loop_on_request(server_factory):
    server = server_factory("--event-loop", "asyncio")
    assert "event loop asyncio" in server.log
    assert server.call("POST", request="new", user="u").code == 200
    assert server.terminate() == 0


def test_uvloop_asked_for_but_missing_is_usage_error(monkeypatch, capsys):
    monkeypatch.setattr("poller_server.config.uvloop_import_error", lambda: "ModuleNotFoundError: No module named 'uvloop'")
    monkeypatch.setattr("poller_server.config.uvloop_missing", lambda: True)
    with pytest.raises(SystemExit) as exited:
        parse_config(["--event-loop", "uvloop"], {})
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert "--event-loop uvloop" in message
    assert "pip install" in message
    # "auto" falls back to the standard loop instead.
    assert parse_config([], {}).event_loop == "auto"


BROKEN_UVLOOP_ERROR = "libuv.so.1: cannot open shared object file"


@pytest.fixture
def broken_uvloop(tmp_path):
    """Environment whose PYTHONPATH puts first a uvloop package that raises ImportError on import."""
    package = tmp_path / "broken-site" / "uvloop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError({BROKEN_UVLOOP_ERROR!r})\n", encoding="utf-8")
    path = [str(package.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}


def test_auto_loop_falls_back_on_broken_uvloop(server_factory, broken_uvloop):
    server = server_factory(env=broken_uvloop)
    assert "event loop asyncio" in server.log
    warnings = [line for line in server.lines if "uvloop failed to import" in line]
    assert len(warnings) == 1, server.log
    assert BROKEN_UVLOOP_ERROR in warnings[0]
    assert "--event-loop asyncio" in warnings[0]
    assert server.call("POST", request="new", user="u").code == 200
    assert server.terminate() == 0
    assert "Traceback" not in server.log
    assert "never awaited" not in server.log


def test_broken_uvloop_requested_is_usage_error(broken_uvloop, tmp_path):
    result = run_cli("--event-loop", "uvloop", "--port", "0", "--data-dir", str(tmp_path / "data"),
                     env=broken_uvloop)
    assert result.returncode == 2
    assert "invalid --event-loop uvloop: uvloop failed to import" in result.stderr
    assert BROKEN_UVLOOP_ERROR in result.stderr
    assert "--event-loop asyncio" in result.stderr
    assert "Traceback" not in result.stderr
    assert "never awaited" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_module_and_console_script_agree():
    script = os.path.join(os.path.dirname(sys.executable), "poller-server")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=15)
    assert result.returncode == 0
    assert result.stdout == run_cli("--help").stdout.replace("__main__.py", "poller-server")


class TestStartupErrors:
    def test_data_dir_that_is_a_file(self, server_factory, tmp_path):
        path = tmp_path / "afile"
        path.write_text("x")
        server = server_factory(data_dir=path, expect_listening=False)
        assert server.wait_exit() == 1
        assert f"data directory {str(path)!r} (--data-dir) is not a directory" in server.log
        assert "Traceback" not in server.log

    def test_data_dir_path_is_quoted(self, server_factory, tmp_path):
        # A directory inside a file cannot be made; the message shows the path with its space.
        (tmp_path / "a file").write_text("x")
        path = tmp_path / "a file" / "data dir"
        server = server_factory(data_dir=path, expect_listening=False)
        assert server.wait_exit() == 1
        assert f"data directory {str(path)!r} (--data-dir) cannot be used: Not a directory" in server.log
        assert "choose another --data-dir" in server.log
        assert "Traceback" not in server.log

    @pytest.mark.parametrize("env", [{}, {"POLLER_DATA_DIR": ""}])
    def test_empty_data_dir_is_usage_error(self, tmp_path, env):
        args = [] if env else ["--data-dir", ""]
        result = subprocess.run([sys.executable, "-m", "poller_server", "--port", "0", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=15, env={**os.environ, **env})
        assert result.returncode == 2
        assert "invalid --data-dir '': the path is empty" in result.stderr
        assert "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []

    def test_missing_certificate_names_option(self, server_factory, tmp_path):
        missing = tmp_path / "nope.pem"
        server = server_factory("--certfile", str(missing), "--keyfile", str(missing), expect_listening=False)
        assert server.wait_exit() == 1
        assert f"certificate {missing} (--certfile)" in server.log
        assert "Traceback" not in server.log

    def test_missing_token_file_names_option(self, server_factory, tmp_path):
        missing = tmp_path / "tokens"
        server = server_factory("--token-file", str(missing), expect_listening=False)
        assert server.wait_exit() == 1
        assert f"token file {missing} (--token-file) cannot be read" in server.log

    def test_port_in_use_names_address(self, server_factory, tmp_path):
        first = server_factory()
        port = first.url.rsplit(":", 1)[1]
        second = server_factory("--port", port, data_dir=tmp_path / "other", expect_listening=False)
        assert second.wait_exit() == 1
        assert f"cannot listen on 127.0.0.1 port {port}" in second.log
        assert "--port" in second.log
