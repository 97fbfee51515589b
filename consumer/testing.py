"""In-memory stand-ins for fast tests of handlers and of the engine (no broker involved).

    source = InMemorySource({"orders": [[b"a", b"b"], [b"c"]]})   # topic -> partitions -> values
    loop = build_loop(settings, router, source=source, clock=ManualClock(),
                      dead_letters=InMemoryDeadLetterSink())     # consumer.app
    loop.start(); loop.run_once()
    assert source.committed_offsets == {("orders", 0): 2, ("orders", 1): 1}

They prove the engine's bookkeeping, never Kafka's behaviour: that is for the integration tests.
:class:`RecordingObserver` keeps every event the engine emits, for assertions on what it reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from consumer.errors import DeadLetterFailed, KafkaError
from consumer.events import Observer, Trigger
from consumer.kafka.protocol import COMMIT_MARKER, SourceListener
from consumer.message import TP, Message


class InMemorySource:
    """A single-member group over in-memory partitions, with commits recorded."""

    def __init__(self, topics: Mapping[str, list[list[bytes]]]) -> None:
        self._log: dict[TP, list[Message]] = {}
        for topic, partitions in topics.items():
            for partition, values in enumerate(partitions):
                self._log[(topic, partition)] = [
                    Message(topic, partition, offset, value, timestamp=0.0)
                    for offset, value in enumerate(values)
                ]
        self._positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self._listener: SourceListener | None = None
        self._pending_assignment: list[TP] = []
        self.committed_offsets: dict[TP, int] = {}
        #: Commit metadata per partition, as another tool would leave it (default: ours).
        self.commit_metadata: dict[TP, str] = {}
        #: Every commit call: (offsets, asynchronous).
        self.commits: list[tuple[dict[TP, int], bool]] = []
        self.closed = False
        # Like the real client, asynchronous commit results arrive during the next poll.
        self._commit_results: list[tuple[dict[TP, int], KafkaError | None]] = []
        #: Set to hold asynchronous commit results back (a broker busy with a rebalance).
        self.hold_commit_results = False
        #: Set to make the next commit fail with this error.
        self.fail_next_commit: KafkaError | None = None
        #: Per partition, offsets taken by transaction markers after its last message.
        self.markers: dict[TP, int] = {}

    def append(self, topic: str, partition: int, value: bytes, *,
               key: bytes | None = None,
               headers: list[tuple[str, bytes | None]] | None = None) -> None:
        log = self._log.setdefault((topic, partition), [])
        offset = self._end((topic, partition))
        self.markers.pop((topic, partition), None)
        log.append(Message(topic, partition, offset, value, key=key, headers=headers,
                           timestamp=0.0))

    def append_marker(self, topic: str, partition: int) -> None:
        """A transaction's commit marker: it takes an offset, and no handler ever sees it."""
        tp = (topic, partition)
        self._log.setdefault(tp, [])
        self.markers[tp] = self.markers.get(tp, 0) + 1

    def _end(self, tp: TP) -> int:
        log = self._log.get(tp, [])
        return (log[-1].offset + 1 if log else 0) + self.markers.get(tp, 0)

    def wait_for_broker(self, *, keep_trying: Callable[[], bool]) -> bool:
        return keep_trying()

    def subscribe(self, topics: Iterable[str], listener: SourceListener) -> None:
        self._listener = listener
        wanted = set(topics)
        self._pending_assignment = [tp for tp in self._log if tp[0] in wanted]

    def _deliver_commit_results(self) -> None:
        if self.hold_commit_results:
            return
        results, self._commit_results = self._commit_results, []
        if self._listener is not None:
            for offsets, error in results:
                self._listener.on_commit_result(offsets, error)

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        if self._listener is None:
            raise RuntimeError("poll before subscribe")
        self._deliver_commit_results()
        if self._pending_assignment:
            assigned, self._pending_assignment = self._pending_assignment, []
            self.paused.difference_update(assigned)  # as KafkaSource: assigned, fetched
            starts = self._listener.on_assigned(assigned)
            for tp in assigned:
                self._positions[tp] = starts.get(tp, self.committed_offsets.get(tp, 0))
        batch: list[Message] = []
        for tp, position in self._positions.items():
            if tp in self.paused:
                continue
            take = self._log[tp][position: position + max_messages - len(batch)]
            batch.extend(take)
            self._positions[tp] = position + len(take)
            if len(batch) >= max_messages:
                break
        return batch

    def pause(self, partitions: list[TP]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: list[TP]) -> None:
        self.paused.difference_update(partitions)

    def seek(self, partition: TP, offset: int) -> None:
        if partition in self._positions:
            self._positions[partition] = offset

    def revoke(self, partitions: list[TP]) -> None:
        """Simulate the group coordinator taking partitions away (runs the listener now)."""
        if self._listener is not None:
            self._listener.on_revoked(partitions)
        for tp in partitions:
            self._positions.pop(tp, None)

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool,
               metadata: Mapping[TP, str] | None = None) -> None:
        self.commits.append((dict(offsets), asynchronous))
        if self.fail_next_commit is not None:
            error, self.fail_next_commit = self.fail_next_commit, None
            if not asynchronous:
                raise error
            self._commit_results.append(({}, error))
            return
        self.committed_offsets.update(offsets)
        for tp in offsets:
            self.commit_metadata[tp] = (metadata or {}).get(tp, COMMIT_MARKER)
        if asynchronous:
            self._commit_results.append((dict(offsets), None))

    def committed(self, partitions: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        return {tp: self.committed_offsets.get(tp) for tp in partitions}

    def committed_with_metadata(
        self, partitions: Iterable[TP], timeout: float = 10.0
    ) -> dict[TP, tuple[int | None, str | None]]:
        return {tp: (self.committed_offsets[tp], self.commit_metadata.get(tp, COMMIT_MARKER))
                if tp in self.committed_offsets else (None, None) for tp in partitions}

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        log = self._log.get(partition, [])
        return (log[0].offset if log else 0, self._end(partition))

    def positions(self, partitions: Iterable[TP]) -> dict[TP, int]:
        found = {}
        for tp in partitions:
            index = self._positions.get(tp)
            if index is not None:
                log = self._log[tp]
                found[tp] = log[index].offset if index < len(log) else self._end(tp)
        return found

    def topic_ids(self, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        return {topic: f"id-of-{topic}" for topic in topics}

    def close(self) -> None:
        self._deliver_commit_results()
        if self._listener is not None and self._positions:
            self._listener.on_revoked(list(self._positions))
        self._positions.clear()
        self.closed = True


class InMemoryDeadLetterSink:
    """Keeps dead letters in a list; ``fail_with`` makes the next sends fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message, dict[str, bytes]]] = []
        self.fail_with: DeadLetterFailed | None = None

    def send(self, topic: str, message: Message, provenance: list[tuple[str, bytes]]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((topic, message, dict(provenance)))

    def close(self) -> None:
        pass


class Event(NamedTuple):
    """One event an observer received: the :class:`~consumer.events.Observer` method's name and
    its arguments (mappings and lists copied as they were then), with what
    :attr:`RecordingObserver.snapshot` returned at that moment (None when unset)."""

    name: str
    args: tuple[object, ...]
    snapshot: object = None


class RecordingObserver(Observer):
    """Records every event, in order, as :class:`Event` items in :attr:`events`.

        observer = RecordingObserver()
        ...  # build and run a loop with observer=observer
        assert observer.checkpoints == [(Trigger.COUNT, {("orders", 0): 100})]
        assert observer.names[-1] == "stopped"
        assert observer.named("batch_applied") == [(3, 1)]   # (applied, duplicates)
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        #: Called at every event, its value kept in :attr:`Event.snapshot`: e.g. set it to a
        #: loop's ``watermarks`` to see them as they were at each checkpoint.
        self.snapshot: Callable[[], object] | None = None

    def record(self, name: str, args: tuple[object, ...]) -> None:
        """Keep one event; every :class:`~consumer.events.Observer` method calls this."""
        kept = tuple(dict(a) if isinstance(a, Mapping) else list(a) if isinstance(a, list)
                     else a for a in args)
        self.events.append(Event(name, kept, self.snapshot() if self.snapshot else None))

    @property
    def names(self) -> list[str]:
        """Every event's name, in order."""
        return [event.name for event in self.events]

    def named(self, name: str) -> list[tuple[object, ...]]:
        """The arguments of every event called ``name``, in order."""
        return [event.args for event in self.events if event.name == name]

    @property
    def checkpoints(self) -> list[tuple[Trigger, dict[TP, int]]]:
        """Every committed checkpoint: its trigger and the offsets it committed."""
        return [(e.args[0], e.args[1]) for e in self.events  # type: ignore[misc]
                if e.name == "checkpoint_committed"]

    @property
    def failures(self) -> list[str]:
        """The exception type of every ``failed`` event (the loop stopped on it)."""
        return [type(e.args[0]).__name__ for e in self.events if e.name == "failed"]

    @property
    def commit_failures(self) -> list[tuple[Trigger | None, str]]:
        """Every failed Kafka commit: its trigger (None: an asynchronous commit's answer) and
        the client's error code."""
        return [(e.args[0], e.args[1].code) for e in self.events  # type: ignore[misc, attr-defined]
                if e.name == "commit_failed"]


def _recorder(name: str) -> Callable[..., None]:
    def record(self: RecordingObserver, *args: object) -> None:
        self.record(name, args)

    record.__name__ = record.__qualname__ = name
    return record


for _name, _method in vars(Observer).items():
    if callable(_method) and not _name.startswith("_"):
        setattr(RecordingObserver, _name, _recorder(_name))
