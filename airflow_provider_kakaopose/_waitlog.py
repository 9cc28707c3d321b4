"""One status line at a steady rhythm while a task or a trigger waits for a Pose video job.

Used by the video operator waiting in the worker, the sensor in ``poke`` mode and the trigger, so a wait can
be watched in the task's log whatever mode it runs in.
"""

from __future__ import annotations

import time
from typing import Any

from airflow_provider_kakaopose.jobs import ENDED

#: Never more than one line per this many seconds (status changes aside).
MIN_EVERY = 10.0
#: At least one line per this many seconds when the polls are closer together than that.
MAX_EVERY = 60.0

# The clocks, module attributes so a test can drive them (elapsed time: monotonic; the deadline: epoch).
_monotonic = time.monotonic
_wall = time.time


def log_every(poll_interval: float) -> float:
    """Seconds between two status lines for a given ``poll_interval``: every third poll, but never more often
    than every 10 s, and at least once a minute - or at every poll when polls are more than a minute apart.
    A steady rhythm whatever the interval, and a long wait writes a modest log (a 10-hour wait with the
    default ``poll_interval=10``: 1,200 lines, not 3,600):

    ====================  ============  ====================
    ``poll_interval``      one line      that is
    ====================  ============  ====================
    up to 3.3 s            every 10 s    every 3rd to 100th poll
    5 s                    every 15 s    every 3rd poll
    10 s (the default)     every 30 s    every 3rd poll
    20 s to 60 s           every 60 s    every 3rd poll to every poll
    above 60 s             every poll    every poll
    ====================  ============  ====================

    A status change is logged at once, whatever the rhythm.
    """
    return max(MIN_EVERY, poll_interval, min(3 * poll_interval, MAX_EVERY))


def duration(seconds: float) -> str:
    """``25 s``, ``1 m 40 s``, ``2 h 05 m``."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} m {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} m"


def utc(epoch: float) -> str:
    """``2026-01-01T10:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class WaitLog:
    """Logs a job's status at INFO while something waits for it: at once when the status changes (the first
    status included), otherwise when :func:`log_every` (``poll_interval``) seconds have passed since the last
    line — e.g. with ``poll_interval=1`` at 0 s, 10 s, 20 s … and when the job ends, not at every poll::

        Pose job 4a6f… is processing: waited 1 m 40 s, deadline 2026-01-01T10:00:00Z (in 28 m 20 s)
        Pose job 4a6f… is success: waited 2 m 03 s

    Small (a few floats: a triggerer holds thousands of waits) and never blocking: :meth:`log` only compares
    clocks and, at most once per interval, writes one line.

    :param log: the logger of the task or the trigger.
    :param job_id: the job waited for.
    :param end_time: the absolute deadline (epoch seconds), or ``None``.
    :param poll_interval: seconds between status checks; sets the rhythm (:func:`log_every`).
    """

    __slots__ = ("_last", "_start", "_status", "end_time", "every", "job_id", "logger")

    def __init__(self, log: Any, job_id: str, end_time: float | None, poll_interval: float) -> None:
        self.logger = log
        self.job_id = job_id
        self.end_time = end_time
        self.every = log_every(poll_interval)
        self._start = _monotonic()
        self._last: float | None = None
        self._status: str | None = None

    def log(self, status: str) -> bool:
        """Note the status of the latest check; log it if it changed or if the interval has passed. Returns
        whether a line was written."""
        now = _monotonic()
        if status == self._status and self._last is not None and now - self._last < self.every:
            return False
        self._status, self._last = status, now
        waited = duration(now - self._start)
        if status in ENDED:
            self.logger.info("Pose job %s is %s: waited %s", self.job_id, status, waited)
        elif self.end_time is None:
            self.logger.info("Pose job %s is %s: waited %s, no deadline", self.job_id, status, waited)
        else:
            self.logger.info(
                "Pose job %s is %s: waited %s, deadline %s (in %s)",
                self.job_id,
                status,
                waited,
                utc(self.end_time),
                duration(self.end_time - _wall()),
            )
        return True
