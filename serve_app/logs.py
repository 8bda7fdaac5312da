"""Where the service's log lines go.

Every module logs through its own logger (``logging.getLogger(__name__)``), all under the
``serve_app`` package logger. In a Serve replica, Serve sets up only its own ``ray.serve`` logger
(the replica's log file under the session's ``logs/serve/``, the dashboard's log view, and stderr
when ``RAY_SERVE_LOG_TO_STDERR`` is set) and stops it from propagating; ``use_serve_handlers`` gives
the package logger those same handlers, so each line lands there tagged with its replica. Outside
Serve (unit tests, ``bench/load.py plain``) the package logger propagates to the root logger as any
library's does.

A line about a job names its first 8 characters in the text and carries the whole id as the
``edit_job_id`` attribute (``extra=for_job(id)``), which Serve's JSON log encoding writes as a field
(not ``job_id``: Serve drops that attribute, the name of Ray's own job id).
"""

import logging

PACKAGE = "serve_app"
JOB_ID = "edit_job_id"  # the log record attribute naming the job


def _not_access_log(record: logging.LogRecord) -> bool:
    return not getattr(record, "serve_access_log", False)


def use_serve_handlers(access_log: bool = True) -> None:
    """In a Serve replica: send the package's lines where Serve sends its own; ``access_log=False``
    also drops Serve's per-call access lines of this replica. Call at replica start (Serve has
    configured its logger by then); harmless to call again."""
    serve_logger = logging.getLogger("ray.serve")
    if not serve_logger.handlers:  # not in a replica: leave the package logger alone
        return
    if not access_log and _not_access_log not in serve_logger.filters:
        serve_logger.addFilter(_not_access_log)
    package = logging.getLogger(PACKAGE)
    package.handlers = list(serve_logger.handlers)
    package.setLevel(serve_logger.level or logging.INFO)
    package.propagate = False


def for_job(job_id: str) -> dict:
    """``extra`` for a log line about this job."""
    return {JOB_ID: job_id}
