"""Clients for the poller job API: :class:`PollerClient` and :class:`AsyncPollerClient`.

Both classes have the same methods and return plain dicts: a job, a list of
jobs, or ``None`` where the server responds ``{}`` (no such job, no job
ready). ``PollerClient`` blocks and uses only the standard library;
``AsyncPollerClient`` is awaited on an asyncio event loop and uses Tornado's
HTTP client.

Errors are raised as :class:`PollerClientError` subclasses. An HTTP error
response becomes the :class:`ResponseError` subclass for its status code
(:class:`NotFound`, :class:`Conflict`, ...), which carries the status and the
server's message. A server that cannot be reached, or does not respond in
time, raises :class:`ConnectionFailed`.

Connection failures, time-outs and 503 responses are retried with exponential
back-off and full jitter, waiting at least the seconds that a
``Retry-After`` header gives. A create is retried only when the caller passes
``retry=True``, because a create whose response was lost may have been made,
and repeating it makes a second job. Other requests are safe to repeat: a
status move to the status a job already has (with the same ``lease_id``,
if any), a requeue of a ``new`` job and a heartbeat change nothing the second
time. A retried delete whose first attempt did reach the server raises
:class:`NotFound`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

API_PATH = "/poller/update/"
DEFAULT_URL = "http://127.0.0.1:8080"
STATUSES = ("new", "in_progress", "complete", "failed")

Job = dict[str, Any]

# OpenSSL's reason for a handshake whose peer replied with something other than TLS, such as plain HTTP.
PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER"})


# -- errors ------------------------------------------------------------------------


class PollerClientError(Exception):
    """A failed request to the poller; ``status`` is the HTTP status, or None when no response came."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ConnectionFailed(PollerClientError):
    """The server could not be reached, or the connection broke before the response."""


class TimedOut(ConnectionFailed):
    """The server did not respond within the request time-out."""


class TLSFailed(PollerClientError):
    """The TLS handshake failed, for example because the server's certificate is not trusted.

    ``plain_http`` is true when the server seems to speak plain HTTP, so that an http:// URL would work.
    """

    plain_http = False


class ResponseError(PollerClientError):
    """An HTTP error response; ``message`` is the ``error`` text of its body."""

    status: int = 500

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


class BadRequest(ResponseError):
    status = 400


class Unauthorized(ResponseError):
    status = 401


class Forbidden(ResponseError):
    status = 403


class NotFound(ResponseError):
    status = 404


class MethodNotAllowed(ResponseError):
    status = 405


class Conflict(ResponseError):
    status = 409


class PayloadTooLarge(ResponseError):
    status = 413


class UnsupportedMediaType(ResponseError):
    status = 415


class Unavailable(ResponseError):
    """The server cannot take the request now; ``retry_after`` is its hint in seconds, if any."""

    status = 503

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class InsufficientStorage(ResponseError):
    """The server stores as many jobs as its --max-jobs allows (HTTP 507)."""

    status = 507


ERRORS_BY_STATUS: dict[int, type[ResponseError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
        InsufficientStorage,
    )
}


