"""Running handlers without a store: route each message, check its format, call its handler,
and turn a failure into a retry (partition paused and rewound), a dead letter, or a stop."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from consumer.dedup import KeyFunction
from consumer.errors import HandlerFailed
from consumer.failures import Failures, Verdict
from consumer.message import Context, Message
from consumer.routing import Router
from consumer.transport import TP, Source
from consumer.watermark import PartitionProgress


class Dispatcher:
    """Handles one polled batch in order; one thread."""

    def __init__(self, router: Router, *, group: str, keys: Mapping[str, KeyFunction],
                 failures: Failures | None, source: Source) -> None:
        self._router = router
        self._group = group
        self._keys = keys
        self._failures = failures
        self._source = source

    def run(self, messages: list[Message], partitions: Mapping[TP, PartitionProgress],
            now: float, stop_requested: Callable[[], bool]) -> int:
        """Handle ``messages``; returns how many are done. Raises HandlerFailed to stop."""
        done = 0
        route_for = self._router.route_for
        group, keys, failures = self._group, self._keys, self._failures
        waiting: set[TP] = set()  # partitions rewound for a retry during this batch
        for message in messages:
            if stop_requested():
                break
            tp = (message.topic, message.partition)
            progress = partitions.get(tp)
            if progress is None or tp in waiting:  # Revoked, or waiting for a retry.
                continue
            try:
                if failures is not None:
                    failures.check(message)
                route_for(message.topic).handler(
                    message, Context(group, message, key_function=keys.get(message.topic))
                )
            except Exception as error:
                if failures is None:
                    raise HandlerFailed(message.topic, message.partition, message.offset,
                                        error) from error
                verdict = failures.failed(message, error)
                if verdict is Verdict.STOP:
                    raise HandlerFailed(message.topic, message.partition, message.offset,
                                        error) from error
                if verdict is Verdict.RETRY:
                    waiting.add(tp)
                    self._source.pause([tp])
                    self._source.seek(tp, message.offset)
                    continue
                # Dead-lettered and acknowledged: the message is done.
            else:
                if failures is not None and failures.has_failed_messages:
                    failures.succeeded(message)
            progress.mark_done(message.offset, now)
            done += 1
        return done
