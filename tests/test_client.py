"""PollerClient and AsyncPollerClient against a real server, and against a mock for error responses."""

import asyncio
import json
import random
import socket
import threading

import pytest
from test_tls import pki  # noqa: F401 (a fixture: a CA with server and client certificates)
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from poller_server.client import (
    AsyncPollerClient,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PollerClient,
    PollerClientError,
    ResponseError,
    RetryPolicy,
    TimedOut,
    TLSFailed,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

FAST_RETRY = RetryPolicy(retries=10, base_delay=0.05, max_delay=0.5)
NO_RETRY = RetryPolicy(retries=0)


class SyncAsyncClient:
    """Run each AsyncPollerClient method to completion on a private event loop, so tests call both alike."""

    def __init__(self, url: str, **kwargs) -> None:
        self.loop = asyncio.new_event_loop()

        async def make() -> AsyncPollerClient:
            return AsyncPollerClient(url, **kwargs)

        self.client = self.loop.run_until_complete(make())

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            return self.loop.run_until_complete(method(*args, **kwargs))

        return call

    def close(self) -> None:
        self.client.close()
        self.loop.close()


@pytest.fixture(params=["blocking", "async"])
def make_client(request):
    """Build a client of the kind under test: ``make_client(url, **options)``."""
    clients = []

    def make(url, **kwargs):
        client = PollerClient(url, **kwargs) if request.param == "blocking" else SyncAsyncClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        if isinstance(client, SyncAsyncClient):
            client.close()


@pytest.fixture
def server(server_factory):
    return server_factory()


def closed_port() -> int:
    """Return a loopback port that nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a mock server for responses the real one does not give ------------------------------


class MockServer:
    """A loopback HTTP server that records requests and plays back queued responses."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[tuple[int, bytes, dict, float]] = []
        self.default = (200, b"{}", {}, 0.0)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve_forever, daemon=True)
        self._ready = threading.Event()

    def answer(self, status: int, body: object = None, headers: dict | None = None, delay: float = 0.0) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.answers.append((status, data, headers or {}, delay))

    def start(self) -> "MockServer":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve_forever(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        mock = self

        class Handler(RequestHandler):
            async def get(self) -> None:
                mock.requests.append({
                    "method": self.request.method,
                    "uri": self.request.uri,
                    "headers": dict(self.request.headers),
                    "body": self.request.body,
                })
                status, body, headers, delay = mock.answers.pop(0) if mock.answers else mock.default
                if delay:
                    await asyncio.sleep(delay)
                self.set_status(status)
                for name, value in headers.items():
                    self.set_header(name, value)
                self.set_header("Content-Type", "application/json")
                self.finish(body)

            post = get

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sockets = bind_sockets(0, "127.0.0.1")
        http_server = HTTPServer(Application([(r"/.*", Handler)]))
        http_server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self._ready.set()
        await self._stop.wait()
        http_server.stop()


@pytest.fixture
def mock():
    server = MockServer().start()
    yield server
    server.stop()


# -- each method against the real server --------------------------------------------------


def test_create_get_and_list(server, make_client):
    client = make_client(server.url)
    first = client.create("zoë", {"casename": "F1850.ne30", "mppwidth": 240, "debug": True})
    second = client.create("jdoe", {"casename": "B1850"})

    assert first["job_id"] == 1
    assert first["user"] == "zoë"
    assert first["status"] == "new"
    assert first["mppwidth"] == 240
    assert first["debug"] is True
    assert client.get(1) == first
    assert client.get(99) is None
    assert [job["job_id"] for job in client.list_jobs()] == [1, 2]
    assert [job["job_id"] for job in client.list_jobs("new", "jdoe")] == [2]
    assert client.list_jobs(user="zoë")[0]["casename"] == "F1850.ne30"
    assert client.list_jobs("failed") == []


def test_next_peeks_and_claims(server, make_client):
    client = make_client(server.url)
    assert client.next() is None
    job = client.create("jdoe", {"casename": "a"})

    peeked = client.next()
    claimed = client.next(claim=True, runner="runner-1", lease=30)

    assert peeked["job_id"] == job["job_id"]
    assert peeked["status"] == "new"
    assert claimed["status"] == "in_progress"
    assert claimed["runner"] == "runner-1"
    assert claimed["attempts"] == 1
    assert claimed["lease_id"]
    assert claimed["lease_expires"]
    assert client.next(claim=True) is None


def test_next_wait_longer_than_timeout(server, make_client):
    # The request time-out is the wait plus the client's timeout, so a long
    # poll longer than the timeout alone ends with None, not TimedOut.
    client = make_client(server.url, timeout=0.5, retry=NO_RETRY)
    assert client.next(wait=1.5, claim=True) is None


def test_next_filters_by_user(server, make_client):
    client = make_client(server.url)
    client.create("jdoe", {"n": 1})
    theirs = client.create("用户七", {"n": 2})

    claimed = client.next(user="用户七", claim=True)

    assert claimed["job_id"] == theirs["job_id"]
    assert client.next(user="用户七") is None


def test_heartbeat_complete_and_fail(server, make_client):
    client = make_client(server.url)
    client.create("jdoe", {"n": 1})
    client.create("jdoe", {"n": 2})
    first = client.next(claim=True, lease=5)
    second = client.next(claim=True, lease=5)

    extended = client.heartbeat(first["job_id"], first["lease_id"], lease=600)
    completed = client.complete(first["job_id"], first["lease_id"])
    failed = client.fail(second["job_id"], second["lease_id"], reason="exit status 3")

    assert extended["lease_expires"] > first["lease_expires"]
    assert extended["lease_id"] == first["lease_id"]
    assert completed["status"] == "complete"
    assert failed["status"] == "failed"
    assert failed["reason"] == "exit status 3"
    with pytest.raises(Conflict) as caught:
        client.heartbeat(first["job_id"], first["lease_id"])
    assert caught.value.status == 409
    assert "complete" in caught.value.message


def test_set_status_without_lease(server, make_client):
    client = make_client(server.url)
    job = client.create("jdoe", {"n": 1})

    started = client.set_status(job["job_id"], "in_progress")
    done = client.complete(job["job_id"])

    assert started["status"] == "in_progress"
    assert done["status"] == "complete"


def test_requeue_delete_and_bulk(server, make_client):
    client = make_client(server.url)
    for n in range(3):
        client.create("jdoe", {"n": n})
    client.create("lchen", {"n": 3})
    client.fail(1, reason="bad input")

    requeued = client.requeue(1)
    deleted = client.delete(2)
    updated = client.set_all_status("complete", user="jdoe")

    assert requeued["status"] == "new"
    assert deleted["job_id"] == 2
    assert client.get(2) is None
    assert updated == 2
    assert [job["job_id"] for job in client.list_jobs("complete")] == [1, 3]
    assert client.get(4)["status"] == "new"


def test_invalid_arguments_rejected_locally(server, make_client):
    client = make_client(server.url)
    with pytest.raises(ValueError):
        client.list_jobs("done")
    with pytest.raises(ValueError):
        client.set_status(1, "new")
    with pytest.raises(ValueError):
        PollerClient("ftp://127.0.0.1")
    with pytest.raises(ValueError, match="invalid port '99999' in server URL 'http://127.0.0.1:99999'"):
        PollerClient("http://127.0.0.1:99999")
    with pytest.raises(ValueError, match="claim=True"):
        client.next(lease=600)
    with pytest.raises(ValueError, match="claim=True"):
        client.next(runner="runner-1")


# -- errors ------------------------------------------------------------------------------


def test_server_errors_map_to_types(server_factory, make_client):
    server = server_factory("--max-body-size", "4096", "--max-jobs", "2", "--max-waiters", "1")
    client = make_client(server.url, retry=NO_RETRY)
    job = client.create("jdoe", {"n": 1})
    client.complete(job["job_id"])

    cases = [
        (BadRequest, 400, lambda: client.get(0), "job_id"),
        (BadRequest, 400, lambda: client.create("", {}), "user"),
        (NotFound, 404, lambda: client.delete(42), "job 42 not found"),
        (Conflict, 409, lambda: client.fail(job["job_id"]), "cannot move"),
        (PayloadTooLarge, 413, lambda: client.create("jdoe", {"blob": "x" * 5000}), "--max-body-size"),
    ]
    for error_type, status, call, fragment in cases:
        with pytest.raises(error_type) as caught:
            call()
        assert caught.value.status == status
        assert fragment in caught.value.message

    client.create("jdoe", {"n": 2})
    with pytest.raises(InsufficientStorage) as caught:
        client.create("jdoe", {"n": 3})
    assert caught.value.status == 507
    assert "--max-jobs" in caught.value.message


def test_unavailable_carries_retry_after(server_factory, make_client):
    server = server_factory("--max-waiters", "1")
    client = make_client(server.url, retry=NO_RETRY)
    holder = PollerClient(server.url, retry=NO_RETRY)
    done = threading.Event()

    def hold_the_waiter_slot() -> None:
        # Both sides poll in turn until the client finds the only slot taken.
        while not done.is_set():
            try:
                holder.next(wait=0.5, user="nobody")
            except Unavailable:
                pass

    holding = threading.Thread(target=hold_the_waiter_slot)
    holding.start()
    caught = None
    try:
        for _ in range(200):
            try:
                client.next(wait=0.1, user="nobody")
            except Unavailable as error:
                caught = error
                break
    finally:
        done.set()
        holding.join()
    assert caught is not None, "no waiting request was answered 503"
    assert caught.status == 503
    assert caught.retry_after == 1
    assert "--max-waiters" in caught.message


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (405, MethodNotAllowed),
        (409, Conflict),
        (413, PayloadTooLarge),
        (415, UnsupportedMediaType),
        (503, Unavailable),
        (507, InsufficientStorage),
        (500, ResponseError),
        (418, ResponseError),
    ],
)
def test_every_status_maps_to_type(mock, make_client, status, error_type):
    mock.answer(status, {"error": f"message for {status}"})
    client = make_client(mock.url, retry=NO_RETRY)

    with pytest.raises(error_type) as caught:
        client.get(1)

    assert type(caught.value) is error_type
    assert isinstance(caught.value, PollerClientError)
    assert caught.value.status == status
    assert caught.value.message == f"message for {status}"


