"""Checkers for the concurrency tests: ordering per key or partition, coverage, and the bound
on what a SIGKILL repeats. They read the calls ``tests.support.concurrent_handlers`` records.

Each checker raises an AssertionError subclass that counts every violation and quotes the first
few, so a failing run says what went wrong, where, and how often.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Violations quoted in a failure message; the rest are counted.
QUOTED = 8


@dataclass(frozen=True, slots=True)
class Call:
    """One handler call, as the handler recorded it when it ended."""

    run: int  # the process id: one run of ``consumer run``
    key: str
    partition: int
    offset: int
    seq: int
    start: int  # time.time_ns() when the call began
    end: int  # time.time_ns() when it returned or raised
    worker: str
    ok: bool

    def __str__(self) -> str:
        return (f"{self.key}#{self.seq} (p{self.partition}@{self.offset}, run {self.run}, "
                f"{'ok' if self.ok else 'raised'}, {self.start}..{self.end}, {self.worker})")


@dataclass(frozen=True, slots=True)
class Start:
    """A call's beginning (recorded only with ``$CONC_RECORD_STARTS``)."""

    run: int
    partition: int
    offset: int
    start: int
    worker: str


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    text = path.read_text()
    # A line being written while we read has no newline yet: leave it for the next read.
    return [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]


def read_calls(path: Path) -> list[Call]:
    """Every ended call in the record file, in the order they ended."""
    return [Call(int(pid), key, int(p), int(o), int(seq), int(start), int(end), worker,
                 outcome == "ok")
            for pid, key, p, o, seq, start, end, worker, outcome in _lines(path)
            if outcome != "start"]


class RecordFile:
    """A record file read as it grows: each :meth:`calls` reads only the lines added since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read = 0
        self._calls: list[Call] = []
        self._done: set[tuple[int, int]] = set()

    def calls(self) -> list[Call]:
        if self.path.exists():
            with self.path.open("rb") as handle:
                handle.seek(self._read)
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._read += len(complete)
            for fields in (line.split() for line in complete.decode().splitlines()):
                pid, key, p, o, seq, start, end, worker, outcome = fields
                if outcome != "start":
                    self._calls.append(Call(int(pid), key, int(p), int(o), int(seq),
                                            int(start), int(end), worker, outcome == "ok"))
                if outcome == "ok":
                    self._done.add((int(p), int(o)))
        return self._calls


    def done(self) -> set[tuple[int, int]]:
        """(partition, offset) of every message handled successfully so far, all runs."""
        self.calls()
        return self._done

    def handled(self) -> int:
        """How many messages were handled successfully, all runs together."""
        return len(self.done())


def read_starts(path: Path) -> list[Start]:
    return [Start(int(pid), int(p), int(o), int(start), worker)
            for pid, _key, p, o, _seq, start, _end, worker, outcome in _lines(path)
            if outcome == "start"]


class OrderingViolation(AssertionError):
    """Two calls of one key (or partition) overlapped, or ran out of order."""


class NotHandled(AssertionError):
    """A produced message was never handled successfully."""


class TooManyRepeats(AssertionError):
    """A SIGKILL made the next run repeat more than the stated bound."""


def _fail(kind: type[AssertionError], what: str, problems: Sequence[str]) -> None:
    if problems:
        quoted = "\n  ".join(problems[:QUOTED])
        more = f"\n  ... and {len(problems) - QUOTED} more" if len(problems) > QUOTED else ""
        raise kind(f"{len(problems)} {what}:\n  {quoted}{more}")


Lane = Callable[[Call], Hashable]
BY_KEY: Lane = lambda call: call.key  # noqa: E731
BY_PARTITION: Lane = lambda call: call.partition  # noqa: E731


#: Which hold of its partition a call ran in; calls of one hold form one run of rule 2.
Holding = Callable[[Call], Hashable]


def by_run(call: Call) -> Hashable:
    """A process's calls as one hold: right for a member that keeps its partitions."""
    return call.run


