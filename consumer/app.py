"""The composition root: builds every object of a consumer process from its settings.

The one place that chooses: the checkpoint mode (direct, or store when a store is configured or
given: batches, or a transaction per message when a route has concurrency), the source, the
store, the clock and the dead-letter sink, each injectable so tests build loops the way
production does. Nothing connects while wiring except opening a SQLite file;
ConfigError reports every bad setting or route at once, before any connection. Also owns the
process's signal handling (SIGTERM/SIGINT drain, a second one or the grace running out exits).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import cast

from opentelemetry.trace import Tracer

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.policy import CheckpointPolicy
from consumer.checkpoint.store_message import (
    AsyncHandler,
    AsyncStoreWork,
    StoreRows,
    StoreWork,
    Tally,
)
from consumer.clock import Clock, SystemClock
from consumer.dedup import KeyFormat, KeyFunction, key_function
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher, RouteWork
from consumer.engine.concurrent_store_mode import ConcurrentStoreMode, StoreOutage
from consumer.engine.direct_mode import DirectMode, unconfirmed_limit
from consumer.engine.dispatch import Dispatcher
from consumer.engine.loop import ConsumerLoop
from consumer.engine.mode import CheckpointMode
from consumer.engine.store_mode import StoreMode
from consumer.errors import StoreError
from consumer.events import Observer, Observers
from consumer.failures.retries import Failures, build_policies
from consumer.kafka.producer import KafkaDeadLetterSink
from consumer.kafka.protocol import DeadLetterSink, Source
from consumer.kafka.source import KafkaSource
from consumer.message import Message
from consumer.observability import logs
from consumer.observability.event_log import LoggingObserver
from consumer.observability.instruments import Instruments
from consumer.observability.lag import OffsetTracker
from consumer.observability.offset_refresh import OffsetRefresher
from consumer.observability.tracing import Tracing
from consumer.routing import Route, Router, is_async
from consumer.settings import Settings
from consumer.store import AsyncMessageTransactions, MessageTransactions, Store, open_configured
from consumer.store.purge import ProcessedKeyPurger

log = logging.getLogger("consumer.app")


def build_router(settings: Settings) -> Router:
    """Import and check every route's handler (raises ConfigError listing all problems)."""
    return Router.from_config(
        {topic: route.handler for topic, route in settings.routes.items()},
        search_path=settings.handler_path,
    )


def build_keys(settings: Settings, topic_ids: Mapping[str, str],
               key_format: KeyFormat | None = None) -> dict[str, KeyFunction]:
    """Each route's dedup key function (raises ConfigError for a bad function path)."""
    return {topic: key_function(route.dedup_key, topic_ids, route.dedup_scope, key_format)
            for topic, route in settings.routes.items()}


def group_scoped_topics(settings: Settings) -> set[str]:
    """Topics whose route lets one event id span the group (``dedup_scope: group``)."""
    return {topic for topic, route in settings.routes.items() if route.dedup_scope == "group"}