def test_error_without_json_body_keeps_text(mock, make_client):
    mock.answers.append((502, b"Bad gateway from the proxy", {}, 0.0))
    client = make_client(mock.url, retry=NO_RETRY)
    with pytest.raises(ResponseError) as caught:
        client.list_jobs()
    assert caught.value.status == 502
    assert caught.value.message == "Bad gateway from the proxy"


def test_closed_port_raises_connection_failed(make_client):
    client = make_client(f"http://127.0.0.1:{closed_port()}", retry=RetryPolicy(retries=2, base_delay=0.01))
    with pytest.raises(ConnectionFailed) as caught:
        client.list_jobs()
    assert caught.value.status is None
    assert "connection refused" in caught.value.message


def test_slow_answer_raises_timed_out(mock, make_client):
    mock.answer(200, {}, delay=2.0)
    client = make_client(mock.url, timeout=0.3, retry=NO_RETRY)
    with pytest.raises(TimedOut) as caught:
        client.get(1)
    assert "timed out after 0.3 s waiting for the response" in caught.value.message


def test_https_to_plain_server_times_out_in_handshake(server, make_client):
    # A plain HTTP server waits for a request line that a TLS client hello never ends.
    port = server.url.rsplit(":", 1)[1]
    url = f"https://127.0.0.1:{port}"
    client = make_client(url, connect_timeout=0.5, timeout=30, retry=NO_RETRY)
    with pytest.raises(TimedOut) as caught:
        client.list_jobs()
    message = caught.value.message
    assert f"TLS handshake with {url} timed out after 0.5 s (connect time-out)" in message
    assert f"the server may not use TLS: if it serves plain HTTP, use http://127.0.0.1:{port}" in message
    assert "30" not in message


