"""Exceptions that map to HTTP error responses.

Every error the server reports to a client is a :class:`PollerError`. The
handlers raise these and one place, ``BaseHandler.write_error``, turns them
into a JSON body ``{"error": message}`` with the status code the class names.
"""


import json

# Maximum number of characters of a client's value that an error message repeats.
SHOWN_VALUE_LENGTH = 60


def show(value: object) -> str:
    """Return ``value`` as an error message shows it: quoted if text, JSON otherwise, cut short if long.

    Messages repeat what the client sent so that it can find the mistake, but
    a 100,000-character value must not come back whole.
    """
    if isinstance(value, str):
        if len(value) <= SHOWN_VALUE_LENGTH:
            return repr(value)
        return repr(value[:SHOWN_VALUE_LENGTH]) + f"... ({len(value)} characters)"
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > SHOWN_VALUE_LENGTH:
        return text[:SHOWN_VALUE_LENGTH] + f"... ({len(text)} characters)"
    return text


class PollerError(Exception):
    """An error with an HTTP status code and a message safe to show a client."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PollerError):
    status_code = 400


class JobNotFound(PollerError):
    status_code = 404

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class PathNotFound(PollerError):
    status_code = 404


class MethodNotAllowed(PollerError):
    status_code = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class Conflict(PollerError):
    status_code = 409


class PayloadTooLarge(PollerError):
    status_code = 413


class UnsupportedMediaType(PollerError):
    status_code = 415


class Unavailable(PollerError):
    """The server cannot take the request now; the client may retry later."""

    status_code = 503

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreFull(PollerError):
    status_code = 507


class StartupError(Exception):
    """The server cannot start with the given options; the message names the option or file."""


def describe_os_error(exc: OSError) -> str:
    """Return an OSError's reason without the errno number, for example ``No such file or directory``."""
    return exc.strerror or str(exc)


class JournalError(Exception):
    """Appending to or syncing the journal failed; the change was not applied."""