def build_loop(
    settings: Settings, router: Router, *extra_observers: Observer,
    on_statistics: Callable[[str], None] | None = None,
    instruments: Instruments | None = None,
    offsets: OffsetTracker | None = None,
    source: Source | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
    dead_letters: DeadLetterSink | None = None,
    tracer: Tracer | None = None,
) -> ConsumerLoop:
    """Wire a consumer loop for these settings; nothing connects until ``loop.start()``
    (a SQLite store file is opened here; PostgreSQL connects at ``loop.start()``).

    The checkpoint mode is chosen here, once: store mode when the settings name a store (or
    one is given), else direct mode. ``source``, ``store``, ``clock`` and ``dead_letters``
    replace the Kafka client, the configured store, the system clock and the dead-letter
    producer (tests pass in-memory ones). With ``instruments``, handlers, the store and commits
    are timed; with ``offsets``, the loop keeps paused partitions' end offsets and transactional
    positions current in it. With ``tracer``, each handler call is a span
    (:mod:`consumer.observability.tracing`); without one the handlers are called as they are."""
    if source is None:
        source = KafkaSource(settings.kafka, on_statistics=on_statistics)
    if instruments is not None:
        source = instruments.source(source)
    clock = clock or SystemClock()
    group = settings.kafka.group_id
    concurrent = needs_workers(settings, router)
    sink = dead_letters or KafkaDeadLetterSink(settings.kafka)
    tracing: Tracing | None = None
    if tracer is not None:
        tracing = Tracing(tracer, group=group, duplicates=(
            not concurrent and (store is not None or settings.store.enabled)))
        router, sink = tracing.router(router), tracing.sink(sink)
        extra_observers = (*extra_observers, tracing.observer)
    observer = Observers(LoggingObserver(), *extra_observers)
    topic_ids: dict[str, str] = {}
    key_format = KeyFormat()  # the store's form of coordinates keys, set when it is prepared
    keys = build_keys(settings, topic_ids, key_format)
    failures = Failures(build_policies(settings), sink=sink,
                        group=group, observer=observer,
                        monotonic=clock.monotonic, wall=clock.wall, topic_ids=topic_ids)
    commits = KafkaCommits(source, observer=observer, monotonic=clock.monotonic)
    policy = CheckpointPolicy(every_messages=settings.checkpoint.every_messages,
                              every_seconds=settings.checkpoint.every_seconds)
    mode: CheckpointMode
    if store is not None or settings.store.enabled:
        store = store or open_configured(settings.store)
        _load_group(store, group)
        if instruments is not None:
            store = instruments.store(store)
        mode = StoreMode(
            store, source=source, router=router, keys=keys, group=group, observer=observer,
            clock=clock, commits=commits, on_external_reset=settings.store.on_external_reset,
            max_backoff=settings.store.max_backoff_seconds, topic_ids=topic_ids,
            key_format=key_format, failures=failures, instruments=instruments,
            group_scoped_topics=group_scoped_topics(settings),
        )
        if concurrent:
            mode = concurrent_store_mode(settings, router, mode, store=store, keys=keys,
                                         failures=failures, source=source, clock=clock,
                                         commits=commits, observer=observer,
                                         instruments=instruments,
                                         on_duplicate=None if tracing is None
                                         else tracing.duplicate)
    else:
        dispatcher: Dispatcher | ConcurrentDispatcher
        if concurrent:
            # Graceful shutdown must end before ShutdownSignals' grace timer exits the process.
            grace = settings.shutdown.grace_seconds
            dispatcher = ConcurrentDispatcher(
                router, {topic: RouteWork(route.concurrency, route.ordering)
                         for topic, route in settings.routes.items()},
                group=group, keys=keys, failures=failures, source=source, clock=clock,
                max_buffered=settings.buffered_messages(), stop_wait=grace,
                instruments=instruments)
            commits.finished_above = dispatcher.finished_above  # listed in the commits
        else:
            dispatcher = Dispatcher(router, group=group, keys=keys, failures=failures,
                                    source=source, instruments=instruments)
        mode = DirectMode(
            dispatcher,
            poll_wait=settings.kafka.poll_timeout_seconds,
            settle_seconds=settle_seconds(settings.shutdown.grace_seconds),
            commits=commits, source=source, clock=clock, observer=observer,
            synchronous_commits=settings.checkpoint.synchronous_commits,
            unconfirmed_limit=unconfirmed_limit(
                policy.every_messages, synchronous_commits=settings.checkpoint.synchronous_commits,
                max_unconfirmed=settings.checkpoint.max_unconfirmed_messages),
            topic_ids=topic_ids,
        )
    return ConsumerLoop(
        source,
        mode=mode,
        router=router,
        policy=policy,
        clock=clock,
        observer=observer,
        batch_size=settings.kafka.poll_batch_size,
        poll_timeout=settings.kafka.poll_timeout_seconds,
        failures=failures,
        offset_refresher=(None if offsets is None
                          else OffsetRefresher(offsets, source=source, clock=clock)),
    )


