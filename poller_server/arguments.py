"""Command-line value types shared by ``poller``, ``poller-runner`` and ``poller-recover``."""

import argparse

# Longer waits, leases or grace periods are typing mistakes, and socket
# time-outs derived from them would overflow.
MAX_SECONDS = 365 * 24 * 3600


def seconds_argument(text: str) -> float:
    """Parse a number of seconds; a whole number stays an int, so the request and any error show it as typed."""
    try:
        value: float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: must be a number") from None
    # NaN fails every comparison, so this also rejects it. Comparing, unlike
    # converting, cannot overflow on a huge int.
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid number of seconds {text!r}: must be 0 to {MAX_SECONDS} (a year)"
        )
    return value


# A job id has at most 19 digits (2**63 - 1), so longer digit strings are
# mistakes. Python also refuses to convert more than 4300 digits by default.
MAX_INTEGER_DIGITS = 19


def positive_int_argument(text: str, what: str = "value") -> int:
    """Parse a positive integer written in ASCII digits; ``what`` names it in the error."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_INTEGER_DIGITS or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: must be a positive integer (1 or more)")
    return int(text)


def job_id_argument(text: str) -> int:
    """Parse a job id: a positive integer."""
    return positive_int_argument(text, "job id")
