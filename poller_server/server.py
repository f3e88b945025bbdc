"""Opening a data directory, serving HTTP, and stopping cleanly."""

import asyncio
import gc
import logging
import resource
import signal
import socket
from dataclasses import dataclass

from tornado.netutil import bind_sockets

from .app import make_app
from .auth import TokenFile, count_tokens
from .config import Config, is_loopback
from .connections import LimitedHTTPServer
from .errors import StartupError, describe_os_error
from .event_loop import running_loop_name
from .datadir import lock_data_dir, unlock_data_dir
from .journal import Journal
from .recovery import recover
from .service import JobService
from .snapshotter import Snapshotter, remove_temporary_files
from .tls import make_ssl_context

logger = logging.getLogger(__name__)

# How long a clean stop waits for responses that are still being written.
SHUTDOWN_GRACE_SECONDS = 1.0


# File descriptors kept free of client connections: journal, snapshots, lock, listening sockets.
RESERVED_FILE_DESCRIPTORS = 128


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft open-file limit to ``needed`` where the hard limit allows; warn if it stays lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("Open-file limit could not be raised from %d to %d: %s", soft, target, exc)
        target = soft
    if target < needed:
        logger.warning(
            "Open-file limit is %d, below --max-connections plus %d; connections beyond about %d will fail. "
            "Raise the hard limit (ulimit -Hn, LimitNOFILE in the unit) or lower --max-connections",
            target, RESERVED_FILE_DESCRIPTORS, target - RESERVED_FILE_DESCRIPTORS,
        )


@dataclass
class Runtime:
    """Everything that lives as long as the data directory is open."""

    config: Config
    service: JobService
    journal: Journal
    snapshotter: Snapshotter
    lock_fd: int
    recovery_seconds: float

    def start(self) -> None:
        """Start the timers; needs a running event loop."""
        self.journal.start_background_sync()
        self.snapshotter.start()
        self.service.arm_recovered_leases()

    async def close(self, final_snapshot: bool = True) -> None:
        """Resolve waiters, flush the journal, write a last snapshot, release the lock."""
        self.service.close()
        self.snapshotter.stop()
        await self.snapshotter.wait_idle()
        try:
            if final_snapshot and not self.journal.failing:
                await self.snapshotter.take(fork=False)
        finally:
            await self.journal.close()
            unlock_data_dir(self.lock_fd)


def open_data_dir(config: Config) -> Runtime:
    """Lock the data directory, recover its state and open the journal.

    Raises DataDirLocked or RecoveryError when the server must not start.
    """
    lock_fd = lock_data_dir(config.data_dir)
    try:
        remove_temporary_files(config.data_dir)
        store, report = recover(config.data_dir)
        logger.info(
            "Recovered %d jobs in %.0f ms: snapshot %s (seq %d), %d journal records replayed, last seq %d",
            report.jobs,
            1000 * report.seconds,
            report.snapshot_loaded or "none",
            report.snapshot_seq,
            report.records_replayed,
            report.last_seq,
        )
        journal = Journal(config.data_dir, report.last_seq + 1, config.fsync)
        # The recovered jobs live until deleted: keep the garbage collector from
        # scanning them in every full collection, which would stall requests.
        gc.freeze()
    except BaseException:
        unlock_data_dir(lock_fd)
        raise
    service = JobService(store, journal, config)
    snapshotter = Snapshotter(
        config.data_dir, store, journal, config.snapshot_interval, config.snapshot_every
    )
    service.on_commit.append(snapshotter.after_commit)
    return Runtime(config, service, journal, snapshotter, lock_fd, report.seconds)


def format_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{host}:{port}"


def describe_access(config: Config, tokens: TokenFile | None) -> str:
    """Say in the start-up log line who may call the server, and over what."""
    if tokens is not None:
        access = f"{count_tokens(tokens.tokens)} from {tokens.path}"
    elif is_loopback(config.host):
        access = "no token file: every request is allowed, loopback only"
    else:
        access = "no token file and --allow-unauthenticated: every request is allowed from any address"
    if config.ca_file:
        access += ", TLS with client certificates"
    elif config.certfile:
        access += ", TLS"
    return access


def reload_tokens(tokens: TokenFile | None) -> None:
    if tokens is None:
        logger.warning("SIGHUP ignored: the server runs without --token-file")
        return
    tokens.reload()


async def serve(config: Config) -> None:
    """Run the server until SIGINT or SIGTERM, then stop cleanly.

    Raises TokenFileError or OSError (ssl.SSLError included) before opening
    the data directory if the token file or the TLS files cannot be used.
    """
    tokens = TokenFile(config.token_file) if config.token_file else None
    ssl_context = make_ssl_context(config)
    raise_open_file_limit(config.max_connections + RESERVED_FILE_DESCRIPTORS)
    if config.max_waiters >= config.max_connections:
        logger.warning(
            "--max-waiters %d is not below --max-connections %d: waiting 'next' requests can take every "
            "connection, and then other requests get 503. Lower --max-waiters or raise --max-connections",
            config.max_waiters, config.max_connections,
        )
    runtime = open_data_dir(config)
    runtime.start()
    app = make_app(runtime.service, config, tokens, runtime)
    http_server = LimitedHTTPServer(
        app,
        max_body_size=config.max_body_size,
        max_header_size=config.max_header_size,
        xheaders=False,
        ssl_options=ssl_context,
        max_connections=config.max_connections,
    )
    app.settings["metrics"].http_server = http_server
    try:
        sockets = bind_sockets(config.port, config.host)
    except OSError as exc:
        await runtime.close(final_snapshot=False)
        raise StartupError(
            f"cannot listen on {config.host} port {config.port}: {describe_os_error(exc)}; "
            "choose another --port or --host, or stop the process that uses it"
        ) from exc
    http_server.add_sockets(sockets)
    scheme = "https" if ssl_context is not None else "http"
    addresses = ", ".join(f"{scheme}://{format_address(s)}" for s in sockets)
    logger.info(
        "Poller listening on %s (data dir %s, fsync %s, event loop %s, %s)",
        addresses, config.data_dir, config.fsync, running_loop_name(), describe_access(config, tokens),
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # SIGUSR1 requests a snapshot now, for operators and benchmarks.
    loop.add_signal_handler(signal.SIGUSR1, runtime.snapshotter.request)
    # SIGHUP reloads the token file, as systemctl reload sends it.
    loop.add_signal_handler(signal.SIGHUP, reload_tokens, tokens)
    await stop.wait()

    logger.info("Poller stopping: responding to %d waiting requests with {}", runtime.service.waiters.count)
    http_server.stop()
    runtime.service.close()
    try:
        await asyncio.wait_for(http_server.close_all_connections(), SHUTDOWN_GRACE_SECONDS)
    except asyncio.TimeoutError:
        logger.warning("Some connections were still open after %.1f s", SHUTDOWN_GRACE_SECONDS)
    await runtime.close()
    logger.info("Poller stopped")
