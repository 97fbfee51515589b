"""``/livez`` and ``/readyz``: whether a restart would help, and whether to send work here.

- live fails only when restarting helps: no poll for longer than ``max.poll.interval.ms`` plus
  a margin, a fatal client error, the loop failed. Never on lag, idleness, broker or store
  outages or rebalances: restarts make those worse.
- ready: subscribed, first assignment seen (zero partitions is still ready), store reachable,
  a broker reachable (none for longer than :data:`BROKERS_DOWN_GRACE_SECONDS` fails it), not
  shutting down. SIGTERM turns it false first.

:class:`Lifecycle` records facts from the engine's events on the poll thread; :class:`Health`
answers on the HTTP thread from those facts and the loop's snapshot. Neither touches the
consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.clock import Clock
from consumer.engine.snapshot import LoopSnapshot
from consumer.errors import ConsumerError, KafkaError, StoreError
from consumer.events import Observer
from consumer.message import TP, Message

#: Added to max.poll.interval.ms before a missing poll fails liveness: by then the client has
#: already left the group, and a restart is the way back.
POLL_MARGIN_SECONDS = 30.0
#: How long no broker may be reachable before readiness reports it: a broker restarting or a
#: connection re-established within this does not flap readiness.
BROKERS_DOWN_GRACE_SECONDS = 5.0


class Lifecycle(Observer):
    """The facts health needs, as plain attributes written on the poll thread."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.subscribed = False
        self.assignment_seen = False
        #: Monotonic and wall time of the last poll; None before the first.
        self.last_poll_at: float | None = None
        self.last_poll_wall: float | None = None
        self.fatal_error: str | None = None
        self.store_error: str | None = None
        #: Monotonic time since which the client's statistics report no broker up; None while
        #: one is (or before the statistics said anything).
        self.brokers_down_since: float | None = None

    def started(self, topics: list[str]) -> None:
        self.subscribed = True
        self.last_poll_at = self._clock.monotonic()

    def assigned(self, partitions: list[TP]) -> None:
        self.assignment_seen = True

    def polled(self, messages: list[Message]) -> None:
        clock = self._clock
        self.last_poll_at = clock.monotonic()
        self.last_poll_wall = clock.wall()

    def kafka_error(self, error: KafkaError) -> None:
        if error.fatal:
            self.fatal_error = f"{error.code}: {error.reason}"

    def failed(self, error: ConsumerError) -> None:
        if isinstance(error, KafkaError) and error.fatal:
            self.fatal_error = f"{error.code}: {error.reason}"

    def store_unavailable(self, error: StoreError) -> None:
        self.store_error = str(error)

    def store_available(self) -> None:
        self.store_error = None

    def brokers_reported(self, up: bool | None) -> None:
        """What the client's statistics say (every second, inside poll): a broker is up (True),
        none is (False), or they cannot tell (None, which changes nothing)."""
        if up:
            self.brokers_down_since = None
        elif up is False and self.brokers_down_since is None:
            self.brokers_down_since = self._clock.monotonic()


@dataclass(frozen=True)
class HealthReport:
    """The outcome of one endpoint's checks: each check's name -> "ok" or why it failed."""

    checks: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(result == "ok" for result in self.checks.values())

    def body(self) -> dict[str, object]:
        failing = sorted(name for name, result in self.checks.items() if result != "ok")
        return {"status": "ok" if self.ok else "failing", "failing": failing,
                "checks": dict(self.checks)}


class Health:
    """Answers live and ready from the lifecycle facts and the loop's snapshot."""

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        snapshot: Callable[[], LoopSnapshot],
        clock: Clock,
        max_poll_interval_seconds: float,
    ) -> None:
        self._lifecycle = lifecycle
        self._snapshot = snapshot
        self._clock = clock
        self._poll_limit = max_poll_interval_seconds + POLL_MARGIN_SECONDS

    def live(self) -> HealthReport:
        facts, state = self._lifecycle, self._snapshot().state
        checks = {"poll": "ok", "kafka": "ok", "loop": "ok"}
        if facts.last_poll_at is not None and state in ("running", "draining"):
            silent = self._clock.monotonic() - facts.last_poll_at
            if silent > self._poll_limit:
                checks["poll"] = (f"no poll for {silent:.0f} s (limit {self._poll_limit:.0f} s: "
                                  "max.poll.interval.ms plus a margin); a handler may be stuck")
        if facts.fatal_error is not None:
            checks["kafka"] = f"fatal Kafka client error {facts.fatal_error}"
        if state == "failed":
            checks["loop"] = "the consumer loop failed; see the log"
        return HealthReport(checks)

    def ready(self) -> HealthReport:
        facts, snapshot = self._lifecycle, self._snapshot()
        checks = {"subscribed": "ok", "assignment": "ok", "store": "ok", "kafka": "ok",
                  "shutdown": "ok"}
        if not facts.subscribed:
            checks["subscribed"] = "not subscribed yet (waiting for the brokers)"
        if not facts.assignment_seen:
            checks["assignment"] = "no partition assignment received from the group yet"
        if facts.store_error is not None:
            checks["store"] = f"store unavailable: {facts.store_error}"
        if facts.brokers_down_since is not None:
            down = self._clock.monotonic() - facts.brokers_down_since
            if down > BROKERS_DOWN_GRACE_SECONDS:
                checks["kafka"] = f"no Kafka broker reachable for {down:.0f} s"
        if snapshot.stop_requested or snapshot.state in ("draining", "closed", "failed"):
            checks["shutdown"] = f"shutting down (loop {snapshot.state})"
        return HealthReport(checks)
