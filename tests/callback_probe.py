"""An importable RQ callback with a visible effect: it marks Redis, so a test can tell whether it ran."""

PROBE_KEY = "alignlab:test:callback-ran"


def record(job, connection, *args) -> None:
    connection.set(PROBE_KEY, job.id)