def test_retried_connection_failure_counts_attempts(make_client):
    client = make_client(f"http://127.0.0.1:{closed_port()}", retry=RetryPolicy(retries=2, base_delay=0.01))
    with pytest.raises(ConnectionFailed) as caught:
        client.list_jobs()
    assert caught.value.message.startswith("after 3 attempts, cannot reach")


# -- retries -----------------------------------------------------------------------------


def test_503_is_retried_until_success(mock, make_client):
    mock.answer(503, {"error": "busy"}, {"Retry-After": "0"})
    mock.answer(503, {"error": "busy"})
    mock.answer(200, [{"job_id": 1}])
    client = make_client(mock.url, retry=RetryPolicy(retries=3, base_delay=0.01))

    assert client.list_jobs() == [{"job_id": 1}]
    assert len(mock.requests) == 3


def test_retries_are_bounded(mock, make_client):
    mock.default = (503, b'{"error": "busy"}', {}, 0.0)
    client = make_client(mock.url, retry=RetryPolicy(retries=2, base_delay=0.01))
    with pytest.raises(Unavailable):
        client.get(1)
    assert len(mock.requests) == 3


def test_create_not_retried_unless_allowed(mock, make_client):
    mock.answer(503, {"error": "busy"})
    mock.answer(503, {"error": "busy"})
    mock.answer(200, {"job_id": 7, "user": "jdoe", "status": "new"})
    client = make_client(mock.url, retry=RetryPolicy(retries=3, base_delay=0.01))

    with pytest.raises(Unavailable):
        client.create("jdoe", {"n": 1})
    assert len(mock.requests) == 1
    job = client.create("jdoe", {"n": 1}, retry=True)
    assert job["job_id"] == 7
    assert len(mock.requests) == 3