def _load_group(store: Store, group: str) -> None:
    """What the store keeps in memory for the group, read before the consumer meets the
    broker (:meth:`Store.load_group`). A store that cannot answer yet reads it later, when
    its schema is ensured, which the loop retries."""
    try:
        store.load_group(group)
    except StoreError as error:
        log.warning("could not read the group's processed keys into memory yet (%s); "
                    "reading them once the store answers", error)


def concurrent_store_mode(settings: Settings, router: Router, positions: StoreMode, *,
                          store: Store, keys: Mapping[str, KeyFunction], failures: Failures,
                          source: Source, clock: Clock, commits: KafkaCommits,
                          observer: Observer, instruments: Instruments | None,
                          on_duplicate: Callable[[Message], None] | None = None,
                          ) -> ConcurrentStoreMode:
    """Store mode with handlers on workers: each route's handler applied in a transaction of
    its own per message, on a pool of as many connections as there are workers (``async def``
    handlers: an asynchronous pool of at most ``store.async_connections``). Raises
    ConfigError for a store that has no such transactions (SQLite).
    Each duplicate a worker finds is told to ``on_duplicate`` (tracing's span for it)."""
    group = settings.kafka.group_id
    work = {topic: RouteWork(route.concurrency, route.ordering,
                             batch=settings.store.micro_batch_messages)
            for topic, route in settings.routes.items()}
    asynchronous = [topic for topic in router.topics if is_async(router.route_for(topic).handler)]
    synchronous = [topic for topic in router.topics if topic not in asynchronous]

    def in_flight(topics: list[str]) -> int:
        return sum(work.get(topic, RouteWork(1, "key")).concurrency for topic in topics)

    transactions: list[MessageTransactions | AsyncMessageTransactions] = []
    if asynchronous:  # first: a store without them names the async handlers as the reason
        awaited = store.async_message_transactions(
            min(settings.store.async_connections, in_flight(asynchronous)))
        transactions.append(awaited)
    if synchronous:
        threaded = store.message_transactions(in_flight(synchronous))
        transactions.append(threaded)
    tally = Tally(on_duplicate)
    routes = []
    for topic in router.topics:
        route = router.route_for(topic)
        wrapped: StoreWork | AsyncStoreWork
        if topic in asynchronous:
            wrapped = AsyncStoreWork(cast(AsyncHandler, route.handler), transactions=awaited,
                                     group=group, key_function=keys[topic], wall=clock.wall,
                                     tally=tally)
        else:
            wrapped = StoreWork(route.handler, transactions=threaded, group=group,
                                key_function=keys[topic], wall=clock.wall, tally=tally)
        routes.append(Route(topic, wrapped, route.handler_path))
    outage = StoreOutage(observer, clock, max_backoff=settings.store.max_backoff_seconds)
    dispatcher = ConcurrentDispatcher(
        Router(routes), work, group=group, keys=keys, failures=failures, source=source, clock=clock,
        max_buffered=settings.buffered_messages(),
        stop_wait=settings.shutdown.grace_seconds, instruments=instruments,
        held_back=outage.retry_at)
    return ConcurrentStoreMode(
        positions, dispatcher, transactions=transactions,
        rows=StoreRows(store, group=group, commits=commits, now=clock.wall), tally=tally,
        outage=outage, commits=commits, observer=observer, clock=clock,
        poll_wait=settings.kafka.poll_timeout_seconds,
        settle_seconds=settle_seconds(settings.shutdown.grace_seconds))


def needs_workers(settings: Settings, router: Router) -> list[str]:
    """Routes whose handlers run on workers: concurrency above 1, or an ``async def`` handler.
    None of them: every handler runs on the loop's thread, exactly as without concurrency."""
    return [topic for topic in router.topics
            if (topic in settings.routes and settings.routes[topic].concurrency > 1)
            or is_async(router.route_for(topic).handler)]


def settle_seconds(grace_seconds: float) -> float:
    """How long the shutdown (and each revoke) waits for running handlers before its
    checkpoint: the grace period less what the commit and leaving the group need (5 s, or
    half the grace when it is shorter than 10 s), so the checkpoint lands before the grace
    timer ends the process."""
    return max(grace_seconds / 2, grace_seconds - 5.0)


