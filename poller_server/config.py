"""Server configuration: one field per command-line option.

Each field's metadata holds the help text the command line shows; the
default is the field's default. ``poller_server.cli`` builds the argument
parser from these fields, and every option can also come from an
environment variable ``POLLER_<OPTION>`` (for example ``POLLER_DATA_DIR``).
"""

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from .event_loop import EVENT_LOOPS, uvloop_import_error, uvloop_missing


def option(default: Any, help: str, **extra: object) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    host: str = option("127.0.0.1", "address to listen on (default: %(default)s)")
    port: int = option(8080, "TCP port to listen on; 0 picks a free port (default: %(default)s)")
    data_dir: str = option("./poller-data", "directory for the journal and snapshots (default: %(default)s)")
    max_body_size: int = option(1048576, "largest request body accepted, in bytes (default: %(default)s)")
    log_level: str = option(
        "info", "log level (default: %(default)s)", choices=("debug", "info", "warning", "error")
    )
    fsync: str = option(
        "always",
        "when a write is acknowledged: 'always' after fsync, 'everysec' fsync once a second, "
        "'no' leave flushing to the OS (default: %(default)s)",
        choices=("always", "everysec", "no"),
    )
    snapshot_interval: float = option(
        300.0, "seconds between snapshots; 0 turns timed snapshots off (default: %(default)s)"
    )
    snapshot_every: int = option(
        100000, "journal records after which a snapshot is written; 0 turns this off (default: %(default)s)"
    )
    max_wait: float = option(
        60.0, "longest wait a 'next' request may ask for, in seconds, at most 3600 (default: %(default)s)"
    )
    lease: float = option(300.0, "lease of a claimed job when the claim names none, in seconds (default: %(default)s)")
    max_lease: float = option(604800.0, "longest lease a claim or heartbeat may ask for, in seconds (default: %(default)s)")
    max_attempts: int = option(
        3, "claims of one job after which an expired lease fails the job instead of requeuing it (default: %(default)s)"
    )
    max_waiters: int = option(
        10000, "requests that may wait in 'next' at once; more get 503 (default: %(default)s)"
    )
    max_jobs: int = option(
        10000000, "jobs the store may hold; creates beyond it get 507, 0 means no limit (default: %(default)s)"
    )
    token_file: str = option(
        "",
        "file of bearer tokens, one 'TOKEN SCOPES NAME' per line, mode 600; reloaded on SIGHUP. "
        "Without it every request is allowed and the server listens on loopback only (default: none)",
    )
    allow_unauthenticated: bool = option(
        False, "allow listening on a non-loopback address without --token-file (default: off)"
    )
    certfile: str = option("", "TLS certificate chain in PEM; turns on HTTPS with --keyfile (default: none)")
    keyfile: str = option("", "TLS private key in PEM for --certfile (default: none)")
    ca_file: str = option(
        "", "CA certificates in PEM; clients must then present a certificate signed by one (default: none)"
    )
    max_header_size: int = option(
        65536, "largest request line plus headers accepted, in bytes; larger ones close the connection "
        "(default: %(default)s)"
    )
    max_connections: int = option(
        11000,
        "open client connections allowed at once, more than --max-waiters so that waiting requests "
        "leave room for others; more get 503 and are closed. The server raises its open-file limit "
        "to fit (default: %(default)s)",
    )
    max_config_keys: int = option(
        256, "configuration keys one job may have; more get 400 (default: %(default)s)"
    )
    max_value_length: int = option(
        1048576, "longest configuration value of a job, in characters of its JSON text (a string's own length); "
        "longer ones get 400. The default equals the default --max-body-size (default: %(default)s)"
    )
    event_loop: str = option(
        "auto", "event loop: 'uvloop' (faster; installed with the server), 'asyncio' for the standard "
        "one, or 'auto' for uvloop when it can be imported (default: %(default)s)",
        choices=EVENT_LOOPS,
    )
    log_format: str = option(
        "text", "log line format: 'text' for people, 'json' (one object a line) for log shippers "
        "(default: %(default)s)", choices=("text", "json"),
    )

    def validate(self) -> None:
        """Raise ValueError naming the first option whose value is out of range."""
        if not self.data_dir:
            raise ValueError(
                "invalid --data-dir '': the path is empty; give a directory, for example --data-dir ./poller-data"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"invalid --port {self.port}: must be 0 to 65535")
        positive = {
            "max_body_size": self.max_body_size,
            "lease": self.lease,
            "max_lease": self.max_lease,
            "max_attempts": self.max_attempts,
            "max_waiters": self.max_waiters,
            "max_header_size": self.max_header_size,
            "max_connections": self.max_connections,
            "max_config_keys": self.max_config_keys,
            "max_value_length": self.max_value_length,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"invalid --{name.replace('_', '-')} {value:g}: must be greater than 0")
        for name in ("snapshot_interval", "snapshot_every", "max_jobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"invalid --{name.replace('_', '-')} {getattr(self, name):g}: must not be negative")
        if not 0 <= self.max_wait <= 3600:
            raise ValueError(f"invalid --max-wait {self.max_wait:g}: must be 0 to 3600 seconds")
        if self.lease > self.max_lease:
            raise ValueError(f"invalid --lease {self.lease:g}: must not exceed --max-lease {self.max_lease:g}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("invalid TLS options: --certfile and --keyfile must be given together")
        if self.ca_file and not self.certfile:
            raise ValueError("invalid --ca-file: client certificates need TLS, so give --certfile and --keyfile too")
        if self.event_loop == "uvloop" and uvloop_import_error() is not None:
            if uvloop_missing():
                raise ValueError(
                    "invalid --event-loop uvloop: the uvloop package is not installed; install it with "
                    "pip install uvloop, or choose --event-loop asyncio"
                )
            raise ValueError(
                f"invalid --event-loop uvloop: uvloop failed to import ({uvloop_import_error()}); "
                "reinstall it with pip install --force-reinstall uvloop, or choose --event-loop asyncio"
            )
        if not self.token_file and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ValueError(
                f"invalid --host {self.host!r} without --token-file: without tokens the server listens "
                "on loopback only, because anyone who reaches it could take jobs. Give --token-file, "
                "listen on 127.0.0.1 or ::1, or pass --allow-unauthenticated"
            )


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a loopback address literal or ``localhost``.

    Other host names are not resolved, so they count as non-loopback.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_fields() -> tuple:
    return fields(Config)
