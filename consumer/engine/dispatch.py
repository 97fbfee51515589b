"""Running handlers without a store: route each message, check its format, call its handler,
and turn a failure into a retry (partition paused and rewound), a dead letter, or a stop."""

from __future__ import annotations

from collections.abc import Mapping

from consumer.checkpoint.progress import PartitionProgress
from consumer.dedup import KeyFunction
from consumer.engine.stopping import StopRequest
from consumer.errors import HandlerFailed
from consumer.events import HandlerTimings
from consumer.failures.retries import Failures, Verdict
from consumer.kafka.protocol import Source
from consumer.message import TP, Context, Message, Scope
from consumer.routing import Handler, Router


class Dispatcher:
    """Handles one polled batch in order; one thread.

    The hot path: a batch holds runs of messages of one partition, so the partition's progress,
    handler and context scope are looked up once per run, and the done counts move once per run.
    """

    def __init__(self, router: Router, *, group: str, keys: Mapping[str, KeyFunction],
                 failures: Failures | None, source: Source,
                 instruments: HandlerTimings | None = None) -> None:
        self._failures = failures
        self._source = source
        self._instruments = instruments
        self._routes: dict[str, tuple[Handler, Scope, list[float]]] = {
            topic: (router.route_for(topic).handler, Scope(group, key_function=keys.get(topic)),
                    [] if instruments is None else instruments.durations(topic))
            for topic in router.topics
        }

    def run(self, messages: list[Message], partitions: Mapping[TP, PartitionProgress],
            now: float, stop: StopRequest) -> int:
        """Handle ``messages``; returns how many are done. Raises HandlerFailed to stop, or
        OffsetWentBackwards when a partition's run starts behind its watermark."""
        failures = self._failures
        routes = self._routes
        timer = self._instruments  # metrics on: each handler call is timed, inline
        clock = None if timer is None else timer.now
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
        durations: list[float] = []
        start: float | None = None  # when the handler call whose duration is open started
        calling = False
        count = 0
        try:
            for message in messages:
                if stop.requested:
                    break
                if message.partition != partition or message.topic != topic:
                    if start is not None:  # the run's last call ends here
                        durations.append(clock() - start)  # type: ignore[misc]
                        start = None
                    if count:
                        progress.count_done(count, now)  # type: ignore[union-attr]
                        done += count
                        count = 0
                    topic, partition = message.topic, message.partition
                    tp = (topic, partition)
                    progress = None if tp in waiting else partitions.get(tp)
                    if progress is not None:  # else revoked, or waiting for a retry: skip
                        handler, scope, durations = routes[topic]
                        progress.begin_run(message.offset)
                if progress is None:
                    continue
                offset = message.offset
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    if clock is None:
                        handler(message, Context(scope, message))  # type: ignore[arg-type, misc]
                    else:
                        # One clock read per call: a call lasts until the next one starts
                        # (or its run ends), the loop's own per-message work included.
                        began = clock()
                        if start is not None:
                            durations.append(began - start)
                        timer.started = start = began  # type: ignore[union-attr]
                        calling = True
                        handler(message, Context(scope, message))  # type: ignore[arg-type, misc]
                        calling = False
                except Exception as error:
                    if calling:  # the handler raised (not a check before it)
                        timer.failed(message.topic,  # type: ignore[union-attr]
                                     clock() - start)  # type: ignore[misc, operator]
                        start, calling = None, False
                    if failures is None:
                        raise HandlerFailed(message.topic, partition, offset, error) from error
                    verdict = failures.failed(message, error,
                                              key=_key_or_none(scope, message))
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
                progress.watermark = offset + 1
                count += 1
                if count == 1 and progress.oldest_uncommitted_at is None:
                    progress.oldest_uncommitted_at = now  # checkpoint age counts from here
        finally:
            if count:
                progress.count_done(count, now)  # type: ignore[union-attr]
                done += count
            if start is not None:
                durations.append(clock() - start)  # type: ignore[misc]
            if timer is not None:
                timer.started = 0.0
        return done


def _key_or_none(scope: Scope | None, message: Message) -> bytes | None:
    """The message's dedup key for its dead letter; None when the route's key function
    cannot make one (the letter then goes without it)."""
    key_function = None if scope is None else scope.key_function
    if key_function is None:
        return None
    try:
        return key_function(message)
    except Exception:
        return None
