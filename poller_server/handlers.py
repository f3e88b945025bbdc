"""HTTP handlers for ``/poller/update/``.

Each request runs the same steps: read and check the parameters, call one
method of :class:`~poller_server.service.JobService`, write the response.
Errors are raised as :class:`~poller_server.errors.PollerError` and turned
into ``{"error": ...}`` responses in one place, :meth:`BaseHandler.write_error`.
"""

import asyncio
import logging
import math
import re
import sys

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from .auth import Forbidden, Token, TokenFile, Unauthorized, check_scope, required_scope
from .config import Config
from .errors import BadRequest, MethodNotAllowed, PathNotFound, PayloadTooLarge, PollerError, Unavailable, show
from .jobs import FAILED, RESERVED_KEYS, STATUSES, encode_json, has_control_character
from .params import Params, parse_json, read_params
from .service import Claim, JobService
from .store import validate_status, validate_user

logger = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

JSON_TYPE = "application/json; charset=UTF-8"
EMPTY = b"{}"
# Jobs written per chunk of a listing; between chunks other requests run.
LISTING_CHUNK = 500
MAX_JOB_ID = 2**63 - 1
MAX_JOB_ID_DIGITS = len(str(MAX_JOB_ID))
MAX_TOKEN_LENGTH = 128
MAX_REASON_LENGTH = 4096
# Keys name fields (casename, compset, ...), so they follow the user-name rules.
MAX_KEY_LENGTH = 128
TRUE_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
DIGITS = re.compile(r"[0-9]+")
# Runner names and other short texts may contain C1 characters, as before.
C0_OR_DEL = re.compile("[\x00-\x1f\x7f]")


class BaseHandler(RequestHandler):
    """Checks the bearer token, reads the body within the size limit, turns errors into JSON responses."""

    # Handlers that anyone may call, such as /healthz, set this to False.
    needs_token = True

    def initialize(self, service: JobService, config: Config, tokens: TokenFile | None = None) -> None:
        self.service = service
        self.config = config
        # None when the server runs without --token-file: every request is allowed.
        self.tokens = tokens
        self.token: Token | None = None
        self.request_type: str | None = None
        self.job_id: int | None = None
        self.user: str | None = None
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._too_large = False

    def prepare(self) -> None:
        if self.needs_token and self.tokens is not None:
            self.token = self.tokens.authenticate(self.request.headers.get("Authorization"))
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.config.max_body_size:
            self._reject_body(int(length))

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(chunk)
        if self._body_size > self.config.max_body_size:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    def _reject_body(self, size: int) -> None:
        self._too_large = True
        # The unread body would be taken for the next request; close instead.
        self.set_header("Connection", "close")
        raise PayloadTooLarge(
            f"request body of {size} bytes exceeds the limit of {self.config.max_body_size} bytes (--max-body-size)"
        )

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise PayloadTooLarge(
                f"request body of {self._body_size} bytes exceeds the limit of "
                f"{self.config.max_body_size} bytes (--max-body-size)"
            )
        return b"".join(self._chunks)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, PollerError):
            if self._finished:
                return
            self.send_error(e.status_code, exc_info=sys.exc_info())
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if isinstance(exc_info, tuple) else None
        if isinstance(error, PollerError):
            message = error.message
            if isinstance(error, Unavailable) and error.retry_after is not None:
                self.set_header("Retry-After", str(error.retry_after))
            if isinstance(error, MethodNotAllowed):
                self.set_header("Allow", error.allow)
            if isinstance(error, (Unauthorized, Forbidden)):
                self.set_header("WWW-Authenticate", error.challenge)
        elif status_code == 405:
            # Tornado's own response to a method the handler does not define.
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            message = f"method {self.request.method} is not allowed here; use {' or '.join(allowed)}"
        elif isinstance(error, HTTPError) and status_code < 500:
            message = error.log_message or self._reason
        elif status_code >= 500:
            message = "internal server error; the server log has the details"
        else:
            message = self._reason
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(encode_json({"error": message}))

    def allowed_methods(self) -> list[str]:
        """Return the HTTP methods this handler class defines, such as ``["GET", "POST"]``."""
        return [
            method
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if getattr(type(self), method.lower()) is not getattr(RequestHandler, method.lower())
        ]

    def authorize(self, scope: str) -> None:
        """Raise Forbidden unless the request's token has ``scope``; without tokens allow all."""
        if self.tokens is not None:
            assert self.token is not None, "prepare() authenticates before any handler method"
            check_scope(self.token, scope)

    def write_json(self, body: bytes) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.write(body)

    # Responses carry no ETag. Tornado's default one hashes every GET response
    # with SHA-1 on the busiest path, and job state changes too often for a
    # conditional GET to save a body.
    def compute_etag(self) -> None:
        return None

    def check_etag_header(self) -> bool:
        return False


