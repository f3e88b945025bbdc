"""Exporting jobs as JSON in the shape the HTTP API returns for a listing."""

import os
from typing import IO

from ..store import JobStore


def write_export(store: JobStore, out: IO[bytes], status: str | None, user: str | None) -> int:
    """Write the matching jobs as one JSON array, lowest id first; return how many.

    Each element is the job's HTTP rendering (``Job.render``), so lease ids
    stay out, as in a listing. An empty result is ``[]``, where the HTTP
    listing returns ``{}``.
    """
    if status is None and user is None:
        ids = store.list_ids()
    else:
        ids = store.list_ids(status, user)
    out.write(b"[")
    for index, job_id in enumerate(ids):
        out.write(b",\n" if index else b"\n")
        out.write(store.jobs[job_id].render())
    out.write(b"\n]\n" if ids else b"]\n")
    return len(ids)


class ExportPathError(Exception):
    """The ``--output`` file cannot be written; the message names the path given."""


def export_to_file(store: JobStore, path: str, status: str | None, user: str | None) -> int:
    """Write the export to ``path`` through a temporary file, so a failure leaves no half file."""
    if os.path.isdir(path):
        raise ExportPathError(f"invalid --output {path!r}: it is a directory; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportPathError(f"invalid --output {path!r}: folder {folder!r} does not exist")
    tmp_path = path + ".tmp"
    try:
        with open(tmp_path, "wb") as out:
            count = write_export(store, out, status, user)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if os.path.lexists(tmp_path):
            os.unlink(tmp_path)
        raise ExportPathError(f"failed to write --output {path!r}: {exc.strerror or exc}") from exc
    return count
