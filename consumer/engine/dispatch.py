"""Direct mode's handler runs: each polled message of an assigned partition, in order, through
its route's handler; a failure becomes a retry (partition paused and rewound), a dead letter, or
a stop.

Called by :class:`consumer.engine.direct_mode.DirectMode` on the loop's thread, once per polled
batch. Moves each partition's watermark as its messages are done (one attribute write per
message; :class:`~consumer.checkpoint.progress.PartitionProgress` checks the run's first offset).
Blocks only inside handlers and, for a dead letter, until the broker acknowledges it. Raises
HandlerFailed to stop the consumer (what was done before the failing message stays done).
Never commits: checkpoints are the mode's.
"""

from __future__ import annotations

from collections.abc import Mapping

from consumer.checkpoint.progress import PartitionProgress
from consumer.dedup import KeyFunction
from consumer.engine.stopping import StopRequest
from consumer.errors import HandlerFailed
from consumer.events import HandlerTimings
from consumer.failures.retries import Failures, Verdict
from consumer.handler_call import AnyHandler, handler_calls
from consumer.kafka.protocol import Source
from consumer.message import TP, Context, Message, Scope
from consumer.routing import Router


class Dispatcher:
    """Handles one polled batch in order; one thread.

    The hot path: a batch holds runs of messages of one partition, so the partition's progress,
    handler and context scope are looked up once per run, and the done counts move once per run.
    Handlers are called the one way every mode calls them (:mod:`consumer.handler_call`).
    """

    def __init__(self, router: Router, *, group: str, keys: Mapping[str, KeyFunction],
                 failures: Failures | None, source: Source,
                 instruments: HandlerTimings | None = None) -> None:
        self._failures = failures
        self._source = source
        routes = {topic: router.route_for(topic) for topic in router.topics}
        calls = handler_calls({topic: route.message_only or route.handler
                               for topic, route in routes.items()}, instruments)
        # Per topic: the call, its contexts' scope, and whether the handler takes a context.
        self._routes: dict[str, tuple[AnyHandler, Scope, bool]] = {
            topic: (call, Scope(group, key_function=keys.get(topic)),
                    routes[topic].message_only is None)
            for topic, call in calls.items()
        }

    def run(self, messages: list[Message], partitions: Mapping[TP, PartitionProgress],
            now: float, stop: StopRequest) -> int:
        """Handle ``messages``; returns how many are done. Raises HandlerFailed to stop, or
        OffsetWentBackwards when a partition's run starts behind its watermark."""
        failures = self._failures
        routes = self._routes
        context_of = Context.of
        # Checked once per batch: a failure during it leaves its partition skipped until the
        # next batch, so no message of this batch needs the checks it did not need before.
        checking = failures is not None and failures.checks_needed
        waiting: set[TP] = set()  # partitions rewound for a retry during this batch
        done = 0
        # The run in hand: its partition, progress, handler call and messages done.
        topic: str | None = None
        partition = -1
        progress: PartitionProgress | None = None
        call: AnyHandler | None = None
        scope: Scope | None = None
        with_context = True
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
                        call, scope, with_context = routes[topic]
                        progress.begin_run(message.offset)
                if progress is None:
                    continue
                offset = message.offset
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    if with_context:
                        call(message, context_of(scope, message))  # type: ignore[arg-type, misc]
                    else:
                        call(message)  # type: ignore[misc]
                except Exception as error:
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