def by_assignment(assigned: Mapping[int, Sequence[tuple[int, int]]]) -> Holding:
    """Holds told apart by assignment: ``assigned`` maps a run to its ``(time_ns,
    partition)`` assignments (from its log). A call belongs to the latest assignment of its
    partition in its run that came before it started, so a member that loses a partition and
    gets it back starts a new hold, like another member would."""
    times: dict[tuple[int, int], list[int]] = defaultdict(list)
    for run, events in assigned.items():
        for at, partition in events:
            times[(run, partition)].append(at)
    for found in times.values():
        found.sort()

    def holding(call: Call) -> Hashable:
        earlier = times.get((call.run, call.partition), [])
        return (call.run, sum(1 for at in earlier if at <= call.start))

    return holding


def check_order(calls: Iterable[Call], *, lane: str,
                expected: Mapping[Hashable, Sequence[int]],
                dead_lettered: Collection[tuple[Hashable, int]] = (),
                holding: Holding = by_run) -> None:
    """Raise OrderingViolation unless every lane ran its messages one at a time and in order.

    ``lane`` is ``"key"`` (a message's position is its sequence number) or ``"partition"`` (its
    offset); ``expected`` lists each lane's positions in the order they were produced.
    ``holding`` tells which hold of its partition a call ran in (:func:`by_run`: a process
    is one hold; :func:`by_assignment`: each assignment of a partition is one).

    What is valid, per lane, over the calls sorted by start time:

    1. No overlap: each call starts after the previous one ended, whichever run made them
       (a SIGKILLed call never ended, so it recorded nothing; a revoked partition's work
       finishes before the next owner starts it).
    2. Within one hold, the next call after a successful call at position i is at the next
       position, i+1 (nothing skipped, nothing repeated, nothing ahead of its turn). After a
       call that raised at i: i again (a retry) or, when ``(lane, i)`` is in
       ``dead_lettered``, i+1 (the message was given up, and the lane moved on).
    3. A lane's first call is at its first position; the first call of a hold that follows
       another hold's calls (a restart after a crash, a partition moved by a rebalance, and
       moved back) is at or below the first position no earlier hold handled successfully.
       So a crash may make the lane run again, but only as a whole suffix re-run in order
       from where the commit stood: the re-run goes through rule 2 from that point, never
       skipping ahead, never repeating one message alone. (How far back a re-run may start
       is the repeat bound's question: :func:`check_repeats`.)

    Rules 2 and 3 imply the weaker statement "counting each message's last successful call,
    a lane's positions rise with time": a re-run replays every message after its start, so
    the last successful calls are exactly the final run's, in order.
    """
    key_of = BY_KEY if lane == "key" else BY_PARTITION
    position_of: Callable[[Call], int] = ((lambda c: c.seq) if lane == "key"
                                          else (lambda c: c.offset))
    given_up = set(dead_lettered)
    lanes: dict[Hashable, list[Call]] = defaultdict(list)
    for call in calls:
        lanes[key_of(call)].append(call)
    problems: list[str] = []
    for name, lane_calls in lanes.items():
        positions = expected.get(name)
        if positions is None:
            problems.append(f"{lane} {name}: handled but never produced")
            continue
        index = {position: i for i, position in enumerate(positions)}
        lane_calls.sort(key=lambda c: (c.start, c.end))
        previous: Call | None = None
        frontier = 0  # index of the first position no call handled successfully yet
        for call in lane_calls:
            at = index.get(position_of(call))
            if at is None:
                problems.append(f"{lane} {name}: {call} is not a produced position")
                continue
            if previous is not None and call.start < previous.end:
                problems.append(f"{lane} {name}: {call} started before {previous} ended")
            if previous is None or holding(previous) != holding(call):
                if at > frontier:
                    problems.append(f"{lane} {name}: run {call.run} began at {call}, past "
                                    f"position {positions[frontier]} that no run had handled")
            else:
                was = index[position_of(previous)]
                allowed = {was + 1} if previous.ok else {was}
                if not previous.ok and (name, position_of(previous)) in given_up:
                    allowed.add(was + 1)
                if at not in allowed:
                    problems.append(f"{lane} {name}: {call} followed {previous}")
            if call.ok or (name, position_of(call)) in given_up:
                frontier = max(frontier, at + 1)
            previous = call
    _fail(OrderingViolation, f"ordering violations by {lane}", problems)