class NotFoundHandler(BaseHandler):
    """Every path without a route: a JSON 404 that names the job API's path."""

    needs_token = False

    def prepare(self) -> None:
        raise PathNotFound(f"no such path {show(self.request.path)}: the job API is at /poller/update/")


# -- parameter checks ------------------------------------------------------------


def parse_job_id(params: Params) -> int:
    value = params.get("job_id")
    if value is None:
        raise BadRequest("missing parameter 'job_id'")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequest(f"invalid job_id {show(value)}: must be a positive integer")
    if isinstance(value, str):
        # Checking the length first keeps int() from parsing thousands of digits.
        if len(value) > MAX_JOB_ID_DIGITS or not DIGITS.fullmatch(value):
            raise BadRequest(f"invalid job_id {show(value)}: must be a positive integer")
        value = int(value)
    if not 1 <= value <= MAX_JOB_ID:
        raise BadRequest(f"invalid job_id {show(value)}: must be a positive integer")
    return value


def parse_seconds(params: Params, name: str, default: float, low: float, high: float, option: str) -> float:
    value = params.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"invalid {name} {show(value)}: must be a number of seconds") from None
    if not math.isfinite(seconds) or not low <= seconds <= high:
        raise BadRequest(f"invalid {name} {show(value)}: must be {low:g} to {high:g} seconds (the maximum is {option})")
    return seconds