def test_repeated_leased_complete_is_accepted(server, make_client):
    client = make_client(server.url)
    client.create("jdoe", {"n": 1})
    claimed = client.next(claim=True)
    done = client.complete(claimed["job_id"], claimed["lease_id"])
    # A runner whose first response was lost repeats the report with the same lease.
    assert client.complete(claimed["job_id"], claimed["lease_id"]) == done


def test_release_with_lease(server, make_client):
    client = make_client(server.url)
    client.create("jdoe", {"n": 1})
    claimed = client.next(claim=True)
    released = client.requeue(claimed["job_id"], claimed["lease_id"])
    assert released["status"] == "new"
    with pytest.raises(Conflict):
        client.requeue(claimed["job_id"], claimed["lease_id"])


def test_first_move_conflict_raises(mock, make_client):
    mock.answer(409, {"error": "job 1 is complete; it cannot move to failed"})
    client = make_client(mock.url, retry=RetryPolicy(retries=3, base_delay=0.01))
    with pytest.raises(Conflict):
        client.fail(1, "lease-1", reason="late")
    assert len(mock.requests) == 1


def test_retry_delay_honours_retry_after():
    policy = RetryPolicy(base_delay=0.1, max_delay=0.4, rng=random.Random(1))
    busy = Unavailable("busy", 503, retry_after=5)
    for retry in range(1, 8):
        assert policy.delay(retry, busy) >= 5
        delay = policy.delay(retry, ConnectionFailed("refused"))
        assert 0 <= delay <= min(0.4, 0.1 * 2 ** (retry - 1))


def test_retry_across_server_restart(server_factory, make_client):
    first = server_factory()
    port = first.url.rsplit(":", 1)[1]
    client = make_client(first.url, retry=FAST_RETRY)
    outcome: dict = {}

    def poll() -> None:
        try:
            outcome["job"] = client.next(wait=20, claim=True, runner="survivor")
        except PollerClientError as error:
            outcome["error"] = error

    polling = threading.Thread(target=poll)
    polling.start()
    try:
        # Give the long poll time to reach the server before it dies. If it
        # does not, the test still covers a retry on a refused connection.
        polling.join(0.5)
        first.kill9()
        second = server_factory("--port", port)
        assert second.url == first.url
        created = second.call("POST", request="new", user="jdoe", casename="after-restart").json
    finally:
        polling.join(30)
    assert "error" not in outcome, outcome
    assert outcome["job"]["job_id"] == created["job_id"]
    assert outcome["job"]["runner"] == "survivor"


