"""Run ``poller-server`` and print the journal's fsync counters on SIGUSR2.

The benchmark reads fsyncs per second and records per fsync from these
counters. The server itself is unchanged: this wrapper only keeps a
reference to each Journal it creates.
"""

import signal
import sys

from poller_server import cli, journal

COUNTERS_LINE = "Journal counters: fsyncs %d records %d"

journals: list[journal.Journal] = []
original_init = journal.Journal.__init__


def remembering_init(self: journal.Journal, *args: object, **kwargs: object) -> None:
    original_init(self, *args, **kwargs)
    journals.append(self)


def print_counters(signum: int, frame: object) -> None:
    for item in journals:
        print(COUNTERS_LINE % (item.sync_count, item.synced_records), file=sys.stderr, flush=True)


if __name__ == "__main__":
    journal.Journal.__init__ = remembering_init  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR2, print_counters)
    sys.exit(cli.main(sys.argv[1:]))
