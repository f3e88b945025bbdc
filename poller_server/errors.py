"""Exceptions that map to HTTP answers.

Every error the server reports to a client is a :class:`PollerError`. The
handlers raise these and one place, ``BaseHandler.write_error``, turns them
into a JSON body ``{"error": message}`` with the status code the class names.
"""


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


class JournalError(Exception):
    """Appending to or syncing the journal failed; the change was not applied."""