def build_purger(settings: Settings, *observers: Observer) -> ProcessedKeyPurger | None:
    """The background retention of processed keys, or None without a store or retention."""
    retention = settings.store.processed_keys_retention_seconds
    if not settings.store.enabled or retention is None:
        return None
    return ProcessedKeyPurger(
        lambda: open_configured(settings.store),
        group=settings.kafka.group_id,
        retention_seconds=retention,
        every_seconds=settings.store.purge_every_seconds,
        batch_size=settings.store.purge_batch_size,
        observer=Observers(LoggingObserver(), *observers),
        wall=SystemClock().wall,
    )


class ShutdownSignals:
    """SIGTERM/SIGINT ask the loop to drain; a second signal, or the grace period running out,
    ends the process at once. Only sets a flag and arms a timer.

    The signals are taken from Python's wakeup file descriptor by a thread of their own, not
    in a Python signal handler: that runs on the main thread only, and when the kernel hands
    the signal to another thread (the endpoints' server, a worker) while the main thread waits
    in a handler's long call (a ``time.sleep``, a blocking read), it would run only once that
    call returns: /readyz stayed ready for the whole call (seen under load)."""

    def __init__(self, loop: ConsumerLoop, *, grace_seconds: float) -> None:
        self._loop = loop
        self._grace_seconds = grace_seconds
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        """Route SIGTERM and SIGINT to :meth:`_handle` on the signal thread (main thread
        only, as Python's signal module requires)."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        # A Python handler must exist for the wakeup byte to be written; it does nothing.
        signal.signal(signal.SIGTERM, _noted)
        signal.signal(signal.SIGINT, _noted)
        threading.Thread(target=self._watch, args=(read,), name="consumer-signals",
                         daemon=True).start()

    def _watch(self, read: int) -> None:
        """The signal thread: each byte on the wakeup descriptor is one signal's number."""
        while chunk := os.read(read, 64):
            for signum in chunk:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._handle(signum)

    def _handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._loop.stop_requested:
            os.write(2, f"consumer: second {name}: exiting now without a final commit\n".encode())
            os._exit(128 + signum)
        self._loop.request_stop()
        self._timer = threading.Timer(self._grace_seconds, self._grace_expired)
        self._timer.daemon = True
        self._timer.start()
        log.info("%s received: finishing the message in hand, committing, leaving the group "
                 "(grace period %.0f s)", name, self._grace_seconds)

    def _grace_expired(self) -> None:
        os.write(2, (f"consumer: shutdown took longer than the {self._grace_seconds:.0f} s grace "
                     "period; exiting without a final commit\n").encode())
        os._exit(1)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGINT's Python handler: nothing; :class:`ShutdownSignals`' thread acts."""


#: Allocations between two collections of Python's youngest generation while the loop runs
#: (Python's default: 700). Python counts allocations minus deallocations, and while many
#: messages are in flight old objects die as fast as young ones are made, so the young
#: generation grows well past the threshold between collections. At 10,000, a thousand
#: async handlers in flight set off collections of 30,000-130,000 young objects, 10-90 ms
#: each, 0.2-0.3 s of every 300,000 messages; at 100,000 almost none ran (one of 99,000
#: objects took 15 ms) and the process used 6-16% less CPU.
YOUNG_GENERATION_THRESHOLD = 100_000


@contextmanager
def collecting_garbage_less() -> Iterator[None]:
    """The garbage collector while the loop runs, set for many messages in flight.

    Each message in flight holds a few objects the collector tracks (the message, its
    context, its job), and they live as long as its handler runs. With Python's defaults, a
    thousand async handlers in flight at tens of thousands of messages a second collect the
    youngest generation every few hundred messages, and every full collection walks each
    object alive, the modules, classes and settings loaded at start included: about a third
    of the process's CPU, measured. So while the loop runs, what exists when it starts is
    frozen (never scanned again; it lives as long as the process anyway), and the youngest
    generation is collected every ``YOUNG_GENERATION_THRESHOLD`` allocations. Both are
    undone when the loop returns."""
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def configure_logging(level: str, format: str = "human", *, group: str | None = None) -> None:
    logs.configure(level, format, group=group)
