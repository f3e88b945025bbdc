"""Command-line value types shared by ``poller`` and ``poller-runner``."""

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
    # NaN fails every comparison, so this also rejects it; comparing keeps
    # a huge int from overflowing a float.
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid number of seconds {text!r}: must be 0 to {MAX_SECONDS} (a year)"
        )
    return value