def check_all_handled(calls: Iterable[Call], expected: Mapping[str, Sequence[int]],
                      *, dead_lettered: Collection[tuple[str, int]] = ()) -> None:
    """Raise NotHandled unless every produced (key, seq) has a successful call, except the
    dead-lettered ones."""
    handled = {(c.key, c.seq) for c in calls if c.ok}
    missing = [f"{key}#{seq}" for key, seqs in expected.items() for seq in seqs
               if (key, seq) not in handled and (key, seq) not in dead_lettered]
    _fail(NotHandled, "messages never handled", missing)


def max_parallel(calls: Iterable[Call], lane: Callable[[Call], Hashable] | None = None) -> int:
    """The most calls running at one moment (within one lane value, when ``lane`` is given:
    e.g. the most calls of different keys at once inside one partition)."""
    groups: dict[Hashable, list[tuple[int, int]]] = defaultdict(list)
    for call in calls:
        group = None if lane is None else lane(call)
        groups[group].append((call.start, 1))
        groups[group].append((call.end, -1))
    most = 0
    for events in groups.values():
        running = 0
        for _, step in sorted(events):  # an end sorts before a start at the same instant
            running += step
            most = max(most, running)
    return most


def runs_in_order(calls: Iterable[Call]) -> list[int]:
    """The runs (process ids) by the start of their first call."""
    first: dict[int, int] = {}
    for call in calls:
        first[call.run] = min(first.get(call.run, call.start), call.start)
    return sorted(first, key=first.__getitem__)


def repeats_per_kill(calls: Sequence[Call]) -> list[tuple[int, int]]:
    """For each run but the last, ``(run, repeats)``: how many messages it handled that a later
    run handled again. Summed over the runs, that is every extra handling: a message handled in
    three runs counts once for each of the first two kills."""
    order = runs_in_order(calls)
    done: dict[int, set[tuple[int, int]]] = {run: set() for run in order}
    for call in calls:
        if call.ok:
            done[call.run].add((call.partition, call.offset))
    later: set[tuple[int, int]] = set()
    found: list[tuple[int, int]] = []
    for run in reversed(order):
        found.append((run, len(done[run] & later)))
        later |= done[run]
    return list(reversed(found))[:-1]


def repeats_by_run(calls: Iterable[Call]) -> dict[int, int]:
    """Per run, how many of the messages it handled another run handled again afterwards (a
    call that began after the run's call ended). For members running side by side: a member
    that lost its partitions only to a rebalance should count none (what it finished was
    committed before the partitions went); a killed one, what its kill cost."""
    by_message: dict[tuple[int, int], list[Call]] = defaultdict(list)
    for call in calls:
        if call.ok:
            by_message[(call.partition, call.offset)].append(call)
    repeats: dict[int, int] = defaultdict(int)
    for handled in by_message.values():
        if len(handled) == 1:
            continue
        for call in handled:
            if any(other.run != call.run and other.start >= call.end for other in handled):
                repeats[call.run] += 1
    return dict(repeats)


