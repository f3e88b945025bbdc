"""``poller-recover``: check, repair and maintain a data directory while no server runs on it.

Every subcommand reads the directory with the server's own journal, snapshot
and recovery code and writes through the store's ``plan_*``/``apply`` seam
and the :class:`~poller_server.journal.Journal`, so a change made here is
replayed by the server like any other.
"""
