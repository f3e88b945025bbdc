"""Bearer tokens with scopes, read from a token file.

Token file format, one token per line::

    # comment lines start with '#'; blank lines are ignored
    TOKEN  SCOPES  NAME
    3q2o...Xk  read,run  runner-cori

``TOKEN`` is the secret a client sends as ``Authorization: Bearer TOKEN``.
``SCOPES`` is a comma-separated subset of ``read``, ``submit``, ``run`` and
``admin``. ``NAME`` identifies the token in the access log, so the secret
itself is never logged. Scopes are independent: ``admin`` does not imply
``read``, so a token lists every scope it needs.

The file must not be readable or writable by group or others, because it
contains secrets. A bad file stops the server at start; on reload the server
keeps the tokens it had and logs why the new file was rejected.
"""

import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass

from .errors import PollerError, describe_os_error

logger = logging.getLogger(__name__)

READ = "read"
SUBMIT = "submit"
RUN = "run"
ADMIN = "admin"
SCOPES = (READ, SUBMIT, RUN, ADMIN)

# Short tokens can be guessed. Sixteen random base64 characters carry 96 bits.
MIN_TOKEN_LENGTH = 16
# The b64token syntax of RFC 6750, section 2.1.
TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
NAME_SYNTAX = re.compile(r"[A-Za-z0-9\-._@:]{1,64}")
REALM = "poller"


class TokenFileError(Exception):
    """The token file cannot be used; the message names the file and line, never a token."""


class Unauthorized(PollerError):
    """No token, or a token that is not in the token file (401)."""

    status_code = 401

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(PollerError):
    """A valid token that lacks the scope the request needs (403)."""

    status_code = 403

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'


@dataclass(frozen=True)
class Token:
    """One line of the token file, with the secret kept only as its SHA-256 digest."""

    name: str
    scopes: frozenset[str]
    digest: bytes


def digest_token(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent
    # of the presented token's length as well as its content.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def check_file_mode(path: str) -> None:
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(
            f"token file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run 'chmod 600 {path}'"
        )


def parse_token_line(path: str, number: int, line: str) -> Token | None:
    """Parse one line; return None for blank and comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    where = f"token file {path}, line {number}"
    fields = text.split()
    if len(fields) != 3:
        raise TokenFileError(f"{where}: expected 3 fields 'TOKEN SCOPES NAME', found {len(fields)}")
    token, scope_list, name = fields
    if not TOKEN_SYNTAX.fullmatch(token):
        raise TokenFileError(f"{where}: invalid token: use letters, digits and - . _ ~ + / only")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenFileError(
            f"{where}: token is shorter than {MIN_TOKEN_LENGTH} characters; generate one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    scopes = scope_list.split(",")
    for scope in scopes:
        if scope not in SCOPES:
            raise TokenFileError(f"{where}: unknown scope {scope!r}: must be one of {', '.join(SCOPES)}")
    if not NAME_SYNTAX.fullmatch(name):
        raise TokenFileError(
            f"{where}: invalid name {name!r}: use 1 to 64 letters, digits and - . _ @ : only"
        )
    return Token(name, frozenset(scopes), digest_token(token))


def load_token_file(path: str) -> list[Token]:
    """Read and check a token file; raise TokenFileError or OSError if it cannot be used."""
    try:
        check_file_mode(path)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise TokenFileError(f"token file {path} (--token-file) cannot be read: {describe_os_error(exc)}") from exc
    tokens: list[Token] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        token = parse_token_line(path, number, line)
        if token is None:
            continue
        if token.name in names:
            raise TokenFileError(
                f"token file {path}, line {number}: name {token.name!r} is already used on line {names[token.name]}"
            )
        if token.digest in digests:
            raise TokenFileError(
                f"token file {path}, line {number}: the token is the same as on line {digests[token.digest]}"
            )
        names[token.name] = number
        digests[token.digest] = number
        tokens.append(token)
    if not tokens:
        raise TokenFileError(f"token file {path} contains no tokens")
    return tokens


def count_tokens(tokens: list[Token]) -> str:
    return f"{len(tokens)} token" if len(tokens) == 1 else f"{len(tokens)} tokens"


class TokenFile:
    """The tokens of one token file, replaced as a whole by :meth:`reload`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tokens = load_token_file(path)
        self.reload_count = 0
        self.reload_failures = 0

    def reload(self) -> bool:
        """Read the file again; keep the current tokens and log the error if it is bad."""
        try:
            tokens = load_token_file(self.path)
        except (TokenFileError, OSError, UnicodeError) as exc:
            self.reload_failures += 1
            logger.error("Token file reload failed, keeping the %s loaded before: %s", count_tokens(self.tokens), exc)
            return False
        self.tokens = tokens
        self.reload_count += 1
        logger.info("Token file %s reloaded: %s", self.path, count_tokens(tokens))
        return True

    def find(self, presented: str) -> Token | None:
        """Return the token whose secret equals ``presented``, comparing in constant time."""
        digest = digest_token(presented)
        found = None
        # Every entry is compared, so the time taken does not tell which line matched.
        for token in self.tokens:
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found

    def authenticate(self, authorization: str | None) -> Token:
        """Return the token an ``Authorization`` header carries; raise Unauthorized otherwise."""
        if authorization is None:
            raise Unauthorized(
                "missing bearer token: send the header 'Authorization: Bearer TOKEN'",
                f'Bearer realm="{REALM}"',
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise Unauthorized(
                "invalid Authorization header: expected 'Bearer TOKEN'",
                f'Bearer realm="{REALM}", error="invalid_request"',
            )
        token = self.find(credentials)
        if token is None:
            raise Unauthorized(
                "invalid bearer token: it is not in the server's token file",
                f'Bearer realm="{REALM}", error="invalid_token"',
            )
        return token


def check_scope(token: Token, scope: str) -> None:
    if scope not in token.scopes:
        raise Forbidden(f"token {token.name!r} lacks the scope {scope!r} that this request needs", scope)


def required_scope(method: str, request_type: str, claim: bool = False, leased: bool = False) -> str:
    """Return the scope a job API request needs.

    GET requests read (``read``) unless they claim a job (``run``). POST
    ``new`` creates a job (``submit``). Heartbeats and per-job status moves
    belong to the runner that claimed the job (``run``). Bulk ``all``,
    ``delete`` and ``requeue`` are operator actions (``admin``), except a
    requeue that carries the job's lease (``leased``): that is the runner
    giving back its own job, so ``run`` is enough.
    """
    if method == "GET":
        return RUN if request_type == "next" and claim else READ
    if request_type == "new":
        return SUBMIT
    if request_type == "requeue" and leased:
        return RUN
    if request_type in ("all", "delete", "requeue"):
        return ADMIN
    return RUN