def parse_retry_after(value: str | None) -> float | None:
    """Return a ``Retry-After`` header in seconds; HTTP dates and bad values give None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from_response(status: int, reason: str, body: bytes, retry_after: str | None) -> ResponseError:
    """Build the typed error for an HTTP error response."""
    message = reason or "HTTP error"
    try:
        document = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        if text:
            message = text[:500]
    else:
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            message = document["error"]
    cls = ERRORS_BY_STATUS.get(status, ResponseError)
    if cls is Unavailable:
        return Unavailable(message, status, parse_retry_after(retry_after))
    return cls(message, status)


# -- requests --------------------------------------------------------------------------


@dataclass
class ApiCall:
    """One API request: its parameters, how long the server may hold it, and how to convert the response."""

    method: str
    params: dict[str, Any]
    convert: Callable[[Any], Any]
    retry: bool = True
    # Seconds the server may hold the request on purpose (a long poll); added to the time-out.
    hold: float = 0.0
    # Requests sent so far, retries included.
    attempts: int = 0

    @property
    def request_type(self) -> str:
        return str(self.params["request"])


def job_or_none(document: Any) -> Job | None:
    return document if document else None


def job_list(document: Any) -> list[Job]:
    return document if isinstance(document, list) else []


def updated_count(document: Any) -> int:
    return int(document["updated"])


def drop_none(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def create_call(user: str, config: dict[str, Any], retry: bool) -> ApiCall:
    params = {"request": "new", "user": user, "config_options": dict(config)}
    return ApiCall("POST", params, job_or_none, retry=retry)


def get_call(job_id: int) -> ApiCall:
    return ApiCall("GET", {"request": "job", "job_id": job_id}, job_or_none)


def list_call(status: str | None, user: str | None) -> ApiCall:
    if status is not None and status not in STATUSES:
        raise ValueError(f"invalid status {status!r}: must be one of {', '.join(STATUSES)}")
    return ApiCall("GET", drop_none(request=status or "all", user=user), job_list)


def next_call(
    user: str | None, wait: float, claim: bool, runner: str | None, lease: float | None
) -> ApiCall:
    if not claim and (runner is not None or lease is not None):
        raise ValueError("runner and lease apply only to a claim: pass claim=True, or leave them out")
    params = drop_none(request="next", user=user, runner=runner, lease=lease)
    if wait:
        params["wait"] = wait
    if claim:
        params["claim"] = "true"
    return ApiCall("GET", params, job_or_none, hold=wait)


def move_call(job_id: int, status: str, lease_id: str | None, reason: str | None) -> ApiCall:
    if status not in ("in_progress", "complete", "failed"):
        raise ValueError(f"invalid status {status!r}: must be in_progress, complete or failed")
    if reason is not None and status != "failed":
        raise ValueError("a reason can only be given with status failed")
    return ApiCall("POST", drop_none(request=status, job_id=job_id, lease_id=lease_id, reason=reason), job_or_none)


def heartbeat_call(job_id: int, lease_id: str, lease: float | None) -> ApiCall:
    return ApiCall("POST", drop_none(request="heartbeat", job_id=job_id, lease_id=lease_id, lease=lease), job_or_none)


def requeue_call(job_id: int, lease_id: str | None = None) -> ApiCall:
    return ApiCall("POST", drop_none(request="requeue", job_id=job_id, lease_id=lease_id), job_or_none)


def delete_call(job_id: int) -> ApiCall:
    return ApiCall("POST", {"request": "delete", "job_id": job_id}, job_or_none)


def bulk_call(status: str, user: str | None) -> ApiCall:
    return ApiCall("POST", drop_none(request="all", status=status, user=user), updated_count)


# -- shared settings ---------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """How often and how long to wait before repeating a request that may succeed later.

    The n-th retry waits a random time between 0 and ``min(max_delay,
    base_delay * 2**(n-1))`` seconds, or the server's ``Retry-After`` if
    that is longer.
    """

    retries: int = 6
    base_delay: float = 0.25
    max_delay: float = 8.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, retry: int, error: PollerClientError) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        delay = self.rng.uniform(0, ceiling)
        if isinstance(error, Unavailable) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay


def url_port(url: str, parts: urllib.parse.SplitResult) -> int:
    """Return the port of ``url``, or the scheme's default; raise ValueError naming the port as written."""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        return 443 if parts.scheme == "https" else 80
    if not 1 <= port <= 65535:
        port_text = parts.netloc.rpartition(":")[2]
        raise ValueError(f"invalid port {port_text!r} in server URL {url!r}: must be a number from 1 to 65535")
    return port


