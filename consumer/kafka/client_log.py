"""The logger every Kafka client of ours writes through, with librdkafka's repeats held back.

While a broker is down, librdkafka retries its bootstrap connection every fifty milliseconds
or so and logs each refusal: twenty ERROR lines a second for as long as the outage lasts,
which buries everything else an operator needs to read. A line is let through once per
window; the first one after the window says how many were held back. Lines that differ only
in what changes between repeats of one failure (how long the attempt took, how many repeats
librdkafka suppressed itself: ``(after 3ms in state CONNECT, 1 identical error(s)
suppressed)``) count as one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

LOGGER_NAME = "consumer.librdkafka"
#: An identical line is logged at most once in this many seconds.
REPEAT_WINDOW_SECONDS = 30.0
#: Distinct lines remembered; past it, those whose window has ended are forgotten.
REMEMBERED_LINES = 256
#: What changes between librdkafka's lines for repeats of one failure.
_REPEAT_DETAIL = re.compile(
    r" \(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)")


class RepeatedLines(logging.Filter):
    """Lets a line through once per ``window`` seconds and counts the ones it holds back."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        #: line -> (when it was last let through, repeats held back since)
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        same = _REPEAT_DETAIL.sub("", line)
        now = self._clock()
        with self._lock:
            shown = self._seen.get(same)
            if shown is not None and now - shown[0] < self._window:
                self._seen[same] = (shown[0], shown[1] + 1)
                return False
            self._seen[same] = (now, 0)
            if len(self._seen) > REMEMBERED_LINES:
                self._forget_before(now - self._window)
        if shown is not None and shown[1]:
            record.msg = (f"{line} ({shown[1]} lines like it held back in the last "
                          f"{now - shown[0]:.0f} s)")
            record.args = ()
        return True

    def _forget_before(self, moment: float) -> None:
        for line in [line for line, (at, _) in self._seen.items() if at < moment]:
            del self._seen[line]


def librdkafka_logger() -> logging.Logger:
    """The ``consumer.librdkafka`` logger, with :class:`RepeatedLines` on it (once)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, RepeatedLines) for f in logger.filters):
        logger.addFilter(RepeatedLines())
    return logger
