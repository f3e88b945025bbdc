"""Shared fixtures: an in-process app on a real data directory, and real server processes."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from poller_server.app import make_app
from poller_server.config import Config
from poller_server.server import open_data_dir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LISTENING = re.compile(r"Poller listening on (https?://\S+?)[,\s]")


@pytest.fixture
def config(tmp_path, request) -> Config:
    """A server configuration with its data directory under tmp_path.

    ``@pytest.mark.config(max_waiters=3)`` on a test sets fields before the app starts.
    """
    marker = request.node.get_closest_marker("config")
    overrides = marker.kwargs if marker else {}
    return Config(port=0, data_dir=str(tmp_path / "data"), **overrides)


@pytest.fixture
def runtime(config, io_loop):
    runtime = open_data_dir(config)
    io_loop.run_sync(lambda: _start(runtime))
    yield runtime
    io_loop.run_sync(lambda: runtime.close(final_snapshot=False))


async def _start(runtime) -> None:
    runtime.start()


@pytest.fixture
def app(runtime, config):
    return make_app(runtime.service, config, runtime=runtime)


@pytest.fixture
def api(http_client, base_url):
    """Call the job API of the in-process app: ``await api("GET", request="next")``."""
    return ApiClient(http_client, base_url + "/poller/update/")


class Response:
    def __init__(self, code: int, body: bytes, headers) -> None:
        self.code = code
        self.body = body
        self.headers = headers

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:200]!r}>"


class ApiClient:
    def __init__(self, http_client, url: str) -> None:
        self.http_client = http_client
        self.url = url

    async def __call__(self, method: str = "GET", body=None, headers=None, json_body=None,
                       request_timeout: float = 20, **params) -> Response:
        url = self.url
        kwargs: dict = {"method": method, "raise_error": False, "request_timeout": request_timeout}
        headers = dict(headers or {})
        if method == "GET" or (body is not None or json_body is not None):
            if params:
                url += "?" + urllib.parse.urlencode(params)
        if method == "POST":
            if json_body is not None:
                body = json.dumps(json_body)
                headers.setdefault("Content-Type", "application/json")
            elif body is None:
                body = urllib.parse.urlencode(params)
                headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            kwargs["body"] = body
        kwargs["headers"] = headers
        response = await self.http_client.fetch(url, **kwargs)
        return Response(response.code, response.body or b"", response.headers)


def load_runs() -> list[dict]:
    with open(SHARED_DATA / "e3sm-runs.json", encoding="utf-8") as f:
        return json.load(f)


# -- real server processes ----------------------------------------------------------


class ServerProcess:
    """A ``poller-server`` child process on a free loopback port."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.args = args
        self.env = env
        self.url: str | None = None
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15, expect_listening: bool = True) -> "ServerProcess":
        command = [sys.executable, "-m", "poller_server", "--port", "0", "--data-dir", str(self.data_dir), *self.args]
        env = dict(os.environ)
        env.update(self.env or {})
        self.lines = []
        self.url = None
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        listening = threading.Event()

        def read_output(proc=self.proc):
            for line in proc.stdout:
                self.lines.append(line)
                match = LISTENING.search(line)
                if match:
                    self.url = match.group(1)
                    listening.set()
            listening.set()

        threading.Thread(target=read_output, daemon=True).start()
        if expect_listening:
            if not listening.wait(timeout) or self.url is None:
                self.kill9()
                raise AssertionError("server did not start:\n" + self.log)
        return self

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def endpoint(self) -> str:
        assert self.url is not None
        return self.url + "/poller/update/"

    def call(self, method: str = "GET", json_body=None, timeout: float = 20, headers: dict | None = None,
             ssl_context=None, url_path: str | None = None, **params) -> Response:
        """Send one request with urllib and return the response, errors included.

        ``url_path`` (for example "/healthz") replaces the job API endpoint;
        ``ssl_context`` is used for https URLs.
        """
        data = None
        headers = dict(headers or {})
        url = self.endpoint if url_path is None else self.url + url_path
        if method == "GET":
            url += "?" + urllib.parse.urlencode(params)
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = urllib.parse.urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
                return Response(response.status, response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return Response(error.code, error.read(), error.headers)

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server_factory(tmp_path):
    """Start ``poller-server`` processes: ``server_factory(*args, data_dir=..., env=...)``."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict | None = None,
              expect_listening: bool = True) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / "data", *args, env=env)
        started.append(server)
        return server.start(expect_listening=expect_listening)

    yield start
    for server in started:
        server.kill9()


def wait_for(predicate, timeout: float = 10, interval: float = 0.02):
    """Poll ``predicate`` until it returns a true value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
