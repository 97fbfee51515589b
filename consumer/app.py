"""The composition root: builds every object of a consumer process from its settings."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from consumer.checkpoint_policy import CheckpointPolicy
from consumer.clock import SystemClock
from consumer.engine import ConsumerLoop
from consumer.observer import LoggingObserver, Observer, Observers
from consumer.routing import Router
from consumer.settings import Settings
from consumer.source import KafkaSource

log = logging.getLogger("consumer.app")


def build_router(settings: Settings) -> Router:
    """Import and check every route's handler (raises ConfigError listing all problems)."""
    return Router.from_config(
        {topic: route.handler for topic, route in settings.routes.items()},
        search_path=settings.handler_path,
    )


def build_loop(settings: Settings, router: Router, *extra_observers: Observer) -> ConsumerLoop:
    """Wire a consumer loop for these settings; nothing connects until ``loop.start()``."""
    return ConsumerLoop(
        KafkaSource(settings.kafka),
        router=router,
        policy=CheckpointPolicy(
            every_messages=settings.checkpoint.every_messages,
            every_seconds=settings.checkpoint.every_seconds,
        ),
        group=settings.kafka.group_id,
        clock=SystemClock(),
        observer=Observers(LoggingObserver(), *extra_observers),
        batch_size=settings.kafka.poll_batch_size,
        poll_timeout=settings.kafka.poll_timeout_seconds,
        synchronous_commits=settings.checkpoint.synchronous_commits,
    )


class ShutdownSignals:
    """SIGTERM/SIGINT ask the loop to drain; a second signal, or the grace period running out,
    ends the process at once. The handler only sets a flag and arms a timer."""

    def __init__(self, loop: ConsumerLoop, *, grace_seconds: float) -> None:
        self._loop = loop
        self._grace_seconds = grace_seconds
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