def largest_gap(calls: Iterable[Call], run: int, starts: Mapping[int, int],
                listed: Mapping[int, Collection[int]] | None = None) -> int:
    """The most messages of ``run`` finished above their partition's watermark at one moment,
    all partitions together, replayed from the records in the order the calls ended.

    ``starts``: the offset the run began at per partition (the group's committed offset when
    it started); the watermark is the lowest offset not finished yet, from there. ``listed``:
    per partition, the offsets above it that the commit's metadata said were finished (the run
    skips them: the watermark passes them without a record, and they are not the run's gap).
    Offsets are taken as contiguous (a topic written without transactions)."""
    ends = sorted((c.end, c.partition, c.offset) for c in calls if c.run == run and c.ok)
    finished: dict[int, set[int]] = defaultdict(set)
    skipped = {partition: set(offsets) for partition, offsets in (listed or {}).items()}
    watermark = dict(starts)
    gap = most = 0
    for _, partition, offset in ends:
        mark = watermark.setdefault(partition, 0)
        if offset < mark or offset in finished[partition]:
            continue  # below where the run began, or handled twice in it
        finished[partition].add(offset)
        gap += 1
        passed = skipped.get(partition, set())
        while mark in finished[partition] or mark in passed:
            if mark in passed:
                passed.discard(mark)
            else:
                finished[partition].discard(mark)
                gap -= 1
            mark += 1
        watermark[partition] = mark
        most = max(most, gap)
    return most


@dataclass(frozen=True)
class CrashBound:
    """What one SIGKILL may make later runs repeat, from the settings (README, "What a crash
    repeats"), with ``synchronous_commits: true`` and one route.

    The next owner starts at the committed offset C of each partition and handles again every
    message at or above C that the killed run had finished (its record written). Those are:

    - finished between C and the watermark W: done messages whose commit was not confirmed,
      fewer than ``every_messages`` (the loop takes no more than the checkpoint's room, and a
      synchronous checkpoint is confirmed before the loop goes on);
    - finished above W, the gap: the buffer (``kafka.max_buffered_messages``) holds both the
      messages polled and not started and those finished above a watermark, so at most
      ``max_buffered``;
    - in flight: calls that had ended (recorded) when the kill came and whose completion the
      loop had not seen, at most ``concurrency``.

    So repeats per kill <= every_messages + concurrency + max_buffered.
    """

    every_messages: int
    concurrency: int
    max_buffered: int

    @property
    def total(self) -> int:
        return self.every_messages + self.concurrency + self.max_buffered

    def __str__(self) -> str:
        return (f"every_messages {self.every_messages} + concurrency {self.concurrency} + "
                f"max_buffered_messages {self.max_buffered} = {self.total}")


@dataclass(frozen=True)
class Kill:
    """One killed run: what later runs repeated of it, and its largest gap (from records)."""

    run: int
    repeats: int
    largest_gap: int


def check_repeats(calls: Sequence[Call], bound: CrashBound,
                  starts: Mapping[int, Mapping[int, int]],
                  listed: Mapping[int, Mapping[int, Collection[int]]] | None = None,
                  ) -> list[Kill]:
    """Raise TooManyRepeats if a kill made later runs repeat more than ``bound``, or if a
    killed run's records show a gap above the watermark larger than the buffer allows
    (``max_buffered`` plus the calls ended and not yet seen, ``concurrency``). ``starts``
    maps each run to the offsets it began at, ``listed`` to the offsets above them its
    commits' metadata said were finished. Returns the kills, for the test's report."""
    kills = [Kill(run, count, largest_gap(calls, run, starts[run], (listed or {}).get(run)))
             for run, count in repeats_per_kill(calls)]
    problems = [f"run {k.run} was killed and {k.repeats} of its messages were handled again, "
                f"more than {bound}" for k in kills if k.repeats > bound.total]
    problems += [f"run {k.run} had {k.largest_gap} messages finished above a watermark, more "
                 f"than max_buffered_messages {bound.max_buffered} + concurrency "
                 f"{bound.concurrency}" for k in kills
                 if k.largest_gap > bound.max_buffered + bound.concurrency]
    _fail(TooManyRepeats, "kills repeated more than the bound", problems)
    return kills