def parse_flag(params: Params, name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS:
        return TRUE_WORDS[value.lower()]
    raise BadRequest(f"invalid {name} {show(value)}: must be true, false, 1, 0, yes or no")


def parse_text(params: Params, name: str, max_length: int, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing parameter {show(name)}")
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise BadRequest(f"invalid {name} {show(value)}: must be a string of 1 to {max_length} characters")
    if name != "reason" and C0_OR_DEL.search(value):
        raise BadRequest(f"invalid {name} {show(value)}: control characters are not allowed")
    return value


def parse_user(params: Params, required: bool) -> str | None:
    if "user" not in params:
        if required:
            raise BadRequest("missing parameter 'user'")
        return None
    return validate_user(params["user"])


def check_known(params: Params, request_type: str, allowed: frozenset[str]) -> None:
    for name in params:
        if name != "request" and name not in allowed:
            raise BadRequest(f"unknown parameter {show(name)} for request {show(request_type)}")


def parse_config(params: Params, max_keys: int | None = None, max_value_length: int | None = None) -> bytes:
    """Build the configuration of a new job as JSON text; see docs/api.md.

    ``max_keys`` and ``max_value_length`` are --max-config-keys and
    --max-value-length; None skips the check.
    """
    config: dict[str, object] = {}
    raw = params.get("config_options")
    if raw is not None:
        if isinstance(raw, str):
            raw = parse_json(raw, "config_options")
        if not isinstance(raw, dict):
            raise BadRequest(f"invalid config_options: expected a JSON object, got {type(raw).__name__}")
        config.update(raw)
    for name, value in params.items():
        if name in ("request", "user", "config_options"):
            continue
        if name in config:
            raise BadRequest(f"configuration key {show(name)} is given both in config_options and as a parameter")
        config[name] = value
    for name in config:
        if name in RESERVED_KEYS:
            raise BadRequest(f"configuration key {show(name)} is reserved for the job's own fields")
        if not name:
            raise BadRequest("configuration keys must not be empty")
        if len(name) > MAX_KEY_LENGTH:
            raise BadRequest(f"configuration key {show(name)} is longer than {MAX_KEY_LENGTH} characters")
        if has_control_character(name):
            raise BadRequest(f"configuration key {show(name)} contains a control character")
    check_config_size(config, max_keys, max_value_length)
    return encode_json(config).encode()


def check_config_size(config: dict[str, object], max_keys: int | None, max_value_length: int | None) -> None:
    """Raise BadRequest naming the first key beyond ``max_keys`` or with a value over ``max_value_length``.

    A string value counts its characters; any other value counts the
    characters of its JSON text.
    """
    for number, (name, value) in enumerate(config.items(), start=1):
        if max_keys is not None and number > max_keys:
            raise BadRequest(
                f"too many configuration keys: key {show(name)} is number {number}, "
                f"the maximum is {max_keys} (--max-config-keys)"
            )
        if max_value_length is not None:
            length = len(value) if isinstance(value, str) else len(encode_json(value))
            if length > max_value_length:
                raise BadRequest(
                    f"configuration value of key {show(name)} is {length} characters long, "
                    f"the maximum is {max_value_length} (--max-value-length)"
                )


# -- the endpoint ----------------------------------------------------------------

GET_REQUESTS = frozenset({"all", "next", "job", *STATUSES})
POST_REQUESTS = frozenset({"all", "delete", "heartbeat", "requeue", *STATUSES})
ALL_REQUESTS = GET_REQUESTS | POST_REQUESTS


@stream_request_body
class PollerHandler(BaseHandler):
    """``/poller/update/?request=...``: the whole job API."""

    _waiter = None
    _connection_closed = False

    async def get(self) -> None:
        params = read_params(self.request, b"")
        request_type = self._request_type(params, GET_REQUESTS)
        if request_type == "job":
            check_known(params, request_type, frozenset({"job_id"}))
            self.job_id = parse_job_id(params)
            job = self.service.store.get(self.job_id)
            self.write_json(job.render() if job is not None else EMPTY)
        elif request_type == "next":
            await self._next(params)
        else:
            check_known(params, request_type, frozenset({"user"}))
            self.user = parse_user(params, required=False)
            status = None if request_type == "all" else request_type
            await self._write_listing(self.service.store.list_ids(status, self.user))

    async def post(self) -> None:
        params = read_params(self.request, self.body)
        request_type = self._request_type(params, POST_REQUESTS)
        service = self.service
        if request_type == "new":
            self.user = parse_user(params, required=True)
            assert self.user is not None
            config = parse_config(params, self.config.max_config_keys, self.config.max_value_length)
            job = await service.create(self.user, config)
            self.job_id = job.job_id
            self.write_json(job.render())
        elif request_type == "all":
            check_known(params, request_type, frozenset({"status", "user"}))
            if "status" not in params:
                raise BadRequest("missing parameter 'status'")
            status = validate_status(params["status"])
            self.user = parse_user(params, required=False)
            updated = await service.bulk(status, self.user)
            self.write_json(encode_json({"updated": updated}).encode())
        elif request_type in STATUSES:
            allowed = {"job_id", "lease_id"} | ({"reason"} if request_type == FAILED else set())
            check_known(params, request_type, frozenset(allowed))
            self.job_id = parse_job_id(params)
            lease_id = parse_text(params, "lease_id", MAX_TOKEN_LENGTH)
            reason = parse_text(params, "reason", MAX_REASON_LENGTH)
            job = await service.move(self.job_id, request_type, lease_id, reason)
            self.write_json(job.render())
        elif request_type == "heartbeat":
            check_known(params, request_type, frozenset({"job_id", "lease_id", "lease"}))
            self.job_id = parse_job_id(params)
            lease_id = parse_text(params, "lease_id", MAX_TOKEN_LENGTH, required=True)
            assert lease_id is not None
            lease = parse_seconds(params, "lease", self.config.lease, 1, self.config.max_lease, "--max-lease")
            self.write_json(await service.heartbeat(self.job_id, lease_id, lease))
        elif request_type == "requeue":
            check_known(params, request_type, frozenset({"job_id", "lease_id"}))
            self.job_id = parse_job_id(params)
            lease_id = parse_text(params, "lease_id", MAX_TOKEN_LENGTH)
            self.write_json((await service.requeue(self.job_id, lease_id)).render())
        else:
            assert request_type == "delete"
            check_known(params, request_type, frozenset({"job_id"}))
            self.job_id = parse_job_id(params)
            self.write_json((await service.delete(self.job_id)).render())

    def _request_type(self, params: Params, supported: frozenset[str]) -> str:
        value = params.get("request")
        if value is None:
            raise BadRequest("missing parameter 'request'")
        if not isinstance(value, str) or value not in ALL_REQUESTS:
            raise BadRequest(f"unknown request {show(value)}: must be one of {', '.join(sorted(ALL_REQUESTS))}")
        self.request_type = value
        if value not in supported:
            other = "POST" if self.request.method == "GET" else "GET"
            raise MethodNotAllowed(f"request {show(value)} does not support {self.request.method}; use {other}", other)
        claim = value == "next" and self.request.method == "GET" and parse_flag(params, "claim")
        leased = params.get("lease_id") is not None
        self.authorize(required_scope(self.request.method, value, claim, leased))
        return value

    async def _write_listing(self, ids: list[int]) -> None:
        jobs = self.service.store.jobs
        if not ids:
            self.write_json(EMPTY)
            return
        self.set_header("Content-Type", JSON_TYPE)
        separator = b"["
        for start in range(0, len(ids), LISTING_CHUNK):
            parts = []
            for job_id in ids[start:start + LISTING_CHUNK]:
                job = jobs.get(job_id)
                if job is not None:  # deleted while the listing was written
                    parts.append(separator)
                    parts.append(job.render())
                    separator = b","
            self.write(b"".join(parts))
            if start + LISTING_CHUNK < len(ids):
                try:
                    await self.flush()
                except StreamClosedError:
                    logger.info("Client went away during a listing of %d jobs", len(ids))
                    return
                # flush() returns a finished future when the socket took the whole
                # chunk, and awaiting that does not yield; sleep(0) lets other
                # requests run between chunks.
                await asyncio.sleep(0)
        self.write(b"]" if separator == b"," else b"[]")

    # -- next ----------------------------------------------------------------------

    async def _next(self, params: Params) -> None:
        check_known(params, "next", frozenset({"user", "wait", "claim", "runner", "lease"}))
        config = self.config
        self.user = parse_user(params, required=False)
        wait = parse_seconds(params, "wait", 0, 0, config.max_wait, "--max-wait")
        claim = parse_flag(params, "claim")
        if not claim:
            for name in ("lease", "runner"):
                if name in params:
                    raise BadRequest(
                        f"invalid parameter {show(name)} without claim=true: {name} applies only to a claimed job; "
                        f"add claim=true or leave {name} out"
                    )
        runner = parse_text(params, "runner", MAX_TOKEN_LENGTH)
        lease = parse_seconds(params, "lease", config.lease, 1, config.max_lease, "--max-lease")

        result = self.service.next_now(self.user, claim, runner, lease)
        if result is None and wait > 0:
            self._waiter = self.service.start_wait(self.user, claim, runner, lease, wait)
            try:
                result = await self._waiter.future
            finally:
                self._waiter = None

        if isinstance(result, Claim):
            await self._send_claim(result)
        else:
            self.write_json(result if result is not None else EMPTY)

    async def _send_claim(self, claim: Claim) -> None:
        self.job_id = claim.job_id
        try:
            await self.service.sync_claim(claim)
        except Unavailable:
            await self.service.undo_claim(claim)
            raise
        if self._connection_closed:
            await self.service.undo_claim(claim)
            return
        self.write_json(claim.body)
        try:
            await self.finish()
        except StreamClosedError:
            await self.service.undo_claim(claim)

    def on_connection_close(self) -> None:
        self._connection_closed = True
        if self._waiter is not None:
            self.service.cancel_wait(self._waiter)


def log_request(handler: RequestHandler) -> None:
    """Write one access-log line and record the request's latency in the app's metrics.

    The line contains status, method, path, request type, job, user, token name
    and milliseconds; the same fields go to ``extra`` for the JSON log format.
    The token itself is never logged, only the name the token file gives it.
    """
    status = handler.get_status()
    if status < 400:
        level = logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    seconds = handler.request.request_time()
    request_type = getattr(handler, "request_type", None)
    metrics = handler.application.settings.get("metrics")
    if metrics is not None:
        metrics.observe_request(handler.request.method or "-", request_type, status, seconds)
    if not access_log.isEnabledFor(level):
        return
    job_id = getattr(handler, "job_id", None)
    user = getattr(handler, "user", None)
    token = getattr(handler, "token", None)
    token_name = token.name if token is not None else None
    fields = {
        "status": status,
        "method": handler.request.method,
        "path": handler.request.path,
        "request_type": request_type,
        "job_id": job_id,
        "user": user,
        "token_name": token_name,
        "ms": round(1000.0 * seconds, 1),
    }
    access_log.log(
        level,
        "%d %s %s request=%s job_id=%s user=%s token_name=%s %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        request_type or "-",
        job_id if job_id is not None else "-",
        encode_json(user) if user is not None else "-",
        token_name or "-",
        1000.0 * seconds,
        extra=fields,
    )