def read_token(token: str | None, token_file: str | None) -> str | None:
    """Return the bearer token given directly or read from ``token_file``.

    The token is the first word of the file's first line that is neither
    blank nor a comment (``#``). A line of the server's token file
    (``TOKEN SCOPES NAME``) therefore works too.
    """
    if token is not None and token_file is not None:
        raise ValueError("give either token or token_file, not both")
    if token_file is not None:
        with open(token_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        tokens = [line.split()[0] for line in lines if line and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"token file {token_file} contains no token; write the token on its first line")
        token = tokens[0]
    return token


class ClientBase:
    """Settings and request handling shared by the blocking and the asyncio client."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        token_file: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Point the client at ``url``, the server's base URL such as ``http://host:8080``.

        ``timeout`` bounds the wait for a response, in seconds, and a long
        poll gets its ``wait`` on top. ``ca_file`` names the PEM file of the
        certificate authorities that an ``https`` server's certificate must
        chain to; without it the system's are used. ``cert_file`` and
        ``key_file`` name the PEM client certificate and key for servers that
        require one.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid server URL {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        # A URL copied from the API docs ends in /poller/update/; the client adds that itself.
        base_path = parts.path.rstrip("/")
        if base_path.endswith(API_PATH.rstrip("/")):
            base_path = base_path[: -len(API_PATH.rstrip("/"))]
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, base_path, "", ""))
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = url_port(url, parts)
        self.netloc = parts.netloc
        self.path = base_path + API_PATH
        self.endpoint = f"{parts.scheme}://{parts.netloc}{self.path}"
        self.token = read_token(token, token_file)
        self.ca_file = ca_file
        if key_file is not None and cert_file is None:
            raise ValueError("key_file needs cert_file: give the client certificate too")
        self.cert_file = cert_file
        self.key_file = key_file
        # Built once, so that a missing or bad CA or certificate file raises here.
        self.ssl_context: ssl.SSLContext | None = None
        if self.scheme == "https":
            self.ssl_context = ssl.create_default_context(cafile=ca_file)
            if cert_file is not None:
                self.ssl_context.load_cert_chain(cert_file, key_file)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.retry_policy = retry or RetryPolicy()

    def _prepare(self, call: ApiCall) -> tuple[str, bytes | None, dict[str, str]]:
        """Return the target (path and query), body and headers of ``call``."""
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if call.method == "GET":
            return self.path + "?" + urllib.parse.urlencode(call.params), None, headers
        headers["Content-Type"] = "application/json"
        # A JSON body keeps configuration values' types and any characters.
        body = json.dumps(call.params, ensure_ascii=False).encode("utf-8")
        return self.path, body, headers

    def _request_timeout(self, call: ApiCall) -> float:
        return self.timeout + call.hold

    def _plain_http_hint(self) -> str:
        """Return the hint that an https URL may point at a server without TLS."""
        return f"; the server may not use TLS: if it serves plain HTTP, use http://{self.netloc}"

    def _connect_timed_out(self, call: ApiCall, seconds: float, during_handshake: bool) -> TimedOut:
        """Build the error for a connection that timed out after ``seconds``, before the request was sent."""
        if during_handshake:
            text = f"TLS handshake with {self.url} timed out after {seconds:g} s (connect time-out)"
            text += self._plain_http_hint()
        else:
            text = f"connecting to {self.url} timed out after {seconds:g} s (connect time-out)"
        return TimedOut(f"request {call.request_type!r} failed: {text}")

    def _response_timed_out(self, call: ApiCall) -> TimedOut:
        return TimedOut(
            f"request {call.request_type!r} to {self.url} timed out after {self._request_timeout(call):g} s "
            "waiting for the response"
        )

    def _tls_failed(self, error: BaseException) -> TLSFailed:
        """Build the error for a failed TLS handshake; a server without TLS gets a hint to use http://."""
        text = f"TLS handshake with {self.url} failed: {error}"
        plain_http = getattr(error, "reason", None) in PLAIN_HTTP_REASONS or isinstance(error, ssl.SSLEOFError)
        text += self._plain_http_hint() if plain_http else "; check the CA file"
        failure = TLSFailed(text)
        failure.plain_http = plain_http
        return failure

    def _read(self, call: ApiCall, status: int, reason: str, body: bytes, retry_after: str | None) -> Any:
        if status >= 400:
            raise error_from_response(status, reason, body, retry_after)
        try:
            document = json.loads(body)
        except ValueError:
            raise ResponseError(
                f"the server returned invalid JSON for request {call.request_type!r}: {body[:200]!r}", status
            ) from None
        return call.convert(document)

    def _retry_delay(self, call: ApiCall, attempt: int, error: PollerClientError) -> float | None:
        """Return seconds to wait before repeating ``call``, or None to raise ``error``."""
        retryable = isinstance(error, (ConnectionFailed, Unavailable))
        if not (call.retry and retryable) or attempt > self.retry_policy.retries:
            return None
        delay = self.retry_policy.delay(attempt, error)
        logger.warning(
            "Request %s to %s failed: %s; retry %d of %d in %.2f s",
            call.request_type, self.url, error, attempt, self.retry_policy.retries, delay,
        )
        return delay


def note_attempts(error: PollerClientError, attempts: int) -> None:
    """Add to a connection failure's message how often the request was sent, when it was more than once."""
    if attempts > 1 and isinstance(error, ConnectionFailed):
        error.message = f"after {attempts} attempts, {error.message}"
        error.args = (error.message,)


# -- blocking client ----------------------------------------------------------------------


class PollerClient(ClientBase):
    """A blocking client of the poller job API; one connection per request, safe to share between threads."""

    def _send_once(self, call: ApiCall) -> Any:
        target, body, headers = self._prepare(call)
        connection: http.client.HTTPConnection
        if self.scheme == "https":
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            try:
                connection.connect()
            except TimeoutError as exc:
                # HTTPSConnection sets sock once the TCP connection is up, before the handshake.
                raise self._connect_timed_out(call, self.connect_timeout, connection.sock is not None) from exc
            except ssl.SSLError as exc:
                raise self._tls_failed(exc) from exc
            except OSError as exc:
                text = f"cannot reach {self.url}: {describe_os_error(exc)}"
                if self.scheme == "https" and connection.sock is not None:
                    text += self._plain_http_hint()
                raise ConnectionFailed(text) from exc
            assert connection.sock is not None
            try:
                # NOTE: the socket time-out bounds each read, not the whole response.
                # The server sends nothing until the response is ready, so the
                # first read covers a long poll.
                connection.sock.settimeout(self._request_timeout(call))
                connection.request(call.method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except TimeoutError as exc:
                raise self._response_timed_out(call) from exc
            except ssl.SSLError as exc:
                raise self._tls_failed(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionFailed(f"cannot reach {self.url}: {describe_os_error(exc)}") from exc
        finally:
            connection.close()
        return self._read(call, response.status, response.reason, data, response.getheader("Retry-After"))

    def _perform(self, call: ApiCall) -> Any:
        while True:
            call.attempts += 1
            try:
                return self._send_once(call)
            except PollerClientError as error:
                delay = self._retry_delay(call, call.attempts, error)
                if delay is None:
                    note_attempts(error, call.attempts)
                    raise
            time.sleep(delay)

    def create(self, user: str, config: dict[str, Any], *, retry: bool = False) -> Job:
        """Create a job for ``user`` with configuration fields ``config``; return it.

        A create is sent once unless ``retry`` is true, because a repeated
        create whose first response was lost makes two jobs.
        """
        return self._perform(create_call(user, config, retry))

    def get(self, job_id: int) -> Job | None:
        """Return job ``job_id``, or None if there is none."""
        return self._perform(get_call(job_id))

    def list_jobs(self, status: str | None = None, user: str | None = None) -> list[Job]:
        """Return the jobs with ``status`` (all when None) of ``user`` (everyone's when None), by job id."""
        return self._perform(list_call(status, user))

    def next(
        self,
        *,
        user: str | None = None,
        wait: float = 0,
        claim: bool = False,
        runner: str | None = None,
        lease: float | None = None,
    ) -> Job | None:
        """Return the oldest ``new`` job, waiting up to ``wait`` seconds for one; None if there is none.

        With ``claim`` the job becomes ``in_progress`` for this caller alone
        and carries ``lease_id`` and ``lease_expires``. ``lease`` (seconds)
        overrides the server's default lease, and ``runner`` is recorded on
        the job. Both need ``claim``; without it they raise ValueError.
        """
        return self._perform(next_call(user, wait, claim, runner, lease))

    def heartbeat(self, job_id: int, lease_id: str, lease: float | None = None) -> Job:
        """Extend the lease of a claimed job to ``lease`` seconds from now; Conflict if it is no longer held."""
        return self._perform(heartbeat_call(job_id, lease_id, lease))

    def set_status(
        self, job_id: int, status: str, *, lease_id: str | None = None, reason: str | None = None
    ) -> Job:
        """Move a job to ``in_progress``, ``complete`` or ``failed``; return it."""
        return self._perform(move_call(job_id, status, lease_id, reason))

    def complete(self, job_id: int, lease_id: str | None = None) -> Job:
        """Mark a job complete; with ``lease_id``, only while that lease is current."""
        return self.set_status(job_id, "complete", lease_id=lease_id)

    def fail(self, job_id: int, lease_id: str | None = None, reason: str | None = None) -> Job:
        """Mark a job failed and keep ``reason`` on it; with ``lease_id``, only while that lease is current."""
        return self.set_status(job_id, "failed", lease_id=lease_id, reason=reason)

    def requeue(self, job_id: int, lease_id: str | None = None) -> Job:
        """Put a failed or in-progress job back to ``new``.

        Without ``lease_id`` this is an operator action (token scope
        ``admin``). With the job's current ``lease_id`` a runner gives back
        its own job (scope ``run``); a stale lease raises Conflict.
        """
        return self._perform(requeue_call(job_id, lease_id))

    def delete(self, job_id: int) -> Job:
        """Delete a job; return it as it was."""
        return self._perform(delete_call(job_id))

    def set_all_status(self, status: str, user: str | None = None) -> int:
        """Set the status of every job (of ``user``, if given); return how many changed."""
        return self._perform(bulk_call(status, user))


def describe_os_error(error: BaseException) -> str:
    """Return the short cause of a connection error, such as ``connection refused``."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without a response"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


# -- asyncio client -------------------------------------------------------------------------


class AsyncPollerClient(ClientBase):
    """An asyncio client of the poller job API with the methods of :class:`PollerClient`, awaitable.

    Create and use it inside a running event loop; call :meth:`close` when done.
    ``max_clients`` bounds the requests in flight at once; more wait in a queue,
    and that wait counts against their time-out.
    """

    def __init__(self, url: str = DEFAULT_URL, *, max_clients: int = 20, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        from tornado.httpclient import AsyncHTTPClient

        self._http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    def close(self) -> None:
        self._http.close()

    async def __aenter__(self) -> AsyncPollerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _send_once(self, call: ApiCall) -> Any:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.iostream import StreamClosedError
        from tornado.simple_httpclient import HTTPTimeoutError

        target, body, headers = self._prepare(call)
        request = HTTPRequest(
            f"{self.scheme}://{self.netloc}{target}",
            method=call.method,
            body=body,
            headers=headers,
            connect_timeout=self.connect_timeout,
            request_timeout=self._request_timeout(call),
            ssl_options=self.ssl_context,
            follow_redirects=False,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPTimeoutError as exc:
            # Tornado's message names the phase: "Timeout during TLS handshake with ...",
            # "Timeout while connecting", "Timeout in request queue" or "Timeout during request".
            message = str(exc.message or exc)
            if "during request" in message:
                raise self._response_timed_out(call) from exc
            seconds = min(self.connect_timeout, self._request_timeout(call))
            raise self._connect_timed_out(call, seconds, "TLS handshake" in message) from exc
        except HTTPClientError as exc:
            # With raise_error=False, Tornado raises only its own errors: status 599.
            raise ConnectionFailed(f"cannot reach {self.url}: {exc.message or exc}") from exc
        except ssl.SSLError as exc:
            raise self._tls_failed(exc) from exc
        except (OSError, StreamClosedError) as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {describe_os_error(exc)}") from exc
        return self._read(call, response.code, response.reason, response.body or b"", response.headers.get("Retry-After"))

    async def _perform(self, call: ApiCall) -> Any:
        while True:
            call.attempts += 1
            try:
                return await self._send_once(call)
            except PollerClientError as error:
                delay = self._retry_delay(call, call.attempts, error)
                if delay is None:
                    note_attempts(error, call.attempts)
                    raise
            await asyncio.sleep(delay)

    async def create(self, user: str, config: dict[str, Any], *, retry: bool = False) -> Job:
        return await self._perform(create_call(user, config, retry))

    async def get(self, job_id: int) -> Job | None:
        return await self._perform(get_call(job_id))

    async def list_jobs(self, status: str | None = None, user: str | None = None) -> list[Job]:
        return await self._perform(list_call(status, user))

    async def next(
        self,
        *,
        user: str | None = None,
        wait: float = 0,
        claim: bool = False,
        runner: str | None = None,
        lease: float | None = None,
    ) -> Job | None:
        return await self._perform(next_call(user, wait, claim, runner, lease))

    async def heartbeat(self, job_id: int, lease_id: str, lease: float | None = None) -> Job:
        return await self._perform(heartbeat_call(job_id, lease_id, lease))

    async def set_status(
        self, job_id: int, status: str, *, lease_id: str | None = None, reason: str | None = None
    ) -> Job:
        return await self._perform(move_call(job_id, status, lease_id, reason))

    async def complete(self, job_id: int, lease_id: str | None = None) -> Job:
        return await self.set_status(job_id, "complete", lease_id=lease_id)

    async def fail(self, job_id: int, lease_id: str | None = None, reason: str | None = None) -> Job:
        return await self.set_status(job_id, "failed", lease_id=lease_id, reason=reason)

    async def requeue(self, job_id: int, lease_id: str | None = None) -> Job:
        return await self._perform(requeue_call(job_id, lease_id))

    async def delete(self, job_id: int) -> Job:
        return await self._perform(delete_call(job_id))

    async def set_all_status(self, status: str, user: str | None = None) -> int:
        return await self._perform(bulk_call(status, user))
