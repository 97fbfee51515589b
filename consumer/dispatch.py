"""Running handlers without a store: route each message, check its format, call its handler,
and turn a failure into a retry (partition paused and rewound), a dead letter, or a stop."""

from __future__ import annotations

from collections.abc import Mapping

from consumer.dedup import KeyFunction
from consumer.errors import HandlerFailed, OffsetWentBackwards
from consumer.failures import Failures, Verdict
from consumer.message import Context, Message, Scope
from consumer.routing import Handler, Router
from consumer.stopping import StopRequest
from consumer.transport import TP, Source
from consumer.watermark import PartitionProgress


class Dispatcher:
    """Handles one polled batch in order; one thread.

    The hot path: a batch holds runs of messages of one partition, so the partition's progress,
    handler and context scope are looked up once per run, and the done counts move once per run.
    """

    def __init__(self, router: Router, *, group: str, keys: Mapping[str, KeyFunction],
                 failures: Failures | None, source: Source) -> None:
        self._router = router
        self._failures = failures
        self._source = source
        self._routes: dict[str, tuple[Handler, Scope]] = {
            topic: (router.route_for(topic).handler, Scope(group, key_function=keys.get(topic)))
            for topic in router.topics
        }

    def run(self, messages: list[Message], partitions: Mapping[TP, PartitionProgress],
            now: float, stop: StopRequest) -> int:
        """Handle ``messages``; returns how many are done. Raises HandlerFailed to stop."""
        failures = self._failures
        routes = self._routes
        # Checked once per batch: a failure during it leaves its partition skipped until the
        # next batch, so no message of this batch needs the checks it did not need before.
        checking = failures is not None and failures.checks_needed
        waiting: set[TP] = set()  # partitions rewound for a retry during this batch
        done = 0
        # The run in hand: its partition, progress, route, next offset and messages done.
        topic: str | None = None
        partition = -1
        progress: PartitionProgress | None = None
        handler: Handler | None = None
        scope: Scope | None = None
        watermark = -1
        count = 0
        try:
            for message in messages:
                if stop.requested:
                    break
                if message.partition != partition or message.topic != topic:
                    if count:
                        progress.count_done(count, now)  # type: ignore[union-attr]
                        done += count
                        count = 0
                    topic, partition = message.topic, message.partition
                    tp = (topic, partition)
                    progress = None if tp in waiting else partitions.get(tp)
                    if progress is not None:  # else revoked, or waiting for a retry: skip
                        handler, scope = routes[topic]
                        watermark = -1 if progress.watermark is None else progress.watermark
                if progress is None:
                    continue
                offset = message.offset
                if offset < watermark:
                    raise OffsetWentBackwards(topic, partition, watermark, offset + 1)
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    handler(message, Context(scope, message))  # type: ignore[arg-type, misc]
                except Exception as error:
                    if failures is None:
                        raise HandlerFailed(message.topic, partition, offset, error) from error
                    verdict = failures.failed(message, error)
                    if verdict is Verdict.STOP:
                        raise HandlerFailed(message.topic, partition, offset, error) from error
                    if verdict is Verdict.RETRY:
                        tp = (message.topic, partition)
                        waiting.add(tp)
                        self._source.pause([tp])
                        self._source.seek(tp, offset)
                        if count:
                            progress.count_done(count, now)
                            done += count
                            count = 0
                        progress = None
                        continue
                    # Dead-lettered and acknowledged: the message is done.
                else:
                    if checking:
                        failures.succeeded(message)  # type: ignore[union-attr]
                # The watermark moves with each message (a scrape during a stuck handler reads
                # it); the counts move once per run.
                progress.watermark = watermark = offset + 1
                count += 1
                if count == 1 and progress.oldest_uncommitted_at is None:
                    progress.oldest_uncommitted_at = now  # checkpoint age counts from here
        finally:
            if count:
                progress.count_done(count, now)  # type: ignore[union-attr]
                done += count
        return done