# -- authentication ---------------------------------------------------------------------


def test_bearer_token_sent(mock, make_client, tmp_path):
    token_file = tmp_path / "token"
    # A line in the server's token file format works: the first word is the token.
    token_file.write_text("# runner token\n\nfile-token-123  read,run  runner-1\n", encoding="utf-8")

    make_client(mock.url, token="direct-token-456").get(1)
    make_client(mock.url, token_file=str(token_file)).list_jobs()
    make_client(mock.url).list_jobs()

    assert mock.requests[0]["headers"]["Authorization"] == "Bearer direct-token-456"
    assert mock.requests[1]["headers"]["Authorization"] == "Bearer file-token-123"
    assert "Authorization" not in mock.requests[2]["headers"]


TOKENS = {
    "read": "read-token-0123456789abcdef",
    "submit": "submit-token-0123456789abcdef",
}


def write_server_tokens(path):
    lines = [f"{token}  {scope}  {scope}-client\n" for scope, token in TOKENS.items()]
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return path


def test_token_errors_from_real_server(server_factory, make_client, tmp_path):
    tokens = write_server_tokens(tmp_path / "tokens")
    server = server_factory("--token-file", str(tokens))

    anonymous = make_client(server.url, retry=NO_RETRY)
    reader = make_client(server.url, token=TOKENS["read"], retry=NO_RETRY)
    submitter = make_client(server.url, token=TOKENS["submit"], retry=NO_RETRY)

    with pytest.raises(Unauthorized) as missing:
        anonymous.list_jobs()
    with pytest.raises(Forbidden) as not_allowed:
        reader.create("jdoe", {"n": 1})
    created = submitter.create("jdoe", {"n": 1})
    assert missing.value.status == 401
    assert not_allowed.value.status == 403
    assert "submit" in not_allowed.value.message
    assert reader.get(created["job_id"])["user"] == "jdoe"


def test_tls_with_ca_file(server_factory, make_client, pki):  # noqa: F811
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]))
    assert server.url.startswith("https://")

    trusting = make_client(server.url, ca_file=str(pki["ca"]))
    untrusting = make_client(server.url, retry=NO_RETRY)

    created = trusting.create("jdoe", {"casename": "secure"})
    assert trusting.get(created["job_id"])["casename"] == "secure"
    with pytest.raises(TLSFailed):
        untrusting.list_jobs()


def test_tls_client_certificate(server_factory, make_client, pki):  # noqa: F811
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]),
                            "--ca-file", str(pki["ca"]))

    with_certificate = make_client(server.url, ca_file=str(pki["ca"]), cert_file=str(pki["client"]),
                                   key_file=str(pki["client-key"]))
    without_certificate = make_client(server.url, ca_file=str(pki["ca"]), retry=NO_RETRY)

    assert with_certificate.list_jobs() == []
    # TLS 1.3 reports a missing client certificate after the handshake, so
    # the client sees either a TLS error or a broken connection.
    with pytest.raises((TLSFailed, ConnectionFailed)):
        without_certificate.list_jobs()


def test_missing_ca_file_rejected(tmp_path):
    with pytest.raises(OSError):
        PollerClient("https://127.0.0.1:8443", ca_file=str(tmp_path / "absent.pem"))


def test_empty_token_file_rejected(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no token"):
        PollerClient("http://127.0.0.1:8080", token_file=str(token_file))


def test_post_sends_json_body(mock, make_client):
    mock.answer(200, {"job_id": 1})
    make_client(mock.url).create("zoë", {"mppwidth": 240, "casename": "é"})
    request = mock.requests[0]
    assert request["method"] == "POST"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "request": "new", "user": "zoë", "config_options": {"mppwidth": 240, "casename": "é"},
    }


@pytest.mark.parametrize("suffix", ["/poller/update/", "/poller/update"])
def test_url_copied_with_api_path_works(server, suffix):
    client = PollerClient(server.url + suffix)
    assert client.url == server.url
    assert client.create("jdoe", {"n": 1})["job_id"] == 1
    assert client.get(1)["user"] == "jdoe"
