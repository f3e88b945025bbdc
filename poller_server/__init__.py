"""poller_server: a job server for climate-model runs, with a durable journal."""

__version__ = "0.1.0"
