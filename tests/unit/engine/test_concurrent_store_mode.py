"""consumer.engine.concurrent_store_mode's StoreOutage: a message whose worker hit a transient
store error is held back and retried after a backoff shared by all such messages (never an
attempt of its own); a store error that is not transient stops the consumer. And how long the
mode waits for a running handler. (The mode itself runs on PostgreSQL:
tests/integration/test_concurrent_store.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from consumer.checkpoint.store_message import Tally
from consumer.clock import ManualClock
from consumer.engine.concurrent_store_mode import ConcurrentStoreMode, StoreOutage
from consumer.engine.stopping import StopRequest
from consumer.errors import Fenced, StoreSchemaError, StoreUnavailable
from consumer.events import Trigger
from consumer.testing import RecordingObserver


def test_transient_store_errors_back_off_doubling_and_report_the_outage_once() -> None:
    observer, clock = RecordingObserver(), ManualClock(100.0)
    outage = StoreOutage(observer, clock, max_backoff=2.0)
    lost = StoreUnavailable("lost the connection")
    assert [outage.retry_at(lost) for _ in range(4)] == [100.5, 101.0, 102.0, 102.0]
    assert observer.names == ["store_unavailable"]
    outage.committed()
    outage.committed()
    assert observer.names == ["store_unavailable", "store_available"]
    assert outage.retry_at(lost) == 100.5, "a new outage starts from the first backoff"


def test_a_messages_own_error_goes_to_its_failure_policy() -> None:
    outage = StoreOutage(RecordingObserver(), ManualClock(), max_backoff=2.0)
    assert outage.retry_at(ValueError("bad message")) is None


def test_a_store_error_that_is_not_transient_stops_the_consumer() -> None:
    outage = StoreOutage(RecordingObserver(), ManualClock(), max_backoff=2.0)
    with pytest.raises(StoreSchemaError):
        outage.retry_at(StoreSchemaError("consumer_processed_keys does not exist"))


class _BusyDispatcher:
    """Handlers running, none finishing: records how long the mode waits for one."""

    busy = True

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait_any(self, partitions: Any, timeout: float) -> None:
        self.waits.append(timeout)

    def run(self, messages: Any, partitions: Any, now: float, stop: Any) -> int:
        return 0


def test_with_handlers_running_a_take_waits_for_one_as_long_as_the_poll_would_have() -> None:
    """The loop cuts its wait short for the interval checkpoint or a retry's backoff; the poll
    hands that wait to the take, which must not wait the whole configured poll timeout."""
    dispatcher = _BusyDispatcher()
    clock = ManualClock()
    mode = ConcurrentStoreMode(
        positions=None, dispatcher=dispatcher, transactions=None, rows=None,
        tally=Tally(), outage=StoreOutage(RecordingObserver(), clock, max_backoff=2.0),
        commits=None, observer=RecordingObserver(), clock=clock, poll_wait=0.5)
    assert mode.poll_timeout(0.05) == 0.0
    mode.take([], {}, StopRequest())
    assert dispatcher.waits == [0.05]
    mode.take([], {}, StopRequest())  # no poll handed it a wait: it does not wait again
    assert dispatcher.waits == [0.05]


class _Closing:
    """Records what was closed, in order."""

    def __init__(self, name: str, closed: list[str]) -> None:
        self._name = name
        self._closed = closed

    def close(self) -> None:
        self._closed.append(self._name)


class _FencedRows:
    def run(self, trigger: Any, partitions: Any) -> dict[Any, int]:
        raise Fenced("g", [("t", 0)])


class _IdleDispatcher(_Closing):
    def settle(self, partitions: Any, only: Any, seconds: float) -> None:
        pass


def test_fenced_at_a_checkpoint_closes_the_pools_then_the_workers_and_stops() -> None:
    """A newer owner has a partition: the process stops without a final checkpoint, so this
    is the last the mode hears. Left running, the event loop's idle workers were destroyed
    pending at exit, an ERROR line each; the async pool closes on that loop, so it goes
    first."""
    closed: list[str] = []
    clock = ManualClock()
    mode = ConcurrentStoreMode(
        positions=None, dispatcher=_IdleDispatcher("workers", closed),
        transactions=[_Closing("async pool", closed), _Closing("pool", closed)],
        rows=_FencedRows(), tally=Tally(),
        outage=StoreOutage(RecordingObserver(), clock, max_backoff=2.0), commits=None,
        observer=RecordingObserver(), clock=clock)
    with pytest.raises(Fenced):
        mode.checkpoint(Trigger.INTERVAL, {})
    assert closed == ["async pool", "pool", "workers"]
